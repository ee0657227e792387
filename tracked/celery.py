"""Celery integration: ``tracked.celery.install(app)``.

For every task whose function is ``@tracked``, the publisher writes the run's
``queued`` record, keyed by the function's name and the task id, when the
message is sent (``before_task_publish``; the message carries the run's ticket
in its ``tracked`` header). A plain ``celery worker`` (any pool) takes the run
over when the task starts (``task_prerun`` sets the take-over scope the
``@tracked`` call reads). ``self.retry()`` puts the run back in line with its
next ``attempt`` (the same run), ``revoke`` before the start and
``tracked.cancel`` of a queued task end it ``cancelled`` without running it, and
an error raised before the body ran (``task_failure`` of a run never taken
over) ends it ``failed`` with the error. ``revoke(terminate=True)`` of a running
task ends it ``cancelled``: the killed process writes no end of its own.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

try:
    from billiard.common import terminate_handler_fired  # type: ignore[import-untyped]
    from celery import Celery, signals  # type: ignore[import-untyped]
    from celery.exceptions import Ignore, Retry  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - celery is in the test extra
    raise ImportError("tracked.celery needs Celery: pip install 'tracked[celery]'") from exc

from ._decorator import describe_call, tracked_function, tracked_store
from ._groupstore import report_move
from ._queued import (
    TakeOver,
    Ticket,
    cancel_hooks,
    end_queued,
    prepare,
    requeue_current,
    takeover_scope,
)
from ._scope import StoreSpec, resolve_store
from ._state import State, validate_progress_id
from ._store import Store
from .errors import InvalidName

__all__ = ["HEADER", "install"]

logger = logging.getLogger("tracked")

#: The message header that carries the run's ticket to the worker.
HEADER = "tracked"

_apps: dict[int, tuple[Celery, Store | None]] = {}
_scopes: dict[str, contextvars.Token[TakeOver | None]] = {}


def install(app: Celery, *, store: StoreSpec | None = None) -> None:
    """Track every ``@tracked`` task of ``app`` from the moment it is sent: call it where
    the app is made, so that both the publishers and the workers run it. ``store``:
    where queued records go (default: the ``@tracked`` decorator's, else the default
    store); the workers write where their ``@tracked`` functions say. Idempotent."""
    chosen = None if store is None else resolve_store(store)
    first = not _apps
    _apps[id(app)] = (app, chosen)
    if first:
        signals.before_task_publish.connect(_published, weak=False)
        signals.task_prerun.connect(_prerun, weak=False)
        signals.task_postrun.connect(_postrun, weak=False)
        signals.task_revoked.connect(_revoked, weak=False)
        signals.task_failure.connect(_failed, weak=False)
        cancel_hooks.append(_revoke)


def _task(name: object) -> tuple[Any, Store | None] | None:
    for app, store in _apps.values():
        task = app.tasks.get(name) if isinstance(name, str) else None
        if task is not None:
            return task, store
    return None


def _published(
    sender: object = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    """Publisher side: the first send of a ``@tracked`` task publishes its queued record;
    a retry's send (from inside the running task) puts the run back in line."""
    if headers is None or "id" not in headers:
        return
    found = _task(headers.get("task", sender))
    if found is None:
        return
    task, store = found
    run = tracked_function(getattr(task, "run", None))
    if run is None:
        return
    if headers.get("retries"):  # self.retry() in the running task: the same run
        _requeue(headers)
        return
    args, kwargs = _call_args(body)
    plan = describe_call(run, tuple(args), dict(kwargs))
    state, owner, ticket = prepare(
        plan.name,
        str(headers["id"]),
        plan.function,
        total=plan.total,
        timeout=_queued_timeout(headers.get("expires")),
        group=plan.group,
    )
    # Carried even if the claim fails (a duplicate task id, the store down): Celery
    # logs a handler's error and sends the message anyway, and its worker must run it
    # as this id's run (claiming the key afresh, AlreadyRunning while another run
    # holds it), never as a run of the bare name that no reader looks for.
    headers[HEADER] = ticket.to_dict()
    (store or plan.store).claim(state, owner)
    if state.group is not None:  # a group's child is counted from now
        _count_in_group(store or plan.store, state, ticket, headers)


def _requeue(headers: dict[str, Any]) -> None:
    """A retry's send: the running run goes back in line, its ticket carried on."""
    ticket = requeue_current(str(headers["id"]))
    if ticket is not None:
        headers[HEADER] = ticket.to_dict()


def _call_args(body: Any) -> tuple[Any, Any]:
    """The positional and keyword arguments of a task message's ``body``."""
    if isinstance(body, (list, tuple)) and len(body) >= 2:
        return body[0], body[1]
    return (), {}


def _count_in_group(store: Store, state: State, ticket: Ticket, headers: dict[str, Any]) -> None:
    """Count a queued child in its group, or end it cancelled (a worker skips it, never
    uncounted) when the group refuses it."""
    book = report_move(store, state)
    why = "its group is not running" if book is None else book.refusal()
    if why is not None:  # dropped before it starts: a worker skips it, never
        end_queued(store, ticket, "cancelled", error=why)  # uncounted
        logger.warning("task %s (%r) not counted in its group: %s", headers["id"],
                       state.key, why)


def _queued_timeout(expires: object) -> float | None:
    """How long a queued record lives: until the message's ``expires`` (an ISO time,
    at least a second from now) and a minute; no limit without one."""
    if not isinstance(expires, str):
        return None
    try:
        from datetime import datetime

        return max(1.0, datetime.fromisoformat(expires).timestamp() - time.time()) + 60.0
    except ValueError:
        return None


def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """Worker side: the ``@tracked`` call of this task takes its queued run over."""
    if task_id is None or task is None:
        return
    ticket = Ticket.from_dict(_header(task))
    if ticket is None:
        _refuse_bad_id(task_id, task)
        return
    found = TakeOver(
        ticket,
        retries=lambda exc: isinstance(exc, Retry),
        skipped=_skip(task),
        stopped=_stopped(task),
        killed=_killed,
        store=_installed_store(task),
    )
    _scopes[task_id] = takeover_scope.set(found)


def _refuse_bad_id(task_id: str, task: Any) -> None:
    """A ``@tracked`` task whose id is no progress_id carries no ticket (Celery only
    logs the publisher's ``InvalidName``): its call raises ``InvalidName``, so the task
    fails, instead of running as a run of the bare name that no reader of the id finds."""
    run = tracked_function(getattr(task, "run", None))
    if run is None:
        return
    try:
        validate_progress_id(task_id)
    except InvalidName as exc:
        reason = (
            f"Celery task id {task_id!r} cannot be tracked: {exc} (the run is keyed "
            "by the task id; give apply_async a task_id of those characters)"
        )
        function = f"{run.__module__}.{run.__qualname__}"
        refused = TakeOver(Ticket(None, task_id, "-", function), refused=reason)
        _scopes[task_id] = takeover_scope.set(refused)


def _installed_store(task: Any) -> Store | None:
    """The store ``install`` named for the app of ``task`` (None: the decorator's)."""
    app = getattr(task, "app", None)
    entry = _apps.get(id(app))
    return None if entry is None else entry[1]


def _header(task: Any) -> object:
    request = task.request
    value = getattr(request, HEADER, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(HEADER)
    return value


def _skip(task: Any) -> Any:
    def skipped(state: State) -> Any:
        """The run was cancelled while queued: Celery's result says revoked too."""
        request = task.request
        try:
            task.backend.mark_as_revoked(request.id, "cancelled before it started", request=request)
        except Exception as exc:  # noqa: BLE001 - the body is skipped all the same
            logger.warning("cannot mark task %s revoked: %s", request.id, exc)
        raise Ignore()

    return skipped


def _stopped(task: Any) -> Any:
    def stopped(exc: BaseException) -> BaseException:
        """The task stopped at a cancel request: Celery records it revoked, not as a
        crash (``tracked.Cancelled`` is a BaseException, which Celery lets through)."""
        request = task.request
        try:
            task.backend.mark_as_revoked(request.id, "cancelled", request=request)
        except Exception as error:  # noqa: BLE001 - the run's record says cancelled anyway
            logger.warning("cannot mark task %s revoked: %s", request.id, error)
        signal: BaseException = Ignore()
        return signal

    return stopped


def _killed(exc: BaseException) -> bool:
    """Whether the pool is killing this process (billiard's terminate handler raised
    the exception, as for ``revoke(terminate=True)``), not the task's own ``sys.exit``:
    then the run is not ended here, which readers would see before the worker's revoke
    handler ends it cancelled; without that handler, the crash rule ends it."""
    return bool(terminate_handler_fired())


def _postrun(task_id: str | None = None, **_: Any) -> None:
    token = _scopes.pop(task_id or "", None)
    if token is not None:
        takeover_scope.reset(token)


def _failed(exception: BaseException | None = None, sender: Any = None, **_: Any) -> None:
    """An error before the body ran (the run was never taken over): the record ends failed."""
    if sender is None or exception is None or isinstance(exception, Retry):
        return
    ticket = Ticket.from_dict(_header(sender))
    if ticket is not None:
        error = f"{type(exception).__name__}: {exception}"
        end_queued(_store_of(sender), ticket, "failed", error=error)


def _store_of(task: Any) -> Store:
    chosen = _installed_store(task) or tracked_store(getattr(task, "run", None))
    return chosen if chosen is not None else resolve_store(None)


def _revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """Revoked before it started: the queued run ends cancelled (never run). Revoked
    with ``terminate=True``: the worker killed the task's process, so the running run
    ends cancelled too (it stopped because of the request)."""
    ticket = Ticket.from_dict(getattr(request, HEADER, None))
    if ticket is not None and sender is not None:
        end_queued(_store_of(sender), ticket, "cancelled", started=bool(terminated))


def _revoke(state: State) -> None:
    """A cancel ended a queued run: revoke its task, for every installed app."""
    if state.progress_id is None:
        return
    for app, _store in _apps.values():
        app.control.revoke(state.progress_id)
