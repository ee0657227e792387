"""How a ``RedisStore`` names and encodes: the hash tag of a key (and the prefix
that may hold one), a state as stored JSON and as an event, only the new messages
of a write, a record from a read's reply, and the numbers its commands take.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from ._state import State
from ._store import Owner, Record, SharedPart
from .errors import InvalidValue


@dataclasses.dataclass(frozen=True, slots=True)
class Written:
    """What this store last wrote for a key, so the next write sends only new messages."""

    run: str
    message_count: int
    messages: tuple[str, ...]


def hash_tag(key: str) -> str:
    """``{T}``: the hash tag that puts a record's keys in one Redis Cluster slot.

    ``T`` is the key with ``%`` and ``}`` percent-encoded: never empty, never cut
    short by a ``}`` of the name, and distinct for distinct keys.
    """
    return "{" + clean_text(key).replace("%", "%25").replace("}", "%7D") + "}"

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate (what ``os.listdir`` makes of bytes that are
    not UTF-8) replaced by U+FFFD, so that it can be sent as UTF-8."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)

#: Stands in for the messages while the state is encoded once (see ``encode_state``).
_HOLE = f'"messages":{json.dumps(chr(0) + "messages" + chr(0))}'


def encode_state(state: State, messages: Sequence[str]) -> tuple[str, str]:
    """(the stored JSON: the wire JSON without messages, the event JSON: the wire JSON
    with only ``messages``), from one encoding of the state, in the wire's key order.

    The messages are encoded as a placeholder, then cut out or filled in. Its text,
    ``"messages":"\u0000messages\u0000"``, occurs nowhere else: inside a JSON string
    every quote is escaped, and no other key is named ``messages``.
    """
    fields = state.to_dict()
    fields["messages"] = chr(0) + "messages" + chr(0)
    encoded = dumps(fields)
    if f",{_HOLE}" in encoded:
        wire = encoded.replace(f",{_HOLE}", "", 1)
    else:  # the first key
        wire = encoded.replace(f"{_HOLE},", "", 1)
    return wire, encoded.replace(_HOLE, f'"messages":{dumps(list(messages))}', 1)


@functools.lru_cache(maxsize=4096)
def owner_args(owner: Owner) -> tuple[bytes, bytes]:
    """The run id and the owner record as JSON: the same for every write of a run,
    so encoded once."""
    return clean_text(owner.run).encode(), dumps(owner.to_dict()).encode()


def messages_since(state: State, run: str, previous: Written | None) -> tuple[int, Sequence[str]]:
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


def decode_reply(reply: Sequence[Any], now: float) -> Record:
    """A record from the read script's reply; ``ValueError`` if malformed."""
    state_json, owner_json, messages_json, pttl = reply[:4]
    parts = decode_parts(reply[4]) if len(reply) > 4 else None
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
    owner = dataclasses.replace(owner, lease_expires=lease_deadline(pttl, now))
    return Record(state, owner, parts)


def decode_parts(values: Sequence[Any]) -> tuple[SharedPart, ...]:
    """The readable parts among a parts hash's values (others add nothing)."""
    parts = []
    for value in values or ():
        try:
            parts.append(SharedPart.decode(value))
        except ValueError:
            continue
    return tuple(parts)


def lease_deadline(pttl: int, now: float) -> float:
    """This machine's time when the lease ends: remaining time measured by the server."""
    if pttl == -1:  # a lease key without a TTL: held until someone deletes it
        return math.inf
    return now + pttl / 1000.0 if pttl > 0 else 0.0

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON, with lone surrogates replaced (see ``clean_text``)."""
    return clean_text(_ENCODER.encode(value))


def key_text(value: bytes | str) -> str:
    """A key name as text; "" for a name that is not UTF-8 (not one of ours)."""
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return ""


def check_prefix(prefix: object) -> str:
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


def check_seconds(value: object, what: str, *, optional: bool = False) -> Any:
    """``value`` as a float number of seconds > 0 (or None if ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidValue(f"{what} must be a number of seconds > 0, got {value!r}")
    return float(value)


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds Redis takes, at least 1."""
    return max(1, math.ceil(seconds * 1000))


def major_version(version: str) -> int:
    """The major number of a Redis version such as ``7.0.15`` (0 if unreadable)."""
    head = version.partition(".")[0]
    return int(head) if head.isdigit() else 0


def glob_escape(text: str) -> str:
    """``text`` matched literally in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
