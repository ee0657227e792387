"""The one background thread per process that writes due snapshots.

A handle wakes it on the first update after a write; it then writes that
handle at most once per ``min_interval``, looking again one interval after each
write, and forgets it once it stays unchanged for an interval. Due writes of one
tick go to each store as one ``save_many`` batch. Stores with a lease get their
running records rewritten every ``lease / 3`` seconds; final writes that failed
are retried (at most one pending per key). While runs are live it also asks
their stores, every ``min_interval`` (at least ``CANCEL_POLL_MIN``, at most
``CANCEL_POLL_MAX`` seconds), whether someone requested them to stop: one
``cancels_requested`` call per store (a ``stat`` per FileStore run, one round
trip per RedisStore). The thread starts on first use, anew in a forked child,
and writes what is pending at exit.

It must never die: every collection it walks is copied under its lock (other
threads add and remove handles while it runs), an unexpected error in a tick is
logged and the loop goes on, a ``BaseException`` from a store hands over to a
new thread before this one ends, and a thread that died anyway is started again
by the next update of a written handle.
"""

from __future__ import annotations

import atexit
import collections
import heapq
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

from .errors import StoreError

if TYPE_CHECKING:
    from ._state import State
    from ._store import Owner, Store

__all__ = ["Flushable", "forget", "retry_final", "revive", "wake", "watch"]

logger = logging.getLogger("tracked")

#: Longest sleep while records with a lease are watched (they need renewing).
MAX_SLEEP = 1.0
#: Seconds between attempts to write a handle whose store is failing.
FAILURE_RETRY = 0.25
#: Seconds between attempts of a final write that failed.
FINAL_RETRY = 0.5
#: Bounds of the interval between looks for cancel requests of the live runs.
CANCEL_POLL_MIN = 0.05
CANCEL_POLL_MAX = 1.0
#: Longest wait at exit for the thread to finish the write it is doing.
STOP_TIMEOUT = 5.0
#: Seconds the thread pauses after a tick failed unexpectedly (so a lasting fault
#: does not spin a core).
ERROR_PAUSE = 0.05
#: Seconds between two logs of unexpected errors of the thread.
ERROR_LOG_EVERY = 60.0


class Flushable(Protocol):
    """What the flusher needs of a live run (``_writer.RunWriter`` satisfies it)."""

    key: str
    store: Store
    min_interval: float
    scheduled: bool
    superseded: bool
    last_write: float
    store_failing: bool
    owner: Owner | None

    @property
    def ended(self) -> bool:
        """Whether the run ended: nothing more to schedule."""
    @property
    def queued(self) -> bool:
        """Whether the run still waits in this process's queue (``tracked.submit``)."""
    @property
    def clean(self) -> bool:
        """Whether nothing changed since the last write was taken."""
    def flush(self) -> bool:
        """Write the current snapshot now (at exit)."""
    def begin_write(self) -> tuple[State, Owner] | None:
        """The snapshot for a batch, its write lock held; None: nothing to write."""
    def end_write(self, error: Exception | None) -> None:
        """How the batched write went; releases the write lock."""
    def write_final(self) -> bool:
        """Retry the final write; True once it needs no retry."""
    def release(self) -> None:
        """The run is no longer held by this process."""
    def cancel_seen(self) -> None:
        """The store says someone asked the run to stop."""


Ref = weakref.ref[Flushable]


class _Flusher:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.woken: collections.deque[Ref] = collections.deque()  # appended by any thread
        # id -> weak reference, changed by any thread under `cond` (or by a reference's
        # callback, atomically); the thread walks copies (`live()`), never the dict.
        self.watched: dict[int, Ref] = {}
        self.finals: dict[tuple[int, str], Flushable] = {}  # final writes to retry
        self.schedule: list[tuple[float, int, Ref]] = []  # heap; the thread's own
        self.in_flight: list[Flushable] = []  # taken off the schedule by the current tick
        self.order = itertools.count().__next__
        self.next_lease_scan = 0.0
        self.leases = False  # whether a watched handle's store has a lease
        self.next_cancel_scan = 0.0
        self.thread: threading.Thread | None = None
        self.stopping = False  # set at exit: the thread ends between two ticks
        self.pid = os.getpid()
        self.quiet_until = 0.0  # unexpected errors are not logged again before then

    def ensure_running(self) -> None:
        """Start the thread (call with ``cond`` held): on first use, or again if it died."""
        thread = self.thread
        if thread is not None and (thread.is_alive() or self.stopping):
            return
        self.start_thread(restarted=thread is not None)

    def start_thread(self, *, restarted: bool) -> None:
        self.thread = threading.Thread(
            target=self.run, args=(restarted,), name="tracked-flusher", daemon=True
        )
        self.thread.start()

    def run(self, restarted: bool = False) -> None:
        if restarted:
            logger.warning("the flusher thread had stopped; started it again")
            time.sleep(ERROR_PAUSE)  # a store that kills it every time does not spin
            self.recover()
        try:
            self.loop()
        except BaseException:
            # Not an Exception (the loop goes on after those): SystemExit or the like
            # raised by a store. Hand over to a new thread, then let this one end.
            with self.cond:
                if not self.stopping and self.thread is threading.current_thread():
                    self.start_thread(restarted=True)
            raise

    def loop(self) -> None:
        while True:
            try:
                with self.cond:
                    if not self.woken and not self.stopping:
                        self.cond.wait(self.timeout(time.monotonic()))
                    if self.stopping:
                        return
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one fault
                self.report(exc)
                time.sleep(ERROR_PAUSE)
                self.recover()

    def report(self, exc: Exception) -> None:
        """Log an unexpected error of the thread: with its traceback the first time,
        then at most once per ``ERROR_LOG_EVERY`` seconds (a lasting fault)."""
        now = time.monotonic()
        if now < self.quiet_until:
            return
        self.quiet_until = now + ERROR_LOG_EVERY
        logger.error(
            "the flusher thread hit an unexpected error; it goes on", exc_info=exc
        )

    def live(self) -> list[Flushable]:
        """The watched handles still alive: a copy, safe while other threads change
        the table (``dict.values`` is copied without running Python code)."""
        with self.cond:
            refs = list(self.watched.values())
        return [p for p in (ref() for ref in refs) if p is not None]

    def recover(self) -> None:
        """After a failed tick or a dead thread: put the handles the tick had taken off
        the schedule back on it (they are marked scheduled, so no update wakes the
        flusher for them), once each; rescan leases and cancel requests now."""
        now = time.monotonic()
        flight, self.in_flight = self.in_flight, []
        for progress in dict.fromkeys(flight):
            if not progress.ended and not progress.superseded:
                progress.scheduled = True
                self.push(progress, now)
        self.next_lease_scan = self.next_cancel_scan = now
        self.leases = True  # rechecked by the next lease scan

    def stop(self) -> None:
        """At exit, end the thread between two ticks. A daemon thread still running
        when the interpreter finalises is frozen wherever it is, perhaps holding a
        lock that a handle collected then (which ends its run) needs."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)

    def timeout(self, now: float) -> float | None:
        """Seconds until something is due; None: nothing until a handle wakes us."""
        deadlines = [self.schedule[0][0]] if self.schedule else []
        if self.finals:
            deadlines.append(now + FINAL_RETRY)
        if self.leases:
            deadlines.append(self.next_lease_scan)
        if self.watched:
            deadlines.append(self.next_cancel_scan)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def tick(self) -> None:
        now = time.monotonic()
        self.take_woken(now)
        due = self.in_flight  # off the schedule until planned again (see recover)
        self.pop_due(now, due)
        if self.leases and now >= self.next_lease_scan:
            self.next_lease_scan = now + MAX_SLEEP  # if the scan fails: again later
            try:
                renew = self.lease_due(now)
            except Exception as exc:  # noqa: BLE001 - due writes still go ahead
                self.report(exc)
                renew = []
            due[:] = dict.fromkeys(due + renew)
        self.write(due)
        while due:
            self.plan(due.pop())
        if self.finals:
            self.retry_finals()
        if now >= self.next_cancel_scan and self.watched:
            self.next_cancel_scan = now + CANCEL_POLL_MAX  # if the scan fails: again later
            self.scan_cancels(now)
        # Strong references are dropped above, outside any lock: the last one may be a
        # handle whose collection ends (and writes) its progress.

    def take_woken(self, now: float) -> None:
        woken = self.woken
        while woken:
            progress = woken.popleft()()
            if progress is not None and not progress.ended and not progress.scheduled:
                progress.scheduled = True
                self.push(progress, progress.last_write + delay(progress))

    def push(self, progress: Flushable, when: float) -> None:
        heapq.heappush(self.schedule, (when, self.order(), weakref.ref(progress)))

    def pop_due(self, now: float, due: list[Flushable]) -> None:
        """Take the scheduled handles that are due and changed into ``due``; unchanged
        ones are forgotten until their next update wakes the flusher again."""
        while self.schedule and self.schedule[0][0] <= now:
            progress = heapq.heappop(self.schedule)[2]()
            if progress is None or progress.ended or progress.superseded:
                continue  # nothing more to write for it: it leaves the schedule
            if progress.clean:
                progress.scheduled = False
                if progress.clean:  # an update after this check sees _scheduled False
                    continue
                progress.scheduled = True
            due.append(progress)

    def plan(self, progress: Flushable) -> None:
        """Look at a just written (or failed) handle again one interval after that
        write began, so the time a write takes does not stretch the interval."""
        if not progress.ended and not progress.superseded and progress.scheduled:
            self.push(progress, progress.last_write + delay(progress))

    def lease_due(self, now: float) -> list[Flushable]:
        """Running records whose lease needs renewing, changed or not."""
        leased = [(p, p.store.lease) for p in self.live() if p.store.lease]
        self.leases = bool(leased)
        self.next_lease_scan = now + min([MAX_SLEEP, *(lease / 6 for _, lease in leased)])
        return [p for p, lease in leased if now - p.last_write >= lease / 3]

    @staticmethod
    def write(due: list[Flushable]) -> None:
        """Write the due snapshots, one ``save_many`` batch per store. Every write
        begun is ended, even when the thread is interrupted (a ``BaseException`` from
        a store): else its handle's write lock would stay held, and its final write
        would wait for it for ever."""
        batches: dict[int, tuple[Store, list[tuple[Flushable, State, Owner]]]] = {}
        for progress in due:
            write = progress.begin_write()
            if write is not None:
                batch = batches.setdefault(id(progress.store), (progress.store, []))[1]
                batch.append((progress, *write))
        pending = list(batches.values())
        try:
            while pending:
                store, batch = pending[0]
                results: list[Exception | None]
                try:
                    results = store.save_many([(state, owner) for _, state, owner in batch])
                    if len(results) != len(batch):
                        raise StoreError(f"{store!r} answered {len(results)} results for "
                                         f"{len(batch)} writes")
                except Exception as exc:  # noqa: BLE001 - a broken store never kills the thread
                    results = [exc] * len(batch)
                pending.pop(0)
                for (progress, _, _), error in zip(batch, results, strict=True):
                    progress.end_write(error)
        finally:
            for _, batch in pending:  # interrupted: these writes did not land
                stopped = StoreError("the flusher thread stopped during this write")
                for progress, _, _ in batch:
                    progress.end_write(stopped)

    def scan_cancels(self, now: float) -> None:
        """Ask each store whether any of its live runs here was requested to stop."""
        live = [p for p in self.live() if not p.ended and p.owner is not None]
        poll = min([CANCEL_POLL_MAX, *(p.min_interval for p in live)])
        self.next_cancel_scan = now + max(CANCEL_POLL_MIN, poll)
        by_store: dict[int, tuple[Store, list[Flushable]]] = {}
        for progress in live:
            by_store.setdefault(id(progress.store), (progress.store, []))[1].append(progress)
        for store, handles in by_store.values():
            self.ask_cancels(store, handles)

    @staticmethod
    def ask_cancels(store: Store, handles: list[Flushable]) -> None:
        """Ask ``store`` about its live runs ``handles``; tell each asked to stop."""
        runs = [(p.key, p.owner) for p in handles if p.owner is not None]
        try:
            asked = store.cancels_requested(runs)
        except Exception:  # noqa: BLE001 - a broken store never kills the thread
            return
        seen = [p for p, yes in zip(handles, asked, strict=True) if yes]
        # Queued runs first: a running one that stops frees a pool thread, which must
        # not take a queued job whose stop is in this very batch (a group's cancel
        # asks both at once) while the running one's stop is being written.
        seen.sort(key=lambda p: not p.queued)
        for progress in seen:
            progress.cancel_seen()

    def retry_finals(self) -> None:
        with self.cond:
            pending = list(self.finals.items())
        for key, progress in pending:
            if progress.write_final():
                with self.cond:
                    if self.finals.get(key) is progress:
                        del self.finals[key]
                progress.release()

    def flush_all(self) -> None:
        """At exit: write every pending change and retry failed final writes once."""
        pending = [p for p in self.live() if not p.clean]
        with self.cond:
            finals = list(self.finals.values())
        for progress in pending:
            progress.flush()
        for progress in finals:
            progress.write_final()


def delay(progress: Flushable) -> float:
    """How long after its last write a handle may be written again."""
    if progress.store_failing:
        return max(progress.min_interval, FAILURE_RETRY)
    return progress.min_interval


_flusher = _Flusher()


def _current() -> _Flusher:
    global _flusher
    if _flusher.pid != os.getpid():  # forked: the parent's thread and handles are not ours
        _flusher = _Flusher()
    return _flusher


def watch(progress: Flushable) -> None:
    """Keep ``progress``'s lease renewed and its last change written at exit."""
    flusher = _current()
    key = id(progress)
    watched = flusher.watched

    def gone(ref: Ref, key: int = key) -> None:  # collected without forget(): drop it
        if watched.get(key) is ref:
            watched.pop(key, None)

    with flusher.cond:
        watched[key] = weakref.ref(progress, gone)
        flusher.next_cancel_scan = min(
            flusher.next_cancel_scan or math.inf,
            time.monotonic() + max(CANCEL_POLL_MIN, min(progress.min_interval, CANCEL_POLL_MAX)),
        )
        flusher.cond.notify()
        if progress.store.lease:
            flusher.leases = True
            flusher.cond.notify()
        flusher.ensure_running()


def wake(ref: Ref) -> None:
    """A watched handle changed after its last write: have it written when due."""
    flusher = _current()
    flusher.woken.append(ref)
    with flusher.cond:
        flusher.ensure_running()
        flusher.cond.notify()


def revive() -> None:
    """Start the flusher again if its thread died (a handle it had scheduled changed)."""
    flusher = _current()
    thread = flusher.thread
    if thread is not None and not thread.is_alive() and not flusher.stopping:
        with flusher.cond:
            flusher.ensure_running()


def forget(progress: Flushable) -> None:
    """Stop watching ``progress`` (it has ended)."""
    flusher = _current()
    with flusher.cond:
        ref = flusher.watched.get(id(progress))
        if ref is not None and ref() is progress:
            del flusher.watched[id(progress)]


def retry_final(progress: Flushable) -> None:
    """Retry the failed final write of ``progress`` until it lands or is superseded.

    One pending final write per key: a newer one replaces (and releases) the older.
    """
    flusher = _current()
    key = (id(progress.store), progress.key)
    with flusher.cond:
        older = flusher.finals.get(key)
        flusher.finals[key] = progress
        flusher.ensure_running()
        flusher.cond.notify()
    if older is not None and older is not progress:
        older.release()


@atexit.register
def _flush_at_exit() -> None:
    if _flusher.pid == os.getpid():
        _flusher.stop()
        _flusher.flush_all()


def _after_fork_in_child() -> None:
    global _flusher
    _flusher = _Flusher()
    # A multiprocessing child ends with os._exit, which runs no atexit hook: ask
    # multiprocessing (once it has cleared the parent's finalizers) to run ours, or
    # a write in flight on the flusher thread (a joined handle dropped there) is lost.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(_flusher, _flush_at_multiprocessing_exit)


def _flush_at_multiprocessing_exit(_: object) -> None:
    """In a process multiprocessing started: flush at its exit as atexit would."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _flush_at_exit, exitpriority=100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
