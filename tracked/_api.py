"""The functions of the public API that are not the decorator: start, current, load."""

from __future__ import annotations

from collections.abc import Iterable

from ._ledger import group_token
from ._progress import Progress, current_progress
from ._queued import cancel as cancel_key
from ._queued import cancel_group
from ._scope import StoreSpec, request_scope, resolve_store
from ._state import State, make_key
from .errors import NoActiveProgress

__all__ = ["cancel", "current", "is_running", "load", "start"]


def start(
    name: str | None,
    total: int | None = 100,
    *,
    count: int = 0,
    messages: Iterable[str] = (),
    status: str | None = None,
    progress_id: str | None = None,
    store: StoreSpec | None = None,
    min_interval: float = 0.1,
    max_messages: int = 1000,
    group: object = None,
) -> Progress:
    """Claim ``name`` and return its live handle; use it as a context manager.

    ``total`` defaults to 100, as in the Perl original; ``None`` means unknown.
    Leaving the ``with`` block finishes it; an exception marks it failed. Raises
    ``AlreadyRunning`` if a live owner holds the name (the record is left as it
    was), ``InvalidName`` or ``InvalidValue`` for bad arguments, and
    ``StoreError`` when the store cannot be used. Inside a web request the
    client's ``progress_id`` is combined with ``name`` unless one is given.
    ``group`` (a ``tracked.Group`` or its token) makes the run a child of that group:
    ``InvalidValue`` if the group is closed or not running (the run ends failed).
    """
    return _claim(name, total, count, messages, status, progress_id, store, min_interval,
                  max_messages, group=group)


def start_queued(
    position: int,
    name: str | None,
    total: int | None,
    *,
    progress_id: str | None,
    store: StoreSpec | None,
    min_interval: float,
    max_messages: int,
    group: object = None,
) -> Progress:
    """Claim a run that waits in this process's queue (``tracked.submit``'s pool): its
    records read ``queued`` at ``position`` (1 = next) until it is taken up."""
    return _claim(name, total, 0, (), None, progress_id, store, min_interval, max_messages,
                  position, group)


def _claim(
    name: str | None,
    total: int | None,
    count: int,
    messages: Iterable[str],
    status: str | None,
    progress_id: str | None,
    store: StoreSpec | None,
    min_interval: float,
    max_messages: int,
    position: int | None = None,
    group: object = None,
) -> Progress:
    if progress_id is None:
        scope = request_scope.get()
        progress_id = scope.progress_id if scope is not None else None
    progress = Progress(
        name,
        store=resolve_store(store),
        progress_id=progress_id,
        total=total,
        count=count,
        messages=messages,
        status=status,
        min_interval=min_interval,
        max_messages=max_messages,
        position=position,
        group=None if group is None else group_token(group),
    )
    return progress.claim()


def current() -> Progress:
    """The innermost live progress of this context; ``NoActiveProgress`` if none."""
    progress = current_progress.get()
    if progress is None:
        raise NoActiveProgress(
            "no progress is live here: call tracked.current() inside a @tracked function"
            " or a tracked.start() block (on a web route, @tracked.tracked(...) goes under"
            " the route decorator, or the route registers the undecorated function)"
        )
    if not progress.in_progress:
        raise NoActiveProgress(
            f"no progress is live here: {progress!r} has ended, and tracked.current()"
            " only gives a live one"
        )
    return progress


def load(
    name: str | None, *, progress_id: str | None = None, store: StoreSpec | None = None
) -> State | None:
    """The stored state of a progress (liveness applied), or None if there is none."""
    return resolve_store(store).load(make_key(name, progress_id))


def is_running(
    name: str | None, *, progress_id: str | None = None, store: StoreSpec | None = None
) -> bool:
    """True only while a live owner holds the progress."""
    state = load(name, progress_id=progress_id, store=store)
    return state is not None and state.in_progress


def cancel(
    name: str | None, *, progress_id: str | None = None, store: StoreSpec | None = None
) -> bool:
    """Ask the running progress to stop, from any process that shares its store.

    True when a live run was asked (asking again is harmless); False when none is
    running (unknown, or already ended). A ``queued`` run (its job still waits in a
    queue) ends ``cancelled`` at once and never starts; its job leaves the queue
    where this process can remove it (see docs/cancel.md). The owner's flusher sees the request
    within about its ``min_interval``: ``Progress.cancel_requested`` turns true,
    ``check()`` raises ``tracked.Cancelled``, a ``@tracked`` generator gets
    ``Cancelled`` thrown in at its next yield, a ``@tracked`` coroutine's task is
    cancelled at its next await, ``track()`` loops and ``tracked.tqdm`` bars raise it
    at their next item, a queued ``submit`` run never starts. The record says
    ``cancel_requested: true`` at once. The run ends ``cancelled`` only if it stopped
    on the request; a task that never checks reads its own end (``finished``...).
    """
    resolved, key = resolve_store(store), make_key(name, progress_id)
    cancelled = cancel_group(resolved, key)  # a group: it and each child not yet ended
    return cancel_key(resolved, key) if cancelled is None else cancelled
