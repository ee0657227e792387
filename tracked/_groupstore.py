"""What a store does with its groups beyond keeping their ledgers: count a child's
change (``report_move``), write a group's end into its record (``finish_group``),
sweep for children whose process died (``sweep_group``), and what readers see of
a group (``group_view``). Plain functions over the ``Store`` contract, typed by the
``GroupStore`` protocol (``tracked._store`` builds on this module, not the reverse).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from ._ledger import FULL, GroupBook, child_label, child_line, overlay, parse_token, units_of
from ._state import ENDED_STATES, State
from .errors import InvalidValue, StoreError

__all__ = [
    "GroupLedgers",
    "GroupRecord",
    "GroupStore",
    "finish_group",
    "group_view",
    "report_move",
    "sweep_group",
]

logger = logging.getLogger("tracked")


class GroupLedgers:
    """The group part of the ``Store`` contract: a backend that holds groups keeps
    one ledger per group (see ``tracked._ledger``) and overrides these."""

    lease: float | None = None

    #: Seconds between two sweeps of a running group for children whose process died
    #: (see ``with_group``); None: the store's liveness window (its lease, else 2 s).
    group_sweep_window: float | None = None

    @property
    def sweep_window(self) -> float:
        """Seconds between two sweeps of one running group (see ``with_group``)."""
        if self.group_sweep_window is not None:
            return self.group_sweep_window
        return self.lease if self.lease is not None else 2.0

    def open_group(self, key: str, run: str) -> None:
        """Start the ledger of group ``key`` (run ``run``), replacing an older one."""
        raise StoreError(f"{self!r} cannot hold groups")

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count child ``child`` of group ``key`` as ``state`` with ``units`` thousandths
        done, atomically and once per change (see ``_ledger.Ledger.move``); ``line`` is
        kept when it failed or was abandoned. None when group ``key`` has no ledger of
        run ``run``; a book with ``accepted`` False when a closed group refused it."""
        raise StoreError(f"{self!r} cannot hold groups")

    def close_group(self, key: str, run: str) -> GroupBook | None:
        """Close group ``key`` to new children; None if it has no ledger of run ``run``."""
        raise StoreError(f"{self!r} cannot hold groups")

    def cancel_group(self, key: str, run: str) -> GroupBook | None:
        """Mark group ``key`` cancelled (its children are asked by the caller)."""
        raise StoreError(f"{self!r} cannot hold groups")

    def read_group(self, key: str) -> GroupBook | None:
        """The ledger of group ``key``, or None: one read, whatever its size."""
        return None

    def group_children(self, key: str) -> Sequence[tuple[str, str]]:
        """Every child of group ``key`` with the state it is counted in."""
        return ()

    def sweep_turn(self, key: str, run: str, window: float) -> bool:
        """Take the turn to sweep group ``key``: True for one caller per ``window``."""
        return False


class RunOwner(Protocol):
    """What the functions here read of an ``Owner`` (a frozen dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def run(self) -> str:
        """The run's token."""

    @property
    def lease_expires(self) -> float | None:
        """When a lease lapses, if the owner holds one."""


class GroupRecord(Protocol):
    """What the functions here read of a ``Record``: its state and its owner."""

    @property
    def state(self) -> State:
        """The stored snapshot."""

    @property
    def owner(self) -> RunOwner | None:
        """Who wrote it, or None."""


class GroupStore(Protocol):
    """What the functions here use of a ``Store``: its group ledgers and three of its
    record methods (``Store`` satisfies it)."""

    @property
    def sweep_window(self) -> float:
        """See ``GroupLedgers.sweep_window``."""

    def read(self, key: str) -> GroupRecord | None:
        """See ``Store.read``."""

    def load(self, key: str) -> State | None:
        """See ``Store.load``."""

    def swap(self, state: State, owner: Any, *, run: str, was: frozenset[str]) -> bool:
        """See ``Store.swap`` (``owner`` an ``Owner``)."""

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """See ``GroupLedgers.move_child``."""

    def read_group(self, key: str) -> GroupBook | None:
        """See ``GroupLedgers.read_group``."""

    def group_children(self, key: str) -> Sequence[tuple[str, str]]:
        """See ``GroupLedgers.group_children``."""

    def sweep_turn(self, key: str, run: str, window: float) -> bool:
        """See ``GroupLedgers.sweep_turn``."""


def group_view(store: GroupStore, record: GroupRecord, book: GroupBook) -> State:
    """What readers see of group ``record`` with its ledger ``book``. A running group
    whose last sweep is older than the store's ``sweep_window`` is swept by the one
    reader that wins the turn; an ended ledger under a running record is written
    into the record (a running record blocks new claims of its name)."""
    if book.ended_at is None and time.time() - book.swept_at >= store.sweep_window:
        try:
            book = sweep_group(store, record.state.key, book) or book
        except StoreError as exc:  # a full disk, say: the read still answers
            logger.warning("cannot sweep group %r: %s", record.state.key, exc)
    if book.ended_at is not None and record.state.in_progress:
        finish_group(store, record, book)
    return overlay(record.state, book)


def report_move(store: GroupStore, state: State) -> GroupBook | None:
    """Count the new state of a group's child (``state.group``) in its group's ledger;
    the change that ends the group also writes the group's final record. Never raises:
    instrumentation must not kill the task (a lost count is mended by the next sweep)."""
    if state.group is None:
        return None
    try:
        key, run = parse_token(state.group)
        book = store.move_child(key, run, state.key, state.state, units_of(state),
                                child_line(state))
        if book is not None and book.just_ended:
            record = store.read(key)
            if record is not None:
                finish_group(store, record, book)
        return book
    except Exception as exc:  # noqa: BLE001 - see above
        logger.warning("cannot count %r in its group: %s", state.key, exc)
        return None


def finish_group(store: GroupStore, record: GroupRecord, book: GroupBook) -> None:
    """Write the end the ledger ``book`` gives into group ``record`` (a running record
    blocks new claims of its name): at most once, by the run check of ``Store.swap``."""
    owner = record.owner
    if owner is None or owner.run != book.run or not record.state.in_progress:
        return
    final = overlay(record.state, book)
    own = dataclasses.replace(
        final, children={}, total=record.state.total, count=record.state.count,
        messages=record.state.messages, message_count=record.state.message_count,
    )
    try:
        ended = store.swap(own, dataclasses.replace(owner, lease_expires=None), run=owner.run,
                           was=frozenset({"running", "abandoned"}))
    except Exception as exc:  # noqa: BLE001 - readers see the end from the ledger anyway
        logger.warning("cannot write the end of group %r: %s", record.state.key, exc)
        return
    if ended and own.group is not None:  # a nested group ended: count it in its parent
        report_move(store, final)


def sweep_group(store: GroupStore, key: str, book: GroupBook) -> GroupBook | None:
    """Count as abandoned (or as they ended) the children of group ``key`` that its
    ledger holds as queued or running but whose records say otherwise: work in
    proportion to the children, done once per ``sweep_window`` by one process. A
    running child whose record is gone (deleted, lost by a Redis restart) or now
    holds a run of another group will never report its end here: it is counted
    abandoned."""
    if not store.sweep_turn(key, book.run, store.sweep_window):
        return None
    latest, vanished = _move_changed(store, key, book.run)
    if vanished:
        time.sleep(_SETTLE)  # a child's write may land just after its count (a cluster)
        latest = _abandon_vanished(store, key, book.run, vanished) or latest
    return latest if latest is not None else store.read_group(key)


def _move_changed(store: GroupStore, key: str, run: str) -> tuple[GroupBook | None, list[str]]:
    """Move in the ledger the children whose records now say another state; return
    the latest book and the running children whose record is gone or another run's."""
    latest, vanished = None, []
    for child, counted in store.group_children(key):
        if counted in ENDED_STATES:
            continue
        try:
            state = store.load(child)  # judged: a dead owner's run reads abandoned
        except StoreError:
            continue
        if state is None or not _of_group(state, key, run):
            if counted == "running":  # a queued one's record may be in a caller's
                vanished.append(child)  # RQ pipeline, written when it executes
        elif state.state != counted:
            line = child_line(state) or f"{child_label(child)} {state.state}"
            moved = store.move_child(key, run, child, state.state, units_of(state), line)
            latest = moved or latest
    return latest, vanished


def _abandon_vanished(
    store: GroupStore, key: str, run: str, vanished: list[str]
) -> GroupBook | None:
    """Count abandoned the ``vanished`` children still missing (or another run's) on a
    second look; return the latest book moved, if any."""
    latest = None
    for child in vanished:
        try:
            state = store.load(child)
        except StoreError:
            continue
        if state is None or not _of_group(state, key, run):
            why = "its record is gone" if state is None else "its name holds another run"
            line = f"{child_label(child)} abandoned: {why}"
            latest = store.move_child(key, run, child, "abandoned", FULL, line) or latest
    return latest


#: How long a sweep waits before it counts a child whose record it did not find.
_SETTLE = 0.05


def _of_group(state: State, key: str, run: str) -> bool:
    """Whether ``state`` is a run of group ``key``'s run ``run`` (by its token)."""
    if state.group is None:
        return False
    try:
        group_key, group_run = parse_token(state.group)
    except InvalidValue:
        return False
    return group_key == key and run.startswith(group_run)
