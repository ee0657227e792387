"""What a status service keeps for reuse, in two caches sharing its ``cache_bytes``
half and half: ``RenderCache`` (rendered bodies, while a record's file or version
is unchanged) and ``EventCache`` (encoded events and one shared read per key
followed by open streams).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import tracked

from ._response import Rendered

__all__ = ["CACHE_BYTES", "EventCache", "RenderCache", "Signature"]

Signature = tuple[int, int, int]


#: Bytes of rendered answers and encoded events a status service keeps for reuse, in
#: all (half for each): ``cache_bytes=`` of the adapters.
CACHE_BYTES = 32 * 1024 * 1024


class RenderCache:
    """Rendered bodies of a FileStore's records, reused while their file is unchanged;
    of a store with a ``version(key)`` token (RedisStore), while the token is unchanged.

    A record only changes when its file is replaced, so a ``stat`` (inode, mtime,
    size) tells whether a cached body is current without reading or parsing the
    file. An ended (or abandoned) record's body is then reused for as long as its
    file stays the same. A running record's body also depends on its owner being
    alive, so it is reused for at most ``RECHECK_S`` (1 s) after the liveness was
    judged: an owner that dies is seen as ``abandoned`` up to a second later.
    Files younger than ``SETTLE_NS`` look the same as a file replaced within one
    tick of the file system's clock: an ended one is not cached, a running one
    only until it could have settled. A version token changes with every write and
    with the owner's liveness, read from the server each time: such bodies are reused
    for as long as it stays the same, running or not.
    """

    SETTLE_NS = 50_000_000
    RECHECK_S = 1.0
    MAX_ENTRIES = 1024
    #: Bytes an entry costs beyond its body (the key, the tuples, two Responses).
    OVERHEAD = 512

    def __init__(self, store: tracked.Store, max_bytes: int = CACHE_BYTES // 2) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._files = store if isinstance(store, tracked.FileStore) else None
        version = getattr(store, "version", None) if self._files is None else None
        self._version: Callable[[str], str | None] | None = version if callable(version) else None
        self._paths: dict[str, str] = {}
        self._entries: dict[tuple[str, int], tuple[Signature | str, Rendered, float]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def stat_checked(self) -> bool:
        """True for a FileStore's cache: a ``stat`` alone tells whether an entry is
        current (no store read, no user code)."""
        return self._files is not None

    @property
    def size(self) -> int:
        """Bytes held now (bodies and their overhead): at most ``max_bytes``."""
        return self._bytes

    def signature(self, key: str) -> Signature | str | None:
        """The identity of ``key``'s file now, or its store's version token; None when
        there is no record (or no way to tell)."""
        if self._files is None:
            return None if self._version is None else self._version(key)
        path = self._paths.get(key)
        if path is None:
            path = str(self._files.path_for(key))
            _bounded_put(self._paths, key, path, self.MAX_ENTRIES)
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def get(
        self, key: str, since: int, signature: Signature | str | None, now: float
    ) -> Rendered | None:
        """The cached body for ``key`` and ``since`` if its file is still ``signature``
        and, for a running record, its owner was judged alive less than a second ago."""
        if signature is None:
            return None
        entry = self._entries.get((key, since))
        if entry is None or entry[0] != signature or now >= entry[2]:
            return None
        return entry[1]

    def current(self, key: str, since: int) -> Rendered | None:
        """``get`` with the file's signature and the clock taken now; no ``stat`` when
        nothing is cached for ``key`` and ``since``."""
        entry = self._entries.get((key, since))
        if entry is None:
            return None
        path = self._paths.get(key)
        if path is None:
            signature = self.signature(key)
        else:
            try:
                info = os.stat(path)
            except OSError:
                return None
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        if entry[0] != signature or time.monotonic() >= entry[2]:
            return None
        return entry[1]

    def put(
        self, key: str, since: int, signature: Signature | str | None, rendered: Rendered,
        running: bool, now: float,
    ) -> None:
        """Remember a body rendered from a record read (and judged, at ``now``) after
        taking ``signature``."""
        if signature is None:
            return
        expires = self._expires(signature, running, now)
        if expires is None:
            return
        size = len(rendered.body) + self.OVERHEAD
        if size > self.max_bytes // 4:
            return  # one big record (or ?since= sweep of one) must not flush all others
        entries = self._entries
        with self._lock:
            old = entries.pop((key, since), None)
            if old is not None:
                self._bytes -= len(old[1].body) + self.OVERHEAD
            while entries and (
                self._bytes + size > self.max_bytes or len(entries) >= self.MAX_ENTRIES
            ):
                dropped = entries.pop(next(iter(entries)))  # the oldest
                self._bytes -= len(dropped[1].body) + self.OVERHEAD
            entries[(key, since)] = (signature, rendered, expires)
            self._bytes += size


    def _expires(self, signature: Signature | str, running: bool, now: float) -> float | None:
        """Until when a body taken under ``signature`` may be reused; None: not cached
        (an ended record's file too young to tell a later replacement apart)."""
        if isinstance(signature, str):  # a version token: current while it is the same
            return float("inf")  # (counted in the budget like any other body)
        if time.time_ns() - signature[1] > self.SETTLE_NS:
            return now + self.RECHECK_S if running else float("inf")
        if running:
            return now + self.SETTLE_NS / 1e9
        return None

def _bounded_put(table: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Insert into ``table``, dropping the oldest entry once it holds ``limit``."""
    if len(table) >= limit and key not in table:
        try:
            del table[next(iter(table))]
        except (StopIteration, KeyError, RuntimeError):
            pass  # another thread changed the table: the bound is approximate
    table[key] = value


class EventCache:
    """Encoded events shared by a service's streams: a change fanned out to many streams
    as one ``State`` (a Redis or memory watcher hands every stream the same object) is
    encoded once per cursor. Per key it keeps the latest such state and its events, at
    most ``max_bytes`` in all (a state counted by its messages), and nothing once the
    key's last stream closed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._streams: dict[str, int] = {}
        # (key, errors hidden) -> (state, {cursor (negative: a first event): event}, bytes)
        self._entries: dict[tuple[str, int], tuple[tracked.State, dict[int, bytes], int]] = {}
        # key -> (file identity, valid until (monotonic), state, its bytes): FileStore reads
        self._loaded: dict[str, tuple[Signature, float, tracked.State, int]] = {}
        self._bytes = 0

    def load(self, store: tracked.Store, key: str) -> tracked.State | None:
        """``store.load(key)``, read once for all the key's streams that ask while a
        FileStore record's file is unchanged, for at most ``RenderCache.RECHECK_S``
        (an owner that died is then judged again): many streams woken by one change
        parse the record once and share the ``State`` (and so their encoded events)."""
        if not isinstance(store, tracked.FileStore):
            return store.load(key)
        try:
            info = os.stat(store.path_for(key))
        except OSError:
            return store.load(key)
        signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        now = time.monotonic()
        kept = self._loaded.get(key)
        if kept is not None and kept[0] == signature and now < kept[1]:
            return kept[2]
        state = store.load(key)  # after the stat: a change meanwhile is seen next time
        if state is not None:
            self._keep_loaded(key, signature, now, state)
        return state

    def _keep_loaded(
        self, key: str, signature: Signature, now: float, state: tracked.State
    ) -> None:
        """Keep ``state``, read at ``now`` from a file with ``signature``, for the key's
        open streams, within ``max_bytes``."""
        # As RenderCache: a file younger than a clock tick is reused only until it
        # could have settled (another replace within the tick could look the same).
        settled = time.time_ns() - signature[1] > RenderCache.SETTLE_NS
        until = now + (RenderCache.RECHECK_S if settled else RenderCache.SETTLE_NS / 1e9)
        size = _state_bytes(state)
        with self._lock:
            old = self._loaded.pop(key, None)
            if old is not None:
                self._bytes -= old[3]
            if key in self._streams and self._bytes + size <= self.max_bytes:
                self._loaded[key] = (signature, until, state, size)
                self._bytes += size

    @property
    def size(self) -> int:
        """Bytes held now (events and the states they were encoded from)."""
        return self._bytes

    def opened(self, key: str) -> None:
        """A stream of ``key`` opened: keep its events until its last stream closes."""
        with self._lock:
            self._streams[key] = self._streams.get(key, 0) + 1

    def closed(self, key: str) -> None:
        """A stream of ``key`` closed: drop what is kept for it after its last one."""
        with self._lock:
            left = self._streams.get(key, 1) - 1
            if left > 0:
                self._streams[key] = left
                return
            self._streams.pop(key, None)
            loaded = self._loaded.pop(key, None)
            if loaded is not None:
                self._bytes -= loaded[3]
            for hide in range(4):  # JSON or HTML (+2), error shown or hidden (+1)
                entry = self._entries.pop((key, hide), None)
                if entry is not None:
                    self._bytes -= entry[2]

    def get(self, key: str, hide: int, state: tracked.State, cursor: int) -> bytes | None:
        """The event already encoded for ``state`` from ``cursor`` on, or None."""
        entry = self._entries.get((key, hide))
        if entry is None or entry[0] is not state:
            return None
        return entry[1].get(cursor)

    def put(self, key: str, hide: int, state: tracked.State, cursor: int, event: bytes) -> None:
        """Keep ``event`` (``state`` from ``cursor`` on) for the key's other streams."""
        with self._lock:
            if key not in self._streams:
                return  # no stream follows it (any more): keep nothing
            entry = self._entries.get((key, hide))
            if entry is not None and entry[0] is state:
                events = entry[1]
                size = entry[2] + len(event) - len(events.get(cursor, b""))
            else:
                events, size = {}, _state_bytes(state) + len(event)
            if size > self.max_bytes:
                return  # too big to keep: what is kept stays
            if entry is not None:
                del self._entries[(key, hide)]
                self._bytes -= entry[2]
            while self._entries and self._bytes + size > self.max_bytes:
                dropped = self._entries.pop(next(iter(self._entries)))  # the oldest
                self._bytes -= dropped[2]
            events[cursor] = event
            self._entries[(key, hide)] = (state, events, size)
            self._bytes += size


def _state_bytes(state: tracked.State) -> int:
    """About what a ``State`` takes in memory: its message strings (as Python holds
    them: up to 4 bytes a character) and the rest."""
    return sum(map(sys.getsizeof, state.messages)) + 8 * len(state.messages) + 1024
