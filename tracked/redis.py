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
import functools
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

try:
    import redis
except ImportError as exc:  # pragma: no cover - redis is in the test extra
    raise ImportError(
        "tracked's Redis store needs redis-py: pip install 'tracked[redis]'"
    ) from exc
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.exceptions import AskError, NoScriptError, RedisClusterException
from redis.retry import Retry

from ._state import State
from ._store import Owner, Record, SharedPart, Store
from .errors import AlreadyRunning, InvalidValue, RunSuperseded, StoreError

__all__ = ["RedisStore"]

#: Seconds to wait for a connection, so a dead Redis cannot hang a task.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply on an open connection.
SOCKET_TIMEOUT = 5.0
#: Connections a store made from a URL opens at most to one server (``?max_connections=``
#: in the URL overrides it), and seconds a thread waits for a free one (``?timeout=``):
#: a burst of thousands of starts or ends in one process queues for the pool instead
#: of failing with redis-py's ``MaxConnectionsError``.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 10.0
#: Keys fetched per SCAN step and records read per pipeline in ``records()``.
SCAN_BATCH = 200
#: Cancel keys read per MGET when the flusher asks about its live runs (``cancels_requested``).
CANCEL_CHUNK = 1000
#: Progress keys whose Redis key names a store keeps at hand (then it starts afresh).
NAME_CACHE_SIZE = 10_000
#: URL schemes that select a Redis Cluster, and the plain scheme redis-py takes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: A client of one server or of a cluster.
Client: TypeAlias = "redis.Redis | RedisCluster"  # type: ignore[type-arg]

# Whether a lease is held, exactly as readers judge it from PTTL (``_lease_expires``):
# a key in its last millisecond answers PTTL 0, and reads as lapsed, so it is lapsed
# here too (EXISTS would still say 1, and refuse a claim that a reader allows).
_LIVE = """
local function live(lease)
  local ttl = redis.call('PTTL', lease)
  return ttl > 0 or ttl == -1
end
"""

# ARGV: "mode running message_count lease_ms expire_ms base keep" (one argument:
# fewer to pack per write), run, state, owner, channel, payload, messages...
# -- returns 1 written, 0 resend all messages, -1 another run holds the key (a live
# one, for a claim), -2 this run has ended (a late running snapshot is refused).
# Every write bumps the record's version ``v`` (see ``RedisStore.version``); a write
# that makes the record anew (a claim, or a run's write after a delete), which starts
# ``v`` again, also sets ``c`` from its snapshot: a record deleted and written again
# by the same run never repeats an earlier token.
_WRITE = _LIVE + """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
local mode, running, mc, lease_ms, expire_ms, base, keep = string.match(ARGV[1],
  '^(%a+) ([01]) (%d+) (%d+) (%d+) (-?%d+) (%d+)$')
local run = ARGV[2]
lease_ms, expire_ms = tonumber(lease_ms), tonumber(expire_ms)
base, keep = tonumber(base), tonumber(keep)
local kind = redis.call('TYPE', rec).ok
if mode == 'claim' then
  if kind == 'hash' and redis.call('HGET', rec, 'running') == '1' and live(lease) then
    return -1
  end
  redis.call('DEL', rec, msgs, lease)
else
  if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', rec, msgs) end
  local holder = redis.call('HGET', rec, 'run')
  if holder and holder ~= run then return -1 end
  if holder and running == '1' and redis.call('HGET', rec, 'running') == '0' then
    return -2
  end
  if base >= 0 and tonumber(redis.call('HGET', rec, 'mc') or '-1') ~= base then
    return 0
  end
end
if base < 0 then redis.call('DEL', msgs) end
for i = 7, #ARGV, 1000 do
  redis.call('RPUSH', msgs, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if keep > 0 then redis.call('LTRIM', msgs, -keep, -1) else redis.call('DEL', msgs) end
redis.call('HSET', rec, 'state', ARGV[3], 'owner', ARGV[4], 'run', run,
  'running', running, 'mc', mc)
if mode == 'claim' or kind ~= 'hash' then  -- a new record: its own token prefix
  redis.call('HSET', rec, 'c', string.sub(redis.sha1hex(ARGV[3]), 1, 12))
end
redis.call('HINCRBY', rec, 'v', 1)
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
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# The same write on a Redis Cluster of servers >= 7.0: the event goes out with SPUBLISH on
# a channel in the record's own slot (``RedisStore.channel``), so only the master that
# owns the record relays it, not every master of the cluster.
def _sharded(script: str) -> str:
    """``script`` publishing its event with SPUBLISH instead of PUBLISH."""
    sharded = script.replace("redis.call('PUBLISH', ", "redis.call('SPUBLISH', ")
    if sharded == script:  # pragma: no cover - an edit of the script lost its PUBLISH line
        raise RuntimeError("tracked.redis: a write script has no PUBLISH call to shard")
    return sharded


_WRITE_SHARDED = _sharded(_WRITE)

# KEYS: record, messages, lease. ARGV: "running message_count lease_ms expire_ms keep",
# run, state, owner, channel, payload, expected run, allowed states ("a,b"), messages...
# -- ``Store.swap``: replaces the record of the expected run if its state as readers
# judge it (a running one whose lease lapsed is abandoned) is allowed; 1 written, 0 not.
_SWAP = _LIVE + """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('TYPE', rec).ok ~= 'hash' then return 0 end
local fields = redis.call('HMGET', rec, 'run', 'running', 'state')
if fields[1] ~= ARGV[7] or not fields[3] then return 0 end
local judged = cjson.decode(fields[3]).state
if fields[2] == '1' and not live(lease) then judged = 'abandoned' end
if not string.find(',' .. ARGV[8] .. ',', ',' .. judged .. ',', 1, true) then return 0 end
local running, mc, lease_ms, expire_ms, keep = string.match(ARGV[1],
  '^([01]) (%d+) (%d+) (%d+) (%d+)$')
keep = tonumber(keep)
redis.call('DEL', msgs)
for i = 9, #ARGV, 1000 do
  redis.call('RPUSH', msgs, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if keep > 0 then redis.call('LTRIM', msgs, -keep, -1) end
redis.call('HSET', rec, 'state', ARGV[3], 'owner', ARGV[4], 'run', ARGV[2],
  'running', running, 'mc', mc)
redis.call('HINCRBY', rec, 'v', 1)
if running == '1' then
  redis.call('SET', lease, ARGV[2], 'PX', tonumber(lease_ms))
else
  redis.call('DEL', lease)
end
if tonumber(expire_ms) > 0 then
  redis.call('PEXPIRE', rec, tonumber(expire_ms))
  if keep > 0 then redis.call('PEXPIRE', msgs, tonumber(expire_ms)) end
else
  redis.call('PERSIST', rec)
  redis.call('PERSIST', msgs)
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

_SWAP_SHARDED = _sharded(_SWAP)

# KEYS: record, list, line. ARGV: run, channel, job id, line entry, line ttl_ms -- a
# queued record of that run takes the length of the list (a queue its job was just
# pushed on, in the same transaction) as its ``position``, and the queue's line hash
# maps the job to the record (see ``tracked.rq``); 1 written, 0 not (another run, or no
# longer queued). Within the stored JSON the first '"position":' is the key itself:
# every quote inside a string is escaped.
_PLACE = """
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]))
local fields = redis.call('HMGET', KEYS[1], 'run', 'state')
if fields[1] ~= ARGV[1] or not fields[2] then return 0 end
if not string.find(fields[2], '"state":"queued"', 1, true) then return 0 end
local place = '"position":' .. redis.call('LLEN', KEYS[2])
local start, stop = string.find(fields[2], '"position":[%d]*n?u?l?l?')
if not start then return 0 end
local state = string.sub(fields[2], 1, start - 1) .. place .. string.sub(fields[2], stop + 1)
redis.call('HSET', KEYS[1], 'state', state)
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PUBLISH', ARGV[2], '{"messages":[],' .. string.sub(state, 2))
return 1
"""

# KEYS: record, parts, lease. ARGV: run, field, part -- writes one joined worker's part
# while that run is running and its owner's lease is live; returns 1 written, 0 the run
# is over or its owner is judged dead (the part is dropped, so every reader of the
# abandoned record sees the same parts). A part changes what readers see, so it bumps
# the record's version ``v`` too.
_WRITE_PART = _LIVE + """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local fields = redis.call('HMGET', KEYS[1], 'run', 'running')
if fields[1] ~= ARGV[1] or fields[2] ~= '1' or not live(KEYS[3]) then return 0 end
local kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'v', 1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('PERSIST', KEYS[2]) end
return 1
"""

# KEYS: parts. ARGV: run -- the parts of that run (a foreign value there: none).
_READ_PARTS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {} end
local prefix, values = ARGV[1] .. '/', {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #prefix) == prefix then values[#values + 1] = fields[i + 1] end
end
return values
"""

# KEYS: parts. ARGV: run -- removes the parts of that run.
_DELETE_PARTS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 1 end
local prefix = ARGV[1] .. '/'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], field) end
end
return 1
"""

# KEYS: record, messages, lease, parts. ARGV: run -- deletes the record (and the
# joined workers' parts left over) if that run still holds it and is not live.
_PRUNE = _LIVE + """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', rec, 'run') ~= ARGV[1] then return 0 end
if redis.call('HGET', rec, 'running') == '1' and live(lease) then
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
"""


# KEYS: record, messages, lease, [parts]. The state and owner fields, the kept
# messages as one JSON array (one reply to parse, not one per message), the lease's
# remaining milliseconds and, given the parts key, the joined workers' parts (every
# run's: readers keep the record's run's).
_READ = """
local fields = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not fields[1] then return false end
local reply = {fields[1], fields[2], cjson.encode(redis.call('LRANGE', KEYS[2], 0, -1)),
  redis.call('PTTL', KEYS[3])}
if KEYS[4] then
  reply[5] = redis.call('TYPE', KEYS[4]).ok == 'hash' and redis.call('HVALS', KEYS[4]) or {}
end
return reply
"""

# KEYS: record, lease, cancel; ARGV: ttl_ms -- asks the running run to stop:
# stores its run id under the cancel key; 1 asked, 0 nothing running.
_REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'running') ~= '1' then return 0 end
local run = redis.call('GET', KEYS[2])
if not run or redis.call('HGET', KEYS[1], 'run') ~= run then return 0 end
redis.call('SET', KEYS[3], run, 'PX', tonumber(ARGV[1]))
return 1
"""

# KEYS: cancel; ARGV: run -- the owner removes its own run's request.
_CLEAR_CANCEL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


# The record's version token (see ``RedisStore.version``), or false if there is none.
_VERSION = _LIVE + """
local fields = redis.call('HMGET', KEYS[1], 'run', 'v', 'running', 'c')
if not fields[1] then return false end
local lease = 'ended'
if fields[3] == '1' then
  lease = live(KEYS[3]) and 'live' or 'lapsed'
end
return fields[1] .. ':' .. (fields[4] or '') .. ':' .. (fields[2] or '0') .. ':' .. lease
"""

# Deletes a record's keys (record, messages, lease, parts); returns 1 if the record
# hash was there.
_DELETE = """
local gone = redis.call('DEL', KEYS[1])
redis.call('DEL', unpack(KEYS, 2))
return gone
"""


class _Script:
    """A Lua script called by its SHA1 and loaded when a server answers NOSCRIPT.

    Built on ``execute_command`` rather than redis-py's ``Script``: that one checks
    every pipeline's scripts with an extra ``SCRIPT EXISTS`` round trip, and a
    cluster pipeline refuses ``evalsha`` outright.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest().encode()

    def command(
        self, keys: Sequence[str | bytes], args: Sequence[str | bytes | int]
    ) -> tuple[Any, ...]:
        """The ``EVALSHA`` command for these keys and arguments."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)  # a str: the cluster wants one

    def __call__(
        self, client: Client, keys: Sequence[str | bytes], args: Sequence[str | bytes | int]
    ) -> Any:
        try:
            return client.execute_command(*self.command(keys, args))
        except NoScriptError:  # a restarted or a new server: load it (on every master)
            self.load(client)
            return client.execute_command(*self.command(keys, args))

    def load(self, client: Client) -> None:
        """Load the script on the server (on a cluster: on every master)."""
        loader: Any = client  # redis-py's RedisCluster has it, untyped
        loader.script_load(self.source)


#: One script call in a pipeline: its keys and its arguments.
_Call: TypeAlias = tuple[Sequence["str | bytes"], Sequence["str | bytes | int"]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Written:
    """What this store last wrote for a key, so the next write sends only new messages."""

    run: str
    message_count: int
    messages: tuple[str, ...]


class RedisStore(Store):
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
        self.prefix = _check_prefix(prefix)
        self.finished_ttl = _check_seconds(finished_ttl, "finished_ttl", optional=True)
        self.lease = self._lease = float(_check_seconds(lease, "lease"))
        self._owns_client = isinstance(url_or_client, str)
        self.address = _address(url_or_client)
        self._connect = _connector(url_or_client, self.address)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._write = _Script(_WRITE)
        self._swap = _Script(_SWAP)
        self._swap_sharded = _Script(_SWAP_SHARDED)
        self._place = _Script(_PLACE)
        self._place_loaded = False
        self._write_loaded = False
        self._write_sharded = _Script(_WRITE_SHARDED)
        #: Whether this store talks to a Redis Cluster (known without connecting).
        self._cluster = isinstance(url_or_client, RedisCluster) or (
            isinstance(url_or_client, str)
            and url_or_client.partition("://")[0].lower() in CLUSTER_SCHEMES
        )
        self._sharded: bool | None = None  # SPUBLISH known to work: asked on first use
        self._prune = _Script(_PRUNE)
        self._read = _Script(_READ)
        self._delete = _Script(_DELETE)
        self._version = _Script(_VERSION)
        self._request_cancel = _Script(_REQUEST_CANCEL)
        self._clear_cancel = _Script(_CLEAR_CANCEL)
        self._written: dict[str, _Written] = {}
        self._write_part = _Script(_WRITE_PART)
        self._read_parts = _Script(_READ_PARTS)
        self._delete_parts = _Script(_DELETE_PARTS)
        self._name_cache: dict[str, tuple[list[bytes], bytes]] = {}
        #: The URL this store was made from (None: a client), which a pickle carries.
        self._url = url_or_client if isinstance(url_or_client, str) else None

    def __repr__(self) -> str:
        return f"RedisStore({self.address!r}, prefix={self.prefix!r})"

    @property
    def client(self) -> Client:
        """The redis-py client, made on first use (a cluster client connects when made)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._call(self._connect)
                client = self._client
        return client

    def close(self) -> None:
        """Close the connections of a client this store created."""
        if self._owns_client and self._client is not None:
            self._client.close()

    # ------------------------------------------------------------------ key names

    def record_key(self, key: str) -> str:
        """The Redis hash that holds ``key``'s state and owner."""
        return f"{self.prefix}rec:{_tag(key)}"

    def messages_key(self, key: str) -> str:
        """The Redis list that holds ``key``'s kept messages."""
        return f"{self.prefix}msg:{_tag(key)}"

    def lease_key(self, key: str) -> str:
        """The Redis key whose TTL is the running owner's lease."""
        return f"{self.prefix}lease:{_tag(key)}"

    def parts_key(self, key: str) -> str:
        """The Redis hash of the joined workers' parts of ``key`` (``tracked.join``):
        one field ``<run>/<worker>`` per worker, its part as JSON. It has the record's
        hash tag, so the scripts that read or write both run on one cluster slot."""
        return f"{self.prefix}parts:{_tag(key)}"

    def cancel_key(self, key: str) -> str:
        """The Redis key holding the run id of a running owner asked to stop (with the
        run's lease as its TTL)."""
        return f"{self.prefix}cancel:{_tag(key)}"

    def channel(self, key: str) -> str:
        """The pub/sub channel on which every write of ``key`` is published.

        On a Redis Cluster it carries the record's hash tag, so it lives in the
        record's slot: with ``sharded_pubsub`` the write publishes it with
        ``SPUBLISH`` and readers follow it with ``SSUBSCRIBE``."""
        if self._cluster:
            return f"{self.prefix}events:{_tag(key)}"
        return f"{self.prefix}events:{_clean(key)}"

    @property
    def sharded_pubsub(self) -> bool:
        """True when events are sharded pub/sub messages (``SPUBLISH``): on a Redis
        Cluster whose servers are 7.0 or newer. A single Redis, and older clusters,
        use plain ``PUBLISH``, which a cluster relays to every master."""
        sharded = self._sharded
        if sharded is None:
            sharded = self._cluster and self._supports_spublish()
            if sharded is None:  # the cluster cannot answer now: ask again next time
                return False
            self._sharded = sharded
        return sharded

    def _supports_spublish(self) -> bool | None:
        """Whether the cluster's servers know ``SPUBLISH`` (Redis >= 7.0); None when
        they cannot be asked."""
        try:
            info: Any = self.client.info("server")
        except (redis.RedisError, RedisClusterException, StoreError):
            return None
        versions = info.values() if "redis_version" not in info else [info]
        found = [str(v.get("redis_version", "0")) for v in versions if isinstance(v, dict)]
        return bool(found) and all(_major(version) >= 7 for version in found)

    def _publisher(self) -> _Script:
        """The write script: with ``SPUBLISH`` on a cluster that has it."""
        return self._write_sharded if self._cluster and self.sharded_pubsub else self._write

    def async_client(self) -> Any | None:
        """A new redis-py asyncio client of this store's server, for reading its events
        on an event loop (the caller closes it); None when there is none to make (a
        Redis Cluster, or a client whose connection class has no asyncio twin): then
        events are read on a thread instead."""
        import redis.asyncio

        if self._url is not None:
            if CLUSTER_SCHEMES.get(self._url.partition("://")[0].lower()) is not None:
                return None
            return redis.asyncio.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT
            )
        client = self.client
        if not isinstance(client, redis.Redis):
            return None
        return _async_twin(client)

    def _keys(self, key: str) -> list[str]:
        return self._sibling_keys(_tag(key))

    def _names(self, key: str) -> tuple[list[bytes], bytes]:
        """The keys and the channel of ``key``, encoded; cached, as every write needs them."""
        names = self._name_cache.get(key)
        if names is None:
            if len(self._name_cache) >= NAME_CACHE_SIZE:
                self._name_cache.clear()
            keys = [name.encode() for name in self._keys(key)]
            names = self._name_cache[key] = (keys, self.channel(key).encode())
        return names

    def _sibling_keys(self, tagged: str) -> list[str]:
        """The record, messages and lease keys of a record from its ``{T}`` part."""
        return [f"{self.prefix}{kind}:{tagged}" for kind in ("rec", "msg", "lease")]

    def _all_keys(self, tagged: str) -> list[str]:
        """A read's keys from the ``{T}`` part: the record's, then its joined workers'
        parts (one slot: they share the tag)."""
        return [f"{self.prefix}{kind}:{tagged}" for kind in ("rec", "msg", "lease", "parts")]

    def _read_keys(self, key: str) -> list[str]:
        """A read's keys: the record's, then its joined workers' parts."""
        return self._all_keys(_tag(key))

    # ------------------------------------------------------------------ writes

    def claim(self, state: State, owner: Owner) -> None:
        """One script call: write the record and its lease unless a live owner holds it."""
        key = state.key
        self._written.pop(key, None)
        call = self._write_call("claim", state, owner, None)
        if self._call(self._run, self._publisher(), *call) < 0:
            raise AlreadyRunning(key)
        self._remember(key, state, owner.run)

    def save(self, state: State, owner: Owner) -> None:
        """Write a later snapshot, unless another run has claimed the key since.

        A stalled owner whose lease lapsed and whose name was started again gets
        ``RunSuperseded`` and never overwrites the new run.
        """
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
        again = []
        for i, reply in zip(sent, replies, strict=True):
            state, owner = writes[i]
            if isinstance(reply, Exception):
                results[i] = self._failure(reply)
            elif reply == 1:
                self._remember(state.key, state, owner.run)
            elif reply == 0 and not resend:
                again.append(i)
            else:
                self._written.pop(state.key, None)
                results[i] = self._refusal(state.key, reply)
        return again

    def swap(self, state: State, owner: Owner, *, run: str, was: frozenset[str]) -> bool:
        """One script call: the check and the write are atomic on the server."""
        key = state.key
        keys, channel = self._names(key)
        wire, event = _encode(state, state.messages)
        running = state.in_progress
        lease = self._lease_of(owner)
        numbers = (
            f"{1 if running else 0} {state.message_count} {_ms(lease)} "
            f"{self._expire_ms(running, lease)} {len(state.messages)}"
        )
        new_run, owner_json = _owner_args(owner)
        args: list[str | bytes | int] = [
            numbers.encode(),
            new_run,
            wire.encode(),
            owner_json,
            channel,
            event.encode(),
            _clean(run).encode(),
            ",".join(sorted(was)).encode(),
            *[_clean(message).encode() for message in state.messages],
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
            _clean(run),
            self.channel(key),
            line[1],
            line[2],
            _ms(line[3]),
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
        self, mode: str, state: State, owner: Owner, previous: _Written | None
    ) -> _Call:
        """The keys and arguments of the write script for one snapshot, encoded here
        (redis-py would check each argument's type on the way: costly by the thousand)."""
        keys, channel = self._names(state.key)
        base, new_messages = _new_messages(state, owner.run, previous)
        wire, event = _encode(state, new_messages)
        running = state.in_progress
        lease = self._lease_of(owner)
        numbers = (
            f"{mode} {1 if running else 0} {state.message_count} {_ms(lease)} "
            f"{self._expire_ms(running, lease)} {base} {len(state.messages)}"
        )
        run, owner_json = _owner_args(owner)
        args: list[str | bytes | int] = [
            numbers.encode(),
            run,
            wire.encode(),
            owner_json,
            channel,
            event.encode(),
            *[_clean(message).encode() for message in new_messages],
        ]
        return keys, args

    def _expire_ms(self, running: bool, lease: float | None = None) -> int:
        """Milliseconds until the record expires: never while its lease is renewed."""
        if self.finished_ttl is None:
            return 0
        extra = (self._lease if lease is None else lease) if running else 0.0
        return _ms(self.finished_ttl + extra)

    def _remember(self, key: str, state: State, run: str) -> None:
        if state.in_progress:
            self._written[key] = _Written(run, state.message_count, state.messages)
        else:
            self._written.pop(key, None)

    def delete(self, key: str) -> bool:
        """One script call: remove the record and its side keys; True if it was there."""
        self._written.pop(key, None)
        return bool(self._call(self._run, self._delete, self._read_keys(key), ()))

    def prune(self, older_than: float) -> int:
        """Remove ended and abandoned records older than ``older_than`` in one batch."""
        cutoff = time.time() - older_than
        doomed = [r for r in self.records() if self._prunable(r, cutoff) and r.owner is not None]
        calls: list[_Call] = []
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
        run = _clean(part.run)  # as the write script stored the owner's run id
        args = [run.encode(), _clean(f"{part.run}/{part.worker}").encode(), part.encode()]
        keys = [self.record_key(key), self.parts_key(key), self.lease_key(key)]
        return bool(self._call(self._run, self._write_part, keys, args))

    def read_parts(self, key: str, run: str) -> list[SharedPart]:
        """The parts of run ``run`` in ``key``'s parts hash, one round trip."""
        values = self._call(self._run, self._read_parts, [self.parts_key(key)], [_clean(run)])
        return [part for part in _decode_parts(values) if part.run == run]

    def delete_parts(self, key: str, run: str) -> None:
        """One script call: remove run ``run``'s fields of ``key``'s parts hash."""
        self._call(self._run, self._delete_parts, [self.parts_key(key)], [_clean(run)])

    # ------------------------------------------------------------------ cancel requests

    def request_cancel(self, key: str) -> bool:
        """One script call: mark ``key``'s live run asked to stop; False if none runs."""
        keys = [self.record_key(key), self.lease_key(key), self.cancel_key(key)]
        return bool(self._call(self._run, self._request_cancel, keys, [_ms(self._lease)]))

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """One round trip for all of this process's live runs on this store."""
        if not runs:
            return []
        client = self.client
        pipe = client.pipeline(transaction=False)
        if isinstance(client, RedisCluster):  # keys in as many slots as runs: a GET each
            for key, _ in runs:
                pipe.get(self.cancel_key(key))
        else:  # one MGET per chunk: a command to pack and a reply to parse, not one per run
            keys = [self.cancel_key(key) for key, _ in runs]
            for start in range(0, len(keys), CANCEL_CHUNK):
                pipe.execute_command("MGET", *keys[start : start + CANCEL_CHUNK])
        replies = self._call(pipe.execute, raise_on_error=False)
        if not isinstance(client, RedisCluster):
            replies = [
                value
                for chunk in replies
                for value in (chunk if isinstance(chunk, list) else [chunk] * CANCEL_CHUNK)
            ][: len(runs)]
        return [
            isinstance(reply, (bytes, str)) and _text(reply) == owner.run
            for reply, (_, owner) in zip(replies, runs, strict=True)
        ]

    def clear_cancel(self, key: str, owner: Owner) -> None:
        """One script call: remove ``owner``'s run's cancel request of ``key``."""
        self._call(self._run, self._clear_cancel, [self.cancel_key(key)], [owner.run])

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Record | None:
        """The record of ``key`` and its lease in one script call, or None."""
        reply = self._read_record(self._read, key, self._read_keys(key))
        if not reply:
            return None
        try:
            record = _decode(reply, time.time())
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
        return None if token is None else _text(token)

    def _read_record(
        self, script: _Script, key: str, keys: Sequence[str | bytes] | None = None
    ) -> Any:
        """Run a script that reads ``key``'s record (its ``keys``, by default the
        record's three); a foreign value there is corrupt."""
        try:
            return self._run(script, self._keys(key) if keys is None else keys, ())
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise self._failure(exc) from exc
            raise StoreError(f"corrupt progress record {key!r} in {self}: {exc}") from exc
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failure(exc) from exc

    def records(self) -> Iterator[Record]:
        """Every readable record: SCAN (on a cluster: every master), then the
        records read a batch per pipeline."""
        start = len(self.prefix + "rec:")
        pattern = _glob_escape(self.prefix + "rec:{") + "*"
        tags = [key[start:] for key in map(_text, self._call(self._scan, pattern)) if key]
        for offset in range(0, len(tags), SCAN_BATCH):
            calls = [(self._all_keys(tag), ()) for tag in tags[offset : offset + SCAN_BATCH]]
            replies = self._call(self._run_many, self._read, calls)
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

    # ------------------------------------------------------------------ plumbing

    def _run(
        self, script: _Script, keys: Sequence[str | bytes], args: Sequence[str | bytes | int]
    ) -> Any:
        """One script call: one round trip (two the first time a server sees it)."""
        return script(self.client, keys, args)

    def _run_many(self, script: _Script, calls: Sequence[_Call]) -> list[Any]:
        """Each call's reply, or the error it got, from one pipeline round trip.

        Calls a server answered NOSCRIPT (restarted, or a master added) are sent
        once more after loading the script. A single call skips the pipeline.
        """
        if len(calls) == 1:
            try:
                return [self._run(script, *calls[0])]
            except redis.ResponseError as exc:  # an error reply, as a pipeline returns it
                return [exc]
        replies = self._pipeline(script, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            script.load(self.client)
            again = self._pipeline(script, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    def _pipeline(self, script: _Script, calls: Sequence[_Call]) -> list[Any]:
        """Send every call in one pipeline (a cluster's groups them per master and
        writes to every master before reading any reply)."""
        client = self.client
        pipe = client.pipeline(transaction=False)
        if isinstance(client, RedisCluster):
            # Name each call's master from the client's slot table: left to find the
            # keys itself, a cluster pipeline asks the server (COMMAND GETKEYS) for
            # every EVALSHA, one round trip each. A stale table is corrected by the
            # MOVED reply, which the pipeline follows.
            for keys, args in calls:
                node = client.get_node_from_key(keys[0])
                pipe.execute_command(*script.command(keys, args), target_nodes=node)
        else:
            for keys, args in calls:
                pipe.execute_command(*script.command(keys, args))
        return list(pipe.execute(raise_on_error=False))

    def _failure(self, exc: BaseException) -> StoreError:
        text = _describe(exc)
        if isinstance(exc, AskError) and not isinstance(self._client, RedisCluster):  # or MOVED
            text += " (this server is part of a Redis Cluster: use a redis+cluster:// URL)"
        return StoreError(f"Redis at {self.address} failed: {text}")

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a Redis operation, turning every Redis failure into ``StoreError``."""
        try:
            return function(*args, **kwargs)
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failure(exc) from exc


# ----------------------------------------------------------------------------- helpers


def _tag(key: str) -> str:
    """``{T}``: the hash tag that puts a record's keys in one Redis Cluster slot.

    ``T`` is the key with ``%`` and ``}`` percent-encoded: never empty, never cut
    short by a ``}`` of the name, and distinct for distinct keys.
    """
    return "{" + _clean(key).replace("%", "%25").replace("}", "%7D") + "}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """``text`` with every lone surrogate (what ``os.listdir`` makes of bytes that are
    not UTF-8) replaced by U+FFFD, so that it can be sent as UTF-8."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


#: Stands in for the messages while the state is encoded once (see ``_encode``).
_HOLE = f'"messages":{json.dumps(chr(0) + "messages" + chr(0))}'


def _encode(state: State, messages: Sequence[str]) -> tuple[str, str]:
    """(the stored JSON: the wire JSON without messages, the event JSON: the wire JSON
    with only ``messages``), from one encoding of the state, in the wire's key order.

    The messages are encoded as a placeholder, then cut out or filled in. Its text,
    ``"messages":"\u0000messages\u0000"``, occurs nowhere else: inside a JSON string
    every quote is escaped, and no other key is named ``messages``.
    """
    fields = state.to_dict()
    fields["messages"] = chr(0) + "messages" + chr(0)
    encoded = _dumps(fields)
    if f",{_HOLE}" in encoded:
        wire = encoded.replace(f",{_HOLE}", "", 1)
    else:  # the first key
        wire = encoded.replace(f"{_HOLE},", "", 1)
    return wire, encoded.replace(_HOLE, f'"messages":{_dumps(list(messages))}', 1)


@functools.lru_cache(maxsize=4096)
def _owner_args(owner: Owner) -> tuple[bytes, bytes]:
    """The run id and the owner record as JSON: the same for every write of a run,
    so encoded once."""
    return _clean(owner.run).encode(), _dumps(owner.to_dict()).encode()


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


# ----------------------------------------------------------------------------- clients


def _connector(url_or_client: object, address: str) -> Callable[[], Client]:
    """A function that returns the store's client: the one given, or one made from
    the URL. The URL is checked now; a cluster client is made on first use, since
    making one connects to the cluster."""
    if isinstance(url_or_client, (redis.Redis, RedisCluster)):
        given = url_or_client
        return lambda: given
    if not isinstance(url_or_client, str):
        raise StoreError(
            "RedisStore needs a redis://, rediss://, unix://, redis+cluster:// or "
            "rediss+cluster:// URL, or a redis.Redis or redis.cluster.RedisCluster "
            f"client, not {type(url_or_client).__name__}"
        )
    _check_url(url_or_client)
    scheme, _, rest = url_or_client.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    try:
        if plain is None:
            client = _single_client(url_or_client)
            return lambda: client
        return _cluster_connector(f"{plain}://{rest}")
    except (ValueError, TypeError, redis.RedisError, RedisClusterException) as exc:
        raise StoreError(f"cannot use {address!r} as a Redis store: {exc}") from exc


#: A sync client's connection options that do not carry over to an asyncio one: its
#: retry policy and read timeout (a pub/sub read waits), and objects made for the
#: sync connections (a callback run on connect, the pool's notification handler).
_SYNC_ONLY_OPTIONS = frozenset(
    ("retry", "socket_timeout", "redis_connect_func", "maint_notifications_pool_handler")
)


def _async_twin(client: redis.Redis) -> Any | None:  # type: ignore[type-arg]
    """An asyncio client with the connection settings of a sync one, where they carry over."""
    import inspect

    import redis.asyncio
    import redis.asyncio.connection

    pool = client.connection_pool
    kind = getattr(redis.asyncio.connection, pool.connection_class.__name__, None)
    if kind is None:
        return None
    # Each class takes its own options and passes the rest (db, password, ...) on to
    # its base as **kwargs: what is accepted is the union along the MRO.
    accepted = {
        name
        for cls in kind.__mro__
        if "__init__" in vars(cls)
        for name, parameter in inspect.signature(vars(cls)["__init__"]).parameters.items()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    options = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name in accepted and name not in _SYNC_ONLY_OPTIONS
    }
    try:
        async_pool = redis.asyncio.ConnectionPool(connection_class=kind, **options)
    except (TypeError, ValueError):
        return None
    return redis.asyncio.Redis(connection_pool=async_pool)


def _single_client(url: str) -> redis.Redis:  # type: ignore[type-arg]
    """A client of one server (it connects lazily, on its first command), whose pool
    makes a thread wait for a free connection rather than fail (see ``MAX_CONNECTIONS``)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        # One immediate retry on a broken connection (a pooled socket the server
        # closed by restarting); none on timeouts, so a dead host costs one wait.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    return redis.Redis(connection_pool=pool)


def _cluster_connector(url: str) -> Callable[[], Client]:
    """Check a cluster node's URL now; return the function that makes the client."""
    options = parse_url(url)
    if "path" in options:
        raise ValueError("a Redis Cluster is reached over TCP: give host:port")
    if int(options.get("db") or 0) != 0:
        raise ValueError("a Redis Cluster has only database 0")
    if not options.get("host"):
        raise ValueError("name a node of the cluster: redis+cluster://host:port")

    def connect() -> Client:
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            connection_pool_class=redis.BlockingConnectionPool,  # one per master
            max_connections=MAX_CONNECTIONS,  # the URL's own options win over these
            timeout=POOL_TIMEOUT,
        )

    return connect


#: Query options a URL may carry as plain text (redis-py converts the others it knows,
#: ``URL_QUERY_ARGUMENT_PARSERS``); ``ssl_*`` ones only on a ``rediss`` URL.
_TEXT_OPTIONS = frozenset(("client_name", "lib_name", "lib_version", "password", "username"))
_TLS_TEXT_OPTIONS = frozenset(
    ("ssl_ca_certs", "ssl_ca_path", "ssl_cert_reqs", "ssl_certfile", "ssl_ciphers",
     "ssl_keyfile", "ssl_password")
)
#: Options that would change what tracked's own code receives or relies on.
_REFUSED_OPTIONS = frozenset(("decode_responses", "legacy_responses", "protocol"))


def _check_url(url: str) -> None:
    """``InvalidValue`` naming the part of a store URL that tracked cannot read fully.

    redis-py ignores what it cannot parse (``redis://h/abc`` is database 0, an
    unknown option is passed on to fail at the first command): every part is
    checked here instead, at once, before anything connects.
    """
    shown = _redact(url)

    def bad(part: str) -> InvalidValue:
        return InvalidValue(f"cannot use {shown!r} as a Redis store: {part}")

    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    plain = CLUSTER_SCHEMES.get(scheme, scheme)
    if not sep or plain not in ("redis", "rediss", "unix"):
        what = f"unknown scheme {scheme!r}" if sep else "no scheme://"
        raise bad(f"{what} (use redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://)")
    cluster = scheme in CLUSTER_SCHEMES
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"the address is malformed ({exc})") from None
    if parts.fragment or url.endswith("#"):
        raise bad("a URL fragment ('#...') means nothing here")
    options = _check_query(parts.query, tls=plain == "rediss", bad=bad)
    for name, given in (("username", parts.username), ("password", parts.password)):
        if given is not None and name in options:
            raise bad(f"the {name} is given twice: before '@' and as an option")
    if plain == "unix":
        if not parts.path or parts.path == "/":
            raise bad("the unix socket path is missing (unix:///path/to/redis.sock)")
        return
    if port == 0:
        raise bad("port 0 is not a port")
    if cluster and not parts.hostname:
        raise bad("name a node of the cluster: redis+cluster://host:port")
    db = unquote(parts.path).removeprefix("/")
    if db:
        if not db.isascii() or not db.isdigit():
            raise bad(f"the database {db!r} is not an integer >= 0 (redis://host:port/0)")
        if "db" in options and options["db"] != int(db):
            raise bad(f"the database is given twice: {db!r} in the path, db={options['db']}")
    if cluster and int(db or 0) + options.get("db", 0) != 0:
        raise bad("a Redis Cluster has only database 0")


def _check_query(
    query: str, *, tls: bool, bad: Callable[[str], InvalidValue]
) -> dict[str, Any]:
    """The query options, each known to redis-py and readable; ``bad(part)`` else."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad("the query is not name=value pairs joined by '&'") from None
    options: dict[str, Any] = {}
    for name, value in pairs:
        if name in options:
            raise bad(f"the option {name!r} is given twice")
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        known = parser is not None or name in _TEXT_OPTIONS or name in _TLS_TEXT_OPTIONS
        if not known or name in _REFUSED_OPTIONS or (name.startswith("ssl_") and not tls):
            where = "" if tls or not name.startswith("ssl_") else " on a non-TLS URL"
            raise bad(f"unknown option {name!r}{where}")
        if not value:
            raise bad(f"the option {name!r} has no value")
        try:
            options[name] = value if parser is None else parser(value)
        except (TypeError, ValueError):
            raise bad(f"the option {name!r} has a value redis-py cannot read") from None
        if name in ("db", "max_connections") and not (
            isinstance(options[name], int) and options[name] >= (0 if name == "db" else 1)
        ):
            raise bad(f"the option {name!r} must be an integer >= {0 if name == 'db' else 1}")
    return options


def _address(url_or_client: object) -> str:
    """Where the server is, for error messages: the URL without its password."""
    if isinstance(url_or_client, str):
        return _redact(url_or_client)
    if isinstance(url_or_client, RedisCluster):
        node = url_or_client.get_default_node()
        return f"redis+cluster://{node.name}" if node is not None else "a Redis Cluster"
    if isinstance(url_or_client, redis.Redis):
        kwargs = url_or_client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return repr(type(url_or_client).__name__)


def _redact(url: str) -> str:
    """The URL as shown in messages: no password, no query (it may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username or ''}:***@" if parts.password is not None else ""
        sep = "://" if "://" in url else ":"
        return f"{parts.scheme}{sep}{user}{host}{parts.path}" if parts.scheme else "<a URL>"
    except ValueError:
        return "<a malformed URL>"


# ----------------------------------------------------------------------------- checks


def _check_prefix(prefix: object) -> str:
    """The prefix, unless it would split a record's keys across cluster slots.

    A ``{`` in the prefix starts the hash tag there, so it must be closed in the
    prefix around at least one character (then every record lives in that one
    slot); otherwise a record's keys would hash apart.
    """
    if not isinstance(prefix, str):
        raise InvalidValue(f"prefix must be a str, not {type(prefix).__name__}")
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening) <= opening + 1:
        raise InvalidValue(
            f"prefix {prefix!r} opens a Redis hash tag with '{{' that it does not close "
            "around at least one character"
        )
    return prefix


def _check_seconds(value: object, what: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidValue(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    """Compact JSON, with lone surrogates replaced (see ``_clean``)."""
    return _clean(_ENCODER.encode(value))


def _text(value: bytes | str) -> str:
    """A key name as text; "" for a name that is not UTF-8 (not one of ours)."""
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return ""


def _major(version: str) -> int:
    """The major number of a Redis version such as ``7.0.15`` (0 if unreadable)."""
    head = version.partition(".")[0]
    return int(head) if head.isdigit() else 0


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
