"""The HTML fragment of a state, for ``?format=html`` and htmx: the same facts as the
wire JSON, every piece of text escaped, the bar a native ``<progress>`` (an
accessible progressbar) whose ``aria-valuetext`` says it in words.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ._state import State
from ._words import span, state_text

__all__ = ["HTML_TYPE", "error_fragment", "fragment", "value_text"]

HTML_TYPE = "text/html; charset=utf-8"
#: Messages a fragment lists (the newest): a fragment is swapped whole, so it stays short.
MESSAGES = 5


def fragment(state: State) -> str:
    """``state`` as one ``<div class="tracked-progress">``: bar, state words, status,
    the newest messages, and the error or result once it ended."""
    shown = escape(_shown_name(state))
    word = escape(state_text(state))
    parts = [
        f'<div class="tracked-progress" data-state="{escape(state.state)}"'
        f' data-in-progress="{"true" if state.in_progress else "false"}">',
        _bar(state, shown),
        f'<p class="tracked-line"><span class="tracked-state">{word}</span>'
        f'{_figures(state)}</p>',
    ]
    if state.status:
        parts.append(f'<p class="tracked-status">{escape(state.status)}</p>')
    if state.messages:
        items = "".join(f"<li>{escape(m)}</li>" for m in state.messages[-MESSAGES:])
        parts.append(f'<ul class="tracked-messages" aria-label="Messages">{items}</ul>')
    if state.error is not None:
        parts.append(f'<p class="tracked-error" role="alert">{escape(state.error)}</p>')
    elif state.state == "finished" and state.result is not None:
        parts.append(f'<pre class="tracked-result">{escape(_json(state.result))}</pre>')
    parts.append("</div>")
    return "".join(parts)


def error_fragment(message: str) -> str:
    """An error answer as a fragment (``role="alert"``), for clients that asked for HTML."""
    return f'<p class="tracked-progress tracked-error" role="alert">{escape(message)}</p>'


def value_text(state: State) -> str:
    """The bar said in words: ``42% — about 6s left``, ``12 done``, ``queued``."""
    if state.state == "queued":
        return state_text(state)
    if state.percent is None:
        if state.in_progress and not state.count:
            return state_text(state)
        return f"{state.count} done"
    text = f"{state.percent:.0f}%"
    if state.in_progress and state.eta is not None:
        text += f" — about {span(state.eta)} left"
    return text


def _bar(state: State, shown: str) -> str:
    """The native ``<progress>``: with a value (percent) when the total is known,
    indeterminate (no value, so no ``aria-valuenow``) while it is not."""
    words = escape(value_text(state))
    label = f'aria-label="Progress of {shown}" aria-valuetext="{words}"'
    if state.percent is None:
        return f'<progress class="tracked-bar" max="100" {label}>{words}</progress>'
    value = f"{state.percent:.1f}".rstrip("0").rstrip(".")
    return f'<progress class="tracked-bar" max="100" value="{value}" {label}>{words}</progress>'


def _figures(state: State) -> str:
    """`` · 3/10 · 30% · 4.2s left`` as far as they are known."""
    bits = []
    if state.total is not None:
        bits.append(f"{state.count}/{state.total}")
    elif state.count:
        bits.append(str(state.count))
    if state.percent is not None:
        bits.append(f"{state.percent:.0f}%")
    if state.in_progress and state.eta is not None:
        bits.append(f"{span(state.eta)} left")
    return "".join(f' <span class="tracked-figure">· {escape(b)}</span>' for b in bits)


def _shown_name(state: State) -> str:
    return state.name if state.name is not None else (state.progress_id or "")


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        return repr(value)
