"""ASGI apps that tests/test_web_hardening.py serves with real servers (uvicorn,
hypercorn, daphne): the status route under ``/_progress_status`` (store: $TRACKED_STORE)
in front of an unrelated route that echoes what it received."""

from __future__ import annotations

import json
from typing import Any

from tracked.asgi import TrackedMiddleware


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An unrelated route: echoes its path, raw query and body."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = {"path": scope["path"], "query": scope["query_string"].decode("latin-1"),
            "body": body.decode("latin-1")}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


app = TrackedMiddleware(echo, cancel=True)
