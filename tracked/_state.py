"""``State``: one frozen snapshot of a progress, and the wire schema it maps to.

Everything that leaves a process (the file store's records, Redis values, the
status route's JSON, ``tracked.load()``) is a ``State``. The naming rules live
here too, because a name and a progress_id together decide the storage key.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Mapping
from typing import Any

from ._text import clean_text
from .errors import InvalidName, InvalidValue

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_STATUS",
    "ENDED_STATES",
    "NOT_RESULTS",
    "STATES",
    "State",
    "encode_result",
    "make_key",
    "split_key",
    "validate_name",
    "validate_progress_id",
]

MAX_NAME_LENGTH = 512
MAX_PROGRESS_ID_LENGTH = 128
DEFAULT_STATUS = "in progress"
STATES = ("queued", "running", "finished", "failed", "cancelled", "abandoned")
#: The states a run can no longer leave.
ENDED_STATES = frozenset(STATES[2:])
# A NUL can never be part of a name or a progress_id, so it joins them without ambiguity.
KEY_SEPARATOR = "\0"
_PROGRESS_ID = re.compile(rf"[A-Za-z0-9._~-]{{1,{MAX_PROGRESS_ID_LENGTH}}}")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a usable progress name, else raise ``InvalidName``."""
    if not isinstance(name, str):
        raise InvalidName(f"a progress name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName("a progress name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"a progress name is at most {MAX_NAME_LENGTH} characters, got {len(name)}"
        )
    if "\0" in name:
        raise InvalidName(f"a progress name must not contain NUL: {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"a progress name must be valid unicode text: {name!r}") from None
    return name


def validate_progress_id(progress_id: object) -> str:
    """Return ``progress_id`` if it is 1-128 characters of ``[A-Za-z0-9._~-]``."""
    if not isinstance(progress_id, str) or not _PROGRESS_ID.fullmatch(progress_id):
        raise InvalidName(
            f"a progress_id is 1 to {MAX_PROGRESS_ID_LENGTH} characters of "
            f"[A-Za-z0-9._~-], got {progress_id!r}"
        )
    return progress_id


def make_key(name: str | None, progress_id: str | None = None) -> str:
    """Combine a server-given name and a client-given progress_id into one storage key.

    Either may be missing but not both; a progress_id alone is the whole key, as
    in the Perl original, so ``/_progress_status/<progress_id>`` finds it.
    """
    if progress_id is not None:
        validate_progress_id(progress_id)
        if name is None:
            return progress_id
        return validate_name(name) + KEY_SEPARATOR + progress_id
    if name is None:
        raise InvalidName("a progress needs a name, a progress_id, or both")
    return validate_name(name)


def split_key(key: str) -> tuple[str | None, str | None]:
    """Inverse of ``make_key`` for keys that carry a separator; a bare key is a name."""
    name, sep, progress_id = key.partition(KEY_SEPARATOR)
    return (name, progress_id) if sep else (key, None)


def check_total(total: object) -> int | None:
    if total is None:
        return None
    if isinstance(total, bool) or not isinstance(total, int):
        raise InvalidValue(f"total must be an int or None, not {type(total).__name__}")
    if total < 0:
        raise InvalidValue(f"total must not be negative, got {total}")
    return total


def as_int(value: object, what: str) -> int:
    """``value`` as a plain int: an int or an integer type with ``__index__`` (numpy's),
    never a bool or a float; else ``InvalidValue`` naming ``what``."""
    if value.__class__ is int:
        return value  # type: ignore[return-value,unused-ignore]
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise InvalidValue(f"{what} must be an int, not {type(value).__name__}: {value!r}")
    return operator.index(value)  # type: ignore[arg-type]


def check_count(count: object) -> int:
    """Return ``count`` if it is an int (not a bool), else raise ``InvalidValue``."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidValue(f"count must be an int, not {type(count).__name__}")
    return count


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """A snapshot of one progress, as every store and reader sees it.

    Attributes are the wire keys of ``docs/wire-format.md``; ``percent``,
    ``elapsed`` and ``eta`` are derived, so they can never disagree with the rest.
    """

    name: str | None
    progress_id: str | None = None
    total: int | None = 100
    count: int = 0
    messages: tuple[str, ...] = ()
    message_count: int = 0
    in_progress: bool = True
    state: str = "running"
    cancel_requested: bool = False
    position: int | None = None
    attempt: int = 1
    status: str = DEFAULT_STATUS
    error: str | None = None
    start_time: float = 0.0
    current_time: float = 0.0
    finished_time: float | None = None
    rate: float | None = None
    result: Any = dataclasses.field(default=None, hash=False)

    @property
    def key(self) -> str:
        """The storage key: name and progress_id combined (see ``make_key``)."""
        return make_key(self.name, self.progress_id)

    @property
    def percent(self) -> float | None:
        """``count`` as a percentage of ``total``, within 0-100 even when count passes
    total; None when total is unknown or zero."""
        if not self.total:
            return None
        return round(min(100.0, max(0.0, 100.0 * self.count / self.total)), 2)

    @property
    def elapsed(self) -> float:
        """Seconds from the start to the end, or to the last write while running."""
        end = self.finished_time if self.finished_time is not None else self.current_time
        return round(max(0.0, end - self.start_time), 3)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; None when total or rate is unknown."""
        if self.total is None:
            return None
        remaining = max(0, self.total - self.count)
        if not self.in_progress or remaining == 0:
            return 0.0
        if not self.rate:
            return None
        return round(remaining / self.rate, 3)

    @property
    def first_message_index(self) -> int:
        """Index (over all messages ever added) of ``messages[0]``."""
        return self.message_count - len(self.messages)

    def messages_since(self, index: int) -> State:
        """This state with only the messages whose index is at least ``index``."""
        skip = max(0, index - self.first_message_index)
        if skip == 0:
            return self
        return dataclasses.replace(self, messages=self.messages[skip:])

    def abandoned(self) -> State:
        """This state as readers see it once its owner is known to be gone."""
        return self.ended("abandoned", self.current_time)

    def ended(self, state: str, when: float, error: str | None = None) -> State:
        """This state ended as ``state`` at ``when``; a default status becomes ``state``."""
        # The default status, or the state word (a queued run's), becomes the end's word.
        status = state if self.status in (DEFAULT_STATUS, self.state) else self.status
        return dataclasses.replace(
            self,
            in_progress=False,
            state=state,
            status=status,
            error=error if error is not None else self.error,
            finished_time=when,
            current_time=when,
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire JSON object, in the documented key order."""
        return {
            "name": self.name,
            "progress_id": self.progress_id,
            "total": self.total,
            "count": self.count,
            "percent": self.percent,
            "messages": list(self.messages),
            "message_count": self.message_count,
            "in_progress": self.in_progress,
            "state": self.state,
            "cancel_requested": self.cancel_requested,
            "position": self.position,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "start_time": self.start_time,
            "current_time": self.current_time,
            "finished_time": self.finished_time,
            "elapsed": self.elapsed,
            "rate": self.rate,
            "eta": self.eta,
            "result": self.result,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        """Rebuild a state from its wire JSON; raise ``ValueError`` naming what is wrong."""
        try:
            return _parse_state(cls, data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a progress record: {exc!r}") from exc


def _parse_state(cls: type[State], data: Mapping[str, Any]) -> State:
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    messages = data["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise TypeError("messages must be a list of strings")
    state = data["state"]
    if state not in STATES:
        raise TypeError(f"unknown state {state!r}")
    finished_time = data["finished_time"]
    rate = data["rate"]
    name = _optional(data["name"], str, "name")
    progress_id = _optional(data.get("progress_id"), str, "progress_id")
    make_key(name, progress_id)  # InvalidName (a ValueError) for a name no run could have
    count = max(0, check_count(data["count"]))  # older versions could store a negative count
    message_count = check_count(data["message_count"])
    if message_count < len(messages):
        raise TypeError(f"message_count {message_count} is less than the messages kept")
    return cls(
        name=name,
        progress_id=progress_id,
        total=check_total(data["total"]),
        count=count,
        messages=tuple(messages),
        message_count=message_count,
        in_progress=_required(data["in_progress"], bool, "in_progress"),
        state=state,
        cancel_requested=_required(data.get("cancel_requested", False), bool, "cancel_requested"),
        position=_position(data.get("position")),
        attempt=_attempt(data.get("attempt", 1)),
        status=_required(data["status"], str, "status"),
        error=_optional(data["error"], str, "error"),
        start_time=float(_required(data["start_time"], (int, float), "start_time")),
        current_time=float(_required(data["current_time"], (int, float), "current_time")),
        finished_time=None if finished_time is None else float(finished_time),
        rate=None if rate is None else float(rate),
        result=data.get("result"),
    )


def _position(value: object) -> int | None:
    """A queued run's place in line (1 = next) or None; records before 0.2 have none."""
    if value is None:
        return None
    position = check_count(value)
    if position < 1:
        raise TypeError(f"position must be at least 1, got {position}")
    return position


def _attempt(value: object) -> int:
    """The 1-based attempt of a retried run; records before 0.2 have none (1)."""
    attempt = check_count(value)
    if attempt < 1:
        raise TypeError(f"attempt must be at least 1, got {attempt}")
    return attempt


def _required(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"{what} has the wrong type: {value!r}")
    return value


def _optional(value: Any, kind: type, what: str) -> Any:
    return None if value is None else _required(value, kind, what)


#: The largest result, in bytes of compact UTF-8 JSON, a run may publish by default.
DEFAULT_MAX_RESULT_BYTES = 64 * 1024
_max_result_bytes = [DEFAULT_MAX_RESULT_BYTES]


def set_max_result_bytes(limit: object) -> None:
    """Set the process-wide result size limit (see ``tracked.configure``)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidValue(f"max_result_bytes must be an int >= 0, got {limit!r}")
    _max_result_bytes[0] = limit


#: Types of a web framework's answers (``tracked.django`` adds Django's responses): a
#: run returning one publishes no result, and nothing is logged about it.
NOT_RESULTS: list[type] = []


def encode_result(value: object) -> tuple[Any, str | None]:
    """``(what readers will see, None)`` for a publishable result, else ``(None, why not)``.

    What readers see is the value after a JSON round trip (tuples become lists),
    copied, so changing the original object later changes nothing published. A
    value of a ``NOT_RESULTS`` type is no result: ``(None, None)``.
    """
    if value is None or (NOT_RESULTS and isinstance(value, tuple(NOT_RESULTS))):
        return None, None
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"it is not JSON-serialisable ({type(exc).__name__}: {exc})"
    except Exception as exc:  # noqa: BLE001 - user code (a __repr__, a dict subclass) ran
        return None, f"encoding it raised {type(exc).__name__}: {exc}"
    # Surrogates (os.listdir's names that are not UTF-8) are stored as U+FFFD, like any text.
    text = clean_text(text)
    size, limit = len(text.encode("utf-8")), _max_result_bytes[0]
    if size > limit:
        return None, f"it is {size} bytes of JSON, over max_result_bytes={limit}"
    return json.loads(text), None
