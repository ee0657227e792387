"""``RunWriter``: how one live run's snapshots reach its store.

A ``Progress`` keeps its counters and messages; its writer keeps what writing
them needs: the owner record, the write lock (one write of a run at a time), the
flusher's schedule flags, the last write's time, whether the store is failing or
the run was superseded, and the final snapshot until it lands. The flusher drives
writers (the ``Flushable`` protocol), never the handle itself.

A writer refers to its handle weakly: a handle collected while running still
ends (and writes) its run, and a final write that failed is retried by the
flusher, from the writer alone, after the handle is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

from . import _flusher
from ._groupstore import report_move
from ._ledger import GroupBook, units_of
from ._store import Owner, Store, register_live_run, unregister_live_run
from ._text import describe_error
from .errors import RunSuperseded, StoreError

if TYPE_CHECKING:
    from ._flusher import Flushable
    from ._state import State

__all__ = ["RunWriter"]

logger = logging.getLogger("tracked")


class Handle(Protocol):
    """What a writer reads of its live handle (``Progress`` satisfies it)."""

    _clean: bool

    @property
    def in_progress(self) -> bool:
        """True until the run ends."""
    @property
    def state(self) -> str:
        """The run's state word (``queued`` while it waits in this process's queue)."""
    def snapshot(self) -> State:
        """The state readers see once written."""
    def flush(self) -> bool:
        """Write the current snapshot now."""
    def _cancel_seen(self) -> None: ...


class RunWriter:
    """The writing half of one run: owner, write lock, schedule and failure flags.

    ``scheduled`` and ``last_write`` belong to the flusher; ``store_failing`` and
    ``superseded`` to the writes; ``final`` is the frozen final snapshot once the
    run ended; ``shared`` is set once joined workers may write parts of it.
    """

    __slots__ = (
        "__weakref__",
        "final",
        "group_seen",
        "group_state",
        "handle",
        "key",
        "last_write",
        "min_interval",
        "owner",
        "pid",
        "ref",
        "scheduled",
        "shared",
        "store",
        "store_failing",
        "superseded",
        "warned_inert",
        "write_lock",
    )

    def __init__(self, handle: Handle, key: str, store: Store, min_interval: float) -> None:
        self.handle: weakref.ref[Handle] = weakref.ref(handle)
        self.key = key
        self.store = store
        self.min_interval = min_interval
        self.owner: Owner | None = None
        self.pid = os.getpid()
        self.warned_inert = False
        self.write_lock = threading.Lock()  # one write of this run at a time
        self.scheduled = False  # the flusher will look at this run again anyway
        self.last_write = 0.0
        self.store_failing = False
        self.superseded = False
        self.final: State | None = None
        self.shared = False
        self.ref: weakref.ref[Flushable] = weakref.ref(self)
        #: A group's child: the (state, units) last counted in its group, and the
        #: snapshot a batched write took (counted once the write landed).
        self.group_seen: tuple[str, int] | None = None
        self.group_state: State | None = None

    # ------------------------------------------------------------------ read by the flusher

    @property
    def ended(self) -> bool:
        """Whether the run ended (or its handle is gone, which ends it)."""
        handle = self.handle()
        return handle is None or not handle.in_progress

    @property
    def queued(self) -> bool:
        """Whether the run still waits in this process's queue (``tracked.submit``)."""
        handle = self.handle()
        return handle is not None and handle.state == "queued"

    @property
    def clean(self) -> bool:
        """Whether nothing changed since the last write was taken."""
        handle = self.handle()
        return handle is None or handle._clean

    def cancel_seen(self) -> None:
        """The flusher found a cancel request for this run: tell the handle."""
        handle = self.handle()
        if handle is not None:
            handle._cancel_seen()

    # ------------------------------------------------------------------ ownership

    def take_over(self, state: State, owner: Owner, was: frozenset[str] | None) -> bool:
        """Write the run's first record as ``owner`` (this process): a claim
        (``AlreadyRunning`` if the key is held) with ``was`` None, else a swap of the
        queued record of ``owner.run`` in one of the states ``was`` (False if it is
        no longer that)."""
        register_live_run(owner.run)
        try:
            if was is None:
                self.store.claim(state, owner)
            elif not self.store.swap(state, owner, run=owner.run, was=was):
                unregister_live_run(owner.run)
                return False
        except BaseException:
            unregister_live_run(owner.run)
            raise
        self.owner = owner
        self.last_write = time.monotonic()
        return True

    def owned(self) -> bool:
        """Whether this process may write the run: it claimed it, and is not a forked
        child (an inherited handle is inert; the first skipped write says so once)."""
        if self.owner is None:
            return False
        if self.pid == os.getpid():
            return True
        if not self.warned_inert:
            self.warned_inert = True
            logger.warning(
                "progress %r was inherited by a forked child (pid %d); the child "
                "does not write it and leaving its block does not end the parent's run",
                self.key,
                os.getpid(),
            )
        return False

    def after_fork(self) -> None:
        """In a forked child: a fresh write lock (the parent's may have been held)."""
        self.write_lock = threading.Lock()

    # ------------------------------------------------------------------ writes

    def flush(self) -> bool:
        """Write the handle's current snapshot now (see ``Progress.flush``)."""
        handle = self.handle()
        if handle is None or not handle.in_progress or self.superseded or not self.owned():
            return False
        with self.write_lock:
            if not handle.in_progress:
                return False
            handle._clean = True
            write = handle.snapshot(), self.owner
            self.last_write = time.monotonic()
            return self.save(*write)

    def begin_write(self) -> tuple[State, Owner] | None:
        """For the flusher's batch: the snapshot to write, holding the write lock until
        ``end_write``; None (lock not held) when there is nothing to write now."""
        if not self.write_lock.acquire(blocking=False):
            return None  # the owner's thread is writing (its final state, say)
        handle = self.handle()
        if handle is None or not handle.in_progress or self.superseded or self.owner is None:
            self.write_lock.release()
            return None
        handle._clean = True
        self.last_write = time.monotonic()
        state = handle.snapshot()
        self.group_state = state if state.group is not None else None
        return state, self.owner

    def end_write(self, error: Exception | None) -> None:
        """The outcome of a batched write that ``begin_write`` started."""
        try:
            self.saved(error)
            if error is None and self.group_state is not None:
                self.report_group(self.group_state)
        finally:
            self.write_lock.release()

    def save(self, state: State, owner: Owner | None = None) -> bool:
        """Write ``state`` now (with ``write_lock`` held); True if it landed."""
        try:
            self.store.save(state, owner or self.owner)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - instrumentation never kills the task
            self.saved(exc)
            return False
        self.saved(None)
        if state.group is not None:
            self.report_group(state)
        return True

    def join_group(self, state: State) -> str | None:
        """Count a new run in its group: None, or why the group refused it."""
        book = self.report_group(state)
        if book is None:
            return "its group is not running"
        return book.refusal()

    def report_group(self, state: State) -> GroupBook | None:
        """Count a child's new state, or its progress, in its group's ledger (off the
        per-item path: after a write landed, once per change of state or units)."""
        if state.group is None:
            return None
        seen = (state.state, units_of(state))
        if seen == self.group_seen:
            return None
        self.group_seen = seen
        return report_move(self.store, state)

    def saved(self, error: Exception | None) -> None:
        """Note how a write went: resumed, superseded, or failed (then retried)."""
        if error is None:
            if self.store_failing:
                self.store_failing = False
                logger.warning("writes to %r resumed for progress %r", self.store, self.key)
        elif isinstance(error, RunSuperseded):
            self.superseded = True
            logger.warning("%s; this run's writes are dropped", error)
        else:
            self.report_failure(error)
            handle = self.handle()
            if handle is not None and handle.in_progress:
                handle._clean = False  # still to be written: the flusher retries it
                _flusher.wake(self.ref)

    def report_failure(self, exc: Exception) -> None:
        """Log the first failed write of a run of failures."""
        if not self.store_failing:
            self.store_failing = True
            logger.warning(
                "cannot write progress %r to %r (%s); the task goes on and "
                "writes resume when the store works again",
                self.key,
                self.store,
                exc if isinstance(exc, StoreError) else describe_error(exc),
            )

    def end(self, final: State) -> None:
        """Write the run's ``final`` snapshot on this thread; on failure the flusher
        retries it, and the run stays held until it lands (all readers then agree it
        is running), is superseded, or the process exits."""
        self.final = final
        _flusher.forget(self)
        try:
            written = self.write_final()
        except BaseException:  # Ctrl-C in the store's write: it goes on up, the end lands later
            _flusher.retry_final(self)
            raise
        if written:
            self.release()
        else:
            _flusher.retry_final(self)

    def write_final(self) -> bool:
        """Try the final write; True once it needs no retry (written or superseded)."""
        with self.write_lock:
            assert self.final is not None
            return self.superseded or self.save(self.final) or self.superseded

    def release(self) -> None:
        """The final write landed, was superseded, or gave way to a newer run's: the
        run is no longer held by this process."""
        if self.owner is None:
            return
        unregister_live_run(self.owner.run)
        if self.shared:
            try:  # the final snapshot holds the parts: remove them (best effort)
                self.store.delete_parts(self.key, self.owner.run)
            except Exception:
                logger.debug("cannot delete the parts of %r", self.key, exc_info=True)
        if self.final is not None and self.final.cancel_requested:
            try:
                self.store.clear_cancel(self.key, self.owner)
            except Exception as exc:  # noqa: BLE001 - a leftover request reaches no run
                logger.warning("cannot remove the cancel request of %r: %s", self.key, exc)

