"""``RedisStore``: progress shared through Redis, so any machine can read any run.

Per progress key ``K`` (name and progress_id combined) the store keeps, under
its ``prefix``:

- ``{prefix}rec:K``: a hash with the wire JSON of the state without its
  messages (``state``), the owner record (``owner``), the owner's run id
  (``run``), ``running`` ("1"/"0") and the ``message_count`` stored (``mc``);
- ``{prefix}msg:K``: a list with the kept messages, appended to with only the
  messages that are new since the owner's previous write, then trimmed;
- ``{prefix}lease:K``: the run id of a running owner, with a TTL of ``lease``
  seconds; the owner's writes renew it, and a running record without it reads
  as ``abandoned``. Readers take its remaining time from the server, so clock
  skew between machines does not matter.

Every write runs one Lua script (one round trip) that writes the record, sets the
lease and publishes an event on ``{prefix}events:K``: the wire JSON of the new
state whose ``messages`` hold at least the messages added since the previous
event of the run (place them with ``message_count - len(messages)``, as with
the status route's ``?since=`` cursor). A read is one script call, one round trip.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._state import State
from ._store import Owner, Record, SharedPart, Store
from .errors import AlreadyRunning, InvalidValue, StoreError

__all__ = ["RedisStore"]

#: Seconds to wait for a connection, so a dead Redis cannot hang a task.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply on an open connection.
SOCKET_TIMEOUT = 5.0
#: Keys fetched per SCAN step and records read per pipeline in ``records()``.
SCAN_BATCH = 200

# ARGV: mode, run, state, owner, running, message_count, lease_ms, expire_ms, base,
# keep, channel, payload, messages... -- returns 1 written, 0 resend all messages,
# -1 another live run holds the key.
_WRITE = """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
local mode, run, running = ARGV[1], ARGV[2], ARGV[5]
local lease_ms, expire_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local base, keep = tonumber(ARGV[9]), tonumber(ARGV[10])
local kind = redis.call('TYPE', rec).ok
if mode == 'claim' then
  if kind == 'hash' and redis.call('HGET', rec, 'running') == '1'
      and redis.call('EXISTS', lease) == 1 then
    return -1
  end
  redis.call('DEL', rec, msgs, lease)
else
  if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', rec, msgs) end
  local holder = redis.call('HGET', rec, 'run')
  if holder and holder ~= run then return -1 end
  if base >= 0 and tonumber(redis.call('HGET', rec, 'mc') or '-1') ~= base then
    return 0
  end
end
if base < 0 then redis.call('DEL', msgs) end
for i = 13, #ARGV, 1000 do
  redis.call('RPUSH', msgs, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if keep > 0 then redis.call('LTRIM', msgs, -keep, -1) else redis.call('DEL', msgs) end
redis.call('HSET', rec, 'state', ARGV[3], 'owner', ARGV[4], 'run', run,
  'running', running, 'mc', ARGV[6])
if running == '1' then
  redis.call('SET', lease, run, 'PX', lease_ms)
else
  redis.call('DEL', lease)
end
if expire_ms > 0 then
  redis.call('PEXPIRE', rec, expire_ms)
  if keep > 0 then redis.call('PEXPIRE', msgs, expire_ms) end
else
  redis.call('PERSIST', rec)
  redis.call('PERSIST', msgs)
end
redis.call('PUBLISH', ARGV[11], ARGV[12])
return 1
"""

# ARGV: run, field, part -- writes one joined worker's part while that run is running;
# returns 1 written, 0 the run is over (the part is dropped).
_WRITE_PART = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local fields = redis.call('HMGET', KEYS[1], 'run', 'running')
if fields[1] ~= ARGV[1] or fields[2] ~= '1' then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('PERSIST', KEYS[2]) end
return 1
"""

# ARGV: run -- removes the parts of that run.
_DELETE_PARTS = """
local prefix = ARGV[1] .. '/'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], field) end
end
return 1
"""

# ARGV: run -- deletes the record if that run still holds it and is not live.
_PRUNE = """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', rec, 'run') ~= ARGV[1] then return 0 end
if redis.call('HGET', rec, 'running') == '1' and redis.call('EXISTS', lease) == 1 then
  return 0
end
redis.call('DEL', rec, msgs, lease)
return 1
"""


# The state and owner fields, the kept messages as one JSON array (one reply to
# parse, not one per message) and the lease's remaining milliseconds.
_READ = """
local fields = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not fields[1] then return false end
local reply = {fields[1], fields[2], cjson.encode(redis.call('LRANGE', KEYS[2], 0, -1)),
  redis.call('PTTL', KEYS[3])}
if KEYS[4] then reply[5] = redis.call('HVALS', KEYS[4]) end
return reply
"""


@dataclasses.dataclass(frozen=True, slots=True)
class _Written:
    """What this store last wrote for a key, so the next write sends only new messages."""

    run: str
    message_count: int
    messages: tuple[str, ...]


class RedisStore(Store):
    """Progress records in Redis, shared by every process and machine using it.

    ``url_or_client`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
    ``redis.Redis`` client (left open by ``close()``). Owners hold a ``lease`` of
    that many seconds, renewed by their writes; ended records expire after
    ``finished_ttl`` seconds (None: never), as do abandoned ones once their lease
    has lapsed. Connecting is lazy: an unreachable server raises ``StoreError``,
    naming its address, from the first claim or read.
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,  # type: ignore[type-arg]
        *,
        prefix: str = "tracked:",
        finished_ttl: float | None = 86400,
        lease: float = 10.0,
    ) -> None:
        self.prefix = _check_prefix(prefix)
        self.finished_ttl = _check_seconds(finished_ttl, "finished_ttl", optional=True)
        self.lease = self._lease = float(_check_seconds(lease, "lease"))
        self._owns_client = not isinstance(url_or_client, redis.Redis)
        self.client = _make_client(url_or_client)
        self.address = _address(url_or_client, self.client)
        self._write = self.client.register_script(_WRITE)
        self._prune = self.client.register_script(_PRUNE)
        self._read = self.client.register_script(_READ)
        self._written: dict[str, _Written] = {}
        self._url = url_or_client if isinstance(url_or_client, str) else None

    def __repr__(self) -> str:
        return f"RedisStore({self.address!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connections of a client this store created."""
        if self._owns_client:
            self.client.close()

    # ------------------------------------------------------------------ key names

    def record_key(self, key: str) -> str:
        """The Redis hash that holds ``key``'s state and owner."""
        return f"{self.prefix}rec:{key}"

    def messages_key(self, key: str) -> str:
        """The Redis list that holds ``key``'s kept messages."""
        return f"{self.prefix}msg:{key}"

    def lease_key(self, key: str) -> str:
        """The Redis key whose TTL is the running owner's lease."""
        return f"{self.prefix}lease:{key}"

    def parts_key(self, key: str) -> str:
        """The Redis hash of the joined workers' parts of ``key`` (``tracked.join``):
        one field ``<run>/<worker>`` per worker, its part as JSON."""
        return f"{self.prefix}parts:{key}"

    def channel(self, key: str) -> str:
        """The pub/sub channel on which every write of ``key`` is published."""
        return f"{self.prefix}events:{key}"

    def _keys(self, key: str) -> list[str]:
        return [self.record_key(key), self.messages_key(key), self.lease_key(key)]

    def _read_keys(self, key: str) -> list[str]:
        """A read's keys: the record's, then its joined workers' parts."""
        return [*self._keys(key), self.parts_key(key)]

    # ------------------------------------------------------------------ writes

    def claim(self, state: State, owner: Owner) -> None:
        key = state.key
        self._written.pop(key, None)
        if self._run_write("claim", state, owner, None) < 0:
            raise AlreadyRunning(key)

    def save(self, state: State, owner: Owner) -> None:
        """Write a later snapshot, unless another run has claimed the key since.

        A stalled owner whose lease lapsed and whose name was started again gets
        ``StoreError`` (the core logs it once) and never overwrites the new run.
        """
        key = state.key
        previous = self._written.get(key)
        result = self._run_write("save", state, owner, previous)
        if result == 0:  # the stored messages are not what we last wrote: send them all
            result = self._run_write("save", state, owner, None)
        if result < 0:
            self._written.pop(key, None)
            raise StoreError(
                f"progress {key!r} was started again by another owner after this "
                f"one's lease lapsed; not overwriting it in {self}"
            )

    def _run_write(self, mode: str, state: State, owner: Owner, previous: _Written | None) -> int:
        key = state.key
        base, new_messages = _new_messages(state, owner.run, previous)
        event = (state if base < 0 else state.messages_since(base)).to_dict()
        wire = {name: value for name, value in event.items() if name != "messages"}
        running = state.in_progress
        args: list[str | int] = [
            mode,
            owner.run,
            _dumps(wire),
            _dumps(owner.to_dict()),
            "1" if running else "0",
            state.message_count,
            _ms(self._lease),
            self._expire_ms(running),
            base,
            len(state.messages),
            self.channel(key),
            _dumps(event),
            *new_messages,
        ]
        result = int(self._call(self._write, keys=self._keys(key), args=args))
        if result == 1:
            self._remember(key, state, owner.run)
        return result

    def _expire_ms(self, running: bool) -> int:
        """Milliseconds until the record expires: never while its lease is renewed."""
        if self.finished_ttl is None:
            return 0
        extra = self._lease if running else 0.0
        return _ms(self.finished_ttl + extra)

    def _remember(self, key: str, state: State, run: str) -> None:
        if state.in_progress:
            self._written[key] = _Written(run, state.message_count, state.messages)
        else:
            self._written.pop(key, None)

    def delete(self, key: str) -> bool:
        self._written.pop(key, None)
        return bool(self._call(self._delete, key))

    def _delete(self, key: str) -> int:
        """Remove the record's keys in one transaction; the count of record hashes gone."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.record_key(key))
        pipe.delete(self.messages_key(key), self.lease_key(key))
        pipe.delete(self.parts_key(key))
        return int(pipe.execute()[0])

    def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        doomed = [r for r in self.records() if self._prunable(r, cutoff) and r.owner is not None]
        deleted = 0
        for record in doomed:
            assert record.owner is not None
            keys = self._keys(record.state.key)
            deleted += int(self._call(self._prune, keys=keys, args=[record.owner.run]))
        return deleted

    # ------------------------------------------------------------------ shared runs

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as what reopens this store in another process (a share token
        carries it to workers): the URL, or the client's connection settings."""
        if self._url is not None:
            source: Any = self._url
        else:
            pool = self.client.connection_pool
            plain = (str, int, float, bool, type(None))  # addresses, timeouts, TLS files
            settings = {k: v for k, v in pool.connection_kwargs.items() if isinstance(v, plain)}
            source = (pool.connection_class, settings)
        return (_reopen, (source, self.prefix, self.finished_ttl, self._lease))

    def write_part(self, key: str, part: SharedPart) -> bool:
        script = self.client.register_script(_WRITE_PART)
        args = [part.run, f"{part.run}/{part.worker}", part.encode()]
        keys = [self.record_key(key), self.parts_key(key)]
        return bool(self._call(script, keys=keys, args=args))

    def read_parts(self, key: str, run: str) -> list[SharedPart]:
        fields = self._call(self.client.hgetall, self.parts_key(key))
        prefix = run + "/"
        parts = []
        for field, value in fields.items():
            if _text(field).startswith(prefix):
                try:
                    parts.append(SharedPart.decode(value))
                except ValueError:
                    continue
        return [part for part in parts if part.run == run]

    def delete_parts(self, key: str, run: str) -> None:
        script = self.client.register_script(_DELETE_PARTS)
        self._call(script, keys=[self.parts_key(key)], args=[run])

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Record | None:
        try:
            reply = self._read(keys=self._read_keys(key))
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise self._failure(exc) from exc
            raise StoreError(f"corrupt progress record {key!r} in {self}: {exc}") from exc
        except redis.RedisError as exc:
            raise self._failure(exc) from exc
        if not reply:
            return None
        try:
            record = _decode(reply, time.time())
        except ValueError as exc:
            raise StoreError(f"corrupt progress record {key!r} in {self}: {exc}") from exc
        if record.state.key != key:
            raise StoreError(f"{self.record_key(key)!r} holds another progress in {self}")
        return record

    def records(self) -> Iterator[Record]:
        pattern = _glob_escape(self.prefix + "rec:") + "*"
        start = len(self.prefix + "rec:")
        keys = [_text(k)[start:] for k in self._call(self._scan, pattern)]
        for offset in range(0, len(keys), SCAN_BATCH):
            replies = self._call(self._read_many, keys[offset : offset + SCAN_BATCH])
            now = time.time()
            for reply in replies:
                if not reply or isinstance(reply, Exception):
                    continue  # gone since the scan, or a foreign value under our prefix
                try:
                    yield _decode(reply, now)
                except ValueError:
                    continue

    def _scan(self, pattern: str) -> list[Any]:
        return list(self.client.scan_iter(match=pattern, count=SCAN_BATCH, _type="hash"))

    def _read_many(self, keys: Sequence[str]) -> list[Any]:
        """The read script's reply for each key, in one round trip (plus a script check)."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            self._read(keys=self._read_keys(key), client=pipe)
        return pipe.execute(raise_on_error=False)

    def _failure(self, exc: redis.RedisError) -> StoreError:
        return StoreError(f"Redis at {self.address} failed: {_describe(exc)}")

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Redis operation, turning every Redis failure into ``StoreError``."""
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise self._failure(exc) from exc


# ----------------------------------------------------------------------------- helpers


def _new_messages(state: State, run: str, previous: _Written | None) -> tuple[int, Sequence[str]]:
    """(base, messages to append): only those after ``previous`` when it is a prefix
    of this state's messages; else (-1, all of them) to replace the stored list."""
    if previous is None or previous.run != run:
        return -1, state.messages
    first, prev_count = state.first_message_index, previous.message_count
    prev_first = prev_count - len(previous.messages)
    if not prev_first <= first <= prev_count <= state.message_count:
        return -1, state.messages
    overlap = prev_count - first
    if state.messages[:overlap] != previous.messages[len(previous.messages) - overlap :]:
        return -1, state.messages
    return prev_count, state.messages[overlap:]


def _decode(reply: Sequence[Any], now: float) -> Record:
    """A record from the read script's reply; ``ValueError`` if malformed."""
    state_json, owner_json, messages_json, pttl = reply[:4]
    parts = _decode_parts(reply[4]) if len(reply) > 4 else None
    try:
        data = json.loads(state_json)
        messages = json.loads(messages_json)
        owner_data = None if owner_json is None else json.loads(owner_json)
    except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("the state is not a JSON object")
    data["messages"] = messages or []  # Lua's cjson writes an empty list as {}
    state = State.from_dict(data)
    if owner_data is None:
        return Record(state, None)
    owner = Owner.from_dict(owner_data)
    owner = dataclasses.replace(owner, lease_expires=_lease_expires(pttl, now))
    return Record(state, owner, parts)


def _decode_parts(values: Sequence[Any]) -> tuple[SharedPart, ...]:
    """The readable parts among a parts hash's values (others add nothing)."""
    parts = []
    for value in values or ():
        try:
            parts.append(SharedPart.decode(value))
        except ValueError:
            continue
    return tuple(parts)


def _lease_expires(pttl: int, now: float) -> float:
    """This machine's time when the lease ends: remaining time measured by the server."""
    if pttl == -1:  # a lease key without a TTL: held until someone deletes it
        return math.inf
    return now + pttl / 1000.0 if pttl > 0 else 0.0


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


def _make_client(url_or_client: str | redis.Redis) -> redis.Redis:  # type: ignore[type-arg]
    if isinstance(url_or_client, redis.Redis):
        return url_or_client
    if not isinstance(url_or_client, str):
        raise StoreError(
            f"RedisStore needs a redis://, rediss:// or unix:// URL or a redis.Redis "
            f"client, not {type(url_or_client).__name__}"
        )
    try:
        return redis.Redis.from_url(
            url_or_client,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # One immediate retry on a broken connection (a pooled socket the server
            # closed by restarting); none on timeouts, so a dead host costs one wait.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise StoreError(f"cannot use {_redact(url_or_client)!r} as a Redis store: {exc}") from exc


def _address(url_or_client: str | redis.Redis, client: redis.Redis) -> str:  # type: ignore[type-arg]
    """Where the server is, for error messages: the URL without its password."""
    if isinstance(url_or_client, str):
        return _redact(url_or_client)
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _redact(url: str) -> str:
    """The URL as shown in messages: no password, no query (it may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username or ''}:***@" if parts.password is not None else ""
        return parts._replace(netloc=user + host, query="", fragment="").geturl()
    except ValueError:
        return "<a malformed URL>"


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise InvalidValue(f"prefix must be a str, not {type(prefix).__name__}")
    return prefix


def _check_seconds(value: object, what: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidValue(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
