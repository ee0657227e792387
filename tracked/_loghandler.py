"""``tracked.LogHandler``: log lines emitted inside a live progress become its messages."""

from __future__ import annotations

import logging

from ._adopt import live_progress
from ._progress import Progress, current_progress

__all__ = ["LogHandler"]

#: tracked's own logger: its records (a store that cannot be written, say) must not
#: become messages of the progress whose writes they are about.
OWN_LOGGER = "tracked"


class LogHandler(logging.Handler):
    """Append each record emitted inside a live progress to it as a message.

    The progress is the one ``tracked.current()`` would return where the record
    is emitted, so each thread and each asyncio task reports into its own.
    Records emitted outside a live progress, and those of tracked's own logger,
    are ignored. The text is ``self.format(record)``: the bare message unless a
    formatter is set (``handler.setFormatter(logging.Formatter("%(levelname)s
    %(message)s"))``). It never raises into the logging call (failures go to
    ``handleError``) and takes no lock: with no progress live, handling a record
    is one context-variable read.

    Attach it to a logger directly, not behind a ``QueueHandler``: the listener's
    thread has no progress of its own.
    """

    def __init__(self, level: int | str = logging.INFO) -> None:
        super().__init__(level)

    def handle(self, record: logging.LogRecord) -> bool:
        progress = current_progress.get()  # inlined live_progress(): the common no-op path
        if progress is None or not progress.in_progress or _is_own(record.name):
            return False
        verdict = self.filter(record)
        if not verdict:
            return False
        if isinstance(verdict, logging.LogRecord):  # Python 3.12+: a filter may swap it
            record = verdict
        self._add(progress, record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        progress = live_progress()
        if progress is not None and not _is_own(record.name):
            self._add(progress, record)

    def _add(self, progress: Progress, record: logging.LogRecord) -> None:
        try:
            progress.add_message(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the task
            self.handleError(record)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ({logging.getLevelName(self.level)})>"


def _is_own(logger_name: str) -> bool:
    return logger_name == OWN_LOGGER or logger_name.startswith(OWN_LOGGER + ".")
