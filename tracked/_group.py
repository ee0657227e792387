"""``tracked.group``: one progress over many runs, read in constant time.

A group is a run whose record belongs to no process: its children (runs started
with ``group=token``, ``Group.submit``, ``tracked.rq.enqueue(..., group=g)``) count
themselves into its ledger (``tracked._ledger``) at each state change, so reading
it costs the same for 10 children as for 10,000. It ends when it is closed (the
``with`` block left) and every child has ended, written by the change that ends it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._groupstore import finish_group, report_move
from ._jobs import submit_child
from ._ledger import make_token, parse_token
from ._progress import Progress
from ._scope import StoreSpec, request_scope, resolve_store
from ._state import State, make_key
from ._store import Owner, Store
from .errors import InvalidValue, StoreError

__all__ = ["Group", "group", "token_of"]

logger = logging.getLogger("tracked")

#: The host of a group's owner: its children move it, no process holds it.
GROUP_HOST = "(group)"
#: How long a group's record stays live without an end (children that never end and
#: were never swept): a week.
GROUP_LEASE = 7 * 86400.0


class Group:
    """A run made of other runs: ``submit`` children or hand out ``token``.

    Use it as a context manager: leaving the block closes it to new children and
    does not wait for them; it ends when every child has ended.
    """

    def __init__(self, key: str, state: State, owner: Owner, store: Store) -> None:
        self.key = key
        self.name = state.name
        self.progress_id = state.progress_id
        self.store = store
        self._owner = owner
        #: The token that makes a run a child: ``tracked.start(..., group=token)``.
        self.token = make_token(key, owner.run)
        self._closed = False
        #: The process that made it: only it closes it (a forked child that leaves
        #: the inherited ``with`` block must not shut the group on its parent).
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<Group {self.key!r}>"

    def submit(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Progress:
        """Run ``func(*args, **kwargs)`` (a ``@tracked`` function) as a child on the
        ``tracked.submit`` pool; counted ``queued`` from now on."""
        return submit_child(self.token, func, *args, **kwargs)

    def add_message(self, message: str, /) -> None:
        """Add one of the group's own messages (written at once: they are rare)."""
        record = self.store.read(self.key)
        if record is None or record.owner is None or record.owner.run != self._owner.run:
            return
        own = record.state
        state = dataclasses.replace(
            own, messages=(*own.messages, message)[-1000:],
            message_count=own.message_count + 1, current_time=time.time(),
        )
        self.store.swap(state, record.owner, run=self._owner.run, was=frozenset({"running"}))

    def snapshot(self) -> State:
        """What readers see of the group now (one read of its record and ledger)."""
        state = self.store.load(self.key)
        if state is None:
            raise StoreError(f"group {self.key!r} is gone from {self.store!r}")
        return state

    def close(self) -> None:
        """Take no more children; the group ends once those it has end. Does nothing in
        a process forked from the one that made the group (that one closes it)."""
        if self._closed or self._pid != os.getpid():
            return
        self._closed = True
        book = self.store.close_group(self.key, self._owner.run)
        if book is not None and book.just_ended:
            record = self.store.read(self.key)
            if record is not None:
                finish_group(self.store, record, book)

    def __enter__(self) -> Group:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.add_message(f"the group's block raised {type(exc).__name__}: {exc}")
        except Exception as error:  # noqa: BLE001 - never hide the block's own exception
            logger.warning("cannot add a message to group %r: %s", self.key, error)
        try:
            self.close()
        except Exception as error:  # noqa: BLE001 - instrumentation never kills the task
            self._closed = False  # close() may be called again
            logger.warning("cannot close group %r: %s", self.key, error)


def group(
    name: str | None,
    *,
    store: StoreSpec | None = None,
    progress_id: str | None = None,
    description: str | None = None,
    group: object = None,
) -> Group:
    """Claim ``name`` as a group (``AlreadyRunning`` if a live run holds it) and return
    it; use it as a context manager. Its children are the runs given its ``token``.
    ``group`` (a ``Group`` or a token) makes this group a child of that one."""
    if progress_id is None:
        scope = request_scope.get()
        progress_id = scope.progress_id if scope is not None else None
    key = make_key(name, progress_id)
    resolved = resolve_store(store)
    now = time.time()
    state = State(
        name=name, progress_id=progress_id, total=0, status=description or "in progress",
        start_time=now, current_time=now, children={},
        group=None if group is None else token_of(group),
    )
    owner = Owner(host=GROUP_HOST, pid=0, token="", run=uuid.uuid4().hex,
                  lease_expires=now + GROUP_LEASE)
    resolved.claim(state, owner)
    try:
        resolved.open_group(key, owner.run)
    except BaseException:
        resolved.delete(key)
        raise
    if state.group is not None:  # a child of another group: counted running from now
        book = report_move(resolved, state)
        if book is None or not book.accepted:
            resolved.delete(key)
            raise InvalidValue(f"cannot start group {key!r} in its group: it is not open")
    return Group(key, state, owner, resolved)


def token_of(group: object) -> str:
    """The token of ``group`` (a ``Group`` or a token str), checked."""
    if isinstance(group, Group):
        return group.token
    parse_token(group)
    return group  # type: ignore[return-value]
