"""How the ``tracked`` command shows runs: text made safe for a terminal, the columns
of ``list`` and ``show``, how a run ended, and ``watch``'s views (plain lines, or
``rich`` on a terminal).
"""

from __future__ import annotations

import json
import os
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from . import State
from ._ledger import CHILD_STATES
from ._state import DEFAULT_STATUS, split_key
from ._words import NEVER_STARTED, never_started, span, state_text

__all__ = [
    "LABEL_SEPARATOR",
    "NEVER_STARTED",
    "RECENT",
    "UNSAFE_CATEGORIES",
    "display_key",
    "ended_at",
    "ended_how",
    "fraction",
    "json_line",
    "json_text",
    "label",
    "make_view",
    "never_started",
    "printable",
    "rate",
    "recent",
    "span",
    "state_text",
]

#: Without ``--all``, ``list`` shows running progresses and those ended this recently.
RECENT = 24 * 3600.0
#: Unicode categories never written as they are: controls (C0, C1), format characters
#: (every bidirectional control among them: U+061C, U+200E-F, U+202A-E, U+2066-9, and
#: zero-width and tag characters), line and paragraph separators, and lone surrogates.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


#: How ``label`` joins a name and a progress_id in ``tracked list``'s NAME column.
LABEL_SEPARATOR = "?progress_id="


def printable(text: str) -> str:
    """``text`` with every character of ``UNSAFE_CATEGORIES`` written as a Python-style
    escape (``\\x1b``, ``\\u061c``, ``\\U000e0001``), so no stored text can drive the
    terminal, hide itself or reorder what is shown around it."""
    return _replace_unsafe(text, _python_escape)


def json_text(data: Any) -> str:
    """``data`` as one line of JSON: non-ASCII text as it is, but every character of
    ``UNSAFE_CATEGORIES`` (``\\u0085``, ``\\u202e``...) as a ``\\u`` escape, so
    ``--json`` output is as safe to print as text output and still decodes to ``data``."""
    return _replace_unsafe(json.dumps(data, ensure_ascii=False), _json_escape)


def _replace_unsafe(text: str, escape: Callable[[str], str]) -> str:
    if text.isprintable():  # the common case; False for every unsafe character
        return text
    return "".join(
        escape(char) if unicodedata.category(char) in UNSAFE_CATEGORIES else char for char in text
    )


def _python_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    """``char`` as JSON's ``\\uXXXX``; above U+FFFF as its UTF-16 surrogate pair."""
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def label(state: State) -> str:
    """How a progress is named on the command line: ``name``, ``name?progress_id=ID`` or ``ID``."""
    if state.name is None:
        return printable(state.progress_id or "")
    if state.progress_id is None:
        return printable(state.name)
    return printable(f"{state.name}{LABEL_SEPARATOR}{state.progress_id}")


def fraction(state: State) -> str:
    """``count/total`` and the percentage, as ``20/100 (20.0%)``; ``?`` for an unknown total."""
    total = "?" if state.total is None else str(state.total)
    percent = "" if state.percent is None else f" ({state.percent:.1f}%)"
    return f"{state.count}/{total}{percent}"


def children_text(state: State) -> str:
    """A group's children by state, as ``group of 500: 85 queued, 100 running, 312
    finished, 3 failed`` (states with none left out); ``-`` for any other run."""
    if state.children is None:
        return "-"
    counts = [f"{n} {word}" for word, n in state.children.items() if word != "total" and n]
    total = state.children.get("total", 0)
    return f"group of {total}" + (": " + ", ".join(counts) if counts else "")


def children_lines(
    state: State, children: Iterable[tuple[str, str]], *, as_json: bool
) -> list[str]:
    """``show --children``: the counts, then each state's children sorted by key; or,
    ``as_json``, one ``{"name", "progress_id", "state"}`` object a line, as the status
    route's ``?children=`` page gives them (never the store's internal key)."""
    by_state: dict[str, list[str]] = {}
    for child, counted in children:
        by_state.setdefault(counted, []).append(child)
    lines = [] if as_json else [children_text(state)]
    for word in CHILD_STATES:
        keys = sorted(by_state.get(word, ()))
        if as_json:
            for key in keys:
                name, progress_id = split_key(key)
                lines.append(json_text({"name": name, "progress_id": progress_id, "state": word}))
        elif keys:
            lines.append(f"{word} ({len(keys)}):")
            lines.extend(f"  {display_key(key)}" for key in keys)
    return lines


def rate(state: State) -> str:
    return "-" if state.rate is None else f"{state.rate:.3g}/s"


def ended_at(state: State) -> float:
    return state.finished_time if state.finished_time is not None else state.current_time


def recent(states: list[State]) -> list[State]:
    """The running progresses and those that ended within ``RECENT``: what ``tracked
    list`` and ``tracked serve`` show without ``--all``."""
    cutoff = time.time() - RECENT
    return [s for s in states if s.in_progress or ended_at(s) >= cutoff]


def json_line(state: State) -> str:
    return json_text(state.to_dict())


def display_key(key: str) -> str:
    return printable(key.replace("\0", "?progress_id="))


def ended_how(state: State) -> str:
    """How a run asked to stop ended, when that was not ``cancelled``."""
    if state.state in ("finished", "failed") and state.cancel_requested:
        return f"{state.state}: a stop was asked but the task did not stop"
    if state.state in ("finished", "failed"):
        return f"{state.state} before it saw the request"
    return f"ended {state.state}"


class _PlainView:
    """``watch`` without a terminal: a line per change, and each new message once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen_messages: int | None = None
        self.last_line = ""

    def update(self, state: State) -> None:
        self._messages(state)
        line = self._line(state)
        if line != self.last_line:
            print(line, file=self.out, flush=True)
            self.last_line = line

    def _messages(self, state: State) -> None:
        start = state.first_message_index if self.seen_messages is None else self.seen_messages
        skipped = state.first_message_index - start
        if skipped > 0:
            print(f"{label(state)}: ({skipped} messages not seen)", file=self.out)
        for message in state.messages_since(start).messages:
            print(f"{label(state)}: message: {printable(message)}", file=self.out)
        self.seen_messages = state.message_count

    @staticmethod
    def _line(state: State) -> str:
        if state.in_progress:
            details = f"rate {rate(state)} eta {span(state.eta)} elapsed {span(state.elapsed)}"
            return (f"{label(state)}: {state_text(state)} {fraction(state)} {details}"
                    f"{_status_note(state)}")
        error = f" error: {printable(state.error)}" if state.error else ""
        took = "" if never_started(state) else f" in {span(state.elapsed)}"
        return f"{label(state)}: {state_text(state)} {fraction(state)}{took}{error}"

    def close(self) -> None:
        self.out.flush()


class _RichView:
    """``watch`` on a terminal: a live bar drawn with rich."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def update(self, state: State) -> None:
        self.live.update(self._render(state), refresh=True)

    def _render(self, state: State) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        bar = ProgressBar(
            total=float(state.total) if state.total else None,
            completed=float(state.count),
            pulse=state.total is None and state.in_progress,
            width=40,
        )
        row = Table.grid(padding=(0, 1))
        row.add_row(Text(label(state), style="bold"), bar, Text(fraction(state)))
        details = (
            f"{state_text(state)}  rate {rate(state)}  eta {span(state.eta)}  "
            f"elapsed {'-' if never_started(state) else span(state.elapsed)}{_status_note(state)}"
        )
        lines: list[Any] = [row, Text(details, style=_STYLES.get(state.state, ""))]
        if state.error:
            lines.append(Text(f"error: {printable(state.error)}", style="red"))
        if state.messages:
            lines.append(Text(printable(state.messages[-1]), style="dim"))
        return Group(*lines)

    def close(self) -> None:
        self.live.stop()


def _status_note(state: State) -> str:
    """The status text when it says more than the state word does."""
    if state.status in (DEFAULT_STATUS, state.state, "queued") or never_started(state):
        return ""
    return f"  {printable(state.status)}"


_STYLES = {"finished": "green", "failed": "red", "abandoned": "red", "cancelled": "yellow"}


def make_view(out: TextIO) -> _PlainView | _RichView:
    """The rich view on a terminal when rich is installed, else plain lines."""
    if out.isatty() and os.environ.get("TERM") != "dumb":
        try:
            return _RichView(out)
        except ImportError:
            pass
    return _PlainView(out)
