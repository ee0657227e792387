"""``MemoryStore``: records in a dict, for one process (tests, embedding)."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator

from ._state import State
from ._store import Owner, Record, Store, claim_or_raise
from .errors import RunSuperseded

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Keeps records in this process's memory; nothing is shared with other processes."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        _stores.add(self)

    def __repr__(self) -> str:
        return f"MemoryStore(<{len(self._records)} records>)"

    def claim(self, state: State, owner: Owner) -> None:
        key = state.key
        with self._lock:
            claim_or_raise(self._records.get(key), key)
            self._records[key] = Record(state, owner)

    def save(self, state: State, owner: Owner) -> None:
        key = state.key
        with self._lock:
            existing = self._records.get(key)
            if existing is not None and (existing.owner is None or existing.owner.run != owner.run):
                raise RunSuperseded(
                    f"progress {key!r} belongs to another run now; not overwriting it"
                )
            self._records[key] = Record(state, owner)

    def read(self, key: str) -> Record | None:
        return self._records.get(key)

    def records(self) -> Iterator[Record]:
        with self._lock:
            snapshot = list(self._records.values())
        return iter(snapshot)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._records.pop(key, None) is not None

    def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        with self._lock:
            doomed = [k for k, r in self._records.items() if self._prunable(r, cutoff)]
            for key in doomed:
                del self._records[key]
        return len(doomed)


#: Every MemoryStore of this process, so a forked child can give each a fresh lock.
_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A thread of the parent may have held a store's lock at the fork: in the child
    nobody ever releases it, and the child's first claim or write would wait for ever."""
    for store in list(_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
