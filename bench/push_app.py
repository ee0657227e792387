"""The ASGI app the push benchmarks serve under uvicorn: the status route of the store
named by ``$TRACKED_STORE`` at ``/_progress_status``, and a trivial route at ``/trivial``
answering a small JSON body (the baseline)."""

from __future__ import annotations

import os
from typing import Any

import tracked
from tracked.asgi import TrackedMiddleware

TRIVIAL = b'{"ok":true}'


async def trivial(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": TRIVIAL})


def create_app() -> Any:
    """``/trivial`` straight to the trivial route; everything else through the middleware."""
    tracked_app = TrackedMiddleware(trivial, tracked.open_store(os.environ["TRACKED_STORE"]))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/trivial":
            await trivial(scope, receive, send)
        else:
            await tracked_app(scope, receive, send)

    return app
