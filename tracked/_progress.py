"""``Progress``: the live handle a task mutates.

Updates are a few operations that are atomic under the GIL (an ``itertools.count``
tick, a ``deque.append``, a flag): no lock, no clock, no I/O. The first update
after a write wakes the process's flusher, which writes a snapshot at most once
per ``min_interval``. The first and the final snapshot are written at once by
the thread that starts or ends the run; ``min_interval=0`` writes every update.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from . import _flusher
from ._checks import (
    check_interval,
    check_max_messages,
    check_status,
    check_total_count,
    warn_result_once,
)
from ._messages import Messages, check_messages
from ._rate import Rate
from ._runstate import CancelState, Line, Outcome, is_cancellation
from ._state import DEFAULT_STATUS, State, as_int, encode_result, make_key
from ._store import Owner, Store, merge_parts, unregister_live_run
from ._text import clean_text, describe_error
from ._token import ShareToken, share_token
from ._writer import RunWriter
from .errors import Cancelled, InvalidValue, TrackedError

__all__ = [
    "Progress",
    "add_cancel_hook",
    "attach_job",
    "cancel_on_collect",
    "claim",
    "counted",
    "current_progress",
    "deliver",
    "end_by",
    "feeder",
    "move_in_line",
    "remove_cancel_hook",
    "requeue_retrying",
    "take_over_run",
    "take_up",
    "undeliver",
    "written",
    "yielded",
]

logger = logging.getLogger("tracked")

#: The innermost live progress of this context (see ``tracked.current()``).
current_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "tracked_current", default=None
)

#: Every int 1 is this object in CPython: ``n is _ONE`` is the cheapest exact test.
_ONE = 1

#: Every handle of this process, so a forked child can make the inherited ones inert.
_handles: weakref.WeakSet[Progress] = weakref.WeakSet()


class Progress:
    """A running progress: change it from the task; readers see its snapshots.

    Thread-safe: ``increment``, ``add_message`` and the setters may be called
    from several threads and every update is counted. Use it as a context manager
    (``tracked.start``) or let ``@tracked`` manage it; a handle that is
    garbage-collected while running ends as ``finished``, as the Perl original
    ended it when it went out of scope. Once ended, a handle ignores updates.
    """

    # The update path's own fields first (`_tick`, `_push`, `_clean`, `_yields`: read
    # or set by every update, so kept here); the rest grouped by concern.
    __slots__ = (
        "__weakref__",
        "_base",  # the count, less the ticks and yields (under `_lock`)
        "_cancel",  # CancelState: a request to stop, and whether the task was told
        "_clean",  # True: nothing changed since the last write was taken
        "_context_tokens",
        "_ended",
        "_final",  # the frozen final snapshot, once ended
        "_group",  # the token of the group this run is a child of (tracked.group), or None
        "_line",  # Line: a queued run's place, attempt, job and retry
        "_lock",  # readers and the rare slow updates, never `+= 1`
        "_messages",  # Messages: the message buffer
        "_ones_read",  # ticks taken by readers to learn the count (under `_lock`)
        "_outcome",  # Outcome: error, end time, result, the end if collected
        "_push",  # `_messages.incoming.append`: one plain str message, no lock
        "_rate",  # Rate: the smoothed rate
        "_state",
        "_status",
        "_tick",  # one tick per `+= 1`: atomic, no lock
        "_total",
        "_writer",  # RunWriter: owner, write lock, the flusher's flags
        "_yields",  # written only by the @tracked generator loop
        "key",
        "max_messages",
        "name",
        "progress_id",
        "start_time",
        "store",
    )
    #: What writes this handle's snapshots (a joined worker's handle writes its part).
    _writer_class: type[RunWriter] = RunWriter

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
        self._writer = self._writer_class(self, self.key, store, check_interval(min_interval))
        self.max_messages = check_max_messages(max_messages)
        self._total = check_total_count(total)
        self._base = max(0, as_int(count, "count"))
        self._tick = itertools.count().__next__
        self._ones_read = 0
        self._yields = 0
        self._status = check_status(status)
        self._messages = Messages(check_messages(messages), self.max_messages)
        self._push = self._messages.incoming.append
        self._lock = threading.Lock()
        self._clean = False
        # A run that waits in this process's queue is "queued" until take_up().
        self._state = "running" if position is None else "queued"
        self._ended = False
        self._final: State | None = None
        self._outcome = Outcome()
        self._context_tokens: list[contextvars.Token[Progress | None]] = []
        self.start_time = time.time()
        self._rate = Rate(self._base)
        self._cancel = CancelState()
        self._line = Line(position)
        self._group = group
        _handles.add(self)

    def __repr__(self) -> str:
        total = "?" if self._total is None else self._total
        return f"<Progress {self.key!r} {self.count}/{total} {self._state}>"

    # ------------------------------------------------------------------ lifecycle

    def _claim(self) -> Progress:
        """Write the first snapshot, claiming the key; raise ``AlreadyRunning`` if held."""
        snapshot = self.snapshot()
        self._writer.take_over(snapshot, Owner.for_this_process(), None)
        self._watched()
        refused = None if self._group is None else self._writer.join_group(snapshot)
        if refused is not None:  # closed, or gone: the run ends failed, never running
            self.fail(refused)
            raise InvalidValue(f"cannot start {self.key!r}: {refused}")
        return self

    def _take_over(
        self,
        queued: State | None,
        run: str,
        was: frozenset[str],
        retry: Callable[[BaseException], Owner | None],
        left: Callable[[BaseException], bool] | None = None,
    ) -> bool:
        """Become the owner of queued run ``run`` (``tracked._queued``): the run keeps the
        count, messages, attempt and start time of ``queued``, the record read (None:
        there is none, claim it afresh under the same run). False if the record is no
        longer that run in one of the states ``was``. ``retry``, given the exception
        the run ends by, names the queued owner to go back in line as (or None);
        ``left``, given it, says the queue is killing this process and ends the run."""
        if queued is not None:
            self._base = queued.count
            self._messages.carry(queued.messages, queued.message_count)
            self._line.attempt = queued.attempt
            self.start_time = queued.start_time
            self._group = queued.group
        owner = Owner.for_this_process(run)
        snapshot = self.snapshot()
        if not self._writer.take_over(snapshot, owner, None if queued is None else was):
            return False
        self._watched()
        self._writer.report_group(snapshot)  # a group's child: counted running
        self._line.retry = retry
        self._line.left = left
        return True

    def _watched(self) -> None:
        """The run's record is written and owned here: the flusher takes it on."""
        self._clean = True
        _flusher.watch(self._writer)

    def _requeue(self, owner: Owner, status: str) -> bool:
        """Put this run back in line for another attempt (the queue retries its job):
        the record reads ``queued`` with the next attempt, its count and messages kept,
        owned by ``owner`` (a queued owner of the same run). False, changing nothing,
        when that cannot be written: the run then ends as it would have."""
        writer = self._writer
        if writer.owner is None or not writer.owned() or self._cancel.requested:
            return False
        run = writer.owner.run
        with writer.write_lock:
            if self._ended:
                return False
            state = dataclasses.replace(
                self.snapshot(), state="queued", status=status, attempt=self._line.attempt + 1
            )
            try:
                swapped = self.store.swap(state, owner, run=run, was=frozenset({"running"}))
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
        writer.report_group(state)  # a group's child: counted queued again
        _flusher.forget(writer)
        unregister_live_run(run)
        return True

    def _let_go(self) -> None:
        """Leave the run as its record says (running) and never end it from here, not
        even when collected: the queue that is killing this process writes the end
        (Celery's revoke handler), else readers judge it by the crash rule."""
        with self._lock:
            self._ended = True
            self._clean = False
        _flusher.forget(self._writer)
        if self._writer.owner is not None:
            unregister_live_run(self._writer.owner.run)

    def finish(self) -> None:
        """End as ``finished``; the final snapshot is written at once."""
        self._end("finished")

    def fail(self, error: BaseException | str) -> None:
        """End as ``failed``, recording ``error`` (an exception or a text)."""
        text = error if isinstance(error, str) else describe_error(error)
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
            if self._cancel.delivered and state == "finished":
                # The task was handed tracked.Cancelled, caught it and returned: it
                # stopped because of the request. A task that was never handed it
                # (it did not check) reads its own end, with cancel_requested true.
                state = "cancelled"
            if state == "cancelled" and self._cancel.delivered:
                self._status = None  # "cancelled", not the status of the work it left
            self._state = state
            self._line.position = None
            self._outcome.error = None if error is None else clean_text(error)
            self._outcome.finished_time = time.time()
            self._final = self._snapshot_locked()
        writer = self._writer
        if not writer.owned():
            return
        if writer.shared:
            self._fold_parts()
        assert self._final is not None
        writer.end(self._final)

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
        writer = self._writer
        if writer.owner is None or not writer.owned():
            raise TrackedError(
                f"progress {self.key!r} can be shared only by the process that started it"
            )
        self.store.check_join()
        writer.shared = True
        return share_token(self, writer.owner.run)

    def _fold_parts(self) -> None:
        """Add the joined workers' parts to the final snapshot (before it is written)."""
        owner = self._writer.owner
        assert self._final is not None and owner is not None
        try:
            parts = self.store.read_parts(self.key, owner.run)
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
            self._cancel.requested = True
            changes: dict[str, Any] = {"cancel_requested": True}
            if stopped and self._final.state == "finished":
                self._cancel.delivered = True
                self._state = "cancelled"
                self._status = None
                changes.update(state="cancelled", status="cancelled")
            self._final = dataclasses.replace(self._final, **changes)

    # ------------------------------------------------------------------ cancel requests

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked this run to stop (``tracked.cancel``, a DELETE on
        the status route, ``tracked cancel``): the flusher sees requests within about
        ``min_interval``, and the record says so (``cancel_requested: true``). The run
        ends ``cancelled`` only if ``tracked.Cancelled`` reached the task (``check()``,
        a ``@tracked`` generator's yield, a tracked loop or bar, a cancelled coroutine);
        a task that never looks runs on and reads its own end."""
        return self._cancel.requested

    def check(self) -> None:
        """Raise ``tracked.Cancelled`` if this run was asked to stop; else do nothing.

        Call it where the task can stop cleanly; it only reads a flag."""
        if self._cancel.requested:
            raise self._deliver()

    def _deliver(self) -> Cancelled:
        """The ``Cancelled`` to hand the task now: from here on the run ends
        ``cancelled`` (even if the task catches it and returns)."""
        self._cancel.delivered = True
        return Cancelled(self.key)

    def _cancel_seen(self) -> None:
        """The flusher found a cancel request for this run: raise the flag, run the
        hooks (a coroutine's task is cancelled, a queued job dropped, a bar primed to
        stop), write it at once (readers say "stopping…" even if the task never updates
        again), and so make the next update (a yield, a loop's item) look at it."""
        cancel = self._cancel
        if cancel.requested or self._ended:
            return
        cancel.requested = True
        for hook in list(cancel.hooks):
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
        (or, for a queued run its queue will retry, puts it back in line; for one its
        queue is killing this process to end it, writes nothing: see ``_let_go``)."""
        left = self._line.left
        if exc is not None and left is not None and left(exc):
            self._let_go()
            return
        retry = self._line.retry
        if exc is not None and retry is not None:
            owner = retry(exc)
            if owner is not None and self._requeue(owner, f"retrying after {describe_error(exc)}"):
                return
        if exc is None:
            self.finish()
        elif is_cancellation(exc):
            self.cancel()
        else:
            self.fail(exc)

    def __del__(self) -> None:
        try:
            # An inherited handle collected in a forked child is not the child's to end.
            writer = self._writer
            if not self._ended and writer.owner is not None and writer.pid == os.getpid():
                self._end(self._outcome.on_collect)
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
        checked = check_total_count(value)
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
        checked = check_status(value)
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
            return self._messages.drain()[0]

    @property
    def message_count(self) -> int:
        """Every message ever added, including those dropped by the cap."""
        if self._final is not None:
            return self._final.message_count
        with self._lock:
            return self._messages.drain()[1]

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
        return self._line.position

    @property
    def result(self) -> Any:
        """What the run produced: readers see it once it has ended (``null`` before).

        ``@tracked`` sets it from the function's return value (a generator's
        ``return`` value) unless that is None. Only a JSON value of at most
        ``max_result_bytes`` (``tracked.configure``; 64 KiB) once encoded is
        kept; anything else is stored as None, with a warning logged once per name.
        """
        return self._outcome.result

    @result.setter
    def result(self, value: Any) -> None:
        kept, problem = encode_result(value)
        if problem is not None:
            warn_result_once(self.name if self.name is not None else "", problem)
        if not self._ended:  # readers see it in the final snapshot, frozen at the end
            self._outcome.result = kept

    def wait(self, timeout: float | None = None) -> Any:
        """Block until a run started with ``tracked.submit`` ends; return its function's
        return value or raise its exception. ``TimeoutError`` after ``timeout`` seconds;
        ``concurrent.futures.CancelledError`` if it was cancelled before it started;
        ``tracked.Cancelled`` (a ``BaseException``) if a job asked to stop while
        running let it out. A coroutine submitted inside an event loop runs on that
        loop: waiting for it there raises ``RuntimeError`` (it would block the loop)."""
        job = self._line.job
        if job is None:
            raise TypeError(f"{self!r} was not started by tracked.submit(): nothing to wait for")
        return job.wait(timeout)

    # ------------------------------------------------------------------ updating

    def increment(self, n: int = 1, *messages: str) -> None:
        """Add ``n`` (an int) to the count and append any ``messages``."""
        # Checked first: a refused call changes nothing.
        checked = check_messages(messages) if messages else None
        if n is _ONE:
            self._tick()
        else:
            self._add(n)
        if checked:
            self._messages.incoming.extend(checked)  # plain str copies: no subclass code in _drain
        if self._clean:
            self._touched()

    def decrement(self, n: int = 1, *messages: str) -> None:
        """Take ``n`` from the count (it stops at 0) and append any ``messages``."""
        # Checked first: a refused call changes nothing.
        checked = check_messages(messages) if messages else None
        self._add(-as_int(n, "n"))
        if checked:
            self._messages.incoming.extend(checked)  # plain str copies: no subclass code in _drain
        if self._clean:
            self._touched()

    def add_message(self, message: str = "", /, *more: str) -> None:
        """Append messages without changing the count."""
        if message.__class__ is str and not more:
            self._push(message)  # one plain str: the common case, checked cheaply
        else:
            self._messages.incoming.extend(check_messages((message, *more)))
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
        writer = self._writer
        if not writer.min_interval and not writer.store_failing:
            writer.flush()
        elif not writer.scheduled:
            _flusher.wake(writer.ref)
        else:
            _flusher.revive()  # scheduled by a flusher thread that may have died

    # ------------------------------------------------------------------ snapshots

    def _count_locked(self) -> int:
        """The count now; call with ``_lock`` held (it takes one tick of its own)."""
        ones = self._tick() - self._ones_read
        self._ones_read += 1
        return self._base + ones + self._yields

    def snapshot(self) -> State:
        """The current state as readers will see it once written; the final one once ended."""
        if self._final is not None:
            return self._final
        with self._lock:
            return self._final or self._snapshot_locked()

    def _snapshot_locked(self) -> State:
        count = self._count_locked()
        messages, message_count = self._messages.drain()
        status = self.status
        outcome = self._outcome
        finished = outcome.finished_time
        return State(
            name=self.name,
            progress_id=self.progress_id,
            total=self._total,
            count=count,
            messages=messages,
            message_count=message_count,
            in_progress=not self._ended,
            state=self._state,
            cancel_requested=self._cancel.requested,
            position=self._line.position,
            status=status if status.isascii() else clean_text(status),
            error=outcome.error,
            start_time=self.start_time,
            current_time=time.time() if finished is None else finished,
            finished_time=finished,
            rate=self._rate.update(count, running=not self._ended),
            result=outcome.result if self._ended else None,
            attempt=self._line.attempt,
            group=self._group,
        )

    # ------------------------------------------------------------------ writing

    @property
    def min_interval(self) -> float:
        """Seconds between two writes of this run at most (0: every update)."""
        return self._writer.min_interval

    @min_interval.setter
    def min_interval(self, value: float) -> None:
        """Set it (unchecked, as the attribute it was)."""
        self._writer.min_interval = value

    @property
    def _owner(self) -> Owner | None:
        """The owner record this process wrote the run with (None before the claim)."""
        return self._writer.owner

    @property
    def _write_lock(self) -> threading.Lock:
        """Held while this run is written: one write of it at a time."""
        return self._writer.write_lock

    def flush(self) -> bool:
        """Write the current snapshot of a running handle now; after the end it writes
        nothing. Never raises: a failure is logged once and retried by the flusher.
        Returns whether this call wrote the snapshot."""
        return self._writer.flush()

    # ------------------------------------------------------------------ loops and queues

    def _counted(self, iterable: Iterable[T], messages: bool) -> Iterator[T]:
        """Yield the items of ``iterable``, counting each once the consumer comes back
        for the next; ``str`` items are also messages if asked.

        Once the run's cancel request is seen, the iterable is not asked for its next
        item (a generator's work for it never runs): it raises ``tracked.Cancelled``
        instead, unless a sized iterable's last item was done (the loop then runs to
        its end). The flag is read only on the path an update takes after a write (the
        flusher writes a request as soon as it sees it), so a count costs one tick.
        """
        size = _size(iterable)
        first = self.count
        if self._cancel.requested and not self._ended:
            raise self._deliver()
        tick = self._tick
        if messages:
            push = self.add_message
            for item in iterable:
                if isinstance(item, str):
                    push(item)
                yield item
                tick()
                if self._clean:
                    self._count_written(first, size)
        else:
            for item in iterable:
                yield item
                tick()
                if self._clean:
                    self._count_written(first, size)
        if self._clean:
            self._touched()

    def _count_written(self, first: int, size: int | None) -> None:
        """A ``_counted`` loop's first item since a write: wake the flusher, and stop
        the loop before its next item if a cancel request was seen (not after its last)."""
        self._touched()
        if self._cancel.requested and not self._ended:
            if size is None or self.count - first < size:
                raise self._deliver()

    def _take_up(self) -> None:
        """A queued run starts: it reads ``running``, with no place in line."""
        with self._lock:
            if self._ended or self._state != "queued":
                return
            self._state, self._line.position = "running", None
        self.flush()  # written at once, as a run's first snapshot is: readers see it start

    def _move_in_line(self, position: int) -> None:
        """A queued run's place in line changed (runs ahead of it started or were
        dropped); the flusher writes it with the run's next due write."""
        with self._lock:  # not after take_up(): a running run has no place in line
            if self._ended or self._state != "queued" or self._line.position == position:
                return
            self._line.position = position
        if self._clean:
            # Always through the flusher (batched), even with min_interval=0: a place in
            # line is the queue's news, and one take-up moves every waiting run.
            self._clean = False
            if not self._writer.scheduled:
                _flusher.wake(self._writer.ref)

    def _add_cancel_hook(self, hook: Callable[[], object]) -> None:
        """See ``add_cancel_hook``."""
        self._cancel.hooks.append(hook)
        if self._cancel.requested and not self._ended:
            hook()

    def _after_fork(self) -> None:
        """In a forked child: fresh locks (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()
        self._writer.after_fork()
        self._clean = False  # updates stay in the child's memory and wake nothing


T = TypeVar("T")


def counted(iterable: Iterable[T], progress: Progress, messages: bool = False) -> Iterator[T]:
    """Yield the items of ``iterable``, counting each (``tracked.track``'s loop); see
    ``Progress._counted``."""
    return progress._counted(iterable, messages)


def take_up(progress: Progress) -> None:
    """A queued run starts: it reads ``running``, with no place in line."""
    progress._take_up()


def move_in_line(progress: Progress, position: int) -> None:
    """A queued run's place in line changed; see ``Progress._move_in_line``."""
    progress._move_in_line(position)


def add_cancel_hook(progress: Progress, hook: Callable[[], object]) -> None:
    """Run ``hook`` (on the flusher's thread) when ``progress`` sees a cancel request;
    at once if it already has. A hook must be quick and must not raise."""
    progress._add_cancel_hook(hook)


def remove_cancel_hook(progress: Progress, hook: Callable[[], object]) -> None:
    """Undo ``add_cancel_hook`` (a bar that closed): a long run keeps no dead hooks."""
    with contextlib.suppress(ValueError):
        progress._cancel.hooks.remove(hook)


# ------------------------------------------------------------------ for the package's loops
# What @tracked's loops, tracked.submit and a queue's take-over do to a handle, named
# here so that no other module reaches into one.


def claim(progress: Progress) -> Progress:
    """Write the first snapshot, claiming the key; ``AlreadyRunning`` if it is held."""
    return progress._claim()


def take_over_run(
    progress: Progress,
    queued: State | None,
    run: str,
    was: frozenset[str],
    retry: Callable[[BaseException], Owner | None],
    left: Callable[[BaseException], bool] | None = None,
) -> bool:
    """Make ``progress`` the owner of queued run ``run`` (see ``Progress._take_over``)."""
    return progress._take_over(queued, run, was, retry, left)


def requeue_retrying(progress: Progress, owner: Owner) -> None:
    """A run taken over from a queue is sent again by it (a retry from inside the
    task): put it back in line now, as ``owner``, with its next attempt."""
    if progress._line.retry is not None:
        progress._requeue(owner, f"retrying (attempt {progress._line.attempt + 1})")


def end_by(progress: Progress, exc: BaseException | None) -> None:
    """End the run the way an exiting block says (see ``Progress._end_by``)."""
    progress._end_by(exc)


def deliver(progress: Progress) -> Cancelled:
    """The ``Cancelled`` to hand the task now: the run then ends ``cancelled``."""
    return progress._deliver()


def undeliver(progress: Progress) -> None:
    """The task caught the ``Cancelled`` it was handed and went on working: the run
    no longer stopped on request (it reads its own end, ``cancel_requested`` true)."""
    progress._cancel.delivered = False


def written(progress: Progress) -> bool:
    """A loop's first item since a write: wake the flusher; True if the run was asked
    to stop (the flusher writes a request at once, so a loop looks only here)."""
    progress._touched()
    return progress._cancel.requested


def feeder(progress: Progress) -> Callable[[str], None]:
    """What a loop appends one plain ``str`` message with: no check, no lock."""
    return progress._push


def yielded(progress: Progress) -> int:
    """How many items the ``@tracked`` generator loop has yielded."""
    return progress._yields


def cancel_on_collect(progress: Progress) -> None:
    """A generator or coroutine was made for this run: dropped unfinished (the
    handle collected while running), the run ends ``cancelled``."""
    progress._outcome.on_collect = "cancelled"


def attach_job(progress: Progress, job: Any) -> None:
    """``tracked.submit`` runs this run as ``job``: what ``wait()`` waits for."""
    progress._line.job = job


def _size(iterable: Iterable[object]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _after_fork_in_child() -> None:
    for progress in list(_handles):
        progress._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)




