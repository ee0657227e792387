"""Runs that exist before any process runs them: ``queued`` records owned by no process.

A queue integration (``tracked.rq``, ``tracked.celery``) publishes the ``queued``
record of a run when its job is asked for, keyed by the function's name and the
job's id, with a run token (a ``Ticket``) that travels with the job. The record's
owner is no process but a lease of ``queued_timeout`` seconds: a run whose job the
queue lost reads ``abandoned`` once it lapses, by the one liveness rule of
``_store``. The worker that starts the job takes the run over (same run token,
count, messages, attempt), a cancel before that ends it ``cancelled`` at once, and
a retry puts it back in line. Every step is one atomic ``Store.swap``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib
import logging
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._groupstore import report_move
from ._progress import Progress, current_progress
from ._scope import MAX_QUEUED_TIMEOUT, check_timeout, queued_timeout, resolve_store
from ._state import State, make_key, validate_progress_id
from ._store import QUEUE_HOST, Owner, Record, Store, judge, owner_gone_here
from .errors import AlreadyRunning, InvalidName

__all__ = [
    "NotStarted",
    "TakeOver",
    "Ticket",
    "cancel",
    "cancel_group",
    "end_queued",
    "find_takeover",
    "prepare",
    "publish",
    "reposition",
    "requeue_current",
    "stop_signal",
    "take_over",
    "takeover_scope",
    "withdraw",
]

logger = logging.getLogger("tracked")

#: The states from which a worker may take a queued run over: still waiting, or
#: judged abandoned (its queued timeout lapsed, or an earlier attempt's worker died).
TAKEABLE = frozenset({"queued", "abandoned"})
QUEUED = frozenset({"queued"})


@dataclasses.dataclass(frozen=True, slots=True)
class Ticket:
    """What travels with a queued job so that its worker takes the run over: the
    record's name and progress_id (the job id), the run token, and the ``@tracked``
    function (``module.qualname``) that runs it. Plain strings: a JSON object in a
    job's meta or a message header."""

    name: str | None
    progress_id: str
    run: str
    function: str

    @property
    def key(self) -> str:
        """The storage key of the run."""
        return make_key(self.name, self.progress_id)

    def to_dict(self) -> dict[str, Any]:
        """The ticket as a JSON object."""
        return {
            "name": self.name,
            "progress_id": self.progress_id,
            "run": self.run,
            "function": self.function,
        }

    @classmethod
    def from_dict(cls, data: object) -> Ticket | None:
        """A ticket from ``to_dict``'s object; None for anything else (a job of another
        tracked version, or one tracked did not publish)."""
        if not isinstance(data, Mapping):
            return None
        try:
            name, progress_id = data["name"], validate_progress_id(data["progress_id"])
            run, function = data["run"], data["function"]
            if not (name is None or isinstance(name, str)):
                return None
            if not isinstance(run, str) or not run or not isinstance(function, str):
                return None
            make_key(name, progress_id)
        except (KeyError, ValueError):
            return None
        return cls(name, progress_id, run, function)


# ----------------------------------------------------------------------------- publishing


def prepare(
    name: str | None,
    progress_id: str,
    function: str,
    *,
    total: int | None,
    position: int | None = None,
    timeout: float | None = None,
    group: str | None = None,
) -> tuple[State, Owner, Ticket]:
    """The ``queued`` record of a new run (in progress, count 0, ``position`` in line),
    its owner (no process: a lease of the queued timeout) and the ticket its job
    carries; ``publish`` claims the record, or a queue's transaction does."""
    if isinstance(timeout, float) and timeout > MAX_QUEUED_TIMEOUT:
        timeout = MAX_QUEUED_TIMEOUT  # a queue's own expiry (RQ ttl) beyond any lease
    seconds = queued_timeout() if timeout is None else check_timeout(timeout)
    ticket = Ticket(name, validate_progress_id(progress_id), uuid.uuid4().hex, function)
    now = time.time()
    state = State(
        name=name,
        progress_id=progress_id,
        total=total,
        state="queued",
        position=position,
        status="queued",
        start_time=now,
        current_time=now,
        group=group,
    )
    return state, Owner.waiting(ticket.run, now + seconds), ticket


def publish(
    name: str | None,
    progress_id: str,
    function: str,
    *,
    total: int | None,
    store: Store,
    position: int | None = None,
    timeout: float | None = None,
) -> Ticket:
    """Claim the key ``name`` + ``progress_id`` with a ``queued`` record (see ``prepare``)
    and return the ticket its job carries. Raises ``AlreadyRunning`` if a live or
    queued run holds the key, ``StoreError``."""
    state, owner, ticket = prepare(
        name, progress_id, function, total=total, position=position, timeout=timeout
    )
    store.claim(state, owner)
    return ticket


def withdraw(store: Store, ticket: Ticket, error: BaseException) -> None:
    """The queue refused the job after its record was published: end the record
    ``failed`` with the error, if it is still queued (best effort)."""
    try:
        text = f"the queue refused the job: {type(error).__name__}: {error}"
        end_queued(store, ticket, "failed", error=text)
    except Exception as exc:  # noqa: BLE001 - the caller re-raises the queue's error
        logger.warning("cannot end the queued record of %r: %s", ticket.key, exc)


def end_queued(
    store: Store,
    ticket: Ticket,
    outcome: str,
    *,
    error: str | None = None,
    started: bool = False,
) -> bool:
    """End the run of ``ticket`` as ``outcome`` (``failed``, ``cancelled``) if it never
    started: still queued, or judged abandoned while queued. ``started``: also if it
    runs, for a queue that has just killed its process on request (Celery's
    ``terminate``, RQ's stop), which wrote no end of its own.
    True if this ended it."""
    record = store.read(ticket.key)
    if record is None or record.owner is None or record.owner.run != ticket.run:
        return False
    if not _endable(record.state, started=started):
        return False
    ended = dataclasses.replace(
        record.state.ended(outcome, time.time(), error),
        error=error,
        position=None,
        cancel_requested=outcome == "cancelled",
        status=(
            "cancelled before it started"
            if outcome == "cancelled" and record.state.state == "queued"
            else outcome
        ),
    )
    was = TAKEABLE | {"running"} if started else TAKEABLE
    if not store.swap(ended, _ended_owner(record.owner), run=ticket.run, was=was):
        return False
    report_move(store, ended)  # a group's child: counted as it ended
    return True


def _endable(state: State, *, started: bool) -> bool:
    """Whether ``end_queued`` may end a run in ``state``: queued; or, ``started``, also
    running (an ended run keeps its end: the killed process wrote none)."""
    if state.state == "queued":
        return True
    return started and state.in_progress


def reposition(store: Store, places: Sequence[tuple[str, str, int]]) -> int:
    """Write each ``(key, run, position)``'s place in line into its record if that run
    is still queued there and its position changed; returns how many were written."""
    moved = 0
    for key, run, position in places:
        try:
            record = store.read(key)
            if record is None or record.owner is None or record.owner.run != run:
                continue
            if record.state.state != "queued" or record.state.position == position:
                continue
            state = dataclasses.replace(record.state, position=position, current_time=time.time())
            moved += store.swap(state, record.owner, run=run, was=QUEUED)
        except Exception as exc:  # noqa: BLE001 - a position is a hint; the job goes on
            logger.debug("cannot move %r to place %d: %s", key, position, exc)
    return moved


def _ended_owner(owner: Owner) -> Owner:
    """A queued owner without its lease: the record it owns has ended."""
    return dataclasses.replace(owner, lease_expires=None)


# ----------------------------------------------------------------------------- cancel

#: Called with the final state of a queued run that a cancel ended, so that the
#: queue integrations of this process drop its job from the queue (RQ ``cancel``,
#: Celery ``revoke``). A process without one (the CLI) leaves the job in line: the
#: worker that takes it finds the run cancelled and never runs the body.
cancel_hooks: list[Callable[[State], object]] = []


def cancel(store: Store, key: str) -> bool:
    """Stop run ``key``: a ``queued`` one ends ``cancelled`` at once (count 0, it never
    starts) and its job leaves the queue where this process can do that; a running
    one is asked to stop (``Store.request_cancel``). True if a run was stopped or
    asked; False when none is queued or running."""
    for _ in range(3):
        record = store.read(key)
        if record is None or record.owner is None:
            return False
        if record.state.state != "queued" or not judge(record).in_progress:
            return store.request_cancel(key)
        if record.owner.host != QUEUE_HOST:  # queued in a process (tracked.submit): its
            return store.request_cancel(key)  # owner drops it, as with any request
        ended = dataclasses.replace(
            record.state.ended("cancelled", time.time()),
            position=None,
            cancel_requested=True,
            status="cancelled before it started",
        )
        if store.swap(ended, _ended_owner(record.owner), run=record.owner.run, was=QUEUED):
            report_move(store, ended)
            for hook in list(cancel_hooks):
                try:
                    hook(ended)
                except Exception:
                    logger.exception("cannot remove %r from its queue", key)
            return True
        # Taken over (or retried) between the read and the swap: look again.
    return store.request_cancel(key)


def cancel_group(store: Store, key: str) -> bool | None:
    """Cancel group ``key`` and every child not yet ended (queued ones never start,
    running ones are asked to stop); None if ``key`` is not a running group."""
    record = store.read(key)
    if record is None or record.state.children is None or record.owner is None:
        return None
    book = store.cancel_group(key, record.owner.run)
    if book is None or book.ended_at is not None:
        return False
    children = store.group_children(key)
    for wanted in ("queued", "running"):  # the waiting first: none starts as others stop
        for child, counted in children:
            if counted == wanted and cancel_group(store, child) is None:
                cancel(store, child)
    return True


# ----------------------------------------------------------------------------- take-over


class NotStarted(Exception):
    """Raised by ``take_over`` when the run ended before its worker started it (it was
    cancelled while queued, or an earlier attempt asked to stop ended): the
    ``@tracked`` call returns ``value`` without running its body."""

    def __init__(self, value: Any) -> None:
        super().__init__("the queued run ended before it started")
        self.value = value


@dataclasses.dataclass(slots=True)
class TakeOver:
    """What a queue integration knows about the job a worker is starting: the run it
    carries, whether the queue will retry it after an exception, and what the call
    returns (or raises) when the run was cancelled before it started."""

    ticket: Ticket
    #: Given the exception the job's function raised: True if the queue will run it
    #: again (the run then goes back in line instead of ending).
    retries: Callable[[BaseException], bool] = lambda exc: False
    #: Called with the run's final state when it ended before this worker started it;
    #: its return value is the call's (it may raise what the queue expects).
    skipped: Callable[[State], Any] = lambda state: None
    #: Called with the store once this process has taken the run over (RQ moves the
    #: places of the jobs behind it).
    taken: Callable[[Store], object] | None = None
    timeout: float | None = None
    #: Given the ``tracked.Cancelled`` that stopped the run, what the call raises
    #: instead (None: ``Cancelled`` itself), e.g. what the queue takes for a stop.
    stopped: Callable[[BaseException], BaseException | None] = lambda exc: None
    #: Given the exception the job's function ends by: True when the queue is killing
    #: this process and ends the run itself (Celery's revoke with ``terminate``): the
    #: process then writes no end, which would be read before the queue's.
    killed: Callable[[BaseException], bool] = lambda exc: False
    #: Where the queued record is (None: where the ``@tracked`` function writes).
    store: Store | None = None
    #: Set when the job must not run (its id cannot key a run): the ``@tracked`` call
    #: raises ``InvalidName`` with this text instead of running untracked.
    refused: str | None = None
    used: bool = False


#: Set by an integration around the call of a job's function (Celery's
#: ``task_prerun`` to ``task_postrun``), so that its ``@tracked`` call takes the run over.
takeover_scope: contextvars.ContextVar[TakeOver | None] = contextvars.ContextVar(
    "tracked_takeover", default=None
)

#: Queue libraries whose workers call a job's function with no hook of ours around it,
#: and the integration that finds the job being run (``find_current()``). Asked only
#: once the queue library is imported in this process (a worker of that queue).
_FINDERS = (("rq", "tracked.rq"),)


def find_takeover(function: Callable[..., Any]) -> TakeOver | None:
    """The take-over for a call of the ``@tracked`` function ``function`` (the one it
    wraps) in this context, if a queue's worker is starting its queued run here and the
    run has not been taken yet. Outside a queue's worker: one context variable read."""
    found = takeover_scope.get()
    if found is None:
        for library, integration in _FINDERS:
            if library in sys.modules:
                found = importlib.import_module(integration).find_current()
                if found is not None:
                    break
    if found is None or found.used:
        return None
    if found.ticket.function != f"{function.__module__}.{function.__qualname__}":
        return None
    return found


def take_over(
    found: TakeOver,
    total: int | None,
    *,
    store: Store | None,
    min_interval: float,
    max_messages: int,
) -> Progress:
    """The running handle of the queued run ``found`` carries, taken over by this
    process. Raises ``NotStarted`` if it was cancelled while queued (the caller returns
    without running the body), ``AlreadyRunning`` if another live run holds its key."""
    found.used = True
    if found.refused is not None:
        raise InvalidName(found.refused)
    ticket = found.ticket
    chosen = found.store if found.store is not None else resolve_store(store)
    timeout = queued_timeout() if found.timeout is None else found.timeout
    # An earlier attempt's worker that died may still hold the run until its lease
    # lapses (RQ retries a killed work-horse's job at once): wait that long at most.
    deadline = time.monotonic() + (chosen.lease or 0.0) + 1.0
    while True:
        progress = Progress(
            ticket.name,
            store=chosen,
            progress_id=ticket.progress_id,
            total=total,
            min_interval=min_interval,
            max_messages=max_messages,
        )
        taking = _what_to_take(found, chosen.read(ticket.key), chosen, deadline)
        if taking is None:
            time.sleep(0.05)
            continue
        carried, was = taking
        retry = _retrier(found, ticket.run, timeout)
        if progress.take_over(carried, ticket.run, was, retry, _killer(found)):
            _taken_over(progress, found, chosen)
            return progress
        if time.monotonic() >= deadline:
            raise AlreadyRunning(ticket.key)


def _taken_over(progress: Progress, found: TakeOver, chosen: Store) -> None:
    """``progress`` now owns the run ``found`` carries: remember where it came from,
    and run the queue's take-over hook (a failing hook is logged, the run goes on)."""
    _taken[progress] = found
    if found.taken is not None:
        try:
            found.taken(chosen)
        except Exception:
            logger.exception("a take-over hook of %r failed", found.ticket.key)


def _what_to_take(
    found: TakeOver, record: Record | None, chosen: Store, deadline: float
) -> tuple[State | None, frozenset[str]] | None:
    """From the record read: (the state the run carries on from, the states the record
    may be in to be taken); None to read it again shortly (an earlier attempt's worker
    may still hold it). ``NotStarted`` if the run must not run (see ``take_over``)."""
    mine = _this_run(found, record, chosen)
    if mine is None:
        return None, TAKEABLE
    judged = judge(mine)
    if judged.state == "cancelled" or (judged.cancel_requested and not judged.in_progress):
        # Cancelled while queued, or asked to stop and then ended another way (an
        # attempt that failed on its own): the queue's retry must not run the body again.
        raise NotStarted(found.skipped(judged))
    was = TAKEABLE
    if judged.state == "running":
        if mine.owner is not None and owner_gone_here(mine.owner):
            was = TAKEABLE | {"running"}  # its process is gone: no need to wait
        elif time.monotonic() < deadline:
            return None
    return _carried(mine.state if judged.state in was else None), was


def _this_run(found: TakeOver, record: Record | None, chosen: Store) -> Record | None:
    """``record`` if it is the run ``found`` names; else None: the run starts afresh
    (said in the log when there is no record: pruned, or the store was emptied)."""
    ticket = found.ticket
    if record is not None and record.owner is not None and record.owner.run == ticket.run:
        return record
    if record is None:
        logger.warning(
            "no queued record of %r in %r: is it the store the job was "
            "enqueued with? The run starts afresh there",
            ticket.key,
            chosen,
        )
    return None


def _carried(state: State | None) -> State | None:
    """The state a taken-over run carries on from: a running one's worker died, so
    this is its next attempt."""
    if state is not None and state.state == "running":
        return dataclasses.replace(state, attempt=state.attempt + 1)
    return state


#: The take-over each running handle of this process came from.
_taken: weakref.WeakKeyDictionary[Progress, TakeOver] = weakref.WeakKeyDictionary()


def stop_signal(progress: Progress, exc: BaseException) -> BaseException | None:
    """What a ``@tracked`` call raises instead of the ``Cancelled`` that stopped its
    run, when a queue's worker took it over (None: ``Cancelled`` itself)."""
    found = _taken.get(progress)
    if found is None:
        return None
    try:
        return found.stopped(exc)
    except BaseException as replaced:  # noqa: BLE001 - the hook may raise its signal
        return replaced


def requeue_current(progress_id: str) -> Ticket | None:
    """A queue is sending the job of the run current in this context again (Celery's
    ``self.retry()``, from inside the task): put the run back in line now, before a
    worker can receive the new message. Returns the run's ticket for that message."""
    progress = current_progress.get()
    found = takeover_scope.get()
    if progress is None or found is None or progress.progress_id != progress_id:
        return None
    if progress.key != found.ticket.key:
        return None
    timeout = queued_timeout() if found.timeout is None else found.timeout
    progress.requeue_retrying(Owner.waiting(found.ticket.run, time.time() + timeout))
    return found.ticket


def _killer(found: TakeOver) -> Callable[[BaseException], bool]:
    def killed(exc: BaseException) -> bool:
        try:
            return found.killed(exc)
        except Exception:
            logger.exception("cannot tell whether the queue is killing %r", found.ticket)
            return False

    return killed


def _retrier(found: TakeOver, run: str, timeout: float) -> Callable[[BaseException], Owner | None]:
    def retry(exc: BaseException) -> Owner | None:
        try:
            again = found.retries(exc)
        except Exception:
            logger.exception("cannot tell whether the queue retries %r", found.ticket)
            return None
        return Owner.waiting(run, time.time() + timeout) if again else None

    return retry
