"""The one background thread per process that writes due snapshots.

A task that updates its handle and then goes quiet (or blocks) still gets its
last change written within ``min_interval``; stores with a lease get their
running records rewritten every ``lease / 3`` seconds. The thread starts on
first use, again in a forked child, and writes what is pending at exit.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._progress import Progress

__all__ = ["forget", "retry", "watch"]

#: Longest sleep between checks, so a change made while idle is seen soon.
MAX_SLEEP = 1.0
#: Shortest sleep, so a zero ``min_interval`` cannot spin the thread.
MIN_SLEEP = 0.002
#: How often a progress with ``min_interval=0`` is checked (its updates write inline).
ZERO_INTERVAL_POLL = 0.05


class _Flusher:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.watched: weakref.WeakSet[Progress] = weakref.WeakSet()
        self.retrying: set[Progress] = set()  # ended, final write failed: keep until written
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()

    def ensure_running(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="tracked-flusher", daemon=True)
            self.thread.start()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.watched and not self.retrying:
                    self.cond.wait()
                self.cond.wait(self.sleep_time())
                watched = list(self.watched)
                retrying = list(self.retrying)
            self.flush_due(watched)
            self.retry_final_writes(retrying)
            # Drop the strong references here, outside the lock: the last one may
            # be a handle whose collection ends (and writes) its progress.
            del watched, retrying

    def retry_final_writes(self, retrying: list[Progress]) -> None:
        for progress in retrying:
            if progress.flush():
                with self.cond:
                    self.retrying.discard(progress)

    def sleep_time(self) -> float:
        now = time.monotonic()
        sleep = MAX_SLEEP
        for progress in self.watched:
            interval = progress.min_interval or ZERO_INTERVAL_POLL
            if progress._changed():
                interval = max(0.0, progress._last_write + progress.min_interval - now)
            lease = progress.store.lease
            if lease:
                interval = min(interval, max(0.0, progress._last_write + lease / 3 - now))
            sleep = min(sleep, interval)
        return max(MIN_SLEEP, sleep)

    @staticmethod
    def flush_due(watched: list[Progress]) -> None:
        now = time.monotonic()
        for progress in watched:
            since_write = now - progress._last_write
            lease = progress.store.lease
            if (progress._changed() and since_write >= progress.min_interval) or (
                lease and since_write >= lease / 3
            ):
                progress.flush()

    def flush_all(self) -> None:
        """At exit: write every pending change and retry failed final writes once."""
        with self.cond:
            pending = [p for p in self.watched if p._changed()] + list(self.retrying)
        for progress in pending:
            progress.flush()


_flusher = _Flusher()


def _current() -> _Flusher:
    global _flusher
    if _flusher.pid != os.getpid():  # forked: the parent's thread and handles are not ours
        _flusher = _Flusher()
    return _flusher


def watch(progress: Progress) -> None:
    """Have the flusher write ``progress`` when due, until ``forget``."""
    flusher = _current()
    with flusher.cond:
        flusher.watched.add(progress)
        flusher.ensure_running()
        flusher.cond.notify()


def forget(progress: Progress) -> None:
    """Stop watching ``progress`` (it has ended)."""
    flusher = _current()
    with flusher.cond:
        flusher.watched.discard(progress)


def retry(progress: Progress) -> None:
    """Keep retrying the final write of an ended ``progress`` until it succeeds."""
    flusher = _current()
    with flusher.cond:
        flusher.retrying.add(progress)
        flusher.ensure_running()
        flusher.cond.notify()


@atexit.register
def _flush_at_exit() -> None:
    if _flusher.pid == os.getpid():
        _flusher.flush_all()


def _after_fork_in_child() -> None:
    global _flusher
    _flusher = _Flusher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
