"""``RedisStore``: progress shared through Redis, so any machine can read any run.

Per progress key ``K`` (name and progress_id combined) the store keeps, under
its ``prefix``, three keys (four for a shared run) that share the hash tag
``{T}`` (``T`` is ``K`` with ``%`` and ``}`` percent-encoded), so that every
script touches a single slot and runs unchanged on Redis Cluster:

- ``{prefix}rec:{T}``: a hash with the wire JSON of the state without its
  messages (``state``), the owner record (``owner``), the owner's run id
  (``run``), ``running`` ("1"/"0"), the ``message_count`` stored (``mc``) and
  a count of the run's writes (``v``, for ``version()``);
- ``{prefix}msg:{T}``: a list with the kept messages, appended to with only the
  messages that are new since the owner's previous write, then trimmed;
- ``{prefix}lease:{T}``: the run id of a running owner, with a TTL of ``lease``
  seconds; the owner's writes renew it, and a running record without it reads
  as ``abandoned``. Readers take its remaining time from the server, so clock
  skew between machines does not matter;
- ``{prefix}parts:{T}``: for a shared run (``Progress.share``), a hash of the
  joined workers' parts, one field ``<run>/<worker>`` each, its part as JSON;
  it expires with the record.

Every write runs one Lua script (one round trip) that checks the owner (another
run's record, or this run's ended one, is never overwritten: ``RunSuperseded``),
writes the record, sets the lease and publishes an event on ``{prefix}events:K``
(on a Redis Cluster >= 7.0: ``SPUBLISH`` on ``{prefix}events:{T}``, in the record's
slot, so the other masters never see it; see ``RedisStore.channel``):
the wire JSON of the new state whose ``messages`` hold at least the messages
added since the previous event of the run (place them with
``message_count - len(messages)``, as with the status route's ``?since=``
cursor). A read is one script call, one round trip, that also returns the
joined workers' parts.
``save_many`` sends a whole batch of writes in one pipeline (on a cluster: one
per master, all sent before any reply is read).

Scripts are called by their SHA1 (``EVALSHA``) and loaded when a server answers
``NOSCRIPT``, the same way on a client, a pipeline and a cluster.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

try:
    import redis
except ImportError as exc:  # pragma: no cover - redis is in the test extra
    raise ImportError(
        "tracked's Redis store needs redis-py: pip install 'tracked[redis]'"
    ) from exc
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ._redis_cancel import CANCEL_CHUNK as CANCEL_CHUNK
from ._redis_cancel import RedisCancels
from ._redis_codec import (
    Written,
    check_prefix,
    check_seconds,
    clean_text,
    decode_parts,
    decode_reply,
    encode_state,
    glob_escape,
    hash_tag,
    key_text,
    messages_since,
    ms,
    owner_args,
)
from ._redis_connect import CLUSTER_SCHEMES as CLUSTER_SCHEMES
from ._redis_connect import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from ._redis_connect import MAX_CONNECTIONS as MAX_CONNECTIONS
from ._redis_connect import POOL_TIMEOUT as POOL_TIMEOUT
from ._redis_connect import SOCKET_TIMEOUT as SOCKET_TIMEOUT
from ._redis_connect import Client
from ._redis_core import NAME_CACHE_SIZE as NAME_CACHE_SIZE
from ._redis_core import SCAN_BATCH
from ._redis_groups import Host, RedisGroupLedgers, RedisGroups, decode_book
from ._redis_scripts import (
    CLEAR_CANCEL,
    DELETE,
    DELETE_PARTS,
    PLACE,
    PRUNE,
    READ,
    READ_PARTS,
    REQUEST_CANCEL,
    SWAP,
    SWAP_SHARDED,
    VERSION,
    WRITE,
    WRITE_PART,
    WRITE_SHARDED,
    Call,
    Script,
)
from ._state import State
from ._store import Owner, Record, SharedPart, Store
from .errors import AlreadyRunning, RunSuperseded, StoreError

__all__ = ["RedisStore"]


class RedisStore(RedisCancels, RedisGroupLedgers, Store):
    """Progress records in Redis, shared by every process and machine using it.

    ``url_or_client`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, a
    ``redis+cluster://`` or ``rediss+cluster://`` URL naming one node of a Redis
    Cluster, or a ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (left
    open by ``close()``). Owners hold a ``lease`` of that many seconds, renewed
    by their writes; ended records expire after ``finished_ttl`` seconds (None:
    never), as do abandoned ones once their lease has lapsed. Connecting is lazy:
    an unreachable server raises ``StoreError``, naming its address, from the
    first claim or read.
    """

    def __init__(
        self,
        url_or_client: str | Client,
        *,
        prefix: str = "tracked:",
        finished_ttl: float | None = 86400,
        lease: float = 10.0,
    ) -> None:
        prefix = check_prefix(prefix)
        self.finished_ttl = check_seconds(finished_ttl, "finished_ttl", optional=True)
        self.lease = self._lease = float(check_seconds(lease, "lease"))
        super().__init__(url_or_client, prefix)
        self._write = Script(WRITE)
        self._swap = Script(SWAP)
        self._swap_sharded = Script(SWAP_SHARDED)
        self._place = Script(PLACE)
        self._place_loaded = False
        self._write_loaded = False
        self._write_sharded = Script(WRITE_SHARDED)
        self._prune = Script(PRUNE)
        self._read = Script(READ)
        self._delete = Script(DELETE)
        self._version = Script(VERSION)
        self._request_cancel = Script(REQUEST_CANCEL)
        self._clear_cancel = Script(CLEAR_CANCEL)
        self._written: dict[str, Written] = {}
        self._write_part = Script(WRITE_PART)
        self._read_parts = Script(READ_PARTS)
        self._delete_parts = Script(DELETE_PARTS)
        #: The group ledgers of this store (``tracked._redis_groups``).
        self.groups = RedisGroups(
            Host(self.prefix, lambda: self.client, lambda: self._expire_ms(False), self._call,
                 self._failure),
            hash_tag,
        )

    def __repr__(self) -> str:
        return f"RedisStore({self.address!r}, prefix={self.prefix!r})"

    def _publisher(self) -> Script:
        """The write script: with ``SPUBLISH`` on a cluster that has it."""
        return self._write_sharded if self._cluster and self.sharded_pubsub else self._write

    # ------------------------------------------------------------------ writes

    def claim(self, state: State, owner: Owner) -> None:
        """One script call: write the record and its lease unless a live owner holds it."""
        key = state.key
        self._written.pop(key, None)
        call = self._write_call("claim", state, owner, None)
        if state.group is not None:  # a group's child: counted in the same round trip
            reply = self.groups.write_and_move(self._publisher(), call, state, claim=True)
        else:
            reply = self._call(self._run, self._publisher(), *call)
        if reply < 0:
            raise AlreadyRunning(key)
        self._remember(key, state, owner.run)

    def save(self, state: State, owner: Owner) -> None:
        """Write a later snapshot, unless another run has claimed the key since.

        A stalled owner whose lease lapsed and whose name was started again gets
        ``RunSuperseded`` and never overwrites the new run.
        """
        previous = self._written.get(state.key)
        if state.group is not None and previous is not None and previous.run == owner.run:
            # A group's child: its count goes in the same round trip (0: resend below).
            call = self._write_call("save", state, owner, previous)
            reply = self.groups.write_and_move(self._publisher(), call, state, claim=False)
            if reply == 1:
                return self._remember(state.key, state, owner.run)
            self._written.pop(state.key, None)
            if reply != 0:
                raise self._refusal(state.key, reply)
        [error] = self.save_many([(state, owner)])
        if error is not None:
            raise error

    def save_many(self, writes: Sequence[tuple[State, Owner]]) -> list[Exception | None]:
        """Write a batch of snapshots in one pipeline round trip.

        Each write runs the same script as ``save``. A write whose stored messages
        are not what this store last wrote is sent again with all its messages (a
        second round trip, for those writes only). Results, in order: None, or
        ``RunSuperseded`` when another run owns the key, or ``StoreError``. Uses
        one connection (on a cluster: one per master involved).
        """
        results: list[Exception | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        for resend in (False, True):
            if not pending:
                break
            pending = self._save_batch(writes, pending, results, resend=resend)
        return results

    def _save_batch(
        self,
        writes: Sequence[tuple[State, Owner]],
        indices: list[int],
        results: list[Exception | None],
        *,
        resend: bool,
    ) -> list[int]:
        """Send the writes at ``indices``; fill ``results``; return those to resend
        with all their messages."""
        calls, sent = [], []
        for i in indices:
            state, owner = writes[i]
            try:
                previous = None if resend else self._written.get(state.key)
                calls.append(self._write_call("save", state, owner, previous))
            except Exception as exc:  # noqa: BLE001 - one bad snapshot fails alone
                results[i] = exc
            else:
                sent.append(i)
        try:
            replies = self._call(self._run_many, self._publisher(), calls) if calls else []
        except StoreError as exc:
            for i in sent:  # one error each: the caller may raise or chain them apart
                error = results[i] = StoreError(str(exc))
                error.__cause__ = exc.__cause__
            return []
        return [
            i
            for i, reply in zip(sent, replies, strict=True)
            if self._replied(writes[i], reply, results, i, resend=resend)
        ]

    def _replied(
        self,
        write: tuple[State, Owner],
        reply: Any,
        results: list[Exception | None],
        i: int,
        *,
        resend: bool,
    ) -> bool:
        """Note the reply to write ``i`` of a batch in ``results``; True when the script
        asks for the write again with all its messages (first time only)."""
        state, owner = write
        if isinstance(reply, Exception):
            results[i] = self._failure(reply)
        elif reply == 1:
            self._remember(state.key, state, owner.run)
        elif reply == 0 and not resend:
            return True
        else:
            self._written.pop(state.key, None)
            results[i] = self._refusal(state.key, reply)
        return False

    def swap(self, state: State, owner: Owner, *, run: str, was: frozenset[str]) -> bool:
        """One script call: the check and the write are atomic on the server."""
        key = state.key
        keys, channel = self._names(key)
        wire, event = encode_state(state, state.messages)
        running = state.in_progress
        lease = self._lease_of(owner)
        numbers = (
            f"{1 if running else 0} {state.message_count} {ms(lease)} "
            f"{self._expire_ms(running, lease)} {len(state.messages)}"
        )
        new_run, owner_json = owner_args(owner)
        args: list[str | bytes | int] = [
            numbers.encode(),
            new_run,
            wire.encode(),
            owner_json,
            channel,
            event.encode(),
            clean_text(run).encode(),
            ",".join(sorted(was)).encode(),
            *[clean_text(message).encode() for message in state.messages],
        ]
        self._written.pop(key, None)
        script = self._swap_sharded if self._cluster and self.sharded_pubsub else self._swap
        swapped = bool(self._call(self._run, script, keys, args))
        if swapped:
            self._remember(key, state, owner.run)
        return swapped

    def claim_command(self, state: State, owner: Owner) -> tuple[Any, ...] | None:
        """The Redis command of ``claim(state, owner)`` (one script call), for a caller's
        transaction on this very server (see ``same_server``): a queue integration
        publishes a run's record in the same transaction as its job. Read its reply
        with ``claimed``. None when this store is a cluster."""
        if isinstance(self.client, RedisCluster):
            return None
        if not self._write_loaded:  # once per store: inside a transaction NOSCRIPT would stick
            self._call(self._write.load, self.client)
            self._write_loaded = True
        self._written.pop(state.key, None)
        keys, args = self._write_call("claim", state, owner, None)
        return self._write.command(keys, args)

    def claimed(self, state: State, owner: Owner, reply: Any) -> None:
        """Finish a claim sent with ``claim_command``, from its reply: ``AlreadyRunning``
        if a live owner held the key, ``StoreError`` for an error reply."""
        if isinstance(reply, NoScriptError):  # the server lost its scripts since we loaded
            self._write_loaded = False
            try:
                self.claim(state, owner)
            except AlreadyRunning:
                pass  # the job's worker took this very run over first (a new key: no other)
            return
        if isinstance(reply, Exception):
            raise self._failure(reply)
        if int(reply) < 0:
            raise AlreadyRunning(state.key)
        self._remember(state.key, state, owner.run)

    def placed(self, reply: Any) -> bool:
        """Whether a ``place_command`` was carried out, from its reply (a place is a hint:
        an error is not raised; a lost script is loaded again next time)."""
        if isinstance(reply, NoScriptError):
            self._place_loaded = False
        return bool(reply == 1)

    def place_command(
        self, key: str, run: str, list_key: str, line: tuple[str, str, str, float]
    ) -> tuple[Any, ...] | None:
        """The Redis command that sets the ``position`` of ``key``'s queued record (run
        ``run``) to the length of the list ``list_key``, for a queue on this very server
        and database to send in its own transaction, right after its push (one round
        trip for both); it also sets field ``line[1]`` of hash ``line[0]`` to ``line[2]``
        with a TTL of ``line[3]`` seconds (the queue's map from jobs to records). None
        when this store is a cluster."""
        if isinstance(self.client, RedisCluster):
            return None
        if not self._place_loaded:  # once per store: inside a transaction NOSCRIPT would stick
            self._call(self._place.load, self.client)
            self._place_loaded = True
        keys = [self.record_key(key), list_key, line[0]]
        args: list[str | bytes | int] = [
            clean_text(run),
            self.channel(key),
            line[1],
            line[2],
            ms(line[3]),
        ]
        return self._place.command(keys, args)

    def same_server(self, client: Any) -> bool:
        """Whether ``client`` (a ``redis.Redis``) talks to this store's server and database."""
        mine = self.client
        if not isinstance(mine, redis.Redis) or not isinstance(client, redis.Redis):
            return False
        ours = mine.connection_pool.connection_kwargs
        theirs = client.connection_pool.connection_kwargs
        where = ("host", "port", "path", "db")
        return all(ours.get(name) == theirs.get(name) for name in where)

    def _lease_of(self, owner: Owner) -> float:
        """Seconds of lease a write gives: the store's, or what a queued record's owner
        has left of its queued timeout (at least a millisecond)."""
        if owner.lease_expires is None:
            return self._lease
        return max(0.001, owner.lease_expires - time.time())

    def _refusal(self, key: str, reply: int) -> RunSuperseded:
        """Why the write script refused a snapshot: another run owns the key, or this
        run has already ended there."""
        if reply == -2:
            return RunSuperseded(
                f"progress {key!r} has already ended; not writing a running snapshot "
                f"over its final state in {self}"
            )
        return RunSuperseded(
            f"progress {key!r} was started again by another owner after this one's "
            f"lease lapsed; not overwriting it in {self}"
        )

    def _write_call(
        self, mode: str, state: State, owner: Owner, previous: Written | None
    ) -> Call:
        """The keys and arguments of the write script for one snapshot, encoded here
        (redis-py would check each argument's type on the way: costly by the thousand)."""
        keys, channel = self._names(state.key)
        base, new_messages = messages_since(state, owner.run, previous)
        wire, event = encode_state(state, new_messages)
        running = state.in_progress
        lease = self._lease_of(owner)
        numbers = (
            f"{mode} {1 if running else 0} {state.message_count} {ms(lease)} "
            f"{self._expire_ms(running, lease)} {base} {len(state.messages)}"
        )
        run, owner_json = owner_args(owner)
        args: list[str | bytes | int] = [
            numbers.encode(),
            run,
            wire.encode(),
            owner_json,
            channel,
            event.encode(),
            *[clean_text(message).encode() for message in new_messages],
        ]
        return keys, args

    def _expire_ms(self, running: bool, lease: float | None = None) -> int:
        """Milliseconds until the record expires: never while its lease is renewed."""
        if self.finished_ttl is None:
            return 0
        extra = (self._lease if lease is None else lease) if running else 0.0
        return ms(self.finished_ttl + extra)

    def _remember(self, key: str, state: State, run: str) -> None:
        if state.in_progress:
            self._written[key] = Written(run, state.message_count, state.messages)
        else:
            self._written.pop(key, None)

    def delete(self, key: str) -> bool:
        """One script call: remove the record and its side keys; True if it was there."""
        self._written.pop(key, None)
        self._call(self.client.delete, *self.groups.keys(key))
        return bool(self._call(self._run, self._delete, self._read_keys(key), ()))

    def prune(self, older_than: float) -> int:
        """Remove ended and abandoned records older than ``older_than`` in one batch."""
        cutoff = time.time() - older_than
        doomed = [r for r in self.records() if self._prunable(r, cutoff) and r.owner is not None]
        calls: list[Call] = []
        for record in doomed:
            assert record.owner is not None
            calls.append((self._read_keys(record.state.key), [record.owner.run]))
        replies = self._call(self._run_many, self._prune, calls) if calls else []
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._failure(reply)
        return sum(int(reply) for reply in replies)

    # ------------------------------------------------------------------ shared runs

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as what reopens this store in another process: the URL
        (``redis+cluster://`` ones included), or a ``redis.Redis`` client's connection
        settings. A store made from a ``RedisCluster`` client raises ``TypeError``."""
        if self._url is not None:
            source: Any = self._url
        else:
            client = self.client  # the one given: made from a client, nothing connects
            if not isinstance(client, redis.Redis):
                raise TypeError(
                    f"{self!r} was made from a {type(client).__name__} client, which cannot "
                    "be sent to another process: make the store from a redis+cluster:// URL "
                    "(RedisStore(url) or tracked.open_store(url)) to share its progresses"
                )
            pool = client.connection_pool
            plain = (str, int, float, bool, type(None))  # addresses, timeouts, TLS files
            settings = {k: v for k, v in pool.connection_kwargs.items() if isinstance(v, plain)}
            source = (pool.connection_class, settings)
        return (_reopen, (source, self.prefix, self.finished_ttl, self._lease))

    def write_part(self, key: str, part: SharedPart) -> bool:
        """One script call: store the part while run ``part.run`` holds a live record."""
        run = clean_text(part.run)  # as the write script stored the owner's run id
        args = [run.encode(), clean_text(f"{part.run}/{part.worker}").encode(), part.encode()]
        keys = [self.record_key(key), self.parts_key(key), self.lease_key(key)]
        return bool(self._call(self._run, self._write_part, keys, args))

    def read_parts(self, key: str, run: str) -> list[SharedPart]:
        """The parts of run ``run`` in ``key``'s parts hash, one round trip."""
        values = self._call(self._run, self._read_parts, [self.parts_key(key)], [clean_text(run)])
        return [part for part in decode_parts(values) if part.run == run]

    def delete_parts(self, key: str, run: str) -> None:
        """One script call: remove run ``run``'s fields of ``key``'s parts hash."""
        self._call(self._run, self._delete_parts, [self.parts_key(key)], [clean_text(run)])

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Record | None:
        """The record of ``key`` and its lease in one script call, or None."""
        reply = self._read_record(self._read, key, self._view_keys(hash_tag(key)))
        if not reply:
            return None
        try:
            record = _with_book(decode_reply(reply, time.time()), reply)
        except ValueError as exc:
            raise StoreError(f"corrupt progress record {key!r} in {self}: {exc}") from exc
        if record.state.key != key:
            raise StoreError(f"{self.record_key(key)!r} holds another progress in {self}")
        return record

    def version(self, key: str) -> str | None:
        """A token that changes whenever what ``load(key)`` returns may change; None
        when there is no record.

        Every write, and every joined worker's part (``write_part``), bumps a counter
        kept in the record; the token is the owner's run id, a digest of the snapshot
        that made the record (a claim, or a write after a delete, starts the counter
        again), that counter and, for a
        running record, whether its lease is live (so it also changes when the owner
        dies). One round trip that moves no messages: a
        status route can keep what it rendered for a token, and answer with it (or
        with a 304) while the token stays the same.
        """
        token = self._read_record(self._version, key, self._names(key)[0])
        return None if token is None else key_text(token)

    def records(self) -> Iterator[Record]:
        """Every readable record: SCAN (on a cluster: every master), then the
        records read a batch per pipeline."""
        start = len(self.prefix + "rec:")
        pattern = glob_escape(self.prefix + "rec:{") + "*"
        tags = [key[start:] for key in map(key_text, self._call(self._scan, pattern)) if key]
        for offset in range(0, len(tags), SCAN_BATCH):
            calls = [(self._view_keys(tag), ()) for tag in tags[offset : offset + SCAN_BATCH]]
            replies = self._call(self._run_many, self._read, calls)
            now = time.time()
            for reply in replies:
                if not reply or isinstance(reply, Exception):
                    continue  # gone since the scan, or a foreign value under our prefix
                try:
                    yield _with_book(decode_reply(reply, now), reply)
                except ValueError:
                    continue



# ----------------------------------------------------------------------------- helpers


def _reopen(
    source: Any, prefix: str, finished_ttl: float | None, lease: float
) -> RedisStore:
    """A ``RedisStore`` from what ``RedisStore.__reduce__`` pickled."""
    if isinstance(source, str):
        return RedisStore(source, prefix=prefix, finished_ttl=finished_ttl, lease=lease)
    connection_class, kwargs = source
    pool = redis.ConnectionPool(connection_class=connection_class, **kwargs)
    client = redis.Redis(connection_pool=pool)
    store = RedisStore(client, prefix=prefix, finished_ttl=finished_ttl, lease=lease)
    store._owns_client = True  # made here, so close() closes it
    return store


def _with_book(record: Record, reply: Sequence[Any]) -> Record:
    """``record`` with the group ledger its read returned (none for other runs)."""
    if len(reply) < 7 or not reply[5]:
        return record
    return dataclasses.replace(record, book=decode_book(reply[5], reply[6]))
