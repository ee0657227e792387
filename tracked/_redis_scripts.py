"""The Lua scripts of ``RedisStore`` (one per write, read or step, each touching one
slot) and ``Script``, which calls one by its SHA1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.exceptions import NoScriptError

from ._redis_connect import Client

# Whether a lease is held, exactly as readers judge it from PTTL (``_redis_codec.lease_deadline``):
# a key in its last millisecond answers PTTL 0, and reads as lapsed, so it is lapsed
# here too (EXISTS would still say 1, and refuse a claim that a reader allows).
LIVE = """
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
WRITE = LIVE + """
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

WRITE_SHARDED = _sharded(WRITE)

# KEYS: record, messages, lease. ARGV: "running message_count lease_ms expire_ms keep",
# run, state, owner, channel, payload, expected run, allowed states ("a,b"), messages...
# -- ``Store.swap``: replaces the record of the expected run if its state as readers
# judge it (a running one whose lease lapsed is abandoned) is allowed; 1 written, 0 not.
SWAP = LIVE + """
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

SWAP_SHARDED = _sharded(SWAP)

# KEYS: record, list, line. ARGV: run, channel, job id, line entry, line ttl_ms -- a
# queued record of that run takes the length of the list (a queue its job was just
# pushed on, in the same transaction) as its ``position``, and the queue's line hash
# maps the job to the record (see ``tracked.rq``); 1 written, 0 not (another run, or no
# longer queued). Within the stored JSON the first '"position":' is the key itself:
# every quote inside a string is escaped.
PLACE = """
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
WRITE_PART = LIVE + """
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
READ_PARTS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return {} end
local prefix, values = ARGV[1] .. '/', {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, #prefix) == prefix then values[#values + 1] = fields[i + 1] end
end
return values
"""

# KEYS: parts. ARGV: run -- removes the parts of that run.
DELETE_PARTS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 1 end
local prefix = ARGV[1] .. '/'
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], field) end
end
return 1
"""

# KEYS: record, messages, lease, parts. ARGV: run -- deletes the record (and the
# joined workers' parts left over) if that run still holds it and is not live.
PRUNE = LIVE + """
local rec, msgs, lease = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', rec, 'run') ~= ARGV[1] then return 0 end
if redis.call('HGET', rec, 'running') == '1' and live(lease) then
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
"""

# KEYS: record, messages, lease, [parts, [group ledger hash, group lines]]. The state
# and owner fields, the kept messages as one JSON array (one reply to parse, not one
# per message), the lease's remaining milliseconds and, given the parts key, the
# joined workers' parts (every run's: readers keep the record's run's); given a
# group's ledger keys (same slot), its hash and kept lines: a group read in one call.
READ = """
local fields = redis.call('HMGET', KEYS[1], 'state', 'owner')
if not fields[1] then return false end
local reply = {fields[1], fields[2], cjson.encode(redis.call('LRANGE', KEYS[2], 0, -1)),
  redis.call('PTTL', KEYS[3])}
if KEYS[4] then
  reply[5] = redis.call('TYPE', KEYS[4]).ok == 'hash' and redis.call('HVALS', KEYS[4]) or {}
end
if KEYS[5] and redis.call('TYPE', KEYS[5]).ok == 'hash' then
  reply[6] = redis.call('HGETALL', KEYS[5])
  reply[7] = redis.call('LRANGE', KEYS[6], 0, -1)
end
return reply
"""

# KEYS: record, lease, cancel; ARGV: ttl_ms -- asks the running run to stop:
# stores its run id under the cancel key; 1 asked, 0 nothing running.
REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'running') ~= '1' then return 0 end
local run = redis.call('GET', KEYS[2])
if not run or redis.call('HGET', KEYS[1], 'run') ~= run then return 0 end
redis.call('SET', KEYS[3], run, 'PX', tonumber(ARGV[1]))
return 1
"""

# KEYS: cancel; ARGV: run -- the owner removes its own run's request.
CLEAR_CANCEL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# The record's version token (see ``RedisStore.version``), or false if there is none.
VERSION = LIVE + """
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
DELETE = """
local gone = redis.call('DEL', KEYS[1])
redis.call('DEL', unpack(KEYS, 2))
return gone
"""


class Script:
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
Call: TypeAlias = tuple[Sequence["str | bytes"], Sequence["str | bytes | int"]]
