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
import logging
import os
import threading
import time
from typing import Any

import tracked

from ._redis_watch import LoopRedisWatcher, RedisWatcher
from ._watcher import FILE_INTERVAL, Subscription, Watcher

__all__ = ["FILE_INTERVAL", "Subscription", "Watcher", "followed", "subscribe", "watcher"]

logger = logging.getLogger("tracked")


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
