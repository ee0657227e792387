"""The status route as a Django view: the request translated for the status service
(``tracked._web``), its answer sent back. Under ASGI an event stream waits on the
event loop (no thread per stream); under WSGI it holds the worker's thread, as
every WSGI stream does: threaded workers stream, a server without threads
(``wsgi.multithread`` false: gunicorn's sync worker) never does (clients poll)."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from tracked._web import EventStream, Response, StatusRequest, SyncEvents, async_events

from ._settings import service

__all__ = ["SCRIPT_QUERY", "status"]

#: The query of the status route's root that answers tracked.js itself: no progress
#: request looks like it, so no name is shadowed.
SCRIPT_QUERY = "tracked.js"


async def status(request: HttpRequest, name: str = "") -> HttpResponseBase:
    """``{prefix}/<name>``: JSON, HTML fragment, 304, event stream or error, as on
    every adapter; ``{prefix}/?tracked.js`` the browser client."""
    if not name and request.META.get("QUERY_STRING") == SCRIPT_QUERY:
        return _script()
    prefix = request.path[: len(request.path) - len(name)].rstrip("/") if name else request.path
    meta = request.META
    described = StatusRequest(
        request.method or "GET", name or None, meta.get("QUERY_STRING", ""),
        meta.get("HTTP_IF_NONE_MATCH"), meta.get("HTTP_X_PROGRESS_ID"), prefix.rstrip("/"),
        request, meta.get("HTTP_ACCEPT"), meta.get("HTTP_LAST_EVENT_ID"),
        meta.get("HTTP_IF_MATCH"), meta.get("HTTP_HX_REQUEST"),
    )
    asgi = "asgi.version" in meta or hasattr(request, "scope")
    loop = asyncio.get_running_loop() if asgi else None
    # A WSGI server without threads (gunicorn's default sync worker) would give a
    # stream its only worker for minutes: there the route answers JSON and says so.
    streams = asgi or bool(meta.get("wsgi.multithread", True))
    # Thread-sensitive: AUTHORIZE and CANCEL callables may use the ORM (request.user).
    answer = await sync_to_async(service(streams).open)(described, loop)
    if isinstance(answer, EventStream):
        body: Any = async_events(answer) if asgi else SyncEvents(answer)
        streamed = StreamingHttpResponse(body)
        for header, value in answer.headers:
            streamed[header] = value
        return streamed
    return _response(answer, request.method == "HEAD")


def _response(answer: Response, head: bool) -> HttpResponse:
    response = HttpResponse(b"" if head else answer.body, status=answer.status)
    if "Content-Type" not in dict(answer.headers):
        del response["Content-Type"]
    for header, value in answer.headers:
        response[header] = value
    return response


def _script() -> HttpResponse:
    script = files("tracked").joinpath("static/tracked.js").read_bytes()
    response = HttpResponse(script, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
