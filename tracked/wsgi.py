"""The status route as a plain WSGI app, for Flask, Django or any WSGI server.

``status_app(store)`` answers ``GET /<name>`` relative to wherever it is
mounted: it routes on ``PATH_INFO`` (the path below the mount point) and names
the mount point from ``SCRIPT_NAME``. Mount it at ``/_progress_status`` so the
JavaScript client's default URLs reach it, e.g. with Werkzeug::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/_progress_status": status_app(store)})

Every decision is the framework-free service's (``tracked._web``); this module
only converts between WSGI and it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import tracked

from ._web import (
    HEARTBEAT_SECONDS,
    MAX_STREAM_SECONDS,
    Authorize,
    EventStream,
    Response,
    StatusRequest,
    StatusService,
    SyncEvents,
    error,
)

__all__ = ["status_app"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def status_app(
    store: tracked.Store | str | os.PathLike[str] | None = None,
    *,
    authorize: Authorize | None = None,
    max_stream_seconds: float = MAX_STREAM_SECONDS,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> WSGIApp:
    """A WSGI app serving the status route for ``store`` (None: the process default
    at request time). ``authorize(environ, key)`` returning false answers 403.

    A GET accepting ``text/event-stream`` gets Server-Sent Events for at most
    ``max_stream_seconds`` (0: never; such requests get the JSON), with a comment
    line after ``heartbeat_seconds`` of silence. An open stream holds the thread
    serving it: use threaded workers (gunicorn ``gthread``, gevent) for streams.
    """
    service = StatusService(
        store, authorize=authorize, max_stream_seconds=max_stream_seconds,
        heartbeat_seconds=heartbeat_seconds,
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
    )
    return service.open(request)
