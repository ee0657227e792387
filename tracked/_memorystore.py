"""``MemoryStore``: records in a dict, for one process (tests, embedding)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from ._ledger import GroupBook, Ledger
from ._state import State
from ._store import (
    Owner,
    Record,
    SharedPart,
    Store,
    cancellable,
    claim_or_raise,
    judge,
    swappable,
)
from .errors import RunSuperseded, StoreError

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps records in this process's memory; nothing is shared with other processes."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self._parts: dict[str, dict[tuple[str, str], SharedPart]] = {}
        self._pid = os.getpid()
        #: Called with a key after each write of it (``tracked._watch`` wakes streams).
        self._watchers: list[Callable[[str, State | None], None]] = []
        self._cancels: set[tuple[str, str]] = set()  # (key, run) asked to stop
        self._books: dict[str, GroupBook] = {}  # a group's ledger, by the group's key
        self._kids: dict[str, dict[str, tuple[str, int]]] = {}  # its children as counted
        _stores.add(self)

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._records)} records>)"

    def claim(self, state: State, owner: Owner) -> None:
        """Hold ``state.key`` for ``owner`` (see ``Store.claim``), and wake its watchers."""
        key = state.key
        with self._lock:
            claim_or_raise(self._records.get(key), key)
            self._records[key] = Record(state, owner)
        self._changed(key, state)

    def save(self, state: State, owner: Owner) -> None:
        """Replace the record if ``owner``'s run still holds it, else ``RunSuperseded``."""
        key = state.key
        with self._lock:
            existing = self._records.get(key)
            if existing is not None and (existing.owner is None or existing.owner.run != owner.run):
                raise RunSuperseded(
                    f"progress {key!r} belongs to another run now; not overwriting it"
                )
            self._records[key] = Record(state, owner)
        self._changed(key, state)

    def swap(self, state: State, owner: Owner, *, run: str, was: frozenset[str]) -> bool:
        """Write ``state`` if the record is still run ``run`` in a state of ``was``."""
        key = state.key
        with self._lock:
            if not swappable(self._records.get(key), run, was):
                return False
            self._records[key] = Record(state, owner)
        self._changed(key, state)
        return True

    # ------------------------------------------------------------------ groups

    def open_group(self, key: str, run: str) -> None:
        """Start group ``key``'s ledger (see ``Store.open_group``)."""
        with self._lock:
            self._books[key] = Ledger.new(run)
            self._kids[key] = {}

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change under this store's lock (see ``Store.move_child``)."""
        with self._lock:
            book = self._books.get(key)
            if book is None or not book.run.startswith(run):
                return None
            kids = self._kids[key]
            book, changed = Ledger(book).move(kids.get(child), state, units, line, time.time())
            if changed:
                kids[child] = (state, units)
                self._books[key] = book
        if changed:
            self._changed(key, None)
        return book

    def close_group(self, key: str, run: str) -> GroupBook | None:
        """Close group ``key`` (see ``Store.close_group``)."""
        return self._change_book(key, run, lambda book: Ledger(book).close(time.time()))

    def cancel_group(self, key: str, run: str) -> GroupBook | None:
        """Mark group ``key`` cancelled (see ``Store.cancel_group``)."""
        return self._change_book(key, run, lambda book: Ledger(book).cancel())

    def sweep_turn(self, key: str, run: str, window: float) -> bool:
        """One caller per ``window`` sweeps group ``key``."""
        now = time.time()
        with self._lock:
            book = self._books.get(key)
            if book is None or not book.run.startswith(run) or now - book.swept_at < window:
                return False
            self._books[key] = dataclasses.replace(book, swept_at=now)
            return True

    def read_group(self, key: str) -> GroupBook | None:
        """Group ``key``'s ledger, or None."""
        return self._books.get(key)

    def group_children(self, key: str) -> list[tuple[str, str]]:
        """Group ``key``'s children with the states they are counted in."""
        with self._lock:
            return [(child, entry[0]) for child, entry in self._kids.get(key, {}).items()]

    def _change_book(
        self, key: str, run: str, change: Callable[[GroupBook], GroupBook]
    ) -> GroupBook | None:
        with self._lock:
            book = self._books.get(key)
            if book is None or not book.run.startswith(run):
                return None
            book = self._books[key] = change(book)
        self._changed(key, None)
        return book

    # ------------------------------------------------------------------ shared runs
    # Joined handles in this same process (threads) work; other processes cannot see
    # this memory, so pickling the store (a share token) and joining in another
    # process (a forked child's copy) both fail with a clear error.

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a MemoryStore lives in one process: its progresses cannot be shared with "
            "other processes (use a FileStore or RedisStore for tracked.join)"
        )

    def check_join(self) -> None:
        """``StoreError`` outside the process that made this store."""
        if os.getpid() != self._pid:
            raise StoreError(
                f"{self!r} belongs to process {self._pid}: a progress in a MemoryStore can "
                f"be joined only in that process, not in process {os.getpid()} (use a "
                "FileStore or RedisStore to share it with other processes)"
            )

    def write_part(self, key: str, part: SharedPart) -> bool:
        """Keep a joined worker's part while its run is the record's and alive."""
        self.check_join()
        with self._lock:
            record = self._records.get(key)
            if record is None or record.owner is None or record.owner.run != part.run:
                return False
            if not judge(record).in_progress:
                return False
            self._parts.setdefault(key, {})[(part.run, part.worker)] = part
        self._changed(key, None)  # what readers see changed: wake the event streams
        return True

    def read_parts(self, key: str, run: str) -> list[SharedPart]:
        """The parts joined workers of run ``run`` wrote to ``key``."""
        with self._lock:
            parts = self._parts.get(key, {})
            return [part for (owner_run, _), part in parts.items() if owner_run == run]

    def delete_parts(self, key: str, run: str) -> None:
        """Forget the parts of run ``run`` of ``key``."""
        with self._lock:
            parts = self._parts.get(key, {})
            for part_key in [k for k in parts if k[0] == run]:
                del parts[part_key]
            if not parts:
                self._parts.pop(key, None)

    def read(self, key: str) -> Record | None:
        """The record of ``key`` in this process's dict, or None."""
        return self._records.get(key)

    def records(self) -> Iterator[Record]:
        """A copy of every record, taken under the lock."""
        with self._lock:
            snapshot = list(self._records.values())
        return iter(snapshot)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s record and its parts; True if there was one."""
        with self._lock:
            self._parts.pop(key, None)
            deleted = self._records.pop(key, None) is not None
        self._changed(key, None)
        return deleted

    def _changed(self, key: str, state: State | None) -> None:
        for watcher in self._watchers:
            watcher(key, state)

    def prune(self, older_than: float) -> int:
        """Remove ended and abandoned records older than ``older_than`` seconds."""
        cutoff = time.time() - older_than
        with self._lock:
            doomed = [k for k, r in self._records.items() if self._prunable(r, cutoff)]
            for key in doomed:
                del self._records[key]
        return len(doomed)

    def request_cancel(self, key: str) -> bool:
        """Mark the live run of ``key`` asked to stop; False if none runs."""
        with self._lock:
            owner = cancellable(self._records.get(key))
            if owner is None:
                return False
            self._cancels.add((key, owner.run))
            return True

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """Whether each (key, owner) run was asked to stop."""
        cancels = self._cancels
        return [(key, owner.run) in cancels for key, owner in runs]

    def clear_cancel(self, key: str, owner: Owner) -> None:
        """Forget the stop request of ``owner``'s run of ``key``."""
        with self._lock:
            self._cancels.discard((key, owner.run))


#: Every MemoryStore of this process, so a forked child can give each a fresh lock.
_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A thread of the parent may have held a store's lock at the fork: in the child
    nobody ever releases it, and the child's first claim or write would wait for ever."""
    for store in list(_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
