"""The status route as a plain WSGI app, for Flask, Django or any WSGI server.

``status_app(store)`` answers ``GET /<name>`` relative to wherever it is
mounted: it routes on ``PATH_INFO`` (the path below the mount point) and names
the mount point from ``SCRIPT_NAME``. Mount it at ``/_progress_status`` so the
JavaScript client's default URLs reach it, e.g. with Werkzeug::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_progress_status": status_app(store)})

``TrackedMiddleware(app, store)`` wraps a whole WSGI app (Flask's
``app.wsgi_app``, Django's ``application``): it serves the status route under
``prefix`` and runs every other request in the request scope, so ``@tracked``
routes combine the client's ``progress_id`` (query, form field or
``X-Progress-Id``, read as the Bottle plugin reads it) with their names::

    app.wsgi_app = TrackedMiddleware(app.wsgi_app, store)

Every decision is the framework-free service's (``tracked._web``); this module
only converts between WSGI and it.
"""

from __future__ import annotations

import contextvars
import io
import os
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any

import tracked

from ._events import (
    HEARTBEAT_SECONDS,
    MAX_STREAM_SECONDS,
)
from ._query import (
    FORM_LIMIT,
    FORM_TYPES,
    form_progress_ids,
    mount_prefix,
    requested_progress_id,
)
from ._scope import RequestScope, request_scope
from ._web import (
    CACHE_BYTES,
    Authorize,
    CancelPolicy,
    EventStream,
    Response,
    StatusRequest,
    StatusService,
    SyncEvents,
    error,
)

__all__ = ["TrackedMiddleware", "status_app"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_STATUS_LINES[286] = "286 Stop Polling"  # htmx's: an ended run's fragment to a poll


def status_app(
    store: tracked.Store | str | os.PathLike[str] | None = None,
    *,
    authorize: Authorize | None = None,
    max_stream_seconds: float = MAX_STREAM_SECONDS,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    cancel: CancelPolicy = False,
    show_errors: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> WSGIApp:
    """A WSGI app serving the status route for ``store`` (None: the process default
    at request time). ``authorize(environ, key)`` returning false answers 403.
    ``cancel`` (off by default) lets ``DELETE /<name>`` ask a running progress to
    stop: True for whoever ``authorize`` lets read it, or ``(environ, key) -> bool``
    per request. ``show_errors=False`` sends ``"error": "failed"`` instead of the
    exception's text (the store keeps it), in JSON answers and events alike.

    A GET accepting ``text/event-stream`` gets Server-Sent Events for at most
    ``max_stream_seconds`` (0: never; such requests get the JSON), with a comment
    line after ``heartbeat_seconds`` of silence. An open stream holds the thread
    serving it: use threaded workers (gunicorn ``gthread``, gevent) for streams.
    ``cache_bytes`` (default 32 MiB) bounds the bytes the route keeps for reuse:
    half for rendered answers, half for open streams (nothing once they closed).
    """
    service = StatusService(
        store, authorize=authorize, max_stream_seconds=max_stream_seconds,
        heartbeat_seconds=heartbeat_seconds, cancel=cancel, show_errors=show_errors,
        cache_bytes=cache_bytes,
    )

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = _answer(service, environ)
        if isinstance(answer, EventStream):
            start_response("200 OK", list(answer.headers))
            return SyncEvents(answer)
        headers = list(answer.headers)
        if answer.status not in (204, 304):
            headers.append(("Content-Length", str(len(answer.body))))
        start_response(_STATUS_LINES[answer.status], headers)
        if environ.get("REQUEST_METHOD") == "HEAD" or not answer.body:
            return []
        return [answer.body]

    app.service = service  # type: ignore[attr-defined]
    return app


def _answer(service: StatusService, environ: dict[str, Any]) -> Response | EventStream:
    """Translate one WSGI request for the service; a path that is not UTF-8 is a 400."""
    path = environ.get("PATH_INFO", "")
    try:
        path = path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return error(400, "the URL path is not UTF-8")
    request = StatusRequest(
        environ.get("REQUEST_METHOD", "GET"),
        path[1:] if path.startswith("/") else path,
        environ.get("QUERY_STRING", ""),
        environ.get("HTTP_IF_NONE_MATCH"),
        environ.get("HTTP_X_PROGRESS_ID"),
        environ.get("SCRIPT_NAME", ""),
        environ,
        environ.get("HTTP_ACCEPT"),
        environ.get("HTTP_LAST_EVENT_ID"),
        environ.get("HTTP_IF_MATCH"),
        environ.get("HTTP_HX_REQUEST"),
    )
    return service.open(request)


class TrackedMiddleware:
    """Wrap a WSGI app: serve the status route under ``prefix``; run every other
    request with the client's ``progress_id`` and ``store`` in the request scope.

    A request whose ``progress_id`` sources disagree, or is not a valid id, gets a
    JSON 400 and never reaches ``app``. A urlencoded or multipart body of at most
    ``FORM_LIMIT`` bytes (1 MiB) is read for a ``progress_id`` field and handed on
    to ``app`` unchanged; for larger uploads, send it in the query or the header.
    The other options are ``status_app``'s.
    """

    def __init__(
        self,
        app: WSGIApp,
        store: tracked.Store | str | os.PathLike[str] | None = None,
        *,
        prefix: str = "/_progress_status",
        authorize: Authorize | None = None,
        max_stream_seconds: float = MAX_STREAM_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        cancel: CancelPolicy = False,
        show_errors: bool = True,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.app = app
        self.prefix = mount_prefix(prefix)
        self._path_prefix = self.prefix.encode("utf-8").decode("latin-1")  # as PATH_INFO
        self.status = status_app(
            store, authorize=authorize, max_stream_seconds=max_stream_seconds,
            heartbeat_seconds=heartbeat_seconds, cancel=cancel, show_errors=show_errors,
            cache_bytes=cache_bytes,
        )
        self.store = self.status.service.store  # type: ignore[attr-defined]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        script: str = environ.get("SCRIPT_NAME", "")
        if path[:1] != "/" and script.endswith("/"):  # mounted at "/" or "/app/"
            script, path = script[:-1], "/" + path
        prefix = self._path_prefix
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            environ["SCRIPT_NAME"] = script + prefix
            environ["PATH_INFO"] = path[len(prefix) :]
            return self.status(environ, start_response)
        try:
            progress_id = requested_progress_id(
                environ.get("QUERY_STRING", ""),
                environ.get("HTTP_X_PROGRESS_ID"),
                _form_progress_ids(environ),
            )
        except tracked.TrackedError as exc:
            answer = error(400, str(exc))
            start_response(_STATUS_LINES[400], list(answer.headers))
            return [answer.body]
        token = request_scope.set(RequestScope(progress_id, self.store))
        try:
            body = self.app(environ, start_response)
            # A streamed body runs after this returns: keep the scope for it.
            return _ScopedBody(body, contextvars.copy_context())
        finally:
            request_scope.reset(token)


class _ScopedBody:
    """An app's body iterated in the context of its request; ``close()`` passed on."""

    __slots__ = ("_body", "_context", "_iterator")

    def __init__(self, body: Iterable[bytes], context: contextvars.Context) -> None:
        self._body = body
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _ScopedBody:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            self._context.run(close)


def _form_progress_ids(environ: dict[str, Any]) -> list[str]:
    """``progress_id`` fields of a small form body, which is put back for the app."""
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type.lower().startswith(FORM_TYPES):
        return []
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return []
    if not 0 < length <= FORM_LIMIT:
        return []
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return form_progress_ids(content_type, body)
