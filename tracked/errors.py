"""The errors tracked raises: one base class, a few precise subclasses.

Each subclass also derives from the built-in exception it refines, so code that
already catches ``ValueError`` or ``OSError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "Cancelled",
    "InvalidName",
    "InvalidValue",
    "NoActiveProgress",
    "RunSuperseded",
    "StoreError",
    "TrackedError",
]


class TrackedError(Exception):
    """Base class of every error raised by tracked."""


class AlreadyRunning(TrackedError, RuntimeError):
    """A live owner already holds this progress; the running record was left untouched."""

    def __init__(self, key: str) -> None:
        self.key = key
        shown = key.replace("\0", "?progress_id=")
        super().__init__(f"progress {shown!r} is already running")


class InvalidName(TrackedError, ValueError):
    """A progress name, name template or progress_id breaks the naming rules."""


class InvalidValue(TrackedError, ValueError):
    """A total, count, interval or limit has the wrong type or is out of range."""


class StoreError(TrackedError, OSError):
    """The store cannot be used: unreachable, unwritable, or holding a corrupt record."""


class RunSuperseded(StoreError):
    """A write was refused because another run now owns the record's key.

    The writer's run has ended (or lost its claim): its write must be dropped,
    never retried over the newer run.
    """


class NoActiveProgress(TrackedError, LookupError):
    """``tracked.current()`` was called where no progress is live."""


class Cancelled(BaseException):
    """The run was asked to stop (``tracked.cancel``, a DELETE, ``tracked cancel``).

    Raised by ``Progress.check()`` and thrown into a ``@tracked`` generator at its
    next yield. Like ``asyncio.CancelledError`` it derives from ``BaseException``,
    not from ``TrackedError``, so a task's ``except Exception:`` cannot swallow the
    request; its ``finally`` and ``with`` blocks still run.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        shown = key.replace("\0", "?progress_id=")
        super().__init__(f"progress {shown!r} was asked to stop")
