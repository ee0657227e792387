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
Reading a group is one script call: the record's read also returns the hash and
the lines (same slot), so counts and record come from one atomic step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ._ledger import CHILD_STATES, KEEP_LINES, GroupBook, child_line, parse_token, units_of
from ._redis_codec import clean_text
from ._redis_scripts import Call, Script
from .errors import InvalidValue, StoreError

if TYPE_CHECKING:
    from ._state import State

__all__ = ["RedisGroupLedgers", "RedisGroups", "book_of", "decode_book"]

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
  if redis.call('HGET', grp, 'closed') == '1' or redis.call('HGET', grp, 'stop') == '1' then
    accepted = 0
  else
    redis.call('HINCRBY', grp, 'total', 1)
    changed, created = true, 1
  end
else
  local pstate, punits = string.match(prev, '^(%a+) (%d+)$')
  punits = tonumber(punits)
  if ended[pstate] and not ended[new] then
    accepted = 0
  elseif not ended[pstate] and (pstate ~= new or punits ~= units) then
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
  if not redis.call('HGET', grp, 'ended_at') then redis.call('HSET', grp, 'stop', '1') end
elseif now - tonumber(redis.call('HGET', grp, 'swept_at') or '0') >= tonumber(ARGV[5]) then
  redis.call('HSET', grp, 'swept_at', now)
  flag = 1
end
return {1, flag, redis.call('HGETALL', grp), redis.call('LRANGE', lines, 0, -1)}
"""

# KEYS: the child's write's three, then grp, grpc, grpm. ARGV: how many arguments the
# write takes, the write's, then MOVE's -- the child's write and its count in one
# atomic step, on a single Redis (where every key is on the one server): {written},
# or {written, MOVE's reply} when the write was done and the group has a ledger.
JOINED = """
local nw = tonumber(ARGV[1])
local wa, ma = {}, {}
for i = 2, nw + 1 do wa[#wa + 1] = ARGV[i] end
for i = nw + 2, #ARGV do ma[#ma + 1] = ARGV[i] end
local written = write_({KEYS[1], KEYS[2], KEYS[3]}, wa)
if written ~= 1 then return {written} end
local moved = move_({KEYS[4], KEYS[5], KEYS[6]}, ma)
if not moved then return {written} end
return {written, moved}
"""


def joined(write: str) -> str:
    """The write script ``write`` and ``MOVE`` as one (see ``JOINED``): each body a
    function of its own ``KEYS`` and ``ARGV``."""
    return (
        f"local function write_(KEYS, ARGV)\n{write}\nend\n"
        f"local function move_(KEYS, ARGV)\n{MOVE}\nend\n{JOINED}"
    )


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



@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """What the ledgers need of their ``RedisStore``: its key prefix, its client, how
    long an ended ledger lives (ms, 0: for ever), how to run a Redis call with its
    failures as ``StoreError`` (``call``), and an error reply as one (``failure``)."""

    prefix: str
    client: Callable[[], Any]
    expire_ms: Callable[[], int]
    call: Callable[..., Any]
    failure: Callable[[BaseException], StoreError]


class RedisGroups:
    """The group ledgers of one ``RedisStore`` (it delegates here): ``run`` sends one
    script call, ``tag`` gives a key's hash tag."""

    def __init__(self, host: Host, tag: Callable[[str], str]) -> None:
        self._host = host
        self._prefix = host.prefix
        self._tag = tag
        self._move = Script(MOVE)
        self._undo = Script(UNDO)
        self._change = Script(CHANGE)
        self._open = Script(OPEN)
        self._read = Script(READ)
        #: The move last sent with each child's own write: (state, units, book), for
        #: the ``move`` that follows it (see ``write_and_move``).
        self._sent: dict[str, tuple[str, int, GroupBook | None]] = {}
        #: Each write script joined with ``MOVE``, by the write script's SHA1.
        self._joined: dict[bytes, Script] = {}

    def keys(self, key: str) -> list[str]:
        """The ledger's three keys, in the group's slot."""
        tag = self._tag(key)
        return [f"{self._prefix}{kind}:{tag}" for kind in ("grp", "grpc", "grpm")]

    def open(self, key: str, run: str) -> None:
        """A new ledger for run ``run`` of group ``key``."""
        self._run(self._open, self.keys(key), [run])

    def move(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change (see ``Store.move_child``): one script call, none when
        it went with the child's own write (``write_and_move``)."""
        child = clean_text(child)
        sent = self._sent.pop(child, None)
        if sent is not None and sent[:2] == (state, units):
            return sent[2]
        return _book(self._run(self._move, *self._move_call(key, run, child, state, units, line)))

    def write_and_move(self, script: Script, call: Call, state: State, *, claim: bool) -> Any:
        """Send a child's write (``script`` with ``call``) and its group's ``MOVE``: on a
        single Redis as one script, one atomic step (``JOINED``); on a cluster, where
        they are in two slots, in one pipeline to their two masters at once. The
        write's reply; the book is kept for the ``move`` that follows."""
        try:
            key, run = parse_token(state.group)
        except InvalidValue:
            return self._run(script, *call)
        units, child = units_of(state), clean_text(state.key)
        move = self._move_call(key, run, child, state.state, units, child_line(state))
        if not isinstance(self._host.client(), RedisCluster):
            return self._joined_call(script, call, move, child, (state.state, units))
        pairs = [(script, call), (self._move, move)]
        replies = self._host.call(_pipeline, self._host.client(), pairs)
        for i, reply in enumerate(replies):  # a server that lost a script: that call again
            if isinstance(reply, NoScriptError):
                replies[i] = self._run(pairs[i][0], *pairs[i][1])
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._host.failure(reply)
        written, moved = replies
        book, created = book_of(moved)
        if claim and written < 0:
            if created:
                self._run(self._undo, move[0], [child, state.state, units])
        else:
            self._keep(child, (state.state, units), book)
        return written

    def _joined_call(
        self, script: Script, call: Call, move: Call, child: str, counted: tuple[str, int]
    ) -> Any:
        """The write and its count as one script call (see ``JOINED``): the write's reply."""
        together = self._joined.get(script.sha)
        if together is None:
            together = self._joined[script.sha] = Script(joined(script.source))
        (keys, args), (move_keys, move_args) = call, move
        reply = self._run(together, [*keys, *move_keys], [len(args), *args, *move_args])
        if reply[0] == 1:
            self._keep(child, counted, book_of(reply[1])[0] if len(reply) > 1 else None)
        return reply[0]

    def _keep(self, child: str, counted: tuple[str, int], book: GroupBook | None) -> None:
        """Keep the book a write's count returned, for the ``move`` that follows it."""
        if len(self._sent) >= 1024:  # left by writes whose move nobody asked for
            self._sent.clear()
        self._sent[child] = (*counted, book)

    def _run(
        self, script: Script, keys: Sequence[str | bytes], args: Sequence[str | bytes | int]
    ) -> Any:
        """One script call, its failure as ``StoreError``."""
        return self._host.call(script, self._host.client(), keys, args)

    def _move_call(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> tuple[list[str], list[str | bytes | int]]:
        """The keys and arguments of the ``MOVE`` script for one change."""
        args: list[str | bytes | int] = [
            run, child, state, units, "" if line is None else clean_text(line),
            repr(time.time()), KEEP_LINES, self._host.expire_ms(),
        ]
        return self.keys(key), args

    def change(self, key: str, run: str, what: str, window: float = 0.0) -> GroupBook | None:
        """Close, cancel or take the sweep turn of group ``key`` (see ``CHANGE``)."""
        args: list[str | bytes | int] = [
            run, what, repr(time.time()), self._host.expire_ms(), repr(window)
        ]
        return _book(self._run(self._change, self.keys(key), args))

    def read(self, key: str) -> GroupBook | None:
        """Group ``key``'s ledger: one script call."""
        fields, lines = self._run(self._read, self.keys(key), [])
        return _decode(fields, lines) if fields else None

    def children(self, key: str) -> list[tuple[str, str]]:
        """Every child with the state it is counted in (``HGETALL``: one round trip)."""
        entries = self._host.call(self._host.client().hgetall, self.keys(key)[1])
        return [(_text(child), _text(value).split(" ")[0]) for child, value in entries.items()]


class RedisGroupLedgers:
    """``RedisStore``'s part of the group contract (see ``tracked._groupstore``): each
    call one script in the group's slot. ``groups`` is the store's ``RedisGroups``."""

    groups: RedisGroups

    def open_group(self, key: str, run: str) -> None:
        """One script call: a new ledger for run ``run`` of group ``key``."""
        self.groups.open(key, run)

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """One script call in the group's slot (none after ``write_and_move``)."""
        return self.groups.move(key, run, child, state, units, line)

    def close_group(self, key: str, run: str) -> GroupBook | None:
        """One script call: close group ``key``."""
        return self.groups.change(key, run, "close")

    def cancel_group(self, key: str, run: str) -> GroupBook | None:
        """One script call: mark group ``key`` cancelled."""
        return self.groups.change(key, run, "cancel")

    def read_group(self, key: str) -> GroupBook | None:
        """One script call: the ledger's counts and lines."""
        return self.groups.read(key)

    def group_children(self, key: str) -> list[tuple[str, str]]:
        """One ``HGETALL`` of the children's hash."""
        return self.groups.children(key)

    def sweep_turn(self, key: str, run: str, window: float) -> bool:
        """One script call: the first caller in ``window`` seconds wins."""
        book = self.groups.change(key, run, "sweep", window)
        return book is not None and book.just_ended


def _pipeline(client: Any, calls: Sequence[tuple[Script, Call]]) -> list[Any]:
    """Each script call's reply (or error), sent in one pipeline (on a cluster, each
    call to its key's master)."""
    pipe = client.pipeline(transaction=False)
    for script, (keys, args) in calls:
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(keys[0])
            pipe.execute_command(*script.command(keys, args), target_nodes=node)
        else:
            pipe.execute_command(*script.command(keys, args))
    return list(pipe.execute(raise_on_error=False))


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


def decode_book(fields: Sequence[Any], lines: Sequence[Any]) -> GroupBook:
    """A book from the ledger's hash and lines as the record's read returns them."""
    return _decode(fields, lines)


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
