"""Server-Sent Events of the status route: the schedule of one stream, free of I/O,
and what drives it in a server thread (``SyncEvents``).

A stream's ``steps`` generator yields ``bytes`` to send, ``Wait(seconds)`` (the
driver waits that long for a change and sends back ``subscription.wait``'s
answer) and ``LOAD`` (the driver reads the record and sends back the state);
``tracked.asgi`` drives it on an event loop instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import tracked

from . import _watch
from ._cache import EventCache
from ._html import fragment
from ._response import NO_STORE

__all__ = [
    "END_ID",
    "EVENT_HEADERS",
    "EVENT_STREAM_TYPE",
    "HEARTBEAT_SECONDS",
    "LOAD",
    "MAX_STREAM_SECONDS",
    "RECHECK_SECONDS",
    "RETRY_MS",
    "EventStream",
    "SyncEvents",
    "Wait",
    "async_events",
    "event_id",
    "event_schedule",
    "resume_point",
    "run_number",
    "wants_events",
]

logger = logging.getLogger("tracked")

EVENT_STREAM_TYPE = "text/event-stream"
#: Seconds between two comment lines on an idle stream (proxies close silent ones).
HEARTBEAT_SECONDS = 15.0
#: Seconds a stream lasts at most; the client then reconnects with ``Last-Event-ID``.
MAX_STREAM_SECONDS = 60.0
#: Seconds after which a stream re-reads its record even without a change signal
#: (an owner that died writes nothing: the record then reads ``abandoned``).
RECHECK_SECONDS = 5.0
#: Milliseconds a browser waits before reconnecting a closed stream (``retry:``).
RETRY_MS = 1000
#: The ``id`` of the event that ends a stream after the final state; a reconnect
#: carrying it gets 204, which tells an ``EventSource`` to stop.
END_ID = "end"
_EVENT_ID = re.compile(r"([0-9]{1,15})(?:/(-?[0-9]{1,20}))?")
EVENT_HEADERS = (
    ("Content-Type", EVENT_STREAM_TYPE),
    NO_STORE,
    ("X-Accel-Buffering", "no"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """A schedule step: wait up to ``seconds`` for a change of the record, then send
    the generator ``Subscription.wait``'s ``(changed, state or None)``."""

    seconds: float


class _Load:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LOAD"


#: A schedule step: read the record (it may block) and send the generator the state.
LOAD = _Load()
Step = bytes | Wait | _Load
Schedule = Generator[Step, Any, None]


@dataclasses.dataclass(slots=True)
class EventStream:
    """An accepted event stream: the headers of its 200, and the schedule to drive."""

    headers: tuple[tuple[str, str], ...]
    key: str
    store: tracked.Store
    subscription: _watch.Subscription
    steps: Schedule
    events: EventCache | None = None
    closed: bool = False

    def load(self) -> tracked.State | None:
        """Read the record (it may block): once for all streams of the key when the
        record is unchanged (see ``EventCache.load``)."""
        if self.events is None:
            return self.store.load(self.key)
        return self.events.load(self.store, self.key)

    def close(self) -> None:
        """End the schedule and stop following the record (idempotent); the events kept
        for the key go once its last stream closed."""
        if self.closed:
            return
        self.closed = True
        self.steps.close()
        self.subscription.close()
        if self.events is not None:
            self.events.closed(self.key)


async def async_events(stream: EventStream) -> AsyncIterator[bytes]:
    """The event loop's twin of ``SyncEvents``: drive ``stream`` waiting for changes
    without a thread and reading the store in one; the stream is closed at the end.
    (``tracked.asgi`` runs the same loop inline, to look for a disconnect between steps.)"""
    value: Any = None
    try:
        while True:
            try:
                step = stream.steps.send(value)
            except StopIteration:
                return
            value = None
            if isinstance(step, bytes):
                yield step
            elif isinstance(step, Wait):
                value = await stream.subscription.wait_async(step.seconds)
            else:
                try:
                    value = await asyncio.to_thread(stream.load)
                except Exception:  # noqa: BLE001 - end the stream; a reconnect gets the 500
                    return
    finally:
        stream.close()


class SyncEvents:
    """A WSGI body driving an ``EventStream`` in the server's thread: lazy, and its
    ``close()`` (called by the server when the client has gone) ends the stream."""

    __slots__ = ("_closed", "_stream")

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._closed = False

    def __iter__(self) -> SyncEvents:
        return self

    def __next__(self) -> bytes:
        stream = self._stream
        value: Any = None
        while not self._closed:
            try:
                step = stream.steps.send(value)
            except StopIteration:
                break
            if isinstance(step, bytes):
                return step
            if isinstance(step, Wait):
                value = stream.subscription.wait(step.seconds)
                continue
            try:
                value = stream.load()
            except Exception as exc:  # noqa: BLE001 - end the stream; a reconnect gets the 500
                logger.warning("event stream cannot read %r: %s", stream.key, exc)
                break
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.close()


def wants_events(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for ``text/event-stream`` (with a q above 0)."""
    if not accept or EVENT_STREAM_TYPE not in accept.lower():
        return False
    for media_range in accept.lower().split(","):
        kind, _, params = media_range.partition(";")
        if kind.strip() != EVENT_STREAM_TYPE:
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def resume_point(last_event_id: str | None) -> tuple[int, int | None] | str | None:
    """What a ``Last-Event-ID`` says: nothing, the end, or (message cursor, run)."""
    if last_event_id is None or not last_event_id.strip():
        return None
    text = last_event_id.strip()
    if text == END_ID:
        return END_ID
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        raise tracked.InvalidValue(
            f"Last-Event-ID must be an event id this route sent, got {text[:80]!r}"
        )
    run = match.group(2)
    return int(match.group(1)), None if run is None else int(run)


def run_number(state: tracked.State) -> int:
    """Which run of a name a state belongs to: its start time in milliseconds (0 for a
    record whose start time is not a finite number)."""
    start = state.start_time
    return round(start * 1000) if math.isfinite(start) else 0


def event_id(state: tracked.State) -> str:
    """The cursor an event carries: ``<message_count>/<run>``, resumable as ``Last-Event-ID``."""
    return f"{state.message_count}/{run_number(state)}"


def _event(
    state: tracked.State, cursor: int, *, retry: bool = False, show_errors: bool = True,
    events: EventCache | None = None, key: str = "", html: bool = False,
) -> bytes:
    """One event: the wire JSON of ``state`` with the messages from ``cursor`` on
    (with ``show_errors=False``, a failed run's error text reads ``"failed"``, as in
    the JSON answers: see ``StatusService._shown``).

    Streams that follow one key get the very same ``State`` object from their
    watcher (or a FileStore read shared by ``EventCache.load``), mostly at the same
    cursor: with ``events`` (the service's cache, ``key`` the storage key) each such
    event, a stream's first one too, is rendered once for all of them. ``html``: the
    data is the state's HTML fragment (``?format=html``, for htmx's SSE extension).
    """
    hide_error = not show_errors and state.error is not None
    hide = hide_error + 2 * html  # the cache's key: which rendering this event is
    slot = -1 - cursor if retry else cursor  # a first event (with retry:) is another
    if events is not None:
        cached = events.get(key, hide, state, slot)
        if cached is not None:
            return cached
    # A fragment replaces the last one whole: it lists the newest messages, not the new ones.
    shown = state.messages_since(cursor) if cursor and not html else state
    if hide_error:
        shown = dataclasses.replace(shown, error="failed")
    if html:
        text = fragment(shown).replace("\r\n", "\n").replace("\r", "\n")
        data = "\ndata: ".join(text.split("\n"))  # the client joins them with "\n" again
    else:
        data = json.dumps(shown.to_dict(), ensure_ascii=False, separators=(",", ":"))
    head = f"retry: {RETRY_MS}\n" if retry else ""
    event = f"{head}id: {event_id(state)}\ndata: {data}\n\n".encode()
    if events is not None:
        events.put(key, hide, state, slot, event)
    return event


_END_EVENT = f"event: end\nid: {END_ID}\ndata: {{}}\n\n".encode()
_PING = b": ping\n\n"


def event_schedule(
    state: tracked.State,
    cursor: int,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
    max_seconds: float = MAX_STREAM_SECONDS,
    recheck: float = RECHECK_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    show_errors: bool = True,
    events: EventCache | None = None,
    key: str = "",
    html: bool = False,
) -> Schedule:
    """The events of one stream, starting from ``state`` (just read) and ``cursor``
    (the messages the client has).

    The first event is the whole state with the messages from ``cursor`` on; each
    later event carries the new messages only, and is sent only when the state
    changed. After a final state, an ``end`` event closes the stream. A comment
    line goes out after ``heartbeat`` seconds without an event; after
    ``max_seconds`` the stream stops (the client resumes with ``Last-Event-ID``).
    A state that came with the change is used when it holds every message from
    the cursor on; else the record is read (``LOAD``), as after ``recheck`` seconds
    without either (an owner that died writes nothing: it then reads ``abandoned``).
    ``show_errors=False`` replaces a failed run's error text by ``"failed"``;
    ``events`` and ``key``: the cache sharing encoded events between streams of ``key``;
    ``html``: events carry the HTML fragment instead of the JSON.
    """
    now = clock()
    deadline = now + max_seconds
    run = run_number(state)
    yield _event(
        state, cursor, retry=True, show_errors=show_errors, events=events, key=key, html=html
    )
    # What was sent, without its messages: a waiting stream holds no copy of the record
    # (messages only grow, so message_count tells a change of them).
    sent, cursor, last_emit, last_read = _slim(state), state.message_count, now, now
    del state
    while sent.in_progress:
        now = clock()
        if now >= deadline:
            return
        wake_at = min(deadline, last_emit + heartbeat, last_read + recheck)
        changed, latest = yield Wait(max(0.0, wake_at - now))
        now = clock()
        if not changed and now < last_read + recheck:
            if now >= deadline:
                return
            if now >= last_emit + heartbeat:
                yield _PING
                last_emit = now
            continue
        if latest is not None and _continues(latest, sent, run, cursor):
            current, last_read = latest, now  # what the owner just wrote: as good as a read
        else:
            current = yield LOAD
            last_read = clock()
        latest = None
        if current is None:
            return  # deleted: the stream ends; a reconnect gets the 404
        slim = _slim(current)
        if slim == sent:
            continue
        if run_number(current) != run:  # the name was started again: all of the new run
            run, cursor = run_number(current), 0
        event = _event(
            current, cursor, show_errors=show_errors, events=events, key=key, html=html
        )
        sent, cursor, current = slim, current.message_count, None
        yield event
        event, last_emit = b"", now
    yield _END_EVENT


def _slim(state: tracked.State) -> tracked.State:
    """``state`` without its messages (``message_count`` stays): what a stream keeps.

    The streams woken by one change get the same ``State``: they share one copy
    (the last one made), not a copy each."""
    global _last_slim
    if not state.messages:
        return state
    last = _last_slim  # one tuple, swapped whole: safe across threads
    if last[0] is state:
        return last[1]
    slim = dataclasses.replace(state, messages=())
    _last_slim = (state, slim)
    return slim


_EMPTY = tracked.State(name="", total=None)
#: The last state ``_slim`` copied and its copy (kept for identity: a held reference).
_last_slim: tuple[tracked.State, tracked.State] = (_EMPTY, _EMPTY)


def _continues(latest: tracked.State, sent: tracked.State, run: int, cursor: int) -> bool:
    """Whether a state that came with a change can be sent as is: same run, not older
    than what was sent, holding every message from the cursor on."""
    return (
        run_number(latest) == run
        and latest.current_time >= sent.current_time
        and latest.first_message_index <= cursor <= latest.message_count
    )
