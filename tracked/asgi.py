"""The status route as a pure ASGI app, for FastAPI, Starlette or any ASGI server.

``status_app(store)`` answers ``GET /<name>`` relative to wherever it is mounted
(``app.mount("/_progress_status", status_app(store))``): it routes on the
request path below ``root_path``. Store reads block, so each request's answer
is computed in a worker thread (``asyncio.to_thread``) and the event loop never
waits on a file or a Redis round trip. No dependency beyond the standard
library: every decision is the framework-free service's (``tracked._web``);
this module only converts between ASGI and it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import tracked

from ._web import Authorize, CancelPolicy, Response, StatusRequest, StatusService

__all__ = ["status_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def status_app(
    store: tracked.Store | str | os.PathLike[str] | None = None,
    *,
    authorize: Authorize | None = None,
    cancel: CancelPolicy = False,
    show_errors: bool = True,
) -> ASGIApp:
    """An ASGI app serving the status route for ``store`` (None: the process default
    at request time). ``authorize(scope, key)`` returning false answers 403; it
    runs in the worker thread with the rest of the request. ``cancel`` (off by
    default) lets ``DELETE /<name>`` ask a running progress to stop: True for
    whoever ``authorize`` lets read it, or ``(scope, key) -> bool`` per request.
    ``show_errors=False`` sends ``"error": "failed"`` instead of the exception's
    text (the store keeps it)."""
    service = StatusService(store, authorize=authorize, cancel=cancel, show_errors=show_errors)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            raise ValueError(f"the tracked status app serves HTTP only, not {kind!r}")
        answer = await asyncio.to_thread(service.handle, _request(scope))
        await _send(answer, scope["method"] == "HEAD", send)

    app.service = service  # type: ignore[attr-defined]
    return app


def _request(scope: Scope) -> StatusRequest:
    """Describe an ASGI HTTP request for the service: the path below ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    headers: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"if-none-match", b"x-progress-id"):
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return StatusRequest(
        scope["method"],
        path[1:] if path.startswith("/") else path,
        scope.get("query_string", b"").decode("latin-1"),
        headers.get(b"if-none-match"),
        headers.get(b"x-progress-id"),
        root,
        scope,
    )


async def _send(answer: Response, head: bool, send: Send) -> None:
    """Send one complete answer; a HEAD gets the headers of the GET, without the body."""
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in answer.headers]
    if answer.status not in (204, 304):
        headers.append((b"content-length", str(len(answer.body)).encode("ascii")))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: acknowledge startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
