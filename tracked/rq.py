"""RQ integration: ``tracked.rq.enqueue(queue, func, ...)`` for a ``@tracked`` function.

The run exists from the moment it is asked for: ``enqueue`` publishes the run's
``queued`` record (its ``progress_id`` is the job's id, its ``position`` its
place in line) before the job is pushed, and returns RQ's own ``Job``. A plain
``rq worker`` runs the job: the ``@tracked`` call in the work-horse finds the
job's ticket in ``job.meta["tracked"]`` and takes the run over (no lambda, no
custom worker class). A job RQ retries (``Retry``) goes back to ``queued`` with
its next ``attempt``; a job cancelled while queued never runs its body.

Positions: ``enqueue`` writes the queue's length at that moment; each time a
worker takes a job over, it rewrites the places of the next ``POSITION_WINDOW``
jobs of that queue (one ``LRANGE`` and one ``HMGET`` on the queue's Redis, then a
write per record whose place changed). Further back, a place is the one written
last, which can only overstate it.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Callable
from typing import Any

try:
    import rq
    from rq.job import Job
except ImportError as exc:  # pragma: no cover - rq is in the test extra
    raise ImportError("tracked.rq needs RQ: pip install 'tracked[rq]'") from exc

from ._decorator import CallPlan, describe_call, tracked_store
from ._groupstore import report_move
from ._ledger import group_token
from ._queued import (
    TakeOver,
    Ticket,
    cancel_hooks,
    end_queued,
    prepare,
    reposition,
    withdraw,
)
from ._scope import resolve_store
from ._state import State
from ._store import Owner, Store
from .errors import AlreadyRunning, Cancelled, InvalidValue
from .redis import RedisStore

__all__ = [
    "LINE_TTL",
    "META_KEY",
    "POSITION_WINDOW",
    "enqueue",
    "find_current",
    "job_failed",
    "job_stopped",
    "line_key",
]

logger = logging.getLogger("tracked")

#: The key of ``job.meta`` that carries the run's ticket to the worker.
META_KEY = "tracked"
#: Seconds the line hash of a queue outlives its last ``enqueue`` (a purged queue's
#: entries go with it).
LINE_TTL = 7 * 86400
#: How many jobs at the head of a queue get their place rewritten at each take-over.
POSITION_WINDOW = 10


def line_key(queue_name: str) -> str:
    """The Redis hash (on the queue's server) from job id to the run's key and token,
    for the jobs of ``queue_name`` waiting in line: how a worker finds the records
    whose place moved."""
    return f"tracked:rq:line:{queue_name}"


def enqueue(queue: rq.Queue, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
    """Enqueue ``func`` (a ``@tracked`` function) on ``queue`` as ``queue.enqueue`` does,
    every RQ option included, and publish the run's ``queued`` record with it.

    The run's ``progress_id`` is the job's id (``job_id=`` if given, else a new one),
    and its name and total come from ``func``'s decorator and the call's arguments,
    as in the worker. Raises ``AlreadyRunning`` (enqueueing nothing) if a live or
    queued run holds the key, ``TypeError`` for a function that is not ``@tracked``.
    If RQ then refuses the job, the record ends ``failed`` with RQ's error.

    With a ``RedisStore`` on the queue's own server and database, the record, its
    place in line and the job go in one transaction (one round trip); otherwise the
    record is claimed first, then the job is enqueued.
    """
    group = kwargs.pop("group", None)  # ours, not RQ's nor the function's
    parsed, plan, job_id = _parse(queue, func, args, kwargs)
    token = plan.group if group is None else group_token(group)
    connection = queue.connection
    # A job that waits for others (depends_on) is not in line yet: its place is null.
    in_line = not parsed.depends_on
    store = plan.store
    together = _together(store, parsed, connection, in_line)
    state, owner, ticket = prepare(
        plan.name,
        job_id,
        plan.function,
        total=plan.total,
        position=_first_position(queue, parsed, in_line, together),
        timeout=_queued_timeout(parsed.ttl),
        group=token,
    )
    claim = _claim(store, state, owner, together)
    options = _options(kwargs, parsed, job_id, ticket)
    pipe, own = _pipeline(parsed, connection)
    try:
        _open_transaction(pipe, claim)
        # In the caller's pipeline, the job is pushed when the caller executes it.
        job = queue.enqueue(func, *args, **options, **({"pipeline": pipe} if own else {}))
        place = _line_up(pipe, queue, store, ticket, job_id, in_line and not parsed.at_front)
        if own:
            _check_replies(pipe.execute(raise_on_error=False), claim, place, state, owner, store)
    except AlreadyRunning:
        if claim is not None:  # a new job id held by another run: drop the job again
            job.cancel()
        raise
    except BaseException as exc:
        if claim is None:
            withdraw(store, ticket, exc)
        raise
    _connections.add(connection)
    if token is not None:  # counted queued in its group (a caller's pipeline: now too)
        _count_in_group(store, state, ticket, job if own else None)
    return job


def _parse(
    queue: rq.Queue, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, CallPlan, str]:
    """RQ's reading of the call's options, the run's plan (name, total, store, group)
    and the job's id (``job_id=`` if given, else a new one)."""
    parsed = queue.parse_args(func, *args, **dict(kwargs))
    plan = describe_call(func, tuple(parsed.args or ()), dict(parsed.kwargs or {}))
    return parsed, plan, parsed.job_id or uuid.uuid4().hex


def _pipeline(parsed: Any, connection: Any) -> tuple[Any, bool]:
    """The pipeline the job goes in: the caller's (``pipeline=``), else one of our own
    (True: executed here)."""
    if parsed.pipeline is None:
        return connection.pipeline(), True
    return parsed.pipeline, False


def _count_in_group(store: Store, state: State, ticket: Ticket, job: Job | None) -> None:
    """Count the queued run in its group; a group that refused it drops it before it
    starts (``cancelled``: a worker skips it; ``job``, pushed already, is cancelled),
    never left to run uncounted, and ``InvalidValue`` says so."""
    book = report_move(store, state)
    why = "its group is not running" if book is None else book.refusal()
    if why is not None:
        end_queued(store, ticket, "cancelled", error=why)
        if job is not None:
            job.cancel()
        raise InvalidValue(f"cannot enqueue {state.key!r}: {why}")


def _open_transaction(pipe: Any, claim: tuple[Any, ...] | None) -> None:
    """With a claim command, make ``pipe`` a transaction that starts with it: RQ adds
    its commands to this transaction, after the record's."""
    if claim is not None:
        pipe.multi()
        pipe.execute_command(*claim)


def _queued_timeout(ttl: int | None) -> float | None:
    """How long the queued record lives: the job's TTL and a minute, or no limit."""
    return None if ttl is None or ttl < 0 else float(ttl) + 60.0


def _claim(store: Store, state: State, owner: Owner, together: bool) -> tuple[Any, ...] | None:
    """Claim the record now; or, to go in one transaction with the job, the command
    that claims it."""
    if together and isinstance(store, RedisStore):
        claim = store.claim_command(state, owner)
        if claim is not None:
            return claim
    store.claim(state, owner)
    return None


def _together(store: Store, parsed: Any, connection: Any, in_line: bool) -> bool:
    """Whether the record, its place in line and the job can go in one transaction."""
    return (
        isinstance(store, RedisStore)
        and parsed.pipeline is None
        and parsed.job_id is None  # a new id: no other run can hold the key
        and in_line  # RQ WATCHes a job's dependencies before its transaction
        and store.same_server(connection)
    )


def _first_position(queue: rq.Queue, parsed: Any, in_line: bool, together: bool) -> int | None:
    """The place in line the record is published with: none for a job that waits for
    others, 1 at the front, else the queue's length + 1 (or, in one transaction with
    the job, the place the line script computes)."""
    if not in_line:
        return None
    if parsed.at_front:
        return 1
    return None if together else queue.count + 1


def _line_up(
    pipe: Any, queue: rq.Queue, store: Store, ticket: Ticket, job_id: str, placed: bool
) -> tuple[Any, ...] | None:
    """Add the job to the queue's line in ``pipe``: by the store's line script when it
    places the record (``placed``: in line, not at the front) on the queue's server
    (returned, for its reply), else by a plain ``HSET``."""
    line = (line_key(queue.name), job_id, f"{ticket.run}:{ticket.key}", LINE_TTL)
    place = None
    if placed and isinstance(store, RedisStore) and store.same_server(queue.connection):
        place = store.place_command(ticket.key, ticket.run, queue.key, line)
    if place is not None:
        pipe.execute_command(*place)
    else:
        pipe.hset(line[0], job_id, line[2])
        pipe.expire(line[0], LINE_TTL)
    return place


def _options(kwargs: dict[str, Any], parsed: Any, job_id: str, ticket: Ticket) -> dict[str, Any]:
    """RQ's options for the job: the caller's, with the job id, the ticket in its meta
    and the callbacks that end a run whose job never reached its call."""
    meta = dict(parsed.meta or {})
    meta[META_KEY] = ticket.to_dict()
    options = dict(kwargs)
    options.update(job_id=job_id, meta=meta)
    if parsed.on_failure is None:  # a job that fails before its @tracked call ends its run
        options["on_failure"] = _ON_FAILURE
    if parsed.on_stopped is None:  # RQ's stop-job kills the work-horse: the run is cancelled
        options["on_stopped"] = _ON_STOPPED
    return options


def _check_replies(
    replies: list[Any],
    claim: tuple[Any, ...] | None,
    place: tuple[Any, ...] | None,
    state: State,
    owner: Any,
    store: Any,
) -> None:
    """The replies of the job's transaction: the record's claim first (when it was sent
    there), RQ's own commands, the place in line last (a hint: its error is logged)."""
    if place is not None:
        if not store.placed(replies[-1]):
            logger.debug("cannot set the place of %r: %r", state.key, replies[-1])
        replies = replies[:-1]
    if claim is not None:
        store.claimed(state, owner, replies[0])
        replies = replies[1:]
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


#: The Redis connections this process enqueued on: a cancel of a queued run here
#: removes its job from the queue through them (``Job.cancel``).
_connections: weakref.WeakSet[Any] = weakref.WeakSet()


def _drop_job(state: State) -> None:
    """A cancel ended queued run ``state``: cancel its RQ job, where this process knows
    the queue's server and the job there carries this very run."""
    if state.progress_id is None:
        return
    for connection in list(_connections):
        try:
            job = Job.fetch(state.progress_id, connection=connection)
        except Exception:  # noqa: BLE001, S112 - not a job of this server
            continue
        ticket = Ticket.from_dict(job.meta.get(META_KEY))
        if ticket is None or ticket.key != state.key:
            continue
        job.cancel()
        connection.hdel(line_key(job.origin), job.id)
        return


cancel_hooks.append(_drop_job)


def job_failed(job: Job, connection: Any, *exc_info: Any) -> None:
    """RQ's failure callback that ``enqueue`` sets (when you give none; with your own
    ``on_failure``, call this from it): a job that failed before its ``@tracked`` call
    took the run over (its function could not be imported, say) ends the queued run
    ``failed`` with RQ's error, instead of leaving it queued until its timeout."""
    ticket = Ticket.from_dict(job.meta.get(META_KEY))
    if ticket is None or job.should_retry:  # RQ runs it again: the run waits in line
        return
    error = exc_info[1] if len(exc_info) > 1 else None
    text = "the job failed before it started" if error is None else _describe(error)
    try:
        store = tracked_store(job.func)
    except Exception:  # noqa: BLE001 - the function may be what cannot be imported
        store = None
    end_queued(store if store is not None else resolve_store(None), ticket, "failed", error=text)


def job_stopped(job: Job, connection: Any) -> None:
    """RQ's stopped callback that ``enqueue`` sets (when you give none; with your own
    ``on_stopped``, call this from it): ``send_stop_job_command`` killed the job's
    work-horse on request, so its run ends ``cancelled`` rather than ``abandoned``."""
    ticket = Ticket.from_dict(job.meta.get(META_KEY))
    if ticket is None:
        return
    try:
        store = tracked_store(job.func)
    except Exception:  # noqa: BLE001 - the function may be what cannot be imported
        store = None
    end_queued(
        store if store is not None else resolve_store(None), ticket, "cancelled", started=True
    )


def _describe(error: BaseException) -> str:
    """``Type: message``, and what caused it (RQ wraps a failed load in its own error)."""
    text = str(error)
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    cause = error.__cause__ or error.__context__
    return described if cause is None else f"{described} ({_describe(cause)})"


_ON_FAILURE = rq.Callback(job_failed)
_ON_STOPPED = rq.Callback(job_stopped)


def find_current() -> TakeOver | None:
    """In an RQ work-horse: the take-over of the job being performed, if ``enqueue``
    published its run (its meta carries a ticket); else None."""
    job = rq.get_current_job()
    if job is None:
        return None
    ticket = Ticket.from_dict(job.meta.get(META_KEY))
    if ticket is None:
        return None
    found = _takeovers.get(job.id)
    if found is not None and found.ticket == ticket:
        return found
    found = TakeOver(
        ticket,
        retries=lambda exc: not isinstance(exc, Cancelled) and job.should_retry,
        taken=lambda store: _refresh_line(job, ticket, store),
    )
    _takeovers.clear()  # one job at a time per work-horse
    _takeovers[job.id] = found
    return found


_takeovers: dict[str, TakeOver] = {}


def _refresh_line(job: Job, ticket: Ticket, store: Store) -> None:
    """This job left the line: rewrite the places of the next jobs in its queue."""
    try:
        connection = job.connection
        line = line_key(job.origin)
        pipe = connection.pipeline(transaction=False)
        pipe.hdel(line, job.id)
        pipe.lrange(rq.Queue.redis_queue_namespace_prefix + job.origin, 0, POSITION_WINDOW - 1)
        _, waiting = pipe.execute()
        ids = [_text(i) for i in waiting]
        if not ids:
            return
        places = []
        for position, value in enumerate(connection.hmget(line, ids), start=1):
            if value is None:
                continue
            run, _, key = _text(value).partition(":")
            places.append((key, run, position))
        if places:
            reposition(store, places)
    except Exception as exc:  # noqa: BLE001 - a place in line is a hint; the job goes on
        logger.debug("cannot refresh the places in line of %r: %s", ticket.key, exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
