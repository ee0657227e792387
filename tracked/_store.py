"""The ``Store`` contract, the owner record, and the one liveness rule.

A backend only moves records in and out. Whether a running record's owner is
still alive is decided here, when loading, so the status route, the CLI and
``tracked.load()`` all agree on what reads as ``abandoned``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._groupstore import GroupLedgers, group_view
from ._ledger import GroupBook
from ._state import State
from .errors import AlreadyRunning, StoreError

__all__ = [
    "Owner",
    "Record",
    "SharedPart",
    "Store",
    "decode_record",
    "encode_record",
    "merge_parts",
    "owner_gone_here",
    "swappable",
]

logger = logging.getLogger("tracked")

RECORD_VERSION = 1
#: The host of a queued record's owner: a queue holds the run, no process does.
QUEUE_HOST = "(queue)"


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a running progress: never part of the wire JSON.

    On one host, ``pid`` plus ``token`` (boot id and process start time) tell a
    live owner from a dead one, even after the pid is reused. Stores shared
    across hosts set ``lease_expires`` instead, which the owner keeps renewing.
    """

    host: str
    pid: int
    token: str
    run: str
    lease_expires: float | None = None

    @classmethod
    def for_this_process(cls, run: str | None = None) -> Owner:
        """A new owner record for a claim made by this process (of run ``run``, a new
        one by default: a worker taking over a queued run keeps the run's token)."""
        identity = _identity()
        return cls(
            host=identity.host, pid=identity.pid, token=identity.token, run=run or uuid.uuid4().hex
        )

    @classmethod
    def waiting(cls, run: str, expires: float) -> Owner:
        """The owner of a ``queued`` record: no process, only a lease that lapses at
        ``expires`` (the queued timeout), after which readers judge it abandoned."""
        return cls(host=QUEUE_HOST, pid=0, token="", run=run, lease_expires=expires)

    def to_dict(self) -> dict[str, Any]:
        """The owner as a JSON object (built directly: ``dataclasses.asdict`` deep-copies,
        about a tenth of a short job's start and finish)."""
        return {
            "host": self.host,
            "pid": self.pid,
            "token": self.token,
            "run": self.run,
            "lease_expires": self.lease_expires,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Owner:
        """Rebuild an owner record; raise ``ValueError`` if it is malformed."""
        try:
            lease = data.get("lease_expires")
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                token=str(data["token"]),
                run=str(data["run"]),
                lease_expires=None if lease is None else float(lease),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed owner record: {exc!r}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """What a backend stores for one key: the snapshot and who wrote it."""

    state: State
    owner: Owner | None
    #: The joined workers' parts of a shared run, when the backend read them with the
    #: record (one round trip); None: not read, ``Store.with_parts`` asks for them.
    parts: tuple[SharedPart, ...] | None = None
    #: A group's ledger, when the backend read it with the record (one round trip);
    #: None: not read, ``Store.with_group`` asks for it.
    book: GroupBook | None = None


def encode_record(state: State, owner: Owner | None) -> bytes:
    """Serialise a record as the UTF-8 JSON that the file store keeps on disk.

    The owner comes first, so a writer can check the run token from the file's head.
    """
    wire = state.to_dict()
    wire["messages"] = 0  # spliced in below, encoded once per kept tuple
    document = {
        "version": RECORD_VERSION,
        "owner": None if owner is None else owner.to_dict(),
        "state": wire,
    }
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    # A quote inside any string is escaped, so the first match is the real key.
    text = text.replace('"messages":0', '"messages":' + _messages_json(state.messages), 1)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u escapes keep the record readable
        wire["messages"] = list(state.messages)
        return json.dumps(document, separators=(",", ":")).encode("ascii")


_encoded_messages: dict[int, tuple[tuple[str, ...], str]] = {}


def _messages_json(messages: tuple[str, ...]) -> str:
    """The JSON array of ``messages``, reused while a handle's kept messages are unchanged
    (a snapshot hands over the same tuple): most flushes add few or no messages."""
    cached = _encoded_messages.get(id(messages))
    if cached is not None and cached[0] is messages:
        return cached[1]
    encoded = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    if len(_encoded_messages) >= 256:
        _encoded_messages.clear()
    _encoded_messages[id(messages)] = (messages, encoded)
    return encoded


def decode_record(raw: bytes | str) -> Record:
    """Parse what ``encode_record`` wrote; raise ``ValueError`` for anything else."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != RECORD_VERSION:
        raise ValueError("not a tracked record (no matching 'version')")
    owner = document.get("owner")
    ledger = document.get("ledger")  # a group's, in a FileStore (``tracked._filegroups``)
    return Record(
        state=State.from_dict(document.get("state")),  # type: ignore[arg-type]
        owner=None if owner is None else Owner.from_dict(owner),
        book=None if ledger is None else GroupBook.from_dict(ledger),
    )


# ----------------------------------------------------------------------------- liveness


@dataclasses.dataclass(frozen=True, slots=True)
class _Identity:
    host: str
    pid: int
    token: str


_identity_cache: list[_Identity] = []
_live_runs: set[str] = set()


def _identity() -> _Identity:
    """This process's host id, pid and start token; recomputed after a fork."""
    pid = os.getpid()
    if _identity_cache and _identity_cache[0].pid == pid:
        return _identity_cache[0]
    host = os.environ.get("TRACKED_HOST_ID") or socket.gethostname()
    token = _process_token(pid) or uuid.uuid4().hex
    identity = _Identity(host=host, pid=pid, token=token)
    _identity_cache[:] = [identity]
    return identity


@functools.cache
def _boot_id() -> str:
    """This boot's id: with a process's start time it names one process incarnation."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def _process_token(pid: int) -> str | None:
    """Boot id plus the process's start time from /proc; None where /proc is missing or
    the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return f"{_boot_id()}:{fields[19].decode()}"


def register_live_run(run: str) -> None:
    """Mark a claim made by this process as held (see ``owner_alive``)."""
    _live_runs.add(run)


def unregister_live_run(run: str) -> None:
    """Mark a claim made by this process as released."""
    _live_runs.discard(run)


def owner_alive(owner: Owner, now: float | None = None) -> bool:
    """The liveness rule every reader applies to a running record.

    A lease, when present, decides alone. Otherwise, on this host, the pid must
    run with the same start token; in this very process, the run must still be
    held. An owner on another host without a lease cannot be checked, so it is
    taken as alive.
    """
    if owner.lease_expires is not None:
        return (time.time() if now is None else now) < owner.lease_expires
    identity = _identity()
    if owner.host != identity.host:
        return True
    if owner.pid == identity.pid and owner.token == identity.token:
        return owner.run in _live_runs
    if _HAS_PROC:
        return _process_token(owner.pid) == owner.token
    return _pid_exists(owner.pid)


_HAS_PROC = os.path.isdir("/proc/self")


def owner_gone_here(owner: Owner) -> bool:
    """Whether ``owner`` was a process of this host that no longer runs, whatever its
    lease says (a worker retrying a job whose earlier process was killed need not wait
    for that lease to lapse)."""
    identity = _identity()
    if owner.host != identity.host or owner.pid <= 0 or not _HAS_PROC:
        return False
    if owner.pid == identity.pid and owner.token == identity.token:
        return owner.run not in _live_runs
    return _process_token(owner.pid) != owner.token


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def judge(record: Record) -> State:
    """The state readers should see: a running record with a dead owner is abandoned."""
    state = record.state
    if state.in_progress and record.owner is not None and not owner_alive(record.owner):
        return state.abandoned()
    return state


def blocks_claim(record: Record | None) -> bool:
    """Whether an existing record stops a new claim of its key."""
    return record is not None and judge(record).in_progress


# ----------------------------------------------------------------------------- the contract


class Store(GroupLedgers, abc.ABC):
    """Where snapshots live. Subclasses implement the storage mechanics only.

    ``claim`` must be atomic across every process that shares the store: of
    several racing claims of one key, exactly one succeeds.
    """

    #: Seconds an owner's claim stays valid without a write; None: no lease. The
    #: background flusher rewrites a running record every ``lease / 3`` seconds.
    lease: float | None = None

    @abc.abstractmethod
    def claim(self, state: State, owner: Owner) -> None:
        """Write the first snapshot of a run, unless a live owner holds the key.

        Raises ``AlreadyRunning`` (leaving the existing record untouched) or
        ``StoreError``. A corrupt, ended or abandoned record is replaced.
        """

    @abc.abstractmethod
    def save(self, state: State, owner: Owner) -> None:
        """Write a later snapshot of a run this owner claimed.

        Raises ``RunSuperseded`` when the stored record belongs to another run
        (the caller drops the write), ``StoreError`` when the store fails.
        """

    def save_many(self, writes: Sequence[tuple[State, Owner]]) -> list[Exception | None]:
        """Write several snapshots at once (the flusher's batch for one tick).

        Returns, in order, None for each write that landed and the exception for
        each that did not; never raises for one failed write. Backends with round
        trips (Redis) override it to send the batch together.
        """
        results: list[Exception | None] = []
        for state, owner in writes:
            try:
                self.save(state, owner)
            except Exception as exc:  # noqa: BLE001 - reported per write, to the caller
                results.append(exc)
            else:
                results.append(None)
        return results

    @abc.abstractmethod
    def read(self, key: str) -> Record | None:
        """The raw record for ``key``, or None; ``StoreError`` if it is unreadable."""

    @abc.abstractmethod
    def records(self) -> Iterator[Record]:
        """Every readable record; unreadable ones are skipped (see ``unreadable``)."""

    def unreadable(self) -> list[str]:
        """One description (where, and why) per record that exists but cannot be read,
        so a listing can report what ``records()`` skips. None by default."""
        return []

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the record for ``key`` whatever its state; True if one was there."""

    @abc.abstractmethod
    def prune(self, older_than: float) -> int:
        """Delete ended and abandoned records that ended more than ``older_than``
        seconds ago; never a running one. Returns how many were deleted."""

    def swap(self, state: State, owner: Owner, *, run: str, was: frozenset[str]) -> bool:
        """Write ``state`` and ``owner`` in place of the record of run ``run`` if readers
        judge it to be in one of the states ``was`` (``queued``, ``running``,
        ``abandoned``...), atomically; False, writing nothing, otherwise.

        The one step of a queued run's life (``tracked._queued``): a worker's take-over
        (queued to running), a cancel before it started (queued to cancelled), a
        retry (running back to queued). All messages are written anew.
        """
        raise StoreError(f"{self!r} cannot hold queued runs")

    def request_cancel(self, key: str) -> bool:
        """Ask the running progress ``key`` to stop: True when a live run was asked
        (again: requests are idempotent), False when none runs (unknown or ended).

        Never rewrites the owner's record: a request is a side marker tied to the
        run's token, which the owner's flusher picks up, so a request for one run
        never reaches a later run of the same name.
        """
        raise StoreError(f"{self!r} cannot take cancel requests")

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """For the owner's flusher: whether a stop was requested for each (key, owner)
        of this process's live runs. Backends with round trips send them together."""
        return [False] * len(runs)

    def clear_cancel(self, key: str, owner: Owner) -> None:
        """For the owner, once its run has ended: remove the run's cancel request."""

    def close(self) -> None:
        """Release connections or handles the store holds."""

    def load(self, key: str) -> State | None:
        """The state readers see for ``key`` (liveness applied, joined workers' parts
        added), or None."""
        record = self.read(key)
        if record is None:
            return None
        if record.state.children is not None:
            return self.with_group(record)
        state = self.with_parts(record)
        if state.state == "abandoned" and record.state.in_progress:
            # The owner may have written its final state and let go of the run between
            # the read and the judging: read once more, so a run that ended is not
            # shown as abandoned (for a dead owner the record is unchanged).
            again = self.read(key)
            if again is not None and again != record:
                return self.with_parts(again)
        return state

    def list(self) -> list[State]:
        """Every progress in the store, running ones first, newest first within each."""
        states = []
        for record in self.records():
            try:
                if record.state.children is not None:
                    states.append(self.with_group(record))
                    continue
                states.append(self.with_parts(record))
            except StoreError:  # its joined workers' parts cannot be read: the rest can
                states.append(judge(record))
        states.sort(key=lambda s: (not s.in_progress, -s.start_time))
        return states

    # ---------------------------------------------------------- groups (tracked.group)

    def with_group(self, record: Record) -> State:
        """What readers see of a group's ``record``: its own state with its ledger's
        counts (read with the record where the backend can, else one more read,
        whatever the number of children). A running group whose
        last sweep is older than ``sweep_window`` is swept by the one reader that wins
        the turn (see ``sweep_group``); an ended ledger under a running record is
        written into the record (by ``finish_group``)."""
        book = record.book if record.book is not None else self.read_group(record.state.key)
        if book is None or record.owner is None or book.run != record.owner.run:
            return judge(record)
        return group_view(self, record, book)

    # ---------------------------------------------------------- shared runs (tracked.join)

    def with_parts(self, record: Record) -> State:
        """The state readers see for ``record``: judged, plus the parts that joined
        workers wrote while it runs (an ended record already holds them)."""
        state = judge(record)
        if not record.state.in_progress or record.owner is None:
            return state
        parts = record.parts
        if parts is None:
            parts = tuple(self.read_parts(state.key, record.owner.run))
        else:
            parts = tuple(part for part in parts if part.run == record.owner.run)
        return merge_parts(state, parts) if parts else state

    def check_join(self) -> None:
        """Raise ``StoreError`` if a handle in this process cannot add to a run in this
        store (``tracked.join``); a backend that keeps parts overrides the part methods."""
        if type(self).write_part is Store.write_part:
            raise StoreError(f"{self!r} cannot share a progress with other processes")

    def write_part(self, key: str, part: SharedPart) -> bool:
        """Write (replace) one joined worker's part of run ``part.run`` of ``key``.

        Returns False, writing nothing, when that run is no longer running there: the
        owner's end ends the run, and later parts are dropped.
        """
        raise StoreError(f"{self!r} cannot share a progress with other processes")

    def read_parts(self, key: str, run: str) -> Sequence[SharedPart]:
        """The joined workers' parts of run ``run`` of ``key`` (none by default)."""
        return []

    def delete_parts(self, key: str, run: str) -> None:
        """Remove the parts of run ``run`` of ``key`` (its owner folded them into its
        final snapshot)."""

    def _prunable(self, record: Record, cutoff: float) -> bool:
        state = judge(record)
        ended_at = state.finished_time if state.finished_time is not None else state.current_time
        return not state.in_progress and ended_at < cutoff


def cancellable(record: Record | None) -> Owner | None:
    """The owner of ``record`` if it is a live run a cancel request may reach."""
    if record is None or record.owner is None or not judge(record).in_progress:
        return None
    return record.owner


# ----------------------------------------------------------------------------- shared runs


@dataclasses.dataclass(frozen=True, slots=True)
class SharedPart:
    """What one joined handle (``tracked.join``) added to a shared run, as absolutes.

    Each worker rewrites its own part, so a write that is retried or repeated
    never counts twice; readers add the parts of the record's run to its state
    (``merge_parts``). ``keep`` is the run's ``max_messages``.
    """

    worker: str
    run: str
    count: int
    message_count: int
    messages: tuple[str, ...]
    keep: int
    time: float
    #: The worker's smoothed items per second at ``time`` (None: not known yet), and
    #: whether its handle had ended (its rate then no longer adds to the run's).
    rate: float | None = None
    ended: bool = False
    #: Whether the worker had seen a cancel request of the run, and whether
    #: ``tracked.Cancelled`` was delivered to its task (its ``check()`` raised): the
    #: owner's end then keeps ``cancel_requested``, and reads ``cancelled``, not ``finished``.
    asked: bool = False
    stopped: bool = False

    def encode(self) -> bytes:
        """The part as UTF-8 JSON."""
        document = dataclasses.asdict(self)
        document["version"] = RECORD_VERSION
        document["messages"] = list(self.messages)
        return json.dumps(document, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes | str) -> SharedPart:
        """Parse what ``encode`` wrote; ``ValueError`` for anything else."""
        try:
            data = json.loads(raw)
            if data.get("version") != RECORD_VERSION:
                raise ValueError("not a tracked part (no matching 'version')")
            messages = tuple(data["messages"])
            if not all(isinstance(m, str) for m in messages):
                raise ValueError("a message is not a str")
            return cls(
                worker=str(data["worker"]),
                run=str(data["run"]),
                count=int(data["count"]),
                message_count=int(data["message_count"]),
                messages=messages,
                keep=int(data["keep"]),
                time=float(data["time"]),
                rate=None if data.get("rate") is None else float(data["rate"]),
                ended=bool(data.get("ended", False)),
                asked=data.get("asked") is True,
                stopped=data.get("stopped") is True,
            )
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed part: {exc!r}") from exc


#: A running worker's rate adds to the run's while its part is at most this old.
PART_RATE_FRESHNESS = 5.0


def merge_parts(state: State, parts: Sequence[SharedPart], now: float | None = None) -> State:
    """``state`` with the joined workers' ``parts`` added: the one merge every reader
    (and the owner's final snapshot) applies. Counts and message counts add up; the
    workers' kept messages follow the owner's, ordered by their last write, and the
    newest ``keep`` of them all are kept. The rate is the owner's plus that of each
    worker whose handle is open and whose part was written in the last
    ``PART_RATE_FRESHNESS`` seconds (so a killed worker's stops counting)."""
    if not parts:
        return state
    ordered = sorted(parts, key=lambda part: (part.time, part.worker))
    return dataclasses.replace(
        state,
        count=state.count + sum(max(0, part.count) for part in ordered),
        message_count=state.message_count + sum(max(0, p.message_count) for p in ordered),
        messages=_merged_messages(state.messages, ordered),
        rate=_merged_rate(state.rate, ordered, time.time() if now is None else now),
    )


def _merged_rate(rate: float | None, parts: Sequence[SharedPart], now: float) -> float | None:
    """The owner's rate plus that of each open worker that wrote lately (``merge_parts``)."""
    rates = [
        part.rate
        for part in parts
        if part.rate is not None and not part.ended and now - part.time <= PART_RATE_FRESHNESS
    ]
    return round((rate or 0.0) + sum(rates), 3) if rates else rate


def _merged_messages(owned: tuple[str, ...], ordered: Sequence[SharedPart]) -> tuple[str, ...]:
    """The owner's messages then the workers', in ``ordered``; the newest ``keep``."""
    keep = max(part.keep for part in ordered)
    messages = owned + tuple(m for part in ordered for m in part.messages)
    if len(messages) > keep:
        messages = messages[len(messages) - keep :] if keep else ()
    return messages


def swappable(record: Record | None, run: str, was: frozenset[str]) -> bool:
    """Whether ``Store.swap`` of run ``run`` from the states ``was`` may replace ``record``."""
    if record is None or record.owner is None or record.owner.run != run:
        return False
    return judge(record).state in was


def claim_or_raise(existing: Record | None, key: str) -> None:
    """Raise ``AlreadyRunning`` if ``existing`` blocks a claim of ``key``."""
    if blocks_claim(existing):
        raise AlreadyRunning(key)
