"""The comparison servers of ``bench_push.py fanout``: the same Redis events as
``tracked.asgi`` streams, fanned out without tracked.

- ``create_sse_starlette`` (a uvicorn factory, like ``push_app.create_app``): a
  Starlette route answering ``EventSourceResponse`` (sse-starlette), fed by ONE
  shared ``redis.asyncio`` subscription that puts each event in every client's
  ``asyncio.Queue``: the pattern sse-starlette's docs and issue 19 describe. As
  sse-starlette does, each client's response encodes the event it yields.
- ``python -m bench.fanout_apps floor PORT`` (the floor): a bare uvloop protocol
  server with one subscription; an event is framed once (``data: ...``) and the
  same bytes written to every connected socket of its job. No HTTP parsing beyond
  the request line, no per-client task or queue.

Both follow ``$TRACKED_STORE`` (a RedisStore URL) by a pattern subscription to the
store's event channels; a message's payload is the written state's wire JSON with
the new messages only, which is what the clients of the bench parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import redis.asyncio

import tracked

OPEN_EVENT = b'data: {"open":true}\n\n'
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"cache-control: no-store\r\n\r\n")


def _pattern() -> tuple[str, int]:
    """The pattern matching every event channel of the store, and its prefix's length."""
    store = tracked.open_store(os.environ["TRACKED_STORE"])
    channel = store.channel("x")  # type: ignore[attr-defined]
    store.close()
    prefix = channel[:-1]
    return prefix + "*", len(prefix)


async def _follow(deliver: Any) -> None:
    """One subscription for the whole process: ``deliver(name, payload)`` per event."""
    pattern, cut = _pattern()
    client = redis.asyncio.Redis.from_url(os.environ["TRACKED_STORE"])
    pubsub = client.pubsub()
    await pubsub.psubscribe(pattern)
    async for message in pubsub.listen():
        if message["type"] == "pmessage":
            deliver(message["channel"][cut:].decode(), message["data"])


def create_sse_starlette() -> Any:
    """A Starlette app: ``/sse/{name}`` streams the events of ``name`` (sse-starlette)."""
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    queues: dict[str, set[asyncio.Queue[bytes]]] = {}

    def deliver(name: str, payload: bytes) -> None:
        for queue in queues.get(name, ()):
            queue.put_nowait(payload)

    async def stream(request: Request) -> EventSourceResponse:
        name = request.path_params["name"]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.setdefault(name, set()).add(queue)

        async def events() -> Any:
            try:
                yield {"data": '{"open":true}'}
                while True:
                    yield {"data": (await queue.get()).decode()}
            finally:
                queues[name].discard(queue)

        return EventSourceResponse(events(), sep="\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        task = asyncio.create_task(_follow(deliver))
        yield
        task.cancel()

    return Starlette(routes=[Route("/sse/{name}", stream)], lifespan=lifespan)


class _Floor(asyncio.Protocol):
    """One client of the floor: the request line names the job; then only writes."""

    __slots__ = ("clients", "name", "transport")

    def __init__(self, clients: dict[str, set[asyncio.Transport]]) -> None:
        self.clients = clients
        self.name = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.name or self.transport is None:
            return
        self.name = data.split(b" ", 2)[1].rsplit(b"/", 1)[1].decode()
        self.transport.write(HEAD + OPEN_EVENT)
        self.clients.setdefault(self.name, set()).add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.clients.get(self.name, set()).discard(self.transport)


async def floor(port: int) -> None:
    """Serve the floor on ``port`` until killed."""
    clients: dict[str, set[asyncio.Transport]] = {}

    def deliver(name: str, payload: bytes) -> None:
        event = b"data: " + payload + b"\n\n"  # framed once for every socket
        for transport in clients.get(name, ()):
            transport.write(event)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Floor(clients), "127.0.0.1", port,
                                      backlog=4096)
    async with server:
        await _follow(deliver)


if __name__ == "__main__":
    import uvloop

    if sys.argv[1:2] != ["floor"]:
        raise SystemExit("usage: python -m bench.fanout_apps floor PORT")
    uvloop.run(floor(int(sys.argv[2])))
