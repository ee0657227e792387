"""``Progress``: the live handle a task mutates.

Updates are a few operations that are atomic under the GIL (an ``itertools.count``
tick, a ``deque.append``, a flag): no lock, no clock, no I/O. The first update
after a write wakes the process's flusher, which writes a snapshot at most once
per ``min_interval``. The first and the final snapshot are written at once by
the thread that starts or ends the run; ``min_interval=0`` writes every update.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from . import _flusher
from ._ledger import GroupBook, units_of
from ._state import DEFAULT_STATUS, State, as_int, encode_result, make_key
from ._store import (
    Owner,
    Store,
    merge_parts,
    register_live_run,
    report_move,
    unregister_live_run,
)
from ._text import clean_message, clean_text
from ._token import ShareToken, share_token
from .errors import Cancelled, InvalidValue, RunSuperseded, StoreError, TrackedError

__all__ = [
    "Progress",
    "add_cancel_hook",
    "check_interval",
    "check_max_messages",
    "counted",
    "current_progress",
    "move_in_line",
    "remove_cancel_hook",
    "take_up",
]

logger = logging.getLogger("tracked")

#: The innermost live progress of this context (see ``tracked.current()``).
current_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "tracked_current", default=None
)

#: Weight of the newest sample in the smoothed rate, as tqdm's default smoothing.
RATE_SMOOTHING = 0.3
#: Shortest span of time one rate sample covers, so bursts of writes do not make it jumpy.
RATE_WINDOW = 0.05
#: Every int 1 is this object in CPython: ``n is _ONE`` is the cheapest exact test.
_ONE = 1

#: Every handle of this process, so a forked child can make the inherited ones inert.
_handles: weakref.WeakSet[Progress] = weakref.WeakSet()
#: The handles whose run was shared (``Progress.share``): their end folds in the parts.
_shared_handles: weakref.WeakSet[Progress] = weakref.WeakSet()


class Progress:
    """A running progress: change it from the task; readers see its snapshots.

    Thread-safe: ``increment``, ``add_message`` and the setters may be called
    from several threads and every update is counted. Use it as a context manager
    (``tracked.start``) or let ``@tracked`` manage it; a handle that is
    garbage-collected while running ends as ``finished``, as the Perl original
    ended it when it went out of scope. Once ended, a handle ignores updates.
    """

    __slots__ = (
        "__weakref__",
        "_attempt",
        "_base",
        "_cancel_hooks",
        "_cancel_requested",
        "_clean",
        "_context_tokens",
        "_delivered",
        "_end_on_collect",
        "_ended",
        "_error",
        "_final",
        "_finished_time",
        "_group",
        "_group_seen",
        "_group_state",
        "_incoming",
        "_job",
        "_kept",
        "_kept_tuple",
        "_last_write",
        "_lock",
        "_message_count",
        "_ones_read",
        "_owner",
        "_pid",
        "_position",
        "_push",
        "_rate",
        "_rate_count",
        "_rate_time",
        "_ref",
        "_result",
        "_retry",
        "_scheduled",
        "_state",
        "_status",
        "_store_failing",
        "_superseded",
        "_tick",
        "_total",
        "_warned_inert",
        "_write_lock",
        "_yields",
        "key",
        "max_messages",
        "min_interval",
        "name",
        "progress_id",
        "start_time",
        "store",
    )

    def __init__(
        self,
        name: str | None,
        *,
        store: Store,
        progress_id: str | None = None,
        total: int | None = 100,
        count: int = 0,
        messages: Iterable[str] = (),
        status: str | None = None,
        min_interval: float = 0.1,
        max_messages: int = 1000,
        position: int | None = None,
        group: str | None = None,
    ) -> None:
        self.key = make_key(name, progress_id)
        self.name = name
        self.progress_id = progress_id
        self.store = store
        self.min_interval = check_interval(min_interval)
        self.max_messages = check_max_messages(max_messages)
        self._total = _check_total(total)
        self._base = max(0, as_int(count, "count"))
        self._tick = itertools.count().__next__  # one tick per `+= 1`: atomic, no lock
        self._ones_read = 0  # ticks taken by readers to learn the count (under _lock)
        self._yields = 0  # written only by the @tracked generator loop
        self._status = _check_status(status)
        # Updates append bare texts to `_incoming`; a snapshot moves them to `_kept`
        # in order and numbers them, so indices need no lock on the update path.
        self._incoming: list[str] = _check_messages(messages)
        self._push = self._incoming.append
        self._kept: collections.deque[str] = collections.deque(maxlen=self.max_messages)
        self._kept_tuple: tuple[str, ...] = ()
        self._message_count = 0
        self._lock = threading.Lock()  # readers and the rare slow updates, never `+= 1`
        self._write_lock = threading.Lock()  # one write of this handle at a time
        self._clean = False  # True: nothing changed since the last write was taken
        self._scheduled = False  # the flusher will look at this handle again anyway
        # A run that waits in this process's queue is "queued" until take_up().
        self._state = "running" if position is None else "queued"
        self._error: str | None = None
        self._ended = False
        self._final: State | None = None
        self._end_on_collect = "finished"
        self._finished_time: float | None = None
        self._context_tokens: list[contextvars.Token[Progress | None]] = []
        self._owner: Owner | None = None
        self._pid = os.getpid()
        self._store_failing = False
        self._superseded = False
        self._warned_inert = False
        self._ref: weakref.ref[Any] = weakref.ref(self)
        self.start_time = time.time()
        self._last_write = 0.0
        self._rate: float | None = None
        self._rate_time = time.monotonic()
        self._rate_count = self._base
        _handles.add(self)
        self._result: Any = None
        self._job: Any = None  # set by tracked.submit(): what wait() waits for
        self._cancel_requested = False  # set once, by the flusher: someone asked to stop
        self._delivered = False  # set once: tracked.Cancelled reached the task (or its job)
        self._position = position  # a queued run's place in line (1 = next)
        self._cancel_hooks: list[Callable[[], object]] = []  # run when that is seen
        self._attempt = 1  # a queued run's attempt (tracked._queued), kept across retries
        #: Set by a take-over: given the exception a run ends by, the owner of the queued
        #: record to go back in line with (the queue will retry it), or None: it ends.
        self._retry: Callable[[BaseException], Owner | None] | None = None
        #: The token of the group this run is a child of (``tracked.group``), the
        #: (state, units) last counted there, and the snapshot a batched write took.
        self._group = group
        self._group_seen: tuple[str, int] | None = None
        self._group_state: State | None = None

    def __repr__(self) -> str:
        total = "?" if self._total is None else self._total
        return f"<Progress {self.key!r} {self.count}/{total} {self._state}>"

    # ------------------------------------------------------------------ lifecycle

    def _claim(self) -> Progress:
        """Write the first snapshot, claiming the key; raise ``AlreadyRunning`` if held."""
        owner = Owner.for_this_process()
        register_live_run(owner.run)
        snapshot = self.snapshot()
        try:
            self.store.claim(snapshot, owner)
        except BaseException:
            unregister_live_run(owner.run)
            raise
        self._owner = owner
        self._last_write = time.monotonic()
        self._clean = True
        _flusher.watch(self)
        if self._group is not None:
            self._join_group(snapshot)
        return self

    def _join_group(self, snapshot: State) -> None:
        """Count this new run in its group; a group that refuses it (closed, gone) ends
        it ``failed`` and raises ``InvalidValue``."""
        book = self._report_group(snapshot)
        if book is None or not book.accepted:
            why = "is closed to new runs" if book is not None else "is not running"
            self.fail(f"its group {why}")
            raise InvalidValue(f"cannot start {self.key!r} in its group: the group {why}")

    def _take_over(self, queued: State | None, run: str, was: frozenset[str]) -> bool:
        """Become the owner of queued run ``run`` (``tracked._queued``): the run keeps the
        count, messages, attempt and start time of ``queued``, the record read (None:
        there is none, claim it afresh under the same run). False if the record is no
        longer that run in one of the states ``was``."""
        if queued is not None:
            self._base = queued.count
            self._kept.extend(queued.messages)
            self._kept_tuple = tuple(self._kept)
            self._message_count = queued.message_count
            self._attempt = queued.attempt
            self.start_time = queued.start_time
            self._group = queued.group
        owner = Owner.for_this_process(run)
        register_live_run(run)
        try:
            if queued is None:
                self.store.claim(self.snapshot(), owner)
            elif not self.store.swap(self.snapshot(), owner, run=run, was=was):
                unregister_live_run(run)
                return False
        except BaseException:
            unregister_live_run(run)
            raise
        self._owner = owner
        self._last_write = time.monotonic()
        self._clean = True
        _flusher.watch(self)
        if self._group is not None:
            self._report_group(self.snapshot())
        return True

    def _requeue(self, owner: Owner, status: str) -> bool:
        """Put this run back in line for another attempt (the queue retries its job):
        the record reads ``queued`` with the next attempt, its count and messages kept,
        owned by ``owner`` (a queued owner of the same run). False, changing nothing,
        when that cannot be written: the run then ends as it would have."""
        if self._owner is None or not self._owned() or self._cancel_requested:
            return False
        with self._write_lock:
            if self._ended:
                return False
            state = dataclasses.replace(
                self.snapshot(), state="queued", status=status, attempt=self._attempt + 1
            )
            try:
                swapped = self.store.swap(
                    state, owner, run=self._owner.run, was=frozenset({"running"})
                )
            except Exception as exc:  # noqa: BLE001 - the run then ends as a failure
                logger.warning("cannot put %r back in line: %s", self.key, exc)
                return False
            if not swapped:
                return False
            with self._lock:
                self._ended = True
                self._clean = False
                self._state = "queued"
                self._final = state
        if self._group is not None:
            self._report_group(state)
        _flusher.forget(self)
        unregister_live_run(self._owner.run)
        return True

    def finish(self) -> None:
        """End as ``finished``; the final snapshot is written at once."""
        self._end("finished")

    def fail(self, error: BaseException | str) -> None:
        """End as ``failed``, recording ``error`` (an exception or a text)."""
        text = error if isinstance(error, str) else _describe(error)
        self._end("failed", text)

    def cancel(self) -> None:
        """End as ``cancelled``: the work stopped before it was done."""
        self._end("cancelled")

    def _end(self, state: str, error: str | None = None) -> None:
        """Freeze the final snapshot and write it on this thread; on failure the
        flusher retries it, and the run stays held until it lands (all readers
        then agree it is running), is superseded, or the process exits."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._clean = False  # updates after the end no longer reach the flusher
            if self._delivered and state == "finished":
                # The task was handed tracked.Cancelled, caught it and returned: it
                # stopped because of the request. A task that was never handed it
                # (it did not check) reads its own end, with cancel_requested true.
                state = "cancelled"
            if state == "cancelled" and self._delivered:
                self._status = None  # "cancelled", not the status of the work it left
            self._state = state
            self._position = None
            self._error = None if error is None else clean_text(error)
            self._finished_time = time.time()
            self._final = self._snapshot_locked()
        if not self._owned():
            return
        if self in _shared_handles:
            self._fold_parts()
        _flusher.forget(self)
        try:
            written = self._write_final()
        except BaseException:  # Ctrl-C in the store's write: it goes on up, the end lands later
            _flusher.retry_final(self)
            raise
        if written:
            self._release()
        else:
            _flusher.retry_final(self)

    def _write_final(self) -> bool:
        """Try the final write; True once it needs no retry (written or superseded)."""
        with self._write_lock:
            assert self._final is not None
            return self._superseded or self._save(self._final) or self._superseded

    def _release(self) -> None:
        """The final write landed, was superseded, or gave way to a newer run's: the
        run is no longer held by this process."""
        if self._owner is not None:
            unregister_live_run(self._owner.run)
            if self in _shared_handles:
                self._drop_parts()
            if self._cancel_requested:
                try:
                    self.store.clear_cancel(self.key, self._owner)
                except Exception as exc:  # noqa: BLE001 - a leftover request reaches no run
                    logger.warning("cannot remove the cancel request of %r: %s",
                                   self.key, exc)

    # ------------------------------------------------------------------ sharing

    def share(self) -> ShareToken:
        """A short ``str`` token with which other processes add to this run.

        Pass it to workers (a pool task's argument, a queue message, a URL); there
        ``tracked.join(token)`` gives a handle whose increments and messages add to
        this progress. Readers see the sum while it runs; its end folds the
        workers' parts into the final snapshot, and parts written after the end
        are dropped. The token is plain data with no address or secret in it: a
        worker opens the store from its own configuration (see ``tracked.join``).
        Raises ``TrackedError`` in a process that did not start this run (a forked
        child), ``StoreError`` for a store that cannot be shared.
        """
        if self._owner is None or not self._owned():
            raise TrackedError(
                f"progress {self.key!r} can be shared only by the process that started it"
            )
        self.store.check_join()
        _shared_handles.add(self)
        return share_token(self, self._owner.run)

    def _fold_parts(self) -> None:
        """Add the joined workers' parts to the final snapshot (before it is written)."""
        assert self._final is not None and self._owner is not None
        try:
            parts = self.store.read_parts(self.key, self._owner.run)
        except Exception as exc:  # noqa: BLE001 - the final write still goes ahead
            logger.warning(
                "cannot read the workers' parts of progress %r (%s); its final "
                "count holds this process's part only",
                self.key,
                exc,
            )
            return
        self._final = merge_parts(self._final, parts)
        if any(part.asked for part in parts):
            self._fold_request(stopped=any(part.stopped for part in parts))

    def _fold_request(self, *, stopped: bool) -> None:
        """A joined worker saw the run's cancel request (maybe before this process's
        flusher did): the final snapshot says so; if ``Cancelled`` was delivered to
        the worker, the work stopped on the request, so a ``finished`` end reads
        ``cancelled`` (even if this process caught the re-raised error and returned)."""
        assert self._final is not None
        with self._lock:
            self._cancel_requested = True
            changes: dict[str, Any] = {"cancel_requested": True}
            if stopped and self._final.state == "finished":
                self._delivered = True
                self._state = "cancelled"
                self._status = None
                changes.update(state="cancelled", status="cancelled")
            self._final = dataclasses.replace(self._final, **changes)

    def _drop_parts(self) -> None:
        """The final snapshot holds the parts: remove them (best effort)."""
        assert self._owner is not None
        try:
            self.store.delete_parts(self.key, self._owner.run)
        except Exception:
            logger.debug("cannot delete the parts of %r", self.key, exc_info=True)

    # ------------------------------------------------------------------ cancel requests

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked this run to stop (``tracked.cancel``, a DELETE on
        the status route, ``tracked cancel``): the flusher sees requests within about
        ``min_interval``, and the record says so (``cancel_requested: true``). The run
        ends ``cancelled`` only if ``tracked.Cancelled`` reached the task (``check()``,
        a ``@tracked`` generator's yield, a tracked loop or bar, a cancelled coroutine);
        a task that never looks runs on and reads its own end."""
        return self._cancel_requested

    def check(self) -> None:
        """Raise ``tracked.Cancelled`` if this run was asked to stop; else do nothing.

        Call it where the task can stop cleanly; it only reads a flag."""
        if self._cancel_requested:
            raise self._deliver()

    def _deliver(self) -> Cancelled:
        """The ``Cancelled`` to hand the task now: from here on the run ends
        ``cancelled`` (even if the task catches it and returns)."""
        self._delivered = True
        return Cancelled(self.key)

    def _cancel_seen(self) -> None:
        """The flusher found a cancel request for this run: raise the flag, run the
        hooks (a coroutine's task is cancelled, a queued job dropped, a bar primed to
        stop), write it at once (readers say "stopping…" even if the task never updates
        again), and so make the next update (a yield, a loop's item) look at it."""
        if self._cancel_requested or self._ended:
            return
        self._cancel_requested = True
        for hook in list(self._cancel_hooks):
            try:
                hook()
            except Exception:
                logger.exception("a cancel hook of %r failed", self.key)
        # Written on the flusher's thread (a failure is retried like any write); the
        # write leaves `_clean` true, and the loops test the flag on their `_clean` path.
        self.flush()

    def __enter__(self) -> Progress:
        self._context_tokens.append(current_progress.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._context_tokens:
            current_progress.reset(self._context_tokens.pop())
        self._end_by(exc)

    def _end_by(self, exc: BaseException | None) -> None:
        """End the way an exiting block says: no exception finishes, an interrupt,
        ``GeneratorExit`` or a task's cancellation cancels, any other exception fails
        (or, for a queued run its queue will retry, puts it back in line)."""
        if exc is not None and self._retry is not None:
            owner = self._retry(exc)
            if owner is not None and self._requeue(owner, f"retrying after {_describe(exc)}"):
                return
        if exc is None:
            self.finish()
        elif _is_cancellation(exc):
            self.cancel()
        else:
            self.fail(exc)

    def __del__(self) -> None:
        try:
            # An inherited handle collected in a forked child is not the child's to end.
            if not self._ended and self._owner is not None and self._pid == os.getpid():
                self._end(self._end_on_collect)
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass

    # ------------------------------------------------------------------ reading

    @property
    def count(self) -> int:
        """Items done so far (never below 0)."""
        if self._final is not None:
            return self._final.count
        with self._lock:
            return self._count_locked()

    @count.setter
    def count(self, value: int) -> None:
        value = max(0, as_int(value, "count"))
        with self._lock:
            self._base += value - self._count_locked()
        if self._clean:
            self._touched()

    @property
    def total(self) -> int | None:
        """Items expected in all; None when unknown."""
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        checked = _check_total(value)
        if self._ended:
            return
        self._total = checked
        if self._clean:
            self._touched()

    @property
    def status(self) -> str:
        """Free text for people; defaults to "in progress", then the final state word.

        Setting it to None goes back to that default."""
        if self._status is not None:
            return self._status
        return self._state if self._ended or self._state == "queued" else DEFAULT_STATUS

    @status.setter
    def status(self, value: str | None) -> None:
        checked = _check_status(value)
        if self._ended:
            return
        self._status = checked
        if self._clean:
            self._touched()

    @property
    def messages(self) -> tuple[str, ...]:
        """The last ``max_messages`` messages, oldest first."""
        if self._final is not None:
            return self._final.messages
        with self._lock:
            return self._drain()[0]

    @property
    def message_count(self) -> int:
        """Every message ever added, including those dropped by the cap."""
        if self._final is not None:
            return self._final.message_count
        with self._lock:
            return self._drain()[1]

    @property
    def in_progress(self) -> bool:
        """True until the progress ends."""
        return not self._ended

    @property
    def state(self) -> str:
        """``running`` (``queued`` first for a submitted run waiting for a thread), then
        ``finished``, ``failed`` or ``cancelled``."""
        return self._state

    @property
    def position(self) -> int | None:
        """A queued run's place in line (1 = next to run); None once it runs."""
        return self._position

    @property
    def result(self) -> Any:
        """What the run produced: readers see it once it has ended (``null`` before).

        ``@tracked`` sets it from the function's return value (a generator's
        ``return`` value) unless that is None. Only a JSON value of at most
        ``max_result_bytes`` (``tracked.configure``; 64 KiB) once encoded is
        kept; anything else is stored as None, with a warning logged once per name.
        """
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        kept, problem = encode_result(value)
        if problem is not None:
            _warn_result_once(self.name if self.name is not None else "", problem)
        if not self._ended:  # readers see it in the final snapshot, frozen at the end
            self._result = kept

    def wait(self, timeout: float | None = None) -> Any:
        """Block until a run started with ``tracked.submit`` ends; return its function's
        return value or raise its exception. ``TimeoutError`` after ``timeout`` seconds;
        ``concurrent.futures.CancelledError`` if it was cancelled before it started;
        ``tracked.Cancelled`` (a ``BaseException``) if a job asked to stop while
        running let it out. A coroutine submitted inside an event loop runs on that
        loop: waiting for it there raises ``RuntimeError`` (it would block the loop)."""
        if self._job is None:
            raise TypeError(f"{self!r} was not started by tracked.submit(): nothing to wait for")
        return self._job.wait(timeout)

    # ------------------------------------------------------------------ updating

    def increment(self, n: int = 1, *messages: str) -> None:
        """Add ``n`` (an int) to the count and append any ``messages``."""
        # Checked first: a refused call changes nothing.
        checked = _check_messages(messages) if messages else None
        if n is _ONE:
            self._tick()
        else:
            self._add(n)
        if checked:
            self._incoming.extend(checked)  # plain str copies: no subclass code in _drain
        if self._clean:
            self._touched()

    def decrement(self, n: int = 1, *messages: str) -> None:
        """Take ``n`` from the count (it stops at 0) and append any ``messages``."""
        # Checked first: a refused call changes nothing.
        checked = _check_messages(messages) if messages else None
        self._add(-as_int(n, "n"))
        if checked:
            self._incoming.extend(checked)  # plain str copies: no subclass code in _drain
        if self._clean:
            self._touched()

    def add_message(self, message: str = "", /, *more: str) -> None:
        """Append messages without changing the count."""
        if message.__class__ is str and not more:
            self._push(message)  # one plain str: the common case, checked cheaply
        else:
            self._incoming.extend(_check_messages((message, *more)))
        if self._clean:
            self._touched()

    def __iadd__(self, n: int) -> Progress:
        if n is _ONE:
            self._tick()
        else:
            self._add(n)
        if self._clean:
            self._touched()
        return self

    def __isub__(self, n: int) -> Progress:
        self._add(-as_int(n, "n"))
        if self._clean:
            self._touched()
        return self

    def _add(self, n: object) -> None:
        """The slow path of a count change: any int, under the lock; the count stops at 0."""
        n = as_int(n, "n")
        with self._lock:
            if n < 0:
                n = max(n, -self._count_locked())
            self._base += n

    def _touched(self) -> None:
        """The first update since a write: write now (``min_interval=0``) or wake the
        flusher, unless it will look at this handle again anyway."""
        self._clean = False
        if not self.min_interval and not self._store_failing:
            self.flush()
        elif not self._scheduled:
            _flusher.wake(self._ref)
        else:
            _flusher.revive()  # scheduled by a flusher thread that may have died

    # ------------------------------------------------------------------ snapshots

    def _count_locked(self) -> int:
        """The count now; call with ``_lock`` held (it takes one tick of its own)."""
        ones = self._tick() - self._ones_read
        self._ones_read += 1
        return self._base + ones + self._yields

    def _drain(self) -> tuple[tuple[str, ...], int]:
        """Number and keep the messages appended since the last call (under ``_lock``):
        one reader assigns every index, so ``message_count`` and ``?since=`` are exact.

        Appends only ever go to the end, so copying then deleting the first ``n``
        takes exactly those; only the texts that can still be kept are cleaned.
        """
        incoming = self._incoming
        waiting = len(incoming)
        if not waiting:
            return self._kept_tuple, self._message_count
        batch = incoming[:waiting]
        del incoming[:waiting]
        added = waiting
        if min(batch) <= _BLANK[-1]:  # one scan; only a text sorting this low can be blank
            added -= sum(map(batch.count, _BLANK))
        if added:
            self._kept.extend(_last_messages(batch, self.max_messages))
            self._message_count += added
            self._kept_tuple = tuple(self._kept)
        return self._kept_tuple, self._message_count

    def snapshot(self) -> State:
        """The current state as readers will see it once written; the final one once ended."""
        if self._final is not None:
            return self._final
        with self._lock:
            return self._final or self._snapshot_locked()

    def _snapshot_locked(self) -> State:
        count = self._count_locked()
        messages, message_count = self._drain()
        status = self.status
        return State(
            name=self.name,
            progress_id=self.progress_id,
            total=self._total,
            count=count,
            messages=messages,
            message_count=message_count,
            in_progress=not self._ended,
            state=self._state,
            cancel_requested=self._cancel_requested,
            position=self._position,
            status=status if status.isascii() else clean_text(status),
            error=self._error,
            start_time=self.start_time,
            current_time=time.time() if self._finished_time is None else self._finished_time,
            finished_time=self._finished_time,
            rate=self._update_rate(count),
            result=self._result if self._ended else None,
            attempt=self._attempt,
            group=self._group,
        )

    def _update_rate(self, count: int) -> float | None:
        """Fold the items done since the last sample into the smoothed rate.

        Samples span at least ``RATE_WINDOW`` seconds, and none is taken before
        the first item is done, so the rate is None until it means something.
        """
        now = time.monotonic()
        elapsed = now - self._rate_time
        done = count - self._rate_count
        if elapsed >= RATE_WINDOW and not self._ended and (done or self._rate is not None):
            sample = done / elapsed
            if self._rate is None:
                self._rate = sample
            else:
                self._rate = RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * self._rate
            self._rate_time, self._rate_count = now, count
        return None if self._rate is None else round(self._rate, 3)

    # ------------------------------------------------------------------ writing

    def _owned(self) -> bool:
        """Whether this process may write the run: it claimed it, and is not a forked
        child (an inherited handle is inert; the first skipped write says so once)."""
        if self._owner is None:
            return False
        if self._pid == os.getpid():
            return True
        if not self._warned_inert:
            self._warned_inert = True
            logger.warning(
                "progress %r was inherited by a forked child (pid %d); the child "
                "does not write it and leaving its block does not end the parent's run",
                self.key,
                os.getpid(),
            )
        return False

    def flush(self) -> bool:
        """Write the current snapshot of a running handle now; after the end it writes
        nothing. Never raises: a failure is logged once and retried by the flusher.
        Returns whether this call wrote the snapshot."""
        if self._ended or self._superseded or not self._owned():
            return False
        with self._write_lock:
            if self._ended:
                return False
            self._clean = True
            write = self.snapshot(), self._owner
            self._last_write = time.monotonic()
            return self._save(*write)

    def _begin_write(self) -> tuple[State, Owner] | None:
        """For the flusher's batch: the snapshot to write, holding the write lock until
        ``_end_write``; None (lock not held) when there is nothing to write now."""
        if not self._write_lock.acquire(blocking=False):
            return None  # the owner's thread is writing (its final state, say)
        if self._ended or self._superseded or self._owner is None:
            self._write_lock.release()
            return None
        self._clean = True
        self._last_write = time.monotonic()
        state = self.snapshot()
        if self._group is not None:
            self._group_state = state
        return state, self._owner

    def _end_write(self, error: Exception | None) -> None:
        """The outcome of a batched write that ``_begin_write`` started."""
        try:
            self._saved(error)
            if error is None and self._group_state is not None:
                self._report_group(self._group_state)
        finally:
            self._write_lock.release()

    def _save(self, state: State, owner: Owner | None = None) -> bool:
        """Write ``state`` now (with ``_write_lock`` held); True if it landed."""
        try:
            self.store.save(state, owner or self._owner)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - instrumentation never kills the task
            self._saved(exc)
            return False
        self._saved(None)
        if self._group is not None:
            self._report_group(state)
        return True

    def _report_group(self, state: State) -> GroupBook | None:
        """Count this child's new state, or its progress, in its group's ledger (off
        the per-item path: after a write landed, once per change of state or units)."""
        seen = (state.state, units_of(state))
        if seen == self._group_seen:
            return None
        self._group_seen = seen
        return report_move(self.store, state)

    def _saved(self, error: Exception | None) -> None:
        if error is None:
            if self._store_failing:
                self._store_failing = False
                logger.warning(
                    "writes to %r resumed for progress %r", self.store, self.key
                )
        elif isinstance(error, RunSuperseded):
            self._superseded = True
            logger.warning("%s; this run's writes are dropped", error)
        else:
            self._report_failure(error)
            if not self._ended:
                self._clean = False  # still to be written: the flusher retries it
                _flusher.wake(self._ref)

    def _report_failure(self, exc: Exception) -> None:
        if not self._store_failing:
            self._store_failing = True
            logger.warning(
                "cannot write progress %r to %r (%s); the task goes on and "
                "writes resume when the store works again",
                self.key,
                self.store,
                exc if isinstance(exc, StoreError) else _describe(exc),
            )

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._clean = False  # updates stay in the child's memory and wake nothing


T = TypeVar("T")


def counted(iterable: Iterable[T], progress: Progress, messages: bool = False) -> Iterator[T]:
    """Yield the items of ``iterable``, counting each once the consumer comes back for
    the next (``tracked.track``'s loop); ``str`` items are also messages if asked.

    Once the run's cancel request is seen, the iterable is not asked for its next item
    (a generator's work for it never runs): it raises ``tracked.Cancelled`` instead,
    unless a sized iterable's last item was done (the loop then runs to its end).
    The flag is read only on the path an update takes after a write (the flusher
    writes a request as soon as it sees it), so a count costs one tick.
    """
    size = _size(iterable)
    first = progress.count
    if progress._cancel_requested and not progress._ended:
        raise progress._deliver()
    tick = progress._tick
    if messages:
        push = progress.add_message
        for item in iterable:
            if isinstance(item, str):
                push(item)
            yield item
            tick()
            if progress._clean:
                _count_written(progress, first, size)
    else:
        for item in iterable:
            yield item
            tick()
            if progress._clean:
                _count_written(progress, first, size)
    if progress._clean:
        progress._touched()


def _size(iterable: Iterable[object]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _count_written(progress: Progress, first: int, size: int | None) -> None:
    """A ``counted`` loop's first item since a write: wake the flusher, and stop the
    loop before its next item if a cancel request was seen (not after its last)."""
    progress._touched()
    if progress._cancel_requested and not progress._ended:
        if size is None or progress.count - first < size:
            raise progress._deliver()


def take_up(progress: Progress) -> None:
    """A queued run starts: it reads ``running``, with no place in line."""
    with progress._lock:
        if progress._ended or progress._state != "queued":
            return
        progress._state, progress._position = "running", None
    progress.flush()  # written at once, as a run's first snapshot is: readers see it start


def move_in_line(progress: Progress, position: int) -> None:
    """A queued run's place in line changed (runs ahead of it started or were dropped);
    the flusher writes it with the run's next due write."""
    with progress._lock:  # not after take_up(): a running run has no place in line
        if progress._ended or progress._state != "queued" or progress._position == position:
            return
        progress._position = position
    if progress._clean:
        # Always through the flusher (batched), even with min_interval=0: a place in
        # line is the queue's news, and one take-up moves every waiting run.
        progress._clean = False
        if not progress._scheduled:
            _flusher.wake(progress._ref)


def add_cancel_hook(progress: Progress, hook: Callable[[], object]) -> None:
    """Run ``hook`` (on the flusher's thread) when ``progress`` sees a cancel request;
    at once if it already has. A hook must be quick and must not raise."""
    progress._cancel_hooks.append(hook)
    if progress._cancel_requested and not progress._ended:
        hook()


def remove_cancel_hook(progress: Progress, hook: Callable[[], object]) -> None:
    """Undo ``add_cancel_hook`` (a bar that closed): a long run keeps no dead hooks."""
    with contextlib.suppress(ValueError):
        progress._cancel_hooks.remove(hook)


#: What a message is once its trailing line break is dropped, if nothing is left;
#: sorted, so that a batch whose smallest text sorts above the last has none.
_BLANK = ("", "\n", "\r\n")


def _last_messages(texts: list[str], keep: int) -> list[str]:
    """The last ``keep`` texts that are messages, cleaned (see ``clean_message``)."""
    window = keep
    while True:
        kept = [t for t in map(clean_message, texts[-window:] if window else ()) if t]
        if len(kept) >= keep or window >= len(texts):
            return kept[max(0, len(kept) - keep) :] if keep else []
        window *= 2


def _after_fork_in_child() -> None:
    for progress in list(_handles):
        progress._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` stops work from outside (a closed generator, Ctrl-C, a
    cancelled asyncio task) rather than reporting that the work failed."""
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt, Cancelled)):
        return True
    asyncio = sys.modules.get("asyncio")  # no task can be cancelled without it
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_interval(value: object) -> float:
    """``min_interval`` as a float; ``InvalidValue`` unless a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidValue(f"min_interval must be a number of seconds >= 0, got {value!r}")
    return float(value)


def check_max_messages(value: object) -> int:
    """``max_messages`` checked: ``InvalidValue`` unless an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"max_messages must be an int >= 0, got {value!r}")
    return value


def _check_total(value: object) -> int | None:
    if value is None:
        return None
    total = as_int(value, "total")
    if total < 0:
        raise InvalidValue(f"total must not be negative, got {total}")
    return total


def _check_status(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidValue(f"status must be a str, not {type(value).__name__}")
    return value


def _check_messages(messages: Iterable[object]) -> list[str]:
    checked = list(messages)
    for index, message in enumerate(checked):
        if message.__class__ is not str:
            if not isinstance(message, str):
                raise InvalidValue(f"a message must be a str, not {type(message).__name__}")
            checked[index] = str.__str__(message)  # a plain copy: no subclass code later
    return checked  # type: ignore[return-value]


_result_warned: set[str] = set()


def _warn_result_once(name: str, problem: str) -> None:
    """Log that a result was dropped, once per progress name (not per run)."""
    if name in _result_warned or len(_result_warned) >= 1024:
        return
    _result_warned.add(name)
    logger.warning(
        "the result of progress %r is published as null: %s (logged once for this name)",
        name,
        problem,
    )
