"""The small parts of a live run that ``Progress`` keeps by concern: a request to
stop (``CancelState``), a queued run's place and attempts (``Line``), and how the
run ended (``Outcome``; ``is_cancellation`` tells which exceptions cancel it). Plain
records: ``Progress`` decides what changes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ._store import Owner
from .errors import Cancelled

__all__ = ["CancelState", "Line", "Outcome", "is_cancellation"]


class CancelState:
    """``requested``: set once, by the flusher (someone asked the run to stop);
    ``delivered``: ``tracked.Cancelled`` reached the task (or its job); ``hooks``: run
    when the request is seen (a coroutine's task cancelled, a queued job dropped)."""

    __slots__ = ("delivered", "hooks", "requested")

    def __init__(self) -> None:
        self.requested = False
        self.delivered = False
        self.hooks: list[Callable[[], object]] = []


class Line:
    """A queued run's place in line (1 = next; None once it runs), its attempt
    (``tracked._queued``, kept across retries), what ``wait()`` waits for (set by
    ``tracked.submit``), and, set by a take-over, given the exception a run ends by:
    ``retry``, the owner of the queued record to go back in line with, or None;
    ``left``, True when the queue is killing this process and ends the run itself."""

    __slots__ = ("attempt", "job", "left", "position", "retry")

    def __init__(self, position: int | None) -> None:
        self.position = position
        self.attempt = 1
        self.job: Any = None
        self.retry: Callable[[BaseException], Owner | None] | None = None
        self.left: Callable[[BaseException], bool] | None = None


class Outcome:
    """How the run ended: its ``error`` text, ``finished_time``, ``result`` (readers
    see it once ended), and the state it ends in if collected while running."""

    __slots__ = ("error", "finished_time", "on_collect", "result")

    def __init__(self) -> None:
        self.error: str | None = None
        self.finished_time: float | None = None
        self.on_collect = "finished"
        self.result: Any = None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` stops work from outside (a closed generator, Ctrl-C, a
    cancelled asyncio task) rather than reporting that the work failed."""
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt, Cancelled)):
        return True
    asyncio = sys.modules.get("asyncio")  # no task can be cancelled without it
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)
