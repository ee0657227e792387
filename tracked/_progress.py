"""``Progress``: the live handle a task mutates.

Mutations are cheap (counters and a bounded deque under a lock); a snapshot is
serialised and written to the store at most once per ``min_interval``, either
inline when an update finds a write due or by the process's background flusher.
The first and the final snapshot are written at once.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from . import _flusher
from ._state import DEFAULT_STATUS, State, check_count, check_total, encode_result, make_key
from ._store import Owner, Store, register_live_run, unregister_live_run
from .errors import InvalidValue, StoreError

__all__ = ["Progress", "current_progress"]

logger = logging.getLogger("tracked")

#: The innermost live progress of this context (see ``tracked.current()``).
current_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "tracked_current", default=None
)

#: Weight of the newest sample in the smoothed rate, as tqdm's default smoothing.
RATE_SMOOTHING = 0.3
#: Shortest span of time one rate sample covers, so bursts of writes do not make it jumpy.
RATE_WINDOW = 0.05


class Progress:
    """A running progress: change it from the task; readers see its snapshots.

    Thread-safe: ``increment``, ``add_message`` and the setters may be called
    from several threads. Use it as a context manager (``tracked.start``) or let
    ``@tracked`` manage it; a handle that is garbage-collected while running ends
    as ``finished``, as the Perl original ended it when it went out of scope.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_context_tokens",
        "_end_on_collect",
        "_ended",
        "_error",
        "_finished_time",
        "_flushed_mark",
        "_job",
        "_last_write",
        "_lock",
        "_messages",
        "_next_index",
        "_owner",
        "_rate",
        "_rate_count",
        "_rate_time",
        "_result",
        "_state",
        "_status",
        "_store_failing",
        "_total",
        "_version",
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
    ) -> None:
        self.key = make_key(name, progress_id)
        self.name = name
        self.progress_id = progress_id
        self.store = store
        self.min_interval = _check_interval(min_interval)
        self.max_messages = _check_max_messages(max_messages)
        self._total = check_total(total)
        self._base = check_count(count)
        self._yields = 0  # written only by the @tracked generator loop, without the lock
        self._status = _check_status(status)
        initial = [_check_message(m) for m in messages]
        # (index over all messages ever added, text): indices come from an atomic
        # counter, so appending needs no lock and a snapshot can tell the count.
        self._messages: collections.deque[tuple[int, str]] = collections.deque(
            enumerate(initial), maxlen=max(1, self.max_messages)
        )
        self._next_index = itertools.count(len(initial)).__next__
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._version = 0
        self._flushed_mark: tuple[int, int] = (-1, -1)
        self._state = "running"
        self._error: str | None = None
        self._ended = False
        self._end_on_collect = "finished"
        self._finished_time: float | None = None
        self._context_tokens: list[contextvars.Token[Progress | None]] = []
        self._owner: Owner | None = None
        self._store_failing = False
        self.start_time = time.time()
        self._last_write = 0.0
        self._rate: float | None = None
        self._rate_time = time.monotonic()
        self._rate_count = self._base
        self._result: Any = None
        self._job: Any = None  # set by tracked.submit(): what wait() waits for

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
        self._flushed_mark = (0, 0)
        self._last_write = time.monotonic()
        _flusher.watch(self)
        return self

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
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._state = state
            self._error = error
            self._finished_time = time.time()
            self._version += 1
        _flusher.forget(self)
        if self._owner is not None:
            saved = self.flush()
            unregister_live_run(self._owner.run)
            if not saved:
                _flusher.retry(self)

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
        ``GeneratorExit`` or a task's cancellation cancels, any other exception fails."""
        if exc is None:
            self.finish()
        elif _is_cancellation(exc):
            self.cancel()
        else:
            self.fail(exc)

    def __del__(self) -> None:
        try:
            if not self._ended and self._owner is not None:
                self._end(self._end_on_collect)
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass

    # ------------------------------------------------------------------ reading

    @property
    def count(self) -> int:
        """Items done so far."""
        return self._base + self._yields

    @count.setter
    def count(self, value: int) -> None:
        check_count(value)
        with self._lock:
            self._base = value - self._yields
            self._version += 1
        self._maybe_flush()

    @property
    def total(self) -> int | None:
        """Items expected in all; None when unknown."""
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        check_total(value)
        with self._lock:
            self._total = value
            self._version += 1
        self._maybe_flush()

    @property
    def status(self) -> str:
        """Free text for people; defaults to "in progress", then the final state word.

        Setting it to None goes back to that default."""
        if self._status is not None:
            return self._status
        return DEFAULT_STATUS if not self._ended else self._state

    @status.setter
    def status(self, value: str | None) -> None:
        _check_status(value)
        with self._lock:
            self._status = value
            self._version += 1
        self._maybe_flush()

    @property
    def messages(self) -> tuple[str, ...]:
        """The last ``max_messages`` messages, oldest first."""
        return self._ordered_messages()[0]

    @property
    def message_count(self) -> int:
        """Every message ever added, including those dropped by the cap."""
        return self._ordered_messages()[1]

    @property
    def in_progress(self) -> bool:
        """True until the progress ends."""
        return not self._ended

    @property
    def state(self) -> str:
        """``running``, then ``finished``, ``failed`` or ``cancelled``."""
        return self._state

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
        with self._lock:
            self._result = kept
            self._version += 1

    def wait(self, timeout: float | None = None) -> Any:
        """Block until a run started with ``tracked.submit`` ends; return its function's
        return value or raise its exception. ``TimeoutError`` after ``timeout`` seconds;
        ``concurrent.futures.CancelledError`` if it was cancelled before it started."""
        if self._job is None:
            raise TypeError(f"{self!r} was not started by tracked.submit(): nothing to wait for")
        return self._job.wait(timeout)

    # ------------------------------------------------------------------ updating

    def increment(self, n: int = 1, *messages: str) -> None:
        """Add ``n`` to the count and append any ``messages``."""
        with self._lock:
            self._base += n
            if messages:
                self._append(messages)
            self._version += 1
        self._maybe_flush()

    def decrement(self, n: int = 1, *messages: str) -> None:
        """Take ``n`` from the count and append any ``messages``."""
        self.increment(-n, *messages)

    def add_message(self, *messages: str) -> None:
        """Append messages without changing the count."""
        with self._lock:
            self._append(messages)
            self._version += 1
        self._maybe_flush()

    def __iadd__(self, n: int) -> Progress:
        self.increment(n)
        return self

    def __isub__(self, n: int) -> Progress:
        self.increment(-n)
        return self

    def _append(self, messages: Iterable[str]) -> None:
        for message in messages:
            self._messages.append((self._next_index(), _check_message(message)))

    def _ordered_messages(self) -> tuple[tuple[str, ...], int]:
        """The kept messages in index order and the count of all messages so far.

        Two threads may append out of order, or one may hold an index it has not
        appended yet: sort, and stop before a gap, so the messages always end at
        ``message_count - 1`` (clients use that for ``?since=``).
        """
        items = list(self._messages)
        if not items:
            return (), 0
        indices, texts = zip(*items, strict=True)
        first = indices[0]
        if indices != tuple(range(first, first + len(indices))):  # rare: racing threads
            items.sort()
            end = next(
                (i for i in range(1, len(items)) if items[i][0] != items[i - 1][0] + 1),
                len(items),
            )
            indices, texts = zip(*items[:end], strict=True)
        kept = texts[len(texts) - self.max_messages :] if self.max_messages else ()
        return kept, indices[-1] + 1

    # ------------------------------------------------------------------ writing

    def snapshot(self) -> State:
        """The current state as readers will see it once written."""
        now = time.time()
        with self._lock:
            count = self._base + self._yields
            rate = self._update_rate(count)
            messages, message_count = self._ordered_messages()
            return State(
                name=self.name,
                progress_id=self.progress_id,
                total=self._total,
                count=count,
                messages=messages,
                message_count=message_count,
                in_progress=not self._ended,
                state=self._state,
                status=self.status,
                error=self._error,
                start_time=self.start_time,
                current_time=now if self._finished_time is None else self._finished_time,
                finished_time=self._finished_time,
                rate=rate,
                result=self._result if self._ended else None,
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

    def _maybe_flush(self) -> None:
        if (
            self._owner is not None
            and not self._ended
            and not self._store_failing  # retries are the flusher's, not the task's
            and time.monotonic() - self._last_write >= self.min_interval
        ):
            self.flush()

    def _changed(self) -> bool:
        """Whether the handle changed since the last successful write."""
        return (self._version, self._yields) != self._flushed_mark

    def flush(self) -> bool:
        """Write the current snapshot now. Never raises: a store failure is logged
        once and the write is retried later. Returns whether it was written."""
        owner = self._owner
        if owner is None:
            return False
        with self._write_lock:
            mark = (self._version, self._yields)
            snapshot = self.snapshot()
            self._last_write = time.monotonic()
            try:
                self.store.save(snapshot, owner)
            except Exception as exc:  # noqa: BLE001 - instrumentation never kills the task
                self._report_failure(exc)
                return False
            self._flushed_mark = mark
            if self._store_failing:
                self._store_failing = False
                logger.warning(
                    "tracked: writes to %r resumed for progress %r", self.store, self.key
                )
            return True

    def _report_failure(self, exc: Exception) -> None:
        if not self._store_failing:
            self._store_failing = True
            logger.warning(
                "tracked: cannot write progress %r to %r (%s); the task goes on and "
                "writes resume when the store works again",
                self.key,
                self.store,
                exc if isinstance(exc, StoreError) else _describe(exc),
            )


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` stops work from outside (a closed generator, Ctrl-C, a
    cancelled asyncio task) rather than reporting that the work failed."""
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt)):
        return True
    asyncio = sys.modules.get("asyncio")  # no task can be cancelled without it
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _check_interval(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidValue(f"min_interval must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _check_max_messages(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"max_messages must be an int >= 0, got {value!r}")
    return value


def _check_status(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidValue(f"status must be a str, not {type(value).__name__}")
    return value


def _check_message(message: object) -> str:
    if not isinstance(message, str):
        raise InvalidValue(f"a message must be a str, not {type(message).__name__}")
    return message


_result_warned: set[str] = set()


def _warn_result_once(name: str, problem: str) -> None:
    """Log that a result was dropped, once per progress name (not per run)."""
    if name in _result_warned or len(_result_warned) >= 1024:
        return
    _result_warned.add(name)
    logger.warning(
        "tracked: the result of progress %r is published as null: %s (logged once for this name)",
        name,
        problem,
    )
