"""``TrackedMiddleware``: each request's ``progress_id`` (query, form field or
``X-Progress-Id``) and the configured store in the request scope, so ``@tracked``
views are named by the client's id; a tracked view's refusals as JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, HttpResponseBase

import tracked
from tracked._query import FORM_TYPES, requested_progress_id
from tracked._scope import RequestScope, request_scope

from ._settings import store

__all__ = ["TrackedMiddleware"]

GetResponse = Callable[[HttpRequest], Any]


class TrackedMiddleware:
    """Runs each request with its ``progress_id`` and store in scope (sync and async).

    A request whose ``progress_id`` sources disagree or which is not a valid id gets
    a JSON 400 before any view runs. A view raising ``AlreadyRunning`` (a second
    start of a running name and progress_id) answers a JSON 409, ``InvalidName`` or
    ``InvalidValue`` a JSON 400; other errors are Django's as usual.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        try:
            scope = _scope_of(request)
        except tracked.TrackedError as exc:
            return json_error(400, str(exc))
        token = request_scope.set(scope)
        try:
            return self.get_response(request)
        finally:
            request_scope.reset(token)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        try:
            scope = _scope_of(request)
        except tracked.TrackedError as exc:
            return json_error(400, str(exc))
        token = request_scope.set(scope)
        try:
            answer: Awaitable[HttpResponseBase] = self.get_response(request)
            return await answer
        finally:
            request_scope.reset(token)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A tracked view's refusals as the JSON errors of the status route."""
        if isinstance(exception, tracked.AlreadyRunning):
            return json_error(409, str(exception))
        if isinstance(exception, (tracked.InvalidName, tracked.InvalidValue)):
            return json_error(400, str(exception))
        return None


def _scope_of(request: HttpRequest) -> RequestScope:
    """The request's scope: its validated ``progress_id`` and the configured store."""
    form: list[str] = []
    if request.method == "POST" and (request.content_type or "").lower().startswith(FORM_TYPES):
        form = request.POST.getlist("progress_id")
    progress_id = requested_progress_id(
        request.META.get("QUERY_STRING", ""), request.headers.get("X-Progress-Id"), form
    )
    request.progress_id = progress_id  # type: ignore[attr-defined]
    return RequestScope(progress_id, store())


def json_error(status: int, message: str) -> HttpResponse:
    """The JSON error shape of the status route."""
    body = json.dumps({"error": message, "status": "error"}, ensure_ascii=False)
    return HttpResponse(body, status=status, content_type="application/json; charset=utf-8")
