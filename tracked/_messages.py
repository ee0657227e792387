"""``Messages``: a run's message buffer, appended to with no lock and numbered by one reader.

Updates append bare texts to ``incoming`` (a ``list.append``, atomic under the
GIL); a snapshot ``drain``s them under the handle's lock into the last ``cap``
kept, cleaned and numbered, so ``message_count`` and ``?since=`` are exact.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

from ._text import clean_message
from .errors import InvalidValue

__all__ = ["Messages", "check_messages"]

#: What a message is once its trailing line break is dropped, if nothing is left;
#: sorted, so that a batch whose smallest text sorts above the last has none.
_BLANK = ("", "\n", "\r\n")


class Messages:
    """The messages of one run: ``incoming`` (not yet numbered), the last ``cap``
    ``kept`` (also as a tuple, for snapshots) and the ``count`` of every message."""

    __slots__ = ("cap", "count", "incoming", "kept", "kept_tuple")

    def __init__(self, incoming: list[str], cap: int) -> None:
        self.incoming = incoming
        self.cap = cap
        self.kept: collections.deque[str] = collections.deque(maxlen=cap)
        self.kept_tuple: tuple[str, ...] = ()
        self.count = 0

    def carry(self, messages: Sequence[str], count: int) -> None:
        """Start from a queued record's messages and count (a run taken over)."""
        self.kept.extend(messages)
        self.kept_tuple = tuple(self.kept)
        self.count = count

    def drain(self) -> tuple[tuple[str, ...], int]:
        """Number and keep the messages appended since the last call (under the
        handle's lock): one reader assigns every index.

        Appends only ever go to the end, so copying then deleting the first ``n``
        takes exactly those; only the texts that can still be kept are cleaned.
        """
        incoming = self.incoming
        waiting = len(incoming)
        if not waiting:
            return self.kept_tuple, self.count
        batch = incoming[:waiting]
        del incoming[:waiting]
        added = waiting
        if min(batch) <= _BLANK[-1]:  # one scan; only a text sorting this low can be blank
            added -= sum(map(batch.count, _BLANK))
        if added:
            self.kept.extend(_last_messages(batch, self.cap))
            self.count += added
            self.kept_tuple = tuple(self.kept)
        return self.kept_tuple, self.count


def _last_messages(texts: list[str], keep: int) -> list[str]:
    """The last ``keep`` texts that are messages, cleaned (see ``clean_message``)."""
    window = keep
    while True:
        kept = [t for t in map(clean_message, texts[-window:] if window else ()) if t]
        if len(kept) >= keep or window >= len(texts):
            return kept[max(0, len(kept) - keep) :] if keep else []
        window *= 2


def check_messages(messages: Iterable[object]) -> list[str]:
    """The messages as plain ``str`` copies; ``InvalidValue`` for one that is not a str."""
    checked = list(messages)
    for index, message in enumerate(checked):
        if message.__class__ is not str:
            if not isinstance(message, str):
                raise InvalidValue(f"a message must be a str, not {type(message).__name__}")
            checked[index] = str.__str__(message)  # a plain copy: no subclass code later
    return checked  # type: ignore[return-value]
