"""The event schedule of one stream (``tracked._web.event_schedule``), driven by hand
with a fake clock: no server, no store, no waiting."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import tracked
from tracked._web import LOAD, Wait, event_schedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(count: int = 0, messages: tuple[str, ...] = (), *, start: float = 1.0,
          running: bool = True, current: float = 2.0) -> tracked.State:
    made = tracked.State(name="job", count=count, messages=messages,
                         message_count=len(messages), start_time=start, current_time=current)
    return made if running else made.ended("finished", current)


def data(chunk: Any) -> dict[str, Any]:
    assert isinstance(chunk, bytes)
    line = next(x for x in chunk.decode().split("\n") if x.startswith("data: "))
    return dict(json.loads(line[6:]))


def test_heartbeat_then_deadline_with_no_change():
    clock = Clock()
    steps = event_schedule(state(), 0, heartbeat=15, max_seconds=60, recheck=100, clock=clock)
    first = next(steps)
    assert first.startswith(b"retry: 1000\nid: 0/1000\n")
    wait = next(steps)
    assert wait == Wait(15.0)
    clock.now += 15
    assert steps.send((False, None)) == b": ping\n\n"
    pings = 1
    for _ in range(10):
        step = next(steps)
        assert isinstance(step, Wait) and step.seconds <= 15
        clock.now += step.seconds
        try:
            step = steps.send((False, None))
        except StopIteration:
            break
        assert step == b": ping\n\n"
        pings += 1
    else:
        raise AssertionError("the stream never stopped")
    assert clock.now == 1060.0
    assert pings == 3  # at 15, 30 and 45 s; at 60 s the stream stops instead


def test_a_change_with_its_state_is_sent_without_reading_and_only_new_messages():
    clock = Clock()
    first = state(1, ("a",))
    steps = event_schedule(first, 0, clock=clock)
    assert data(next(steps))["messages"] == ["a"]
    assert isinstance(next(steps), Wait)
    later = state(3, ("a", "b", "c"), current=3.0)
    event = steps.send((True, later))
    assert data(event)["messages"] == ["b", "c"]
    assert b"id: 3/1000\n" in event


def test_a_change_without_state_or_with_a_partial_one_reads_the_record():
    clock = Clock()
    steps = event_schedule(state(1, ("a",)), 0, clock=clock)
    next(steps), next(steps)
    assert steps.send((True, None)) is LOAD
    assert data(steps.send(state(2, ("a", "b"), current=3.0)))["messages"] == ["b"]
    next(steps)
    partial = dataclasses.replace(state(4, ("a", "b", "c", "d"), current=4.0),
                                  messages=("d",))  # misses "c"
    assert steps.send((True, partial)) is LOAD


def test_an_unchanged_record_sends_nothing_and_an_older_state_is_not_sent():
    clock = Clock()
    current = state(1, ("a",), current=5.0)
    steps = event_schedule(current, 0, clock=clock)
    next(steps), next(steps)
    assert steps.send((True, None)) is LOAD
    assert isinstance(steps.send(current), Wait)  # same state: nothing sent
    assert steps.send((True, state(1, ("a",), current=4.0))) is LOAD  # older: read instead


def test_the_final_state_is_followed_by_the_end_event():
    clock = Clock()
    steps = event_schedule(state(1, ("a",)), 0, clock=clock)
    next(steps), next(steps)
    final = state(2, ("a", "b"), running=False, current=3.0)
    assert data(steps.send((True, final)))["state"] == "finished"
    assert next(steps) == b"event: end\nid: end\ndata: {}\n\n"
    assert list(steps) == []


def test_an_ended_record_gets_its_state_and_the_end_at_once():
    steps = event_schedule(state(1, ("a",), running=False), 0, clock=Clock())
    assert data(next(steps))["in_progress"] is False
    assert next(steps).startswith(b"event: end")
    assert list(steps) == []


def test_a_new_run_of_the_name_is_sent_whole():
    clock = Clock()
    steps = event_schedule(state(2, ("a", "b")), 0, clock=clock)
    next(steps), next(steps)
    again = state(1, ("new",), start=50.0, current=51.0)
    assert steps.send((True, None)) is LOAD
    event = steps.send(again)
    assert data(event)["messages"] == ["new"]
    assert b"id: 1/50000\n" in event


def test_a_deleted_record_ends_the_stream():
    steps = event_schedule(state(), 0, clock=Clock())
    next(steps), next(steps)
    assert steps.send((True, None)) is LOAD
    assert list(_rest(steps, None)) == []


def test_without_a_change_the_record_is_read_every_recheck():
    clock = Clock()
    steps = event_schedule(state(), 0, heartbeat=15, recheck=5, clock=clock)
    next(steps)
    assert next(steps) == Wait(5.0)
    clock.now += 5
    assert steps.send((False, None)) is LOAD


def _rest(steps: Any, value: Any) -> Any:
    try:
        step = steps.send(value)
    except StopIteration:
        return
    yield step
    yield from steps


# ----------------------------------------------------------------------------- ASGI driver


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "root_path": "",
            "query_string": b"", "headers": [(b"accept", b"text/event-stream")]}


def test_asgi_stream_ends_on_http_disconnect_and_stops_following():
    import asyncio

    from tracked import _watch
    from tracked.asgi import status_app

    store = tracked.MemoryStore()
    progress = tracked.start("job", store=store)
    app = status_app(store, heartbeat_seconds=30)
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body", b"").startswith(b"retry:"):
                gone.set()  # the client leaves after the first event

        await asyncio.wait_for(app(_scope("/job"), receive, send), 5)

    asyncio.run(run())
    progress.finish()
    assert sent[0]["status"] == 200
    assert sent[1]["body"].startswith(b"retry: 1000\n")
    assert "job" not in _watch.watcher(store).keys()


def test_asgi_stream_ends_when_a_send_fails():
    import asyncio

    from tracked import _watch
    from tracked.asgi import status_app

    store = tracked.MemoryStore()
    progress = tracked.start("job", store=store, min_interval=0)
    app = status_app(store, heartbeat_seconds=30)

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("client gone")  # as ASGI 2.4 servers report it

        await asyncio.wait_for(app(_scope("/job"), receive, send), 5)

    asyncio.run(run())
    progress.finish()
    assert "job" not in _watch.watcher(store).keys()
