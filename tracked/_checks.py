"""The checks of a handle's settings and updates: a clear ``InvalidValue``, raised
before anything changes; and the one warning about a result that is not kept.
"""

from __future__ import annotations

import logging
from typing import Any

from ._state import as_int
from .errors import InvalidValue

__all__ = [
    "check_interval",
    "check_max_messages",
    "check_status",
    "check_total_count",
    "warn_result_once",
]

logger = logging.getLogger("tracked")


def check_interval(value: object) -> float:
    """``min_interval`` as a float; ``InvalidValue`` unless a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidValue(f"min_interval must be a number of seconds >= 0, got {value!r}")
    return float(value)


def check_max_messages(value: object) -> int:
    """``max_messages`` checked: ``InvalidValue`` unless an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"max_messages must be an int >= 0, got {value!r}")
    return value


def check_total_count(value: object) -> int | None:
    """A handle's ``total``: None, or an int (or int-like) >= 0; ``InvalidValue`` else."""
    if value is None:
        return None
    total = as_int(value, "total")
    if total < 0:
        raise InvalidValue(f"total must not be negative, got {total}")
    return total


def check_status(value: Any) -> str | None:
    """A handle's ``status``: None or a str; ``InvalidValue`` else."""
    if value is not None and not isinstance(value, str):
        raise InvalidValue(f"status must be a str, not {type(value).__name__}")
    return value

_result_warned: set[str] = set()


def warn_result_once(name: str, problem: str) -> None:
    """Log that a result was dropped, once per progress name (not per run)."""
    if name in _result_warned or len(_result_warned) >= 1024:
        return
    _result_warned.add(name)
    logger.warning(
        "the result of progress %r is published as null: %s (logged once for this name)",
        name,
        problem,
    )
