"""Change notification on a RedisStore (see ``_watch``): one pub/sub connection per store
and process, read on a thread (``RedisWatcher``) or on an event loop with redis-py's
asyncio client (``LoopRedisWatcher``); the published wire JSON travels with a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any

import tracked

from ._watcher import Subscription, Watcher, wake_loops

__all__ = ["LoopRedisWatcher", "PubSubWatcher", "RedisWatcher"]

logger = logging.getLogger("tracked")

#: Longest wait on a Redis Cluster's sharded pub/sub connections before looking again
#: at all of them (see ``RedisWatcher._next``).
SHARDED_WAIT = 0.01
#: Seconds a new Redis subscription may take to be confirmed before a stream reads.
SUBSCRIBE_TIMEOUT = 2.0


class PubSubWatcher(Watcher):
    """What both Redis watchers share: the channels followed, the confirmations
    awaited, and the reading of one pub/sub message."""

    _channels: dict[str, str]  # channel -> key
    _confirmed: dict[str, threading.Event]

    def _handle(
        self, message: dict[str, Any]
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """Confirm a subscription, or mark the subscriptions a published write wakes."""
        channel = _channel(message)
        with self._lock:
            key = self._channels.get(channel)
            confirmed = self._confirmed.get(channel)
            subs = list(self._subs.get(key, ())) if key is not None else []
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


class RedisWatcher(PubSubWatcher):
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
            wake_loops(waiters)


def _channel(message: dict[str, Any]) -> str:
    """The channel a pub/sub message came on, as text."""
    raw = message.get("channel")
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def _state(payload: Any) -> tracked.State | None:
    """The state a Redis event carries, or None if it cannot be read as one."""
    try:
        return tracked.State.from_dict(json.loads(payload))
    except Exception:  # noqa: BLE001 - the stream then reads the store instead
        return None


class LoopRedisWatcher(PubSubWatcher):
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
                    wake_loops(self._handle(message), self.loop)
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
