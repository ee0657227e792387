"""``RunControl``: what the package's own code does to a run's handle, as methods.

``@tracked``'s loops, ``tracked.track``, ``tracked.submit``, the queues' take-overs
and the tqdm bridge start, count, line up, stop and end a run through these, so
that no other module reads a handle's fields. ``Progress`` is a ``RunControl``;
these methods are the package's, not part of the public API (the reference shows
``Progress``'s own members only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import _flusher
from ._messages import Messages
from ._runstate import CancelState, Line, Outcome, is_cancellation
from ._state import State
from ._store import Owner, Store, unregister_live_run
from ._text import describe_error
from ._writer import RunWriter
from .errors import Cancelled, InvalidValue

__all__ = ["RunControl"]

logger = logging.getLogger("tracked")

T = TypeVar("T")
_H = TypeVar("_H", bound="RunControl")


class RunControl:
    """The package's operations on a run's handle (``Progress``'s base): claim or take
    over the run, count a loop's items, line it up again, hand it a cancel, end it."""

    if TYPE_CHECKING:  # the fields and methods of Progress these operations use
        # (its slots: empty here at run time, so Progress's own hold them once)
        __slots__ = ("_base", "_clean", "_ended", "_final", "_group", "_state", "start_time")
        key: str
        store: Store
        start_time: float
        _base: int
        _cancel: CancelState
        _clean: bool
        _ended: bool
        _final: State | None
        _group: str | None
        _line: Line
        _lock: threading.Lock
        _messages: Messages
        _outcome: Outcome
        _push: Callable[[str], None]
        _state: str
        _tick: Callable[[], int]
        _writer: RunWriter
        _yields: int

        @property
        def count(self) -> int: ...
        def snapshot(self) -> State: ...
        def flush(self) -> bool: ...
        def finish(self) -> None: ...
        def fail(self, error: BaseException | str) -> None: ...
        def cancel(self) -> None: ...
        def add_message(self, message: str = "", /, *more: str) -> None: ...
        def _touched(self) -> None: ...

    else:
        __slots__ = ()

    # ------------------------------------------------------------------ start and end

    def claim(self: _H) -> _H:
        """Write the first snapshot, claiming the key; raise ``AlreadyRunning`` if held."""
        snapshot = self.snapshot()
        self._writer.take_over(snapshot, Owner.for_this_process(), None)
        self._watched()
        refused = None if self._group is None else self._writer.join_group(snapshot)
        if refused is not None:  # closed, or gone: the run ends failed, never running
            self.fail(refused)
            raise InvalidValue(f"cannot start {self.key!r}: {refused}")
        return self

    def take_over(
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

    def requeue_retrying(self, owner: Owner) -> None:
        """A run taken over from a queue is sent again by it (a retry from inside the
        task): put it back in line now, as ``owner``, with its next attempt."""
        if self._line.retry is not None:
            self._requeue(owner, f"retrying (attempt {self._line.attempt + 1})")

    def end_by(self, exc: BaseException | None) -> None:
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

    # ------------------------------------------------------------------ a queue's line

    def take_up(self) -> None:
        """A queued run starts: it reads ``running``, with no place in line."""
        with self._lock:
            if self._ended or self._state != "queued":
                return
            self._state, self._line.position = "running", None
        self.flush()  # written at once, as a run's first snapshot is: readers see it start

    def move_in_line(self, position: int) -> None:
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

    # ------------------------------------------------------------------ cancel requests

    def deliver(self) -> Cancelled:
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

    def add_cancel_hook(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` (on the flusher's thread) when this run sees a cancel request;
        at once if it already has. A hook must be quick and must not raise."""
        self._cancel.hooks.append(hook)
        if self._cancel.requested and not self._ended:
            hook()

    def undeliver(self) -> None:
        """The task caught the ``Cancelled`` it was handed and went on working: the run
        no longer stopped on request (it reads its own end, ``cancel_requested`` true)."""
        self._cancel.delivered = False

    def remove_cancel_hook(self, hook: Callable[[], object]) -> None:
        """Undo ``add_cancel_hook`` (a bar that closed): a long run keeps no dead hooks."""
        with contextlib.suppress(ValueError):
            self._cancel.hooks.remove(hook)

    def cancel_on_collect(self) -> None:
        """A generator or coroutine was made for this run: dropped unfinished (the
        handle collected while running), the run ends ``cancelled``."""
        self._outcome.on_collect = "cancelled"

    def attach_job(self, job: Any) -> None:
        """``tracked.submit`` runs this run as ``job``: what ``wait()`` waits for."""
        self._line.job = job

    # ------------------------------------------------------------------ the package's loops

    def counted(self, iterable: Iterable[T], messages: bool = False) -> Iterator[T]:
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
            raise self.deliver()
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
        """A ``counted`` loop's first item since a write: wake the flusher, and stop
        the loop before its next item if a cancel request was seen (not after its last)."""
        self._touched()
        if self._cancel.requested and not self._ended:
            if size is None or self.count - first < size:
                raise self.deliver()

    def written(self) -> bool:
        """A loop's first item since a write: wake the flusher; True if the run was asked
        to stop (the flusher writes a request at once, so a loop looks only here)."""
        self._touched()
        return self._cancel.requested

    def feeder(self) -> Callable[[str], None]:
        """What a loop appends one plain ``str`` message with: no check, no lock."""
        return self._push

    def yielded(self) -> int:
        """How many items the ``@tracked`` generator loop has yielded."""
        return self._yields


def _size(iterable: Iterable[object]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
