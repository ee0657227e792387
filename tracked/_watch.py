"""Change notification: wait until a store's record for one key may have changed.

The status service's event streams (``_web``) wait here between events. One
``Watcher`` per store and process (``watcher(store)``), shared by every open
stream, turns the store's own signal into wake-ups of ``Subscription``s:

- ``RedisStore``: ONE pub/sub connection per store and process, subscribed to
  ``store.channel(key)`` for every key some stream follows. Streams on an event
  loop (the ASGI app) share one read with redis-py's asyncio client on that loop
  (``watcher(store, loop)``: no thread, and a wake-up is a future resolved on
  the loop itself); streams on threads (WSGI, Bottle) share one read on a
  thread (on a Redis Cluster >= 7.0, sharded: ``SSUBSCRIBE`` per master). The
  published wire JSON travels with the wake-up, so a stream can
  usually send it without reading the store again.
- ``FileStore``: one thread per store that ``stat``s each followed record every
  ``FILE_INTERVAL`` (50 ms); only a changed identity (inode, mtime, size) wakes.
- ``MemoryStore``: woken in-process by the writer (``MemoryStore._changed``).
- any other store: woken every ``FILE_INTERVAL``, so streams re-read it.

A ``Subscription`` is waited on by a thread (``wait``) or by an asyncio task
(``wait_async``, no thread held): a wake-up from another thread reaches an
event loop through ``call_soon_threadsafe``, once per loop and batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

import tracked

__all__ = ["FILE_INTERVAL", "Subscription", "Watcher", "followed", "subscribe", "watcher"]

logger = logging.getLogger("tracked")

#: Seconds between two ``stat`` calls on a followed file record.
FILE_INTERVAL = 0.05
#: Longest wait on a Redis Cluster's sharded pub/sub connections before looking again
#: at all of them (see ``RedisWatcher._next``).
SHARDED_WAIT = 0.01
#: Seconds a new Redis subscription may take to be confirmed before a stream reads.
SUBSCRIBE_TIMEOUT = 2.0

#: What a wake-up says: whether something changed, and the new state when known.
Change = tuple[bool, "tracked.State | None"]


class Subscription:
    """One stream's interest in one key: woken by its store's watcher."""

    __slots__ = ("_cond", "_latest", "_lock", "_pending", "_waiters", "key", "watcher")

    def __init__(self, watcher: Watcher, key: str) -> None:
        self.watcher = watcher
        self.key = key
        self._lock = threading.Lock()
        # Made by the first blocking ``wait``: a stream driven on an event loop never
        # needs one, and a Condition costs about 1 KiB (a dict of bound methods, a deque).
        self._cond: threading.Condition | None = None
        self._pending = False
        self._latest: tracked.State | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self, state: tracked.State | None = None) -> None:
        """Something wrote ``key`` (``state``: what was written, when known)."""
        _wake_loops(self.mark(state))

    def mark(
        self, state: tracked.State | None
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """Record a change and wake waiting threads; the loop waiters still to wake."""
        with self._lock:
            # Two changes before the stream looked: the state in hand misses the first.
            self._latest = state if not self._pending else None
            self._pending = True
            if self._cond is not None:
                self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        return waiters

    def take(self) -> Change:
        """Whether a change arrived since the last ``take`` (and its state), resetting it."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> Change:
        change = (self._pending, self._latest)
        self._pending = False
        self._latest = None
        return change

    def wait(self, timeout: float) -> Change:
        """Block up to ``timeout`` seconds for a change; then ``take()`` it."""
        with self._lock:
            if not self._pending and timeout > 0:
                if self._cond is None:
                    self._cond = threading.Condition(self._lock)
                self._cond.wait(timeout)
        return self.take()

    async def wait_async(self, timeout: float) -> Change:
        """Wait up to ``timeout`` seconds on the running loop, holding no thread.

        One future and one timer per wait (no ``wait_for`` task machinery): with a
        thousand streams woken at once, each wake-up is the loop's cheapest."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._pending or timeout <= 0:
                return self._take_locked()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        timer = loop.call_later(timeout, _resolve_one, future)
        try:
            await future
        finally:
            timer.cancel()
            if not future.done() or self._waiters:
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[1] is not future]
        return self.take()

    def close(self) -> None:
        """Stop following the key."""
        self.watcher.unsubscribe(self)


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _resolve_one(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake_loops(
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]],
    here: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Resolve waiting futures: those of ``here`` (the loop running this call) at
    once, the others with one hand-off per event loop (not one per stream)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        if loop is here:
            if not future.done():
                future.set_result(None)
        else:
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # the loop is closed: its streams are gone
            pass


class Watcher:
    """Wakes the subscriptions of one store when a followed key may have changed.

    The base class polls: its thread wakes every subscription every
    ``FILE_INTERVAL`` (a store without a change signal is re-read that often).
    """

    interval = FILE_INTERVAL

    def __init__(self, store: tracked.Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._thread: threading.Thread | None = None

    def subscribe(self, key: str) -> Subscription:
        """Follow ``key`` from now on: changes after this call wake the subscription."""
        sub = Subscription(self, key)
        with self._lock:
            first = key not in self._subs
            self._subs.setdefault(key, set()).add(sub)
            self._start()
        if first:
            self._added(key)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            last = not subs
            if last:
                del self._subs[sub.key]
        if last:
            self._removed(sub.key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._subs)

    def notify(self, key: str, state: tracked.State | None = None) -> None:
        """Wake every subscription to ``key``."""
        with self._lock:
            subs = list(self._subs.get(key, ()))
        waiters = []
        for sub in subs:
            waiters.extend(sub.mark(state))
        _wake_loops(waiters)

    # ------------------------------------------------------------------ per-store hooks

    def _start(self) -> None:
        """Start the thread on first use (called with the lock held)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"tracked-watch-{type(self.store).__name__}", daemon=True
            )
            self._thread.start()

    def _added(self, key: str) -> None:
        """A first subscription to ``key``."""

    def _removed(self, key: str) -> None:
        """The last subscription to ``key`` ended."""

    def _idle(self) -> bool:
        """True (and the thread forgotten) when nothing is followed: the thread ends."""
        with self._lock:
            if self._subs:
                return False
            self._thread = None
            return True

    def _run(self) -> None:
        while not self._idle():
            time.sleep(self.interval)
            for key in self.keys():
                self.notify(key)


class FileWatcher(Watcher):
    """Stats each followed record every ``FILE_INTERVAL``; wakes on a new identity."""

    def __init__(self, store: tracked.FileStore) -> None:
        super().__init__(store)
        self._files = store
        self._seen: dict[str, tuple[int, int, int] | None] = {}

    def _signature(self, key: str) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self._files.path_for(key))
        except (OSError, tracked.TrackedError):
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _added(self, key: str) -> None:
        self._seen[key] = self._signature(key)

    def _removed(self, key: str) -> None:
        self._seen.pop(key, None)

    def _run(self) -> None:
        while not self._idle():
            time.sleep(self.interval)
            for key in self.keys():
                signature = self._signature(key)
                if key in self._seen and self._seen.get(key) != signature:
                    self._seen[key] = signature
                    self.notify(key)


class MemoryWatcher(Watcher):
    """Woken by the store itself, in the writing thread: no thread of its own."""

    def __init__(self, store: tracked.MemoryStore) -> None:
        super().__init__(store)
        store._watchers.append(self.notify)

    def _start(self) -> None:
        pass


class RedisWatcher(Watcher):
    """One pub/sub connection for every stream following this store in the process.

    A thread reads the connection; subscribing happens in the calling thread
    (redis-py's ``PubSub`` allows it while another thread reads) and returns once
    the server confirmed it, so a read made after ``subscribe`` misses nothing.
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self._redis: Any = store  # a RedisStore: redis.py is imported only when used
        self._pubsub = store.client.pubsub()
        # On a Redis Cluster >= 7.0 events are sharded (SPUBLISH in the record's slot):
        # followed with SSUBSCRIBE, read per master by redis-py's ClusterPubSub.
        self._sharded = bool(getattr(store, "sharded_pubsub", False))
        # PubSub takes its connection on first use: two threads subscribing at once
        # would each take one. Commands go one at a time.
        self._commands = threading.Lock()
        self._channels: dict[str, str] = {}  # channel -> key
        self._confirmed: dict[str, threading.Event] = {}

    def _added(self, key: str) -> None:
        channel = self._redis.channel(key)
        confirmed = threading.Event()
        with self._lock:
            self._channels[channel] = key
            self._confirmed[channel] = confirmed
        try:
            with self._commands:
                if self._sharded:
                    self._pubsub.ssubscribe(channel)
                else:
                    self._pubsub.subscribe(channel)
        except Exception as exc:  # noqa: BLE001 - streams then re-read on their own clock
            logger.warning("cannot subscribe to %s: %s", channel, exc)
            return
        if not confirmed.wait(SUBSCRIBE_TIMEOUT):
            logger.warning("%s: subscription to %s not confirmed", self.store, channel)

    def subscribe(self, key: str) -> Subscription:
        sub = super().subscribe(key)
        with self._lock:
            confirmed = self._confirmed.get(self._redis.channel(key))
        if confirmed is not None:  # subscribed by another stream an instant ago
            confirmed.wait(SUBSCRIBE_TIMEOUT)
        return sub

    def _removed(self, key: str) -> None:
        channel = self._redis.channel(key)
        try:
            with self._commands:
                # Another stream may have followed the key again since its last one
                # ended: then it stays subscribed. Checked with the commands held, so
                # its subscription (made after) cannot be undone by this one.
                with self._lock:
                    if key in self._subs:
                        return
                    self._channels.pop(channel, None)
                    self._confirmed.pop(channel, None)
                if self._sharded:
                    self._pubsub.sunsubscribe(channel)
                else:
                    self._pubsub.unsubscribe(channel)
        except Exception as exc:  # noqa: BLE001 - a lost connection forgets it anyway
            logger.debug("cannot unsubscribe from %s: %s", channel, exc)

    def _next(self, timeout: float) -> dict[str, Any] | None:
        """The next message on the connection (on any master's, when sharded)."""
        if not self._sharded:
            message: dict[str, Any] | None = self._pubsub.get_message(timeout=timeout)
            return message
        # redis-py waits on each master's connection in turn for a slice of the
        # timeout: short waits keep a message on one master from waiting out the
        # others' slices (at most about SHARDED_WAIT late).
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            message = self._pubsub.get_sharded_message(timeout=min(timeout, SHARDED_WAIT))
            now = time.monotonic()
            if message is not None or now >= deadline:
                return message
            if now - began < SHARDED_WAIT / 2:
                time.sleep(SHARDED_WAIT)  # no master to wait on yet: it returned at once

    def _run(self) -> None:
        while not self._idle():
            try:
                message = self._next(1.0)
                if message is None:
                    continue
                # Take every message already here before waking anyone: one hand-off
                # to each event loop per batch, not per message (each hand-off of the
                # GIL between this thread and a busy loop can cost milliseconds).
                batch = [message]
                while len(batch) < 256:
                    message = self._next(0)
                    if message is None:
                        break
                    batch.append(message)
            except Exception as exc:  # noqa: BLE001 - Redis went away: streams re-read
                logger.warning("%s: pub/sub failed: %s", self.store, exc)
                for followed in self.keys():
                    self.notify(followed)
                time.sleep(0.5)
                continue
            waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            for message in batch:
                waiters.extend(self._handle(message))
            _wake_loops(waiters)

    def _handle(
        self, message: dict[str, Any]
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        return _handle_message(self, message)


def _state(payload: Any) -> tracked.State | None:
    """The state a Redis event carries, or None if it cannot be read as one."""
    try:
        return tracked.State.from_dict(json.loads(payload))
    except Exception:  # noqa: BLE001 - the stream then reads the store instead
        return None


class LoopRedisWatcher(Watcher):
    """The streams of one event loop following a RedisStore: one pub/sub connection
    read on the loop with redis-py's asyncio client, no thread.

    A wake-up resolves the waiting streams' futures directly, on the loop they wait
    on. ``subscribe`` is called from a worker thread (where the ASGI app opens a
    stream) and returns once the server confirmed the subscription, so a read
    made after it misses nothing. Commands run on the loop one at a time; the
    reader starts with the first confirmed subscription and ends, closing its
    connection, when no stream of the loop follows anything.
    """

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        super().__init__(store)
        self.loop = loop
        self._redis: Any = store
        self._client = client  # redis.asyncio.Redis, from store.async_client()
        self._pubsub: Any = None
        self._read_from: Any = None  # the PubSub a reader task reads (on the loop only)
        self._serial: asyncio.Lock | None = None  # one command at a time (on the loop)
        self._channels: dict[str, str] = {}  # channel -> key
        self._confirmed: dict[str, threading.Event] = {}

    def _start(self) -> None:
        """Nothing to start here: the first subscription starts the reader."""

    def subscribe(self, key: str) -> Subscription:
        sub = super().subscribe(key)
        with self._lock:
            confirmed = self._confirmed.get(self._redis.channel(key))
        if confirmed is not None and not self._on_loop():
            confirmed.wait(SUBSCRIBE_TIMEOUT)  # subscribed by another stream an instant ago
        return sub

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _added(self, key: str) -> None:
        channel = self._redis.channel(key)
        confirmed = threading.Event()
        with self._lock:
            self._channels[channel] = key
            self._confirmed[channel] = confirmed
        try:
            asyncio.run_coroutine_threadsafe(self._command("subscribe", channel), self.loop)
        except RuntimeError:  # the loop is closed: nobody will wait on it
            return
        if not self._on_loop() and not confirmed.wait(SUBSCRIBE_TIMEOUT):
            logger.warning("%s: subscription to %s not confirmed", self.store, channel)

    def _removed(self, key: str) -> None:
        channel = self._redis.channel(key)
        with self._lock:
            if key in self._subs:
                return  # followed again since its last stream ended: it stays subscribed
            self._channels.pop(channel, None)
            self._confirmed.pop(channel, None)
        try:
            asyncio.run_coroutine_threadsafe(self._command("unsubscribe", channel), self.loop)
        except RuntimeError:  # the loop is closed: its connection is gone with it
            pass

    async def _command(self, command: str, *channels: str) -> bool:
        """(Un)subscribe on the loop, then make sure a reader runs: it sees the
        server's confirmation. False if the command failed."""
        if self._serial is None:
            self._serial = asyncio.Lock()
        async with self._serial:
            if command == "unsubscribe":
                with self._lock:  # not a channel a stream followed again meanwhile
                    channels = tuple(c for c in channels if c not in self._channels)
                if self._pubsub is None or not channels:
                    return True  # nothing to undo (the reader closed the connection)
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            try:
                await getattr(self._pubsub, command)(*channels)
            except Exception as exc:  # noqa: BLE001 - streams then re-read on their own clock
                self._failed(command, channels, exc)
                return False
            if self._read_from is not self._pubsub:
                self._read_from = self._pubsub
                self.loop.create_task(self._read(self._pubsub))
            return True

    def _failed(self, command: str, channels: tuple[str, ...], exc: Exception) -> None:
        """A (un)subscribe failed: say so, and wake whoever waits for its confirmation
        (nobody waits the full timeout for a failed command)."""
        # A lost connection forgets its subscriptions anyway: unsubscribing is no news.
        log = logger.debug if command == "unsubscribe" else logger.warning
        log("cannot %s %s: %s", command, ", ".join(channels), exc)
        with self._lock:
            waiting = [self._confirmed.get(channel) for channel in channels]
        for confirmed in waiting:
            if confirmed is not None:
                confirmed.set()

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                with self._lock:
                    if not self._subs:
                        break
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except Exception as exc:  # noqa: BLE001 - Redis went away: streams re-read
                    logger.warning("%s: pub/sub failed: %s", self.store, exc)
                    await self._reconnect(pubsub)
                    return  # the reconnecting command started a new reader
                if message is not None:
                    _wake_loops(self._handle(message), self.loop)
        finally:
            if self._read_from is pubsub:
                self._read_from = None
        # Idle: close the connection, unless a command is using it right now.
        if self._serial is not None and not self._serial.locked() and self._pubsub is pubsub:
            self._pubsub = None
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _reconnect(self, broken: Any) -> None:
        """After a failure: a new connection subscribed to every followed channel, with
        its own reader, and every stream woken to read its record (a write may have
        gone unheard). While the server refuses, it tries again every half second:
        streams that can still read the store would otherwise only see its writes
        at each recheck, for as long as they stay open."""
        if self._pubsub is broken:
            self._pubsub = None
        if self._read_from is broken:
            self._read_from = None
        with contextlib.suppress(Exception):
            await broken.aclose()
        while True:
            await asyncio.sleep(0.5)
            with self._lock:
                channels = list(self._channels)
            if not channels or await self._command("subscribe", *channels):
                break
        for key in self.keys():
            self.notify(key)

    def _handle(
        self, message: dict[str, Any]
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        return _handle_message(self, message)


def _handle_message(
    watcher: Any, message: dict[str, Any]
) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
    """Confirm a subscription, or mark the subscriptions a published write wakes."""
    raw = message.get("channel")
    channel = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)
    with watcher._lock:
        key = watcher._channels.get(channel)
        confirmed = watcher._confirmed.get(channel)
        subs = list(watcher._subs.get(key, ())) if key is not None else []
    kind = message["type"]
    if kind == "subscribe" or kind == "ssubscribe":
        if confirmed is not None:
            confirmed.set()
        return []
    if (kind != "message" and kind != "smessage") or not subs:
        return []
    state = _state(message.get("data"))
    waiters = []
    for sub in subs:
        waiters.extend(sub.mark(state))
    return waiters


_watchers: dict[int, Watcher] = {}
_loop_watchers: dict[tuple[int, int], LoopRedisWatcher] = {}
_watchers_lock = threading.Lock()


def watcher(store: tracked.Store, loop: asyncio.AbstractEventLoop | None = None) -> Watcher:
    """The one watcher of ``store`` in this process; with ``loop``, the one of the
    streams waiting on that event loop (its own only for a RedisStore, whose events
    it then reads on the loop)."""
    if loop is not None and type(store).__name__ == "RedisStore":
        found_on_loop = _loop_watcher(store, loop)
        if found_on_loop is not None:
            return found_on_loop
    with _watchers_lock:
        found = _watchers.get(id(store))
        if found is not None and found.store is store:
            return found
        made = _new_watcher(store)
        _watchers[id(store)] = made
        return made


def _new_watcher(store: tracked.Store) -> Watcher:
    """A watcher for ``store``'s kind: stat polling, in-process wake, Redis pub/sub, or
    (any other store) re-reading on the streams' own clock."""
    if isinstance(store, tracked.FileStore):
        return FileWatcher(store)
    if isinstance(store, tracked.MemoryStore) and hasattr(store, "_watchers"):
        return MemoryWatcher(store)
    if type(store).__name__ == "RedisStore" and hasattr(store, "channel"):
        return RedisWatcher(store)
    return Watcher(store)


def _loop_watcher(store: Any, loop: asyncio.AbstractEventLoop) -> LoopRedisWatcher | None:
    """The watcher of ``store`` for ``loop``, made on first use; None if the store
    cannot make an asyncio client (its events are then read on a thread)."""
    with _watchers_lock:
        for stale in [k for k, w in _loop_watchers.items() if w.loop.is_closed()]:
            del _loop_watchers[stale]
        found = _loop_watchers.get((id(store), id(loop)))
        if found is not None and found.store is store and found.loop is loop:
            return found
        try:
            client = store.async_client()
        except Exception as exc:  # noqa: BLE001 - fall back to the thread's reader
            logger.debug("%s: no asyncio client (%s); events read on a thread", store, exc)
            client = None
        if client is None:
            return None
        made = LoopRedisWatcher(store, loop, client)
        _loop_watchers[(id(store), id(loop))] = made
        return made


def subscribe(
    store: tracked.Store, key: str, loop: asyncio.AbstractEventLoop | None = None
) -> Subscription:
    """Follow ``key`` in ``store`` (for a stream waiting on ``loop``, if given): see
    ``Watcher.subscribe``."""
    return watcher(store, loop).subscribe(key)


def followed(store: tracked.Store) -> set[str]:
    """Every key some stream of this process follows in ``store``, on any watcher."""
    with _watchers_lock:
        found = [w for w in (_watchers.get(id(store)), *_loop_watchers.values()) if w]
    return {key for w in found if w.store is store for key in w.keys()}
