"""The ASGI app the push benchmarks serve under uvicorn: the status route of the store
named by ``$TRACKED_STORE`` at ``/_progress_status``, and a trivial route at ``/trivial``
answering a small JSON body (the baseline). On a Redis store, ``/hand/{name}`` is a
hand-written FastAPI endpoint that reads the same keys with ``redis.asyncio`` (one
pipeline: the record hash's state, the kept messages, the lease) and answers them as
JSON: what an application would write without tracked."""

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


def hand_written(store: Any) -> Any:
    """A FastAPI app reading a RedisStore's keys for a name the plain way."""
    import json

    import redis.asyncio
    from fastapi import FastAPI
    from fastapi.responses import Response

    client = redis.asyncio.Redis.from_url(os.environ["TRACKED_STORE"])
    api = FastAPI()

    @api.get("/hand/{name}")
    async def status(name: str) -> Response:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hget(store.record_key(name), "state")
            pipe.lrange(store.messages_key(name), 0, -1)
            pipe.exists(store.lease_key(name))
            state, messages, leased = await pipe.execute()
        if state is None:
            return Response(b'{"error":"not found"}', 404, media_type="application/json")
        body = json.loads(state)
        body["messages"] = [m.decode() for m in messages]
        body["owner_alive"] = bool(leased)
        return Response(json.dumps(body).encode(), media_type="application/json")

    return api


def create_app() -> Any:
    """``/trivial`` straight to the trivial route; everything else through the middleware.
    With ``$BENCH_TRACEMALLOC`` set, tracemalloc runs and ``/snapshot?N`` dumps a
    snapshot to that path + ``.N`` (``bench_push.py stream-memory``); with
    ``$BENCH_PROFILE``, the event loop's thread runs under cProfile until ``/profile``
    dumps the stats to that path."""
    snapshot_path = os.environ.get("BENCH_TRACEMALLOC")
    if snapshot_path:
        import tracemalloc

        tracemalloc.start(6)
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler: Any = None
    if profile_path:  # the event loop's thread, from start to ``/profile``
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    store = tracked.open_store(os.environ["TRACKED_STORE"])
    tracked_app = TrackedMiddleware(trivial, store)
    hand = hand_written(store) if hasattr(store, "record_key") else None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if snapshot_path and scope["type"] == "http" and scope["path"] == "/snapshot":
            import gc
            import tracemalloc

            gc.collect()
            suffix = scope["query_string"].decode() or "0"
            tracemalloc.take_snapshot().dump(f"{snapshot_path}.{suffix}")
            await trivial(scope, receive, send)
        elif profiler is not None and scope["type"] == "http" and scope["path"] == "/profile":
            profiler.disable()
            profiler.dump_stats(profile_path)
            await trivial(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/trivial":
            await trivial(scope, receive, send)
        elif hand is not None and scope["type"] == "http" and scope["path"].startswith("/hand/"):
            await hand(scope, receive, send)
        else:
            await tracked_app(scope, receive, send)

    return app
