"""A ``RedisStore``'s group ledgers: three keys in the group's hash slot, one script each.

For group key ``K`` (``{T}`` its hash tag, as for its record):

- ``{prefix}grp:{T}``: a hash of the counts (``total`` and one per state), ``units``
  (the children's weight done, in thousandths), ``run``, ``closed``, ``cancelled``,
  ``ended_at``, ``line_count``, ``first_error`` and ``swept_at``;
- ``{prefix}grpc:{T}``: a hash from each child's key to ``"<state> <units>"`` as counted;
- ``{prefix}grpm:{T}``: a list of the kept lines about failed or abandoned children.

A child's change is one ``EVALSHA`` on these keys (old state -1, new state +1, in
the group's slot, so it works on a Redis Cluster whatever slot the child is in):
it is sent right after the child's own write, and a repeated one counts once.
Reading a group is one more script call: the hash and the lines together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ._ledger import CHILD_STATES, KEEP_LINES, GroupBook
from ._redis_scripts import Script

__all__ = ["RedisGroups", "book_of"]

_FINISH = """
local function finish(grp, now)
  local f = redis.call('HMGET', grp, 'closed', 'ended_at', 'queued', 'running')
  if f[1] == '1' and not f[2] and tonumber(f[3] or '0') + tonumber(f[4] or '0') == 0 then
    redis.call('HSET', grp, 'ended_at', now)
    return 1
  end
  return 0
end
local function expire(ms)
  if ms > 0 then for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ms) end end
end
"""

# KEYS: grp, grpc, grpm. ARGV: run (prefix), child, state, units, line, now, keep,
# expire_ms -- nil when the group has no ledger of that run; else {accepted, ended
# by this change, the hash, the lines}.
MOVE = _FINISH + """
local grp, kids, lines = KEYS[1], KEYS[2], KEYS[3]
local run = redis.call('HGET', grp, 'run')
if not run or string.sub(run, 1, #ARGV[1]) ~= ARGV[1] then return nil end
local ended = {finished=true, failed=true, cancelled=true, abandoned=true}
local child, new, units, line = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local accepted, changed, old_units, created = 1, false, 0, 0
local prev = redis.call('HGET', kids, child)
if not prev then
  if redis.call('HGET', grp, 'closed') == '1' then accepted = 0 else
    redis.call('HINCRBY', grp, 'total', 1)
    changed, created = true, 1
  end
else
  local pstate, punits = string.match(prev, '^(%a+) (%d+)$')
  punits = tonumber(punits)
  if not ended[pstate] and (pstate ~= new or punits ~= units) then
    redis.call('HINCRBY', grp, pstate, -1)
    old_units, changed = punits, true
  end
end
local just = 0
if changed then
  redis.call('HINCRBY', grp, new, 1)
  redis.call('HINCRBY', grp, 'units', units - old_units)
  redis.call('HSET', kids, child, new .. ' ' .. units)
  if (new == 'failed' or new == 'abandoned') and line ~= '' then
    redis.call('RPUSH', lines, line)
    redis.call('LTRIM', lines, -tonumber(ARGV[7]), -1)
    redis.call('HINCRBY', grp, 'line_count', 1)
    redis.call('HSETNX', grp, 'first_error', line)
  end
  just = finish(grp, ARGV[6])
  if just == 1 then expire(tonumber(ARGV[8])) end
end
return {accepted, just, redis.call('HGETALL', grp), redis.call('LRANGE', lines, 0, -1), created}
"""

# KEYS: grp, grpc, grpm. ARGV: child, state, units -- forget a child that MOVE has
# just created, sent with a claim that was then refused (the run never existed).
UNDO = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] .. ' ' .. ARGV[3] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'total', -1)
redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
redis.call('HINCRBY', KEYS[1], 'units', 0 - tonumber(ARGV[3]))
return 1
"""

# KEYS: grp, grpc, grpm. ARGV: run (prefix), what ("close", "cancel" or "sweep"),
# now, expire_ms, window -- nil without a ledger of that run; else {1, ended by
# this change (close) or won the sweep (sweep), the hash, the lines}.
CHANGE = _FINISH + """
local grp, lines = KEYS[1], KEYS[3]
local run = redis.call('HGET', grp, 'run')
if not run or string.sub(run, 1, #ARGV[1]) ~= ARGV[1] then return nil end
local what, now, flag = ARGV[2], tonumber(ARGV[3]), 0
if what == 'close' then
  redis.call('HSET', grp, 'closed', '1')
  flag = finish(grp, now)
  if flag == 1 then expire(tonumber(ARGV[4])) end
elseif what == 'cancel' then
  redis.call('HSET', grp, 'stop', '1')
elseif now - tonumber(redis.call('HGET', grp, 'swept_at') or '0') >= tonumber(ARGV[5]) then
  redis.call('HSET', grp, 'swept_at', now)
  flag = 1
end
return {1, flag, redis.call('HGETALL', grp), redis.call('LRANGE', lines, 0, -1)}
"""

# KEYS: grp, grpc, grpm. ARGV: run -- a new ledger in place of any older one.
OPEN = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'run', ARGV[1], 'total', 0)
return 1
"""

# KEYS: grp, grpc, grpm -- {the hash, the lines}: one round trip.
READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[3], 0, -1)}
"""

Runner = Callable[[Script, Sequence[str], Sequence[str | bytes | int]], Any]


class RedisGroups:
    """The group ledgers of one ``RedisStore`` (it delegates here): ``run`` sends one
    script call, ``tag`` gives a key's hash tag."""

    def __init__(self, prefix: str, tag: Callable[[str], str], run: Runner,
                 expire_ms: Callable[[], int]) -> None:
        self._prefix = prefix
        self._tag = tag
        self._run = run
        self._expire_ms = expire_ms
        self._move = Script(MOVE)
        self.undo_script = Script(UNDO)
        self._change = Script(CHANGE)
        self._open = Script(OPEN)
        self._read = Script(READ)

    def keys(self, key: str) -> list[str]:
        """The ledger's three keys, in the group's slot."""
        tag = self._tag(key)
        return [f"{self._prefix}{kind}:{tag}" for kind in ("grp", "grpc", "grpm")]

    def open(self, key: str, run: str) -> None:
        """A new ledger for run ``run`` of group ``key``."""
        self._run(self._open, self.keys(key), [run])

    def move(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None,
        now: float,
    ) -> GroupBook | None:
        """Count a child's change (see ``Store.move_child``): one script call."""
        return _book(self._run(self._move, *self.move_call(key, run, child, state, units, line,
                                                           now)))

    def move_call(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None,
        now: float,
    ) -> tuple[list[str], list[str | bytes | int]]:
        """The keys and arguments of the ``MOVE`` script for one change."""
        args: list[str | bytes | int] = [
            run, child, state, units, line or "", repr(now), KEEP_LINES, self._expire_ms()
        ]
        return self.keys(key), args

    @property
    def move_script(self) -> Script:
        """The ``MOVE`` script, for a caller that pipelines it with a child's write."""
        return self._move

    def change(self, key: str, run: str, what: str, now: float, window: float = 0.0
               ) -> GroupBook | None:
        """Close, cancel or take the sweep turn of group ``key`` (see ``CHANGE``)."""
        args: list[str | bytes | int] = [run, what, repr(now), self._expire_ms(), repr(window)]
        return _book(self._run(self._change, self.keys(key), args))

    def read(self, key: str) -> GroupBook | None:
        """Group ``key``'s ledger: one script call."""
        fields, lines = self._run(self._read, self.keys(key), [])
        return _decode(fields, lines) if fields else None

    def children(self, client: Any, key: str) -> list[tuple[str, str]]:
        """Every child with the state it is counted in (``HGETALL``: one round trip)."""
        entries = client.hgetall(self.keys(key)[1])
        return [(_text(child), _text(value).split(" ")[0]) for child, value in entries.items()]


def book_of(reply: Any) -> tuple[GroupBook | None, bool]:
    """The book of a ``MOVE`` reply and whether it created the child's entry."""
    return _book(reply), bool(reply is not None and len(reply) > 4 and reply[4])


def _book(reply: Any) -> GroupBook | None:
    """A book from a ``MOVE`` or ``CHANGE`` reply (``flag``: ended now, or sweep won)."""
    if reply is None:
        return None
    accepted, flag, fields, lines = reply[:4]
    book = _decode(fields, lines)
    return dataclasses.replace(book, accepted=bool(accepted), just_ended=bool(flag))


def _decode(fields: Sequence[Any], lines: Sequence[Any]) -> GroupBook:
    """A book from the flat ``HGETALL`` of the hash and the kept lines."""
    data = {_text(fields[i]): _text(fields[i + 1]) for i in range(0, len(fields), 2)}
    counts = {"total": int(data.get("total", 0))}
    counts.update({state: int(data.get(state, 0)) for state in CHILD_STATES})
    ended = data.get("ended_at")
    return GroupBook(
        run=data.get("run", ""),
        counts=counts,
        units=int(data.get("units", 0)),
        closed=data.get("closed") == "1",
        cancelled=data.get("stop") == "1",
        ended_at=None if ended is None else float(ended),
        lines=tuple(_text(line) for line in lines or ()),
        line_count=int(data.get("line_count", 0)),
        first_error=data.get("first_error"),
        swept_at=float(data.get("swept_at", 0.0)),
    )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
