"""A group's ledger: its children counted by state, kept beside the group's record.

A group (``tracked.group``) is a run whose progress is its children's. Each
child's state change moves one counter of the ledger (old state -1, new state +1)
in one atomic step of the store, remembered per child so that a repeated or
retried report counts once. Reading a group reads its record and its ledger,
whatever the number of children; ``overlay`` turns the two into what readers see.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from typing import Any

from ._state import ENDED_STATES, State, split_key
from .errors import InvalidValue

__all__ = [
    "CHILD_STATES",
    "FULL",
    "GroupBook",
    "Ledger",
    "child_line",
    "group_token",
    "make_token",
    "overlay",
    "parse_token",
    "units_of",
]

#: The states a child is counted in, in the wire order of ``children``.
CHILD_STATES = ("queued", "running", "finished", "failed", "cancelled", "abandoned")
#: How many lines about failed or abandoned children a group keeps (like a run's messages).
KEEP_LINES = 100
#: A child's weight in the group's progress, in thousandths (an ended child: all of it).
FULL = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class GroupBook:
    """A group's ledger as read: counts per state, the children's progress in
    thousandths (``units``), whether it is closed or cancelled, when it ended, and the
    kept lines about children that failed or were abandoned."""

    run: str
    counts: Mapping[str, int]
    units: int = 0
    closed: bool = False
    cancelled: bool = False
    ended_at: float | None = None
    lines: tuple[str, ...] = ()
    line_count: int = 0
    first_error: str | None = None
    swept_at: float = 0.0
    #: Set on the book a change returns: this very change ended the group.
    just_ended: bool = False
    #: False on the book a move returns when the group refused a new child (closed).
    accepted: bool = True

    @property
    def total(self) -> int:
        """Every child ever counted."""
        return self.counts.get("total", 0)

    @property
    def unended(self) -> int:
        """Children still queued or running."""
        return self.counts.get("queued", 0) + self.counts.get("running", 0)

    def refusal(self) -> str | None:
        """Why this book's change refused a new run as a child, or None if it took it."""
        if self.accepted:
            return None
        if self.cancelled:
            return "its group was cancelled"
        if self.closed:
            return "its group is closed to new runs"
        return "a run of this name already ended in its group"

    def children(self) -> dict[str, int]:
        """The wire object ``children``: total, then one count per state."""
        wire = {"total": self.total}
        wire.update({state: max(0, self.counts.get(state, 0)) for state in CHILD_STATES})
        return wire

    def to_dict(self) -> dict[str, Any]:
        """The ledger as JSON (what the file store keeps)."""
        return {  # built directly: dataclasses.asdict deep-copies, a third of a change
            "run": self.run, "counts": dict(self.counts), "units": self.units,
            "closed": self.closed, "cancelled": self.cancelled, "ended_at": self.ended_at,
            "lines": list(self.lines), "line_count": self.line_count,
            "first_error": self.first_error, "swept_at": self.swept_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupBook:
        """Rebuild a ledger; ``ValueError`` if malformed."""
        try:
            ended = data.get("ended_at")
            error = data.get("first_error")
            return cls(
                run=str(data["run"]),
                counts={str(k): int(v) for k, v in dict(data["counts"]).items()},
                units=int(data.get("units", 0)),
                closed=bool(data.get("closed", False)),
                cancelled=bool(data.get("cancelled", False)),
                ended_at=None if ended is None else float(ended),
                lines=tuple(str(line) for line in data.get("lines", ())),
                line_count=int(data.get("line_count", 0)),
                first_error=None if error is None else str(error),
                swept_at=float(data.get("swept_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed group ledger: {exc!r}") from exc


def units_of(state: State) -> int:
    """A child's weight done, in thousandths: all of it once ended, none while queued,
    its own ``count / total`` (below all of it) while it runs with a known total."""
    if state.state in ENDED_STATES:
        return FULL
    if state.state != "running" or not state.total:
        return 0
    return max(0, min(FULL - 1, FULL * state.count // state.total))


def child_label(key: str) -> str:
    """A child named in a group's lines as the CLI and the status route name it:
    ``name?progress_id=ID`` for one with a progress_id (every RQ job's child)."""
    return key.replace(chr(0), "?progress_id=")


def child_line(state: State) -> str | None:
    """The line a group keeps about a child that failed or was abandoned, else None."""
    if state.state not in ("failed", "abandoned"):
        return None
    return f"{child_label(state.key)} {state.state}: {state.error or state.status}"


class Ledger:
    """The ledger's rules as plain Python, for the stores that change it under a lock
    (``MemoryStore``, ``FileStore``); ``RedisStore`` runs the same rules in Lua."""

    def __init__(self, book: GroupBook) -> None:
        self.book = book
        self.counts = dict(book.counts)

    @classmethod
    def new(cls, run: str) -> GroupBook:
        """The ledger of a group that has just started: no child, open."""
        return GroupBook(run=run, counts={"total": 0, **dict.fromkeys(CHILD_STATES, 0)})

    def move(
        self, previous: tuple[str, int] | None, state: str, units: int, line: str | None,
        now: float,
    ) -> tuple[GroupBook, bool]:
        """Count a child's change from ``previous`` (its state and units as counted; None:
        a new child) to ``state``; returns the new book and whether the child's entry
        changed. An ended child stays as counted (a new run of it is refused: ``accepted``
        False); a closed or cancelled group takes no new child."""
        book = self.book
        if previous is None:
            if book.closed or book.cancelled:
                return dataclasses.replace(book, accepted=False), False
            self.counts["total"] = self.counts.get("total", 0) + 1
            old_units = 0
        else:
            if previous[0] in ENDED_STATES and state not in ENDED_STATES:
                # a new run of a child that already ended: its end stays counted, and
                # the group must not end (or read ended) while this run goes on
                return dataclasses.replace(book, accepted=False), False
            if previous[0] in ENDED_STATES or previous == (state, units):
                return book, False
            self.counts[previous[0]] = self.counts.get(previous[0], 0) - 1
            old_units = previous[1]
        self.counts[state] = self.counts.get(state, 0) + 1
        book = dataclasses.replace(
            _with_line(book, state, line), counts=dict(self.counts),
            units=book.units + units - old_units,
        )
        return self._ended(book, now), True

    def close(self, now: float) -> GroupBook:
        """No new child from now on; the group ends at once if none is left running."""
        return self._ended(dataclasses.replace(self.book, closed=True), now)

    def cancel(self) -> GroupBook:
        """Mark the group cancelled, unless it has ended: an end never changes after."""
        if self.book.ended_at is not None:
            return self.book
        return dataclasses.replace(self.book, cancelled=True)

    def _ended(self, book: GroupBook, now: float) -> GroupBook:
        if book.closed and book.ended_at is None and book.unended == 0:
            return dataclasses.replace(book, ended_at=now, just_ended=True)
        return book


def _with_line(book: GroupBook, state: str, line: str | None) -> GroupBook:
    """``book`` with a failed or abandoned child's ``line`` kept (the last
    ``KEEP_LINES``, the first one as the group's first error)."""
    if state not in ("failed", "abandoned") or not line:
        return book
    return dataclasses.replace(
        book, lines=(*book.lines, line)[-KEEP_LINES:], line_count=book.line_count + 1,
        first_error=book.first_error or line,
    )


def overlay(state: State, book: GroupBook | None) -> State:
    """What readers see of a group: its own record (``state``, judged) with the
    ledger's counts. ``count``/``total``: the children's weight done (an ended child
    counts 1, a running one its ``count / total``, rounded down) of the number of
    children; it ends when closed and every child has ended: ``cancelled`` if it was
    cancelled and a child stopped, ``failed`` if a child failed or was abandoned,
    ``cancelled`` if a child stopped on its own request, ``finished`` only if every
    child finished."""
    if book is None:
        return state
    children = book.children()
    total = book.total
    lines = book.lines
    messages = state.messages + lines
    changes: dict[str, Any] = {
        "children": children,
        "total": total,
        "count": min(total, book.units // FULL),
        "messages": messages,
        "message_count": state.message_count + book.line_count,
        "cancel_requested": state.cancel_requested or book.cancelled,
    }
    if book.ended_at is not None:
        end, error = _group_end(book, children, total)
        ended = state if not state.in_progress else state.ended(end, book.ended_at)
        changes.update(
            in_progress=False, state=end, error=error, finished_time=book.ended_at,
            current_time=max(ended.current_time, book.ended_at),
            status=end if ended.status in ("in progress", "running", state.state) else ended.status,
        )
        return dataclasses.replace(ended, **changes)
    if not state.in_progress:  # the group's record ended without its ledger (a lapse)
        return dataclasses.replace(state, **changes)
    return dataclasses.replace(state, **changes)


def _group_end(book: GroupBook, children: dict[str, int], total: int) -> tuple[str, str | None]:
    """How an ended group ended, and its error: ``cancelled`` if it was cancelled and a
    child stopped, ``failed`` if a child failed or was abandoned, ``cancelled`` if a
    child stopped on request, else ``finished``."""
    failed = children["failed"] + children["abandoned"]
    if book.cancelled and children["cancelled"]:
        return "cancelled", None
    if failed:
        return "failed", f"{failed} of {total} children failed: first error: {book.first_error}"
    if children["cancelled"]:  # a child stopped on request: not all work was done
        return "cancelled", None
    return "finished", None


# ----------------------------------------------------------------------------- tokens


def make_token(key: str, run: str) -> str:
    """A group's token: its key and run, URL-safe (``[A-Za-z0-9_-]`` and one ``.``)."""
    encoded = base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).decode("ascii")
    return f"{encoded.rstrip('=')}.{run[:16]}"


def parse_token(token: object) -> tuple[str, str]:
    """The key and run prefix of a group token; ``InvalidValue`` for anything else."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
        raise InvalidValue(f"not a group token: {token!r}")
    encoded, run = token.split(".")
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode(
            "utf-8", "surrogatepass"
        )
        split_key(key)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidValue(f"not a group token: {token!r}") from exc
    if not key or not run.isalnum():
        raise InvalidValue(f"not a group token: {token!r}")
    return key, run


def group_token(group: object) -> str:
    """The token of ``group``: a ``tracked.Group`` (its ``token``) or a token ``str``."""
    token = getattr(group, "token", group)
    parse_token(token)  # InvalidValue for anything else (a str then)
    return str(token)
