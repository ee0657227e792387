"""How people read a state, in the same words everywhere: ``tracked show`` and
``watch``, ``tracked serve``'s pages (through tracked.js, which says the same) and
the status route's HTML fragments."""

from __future__ import annotations

from ._state import State

__all__ = ["NEVER_STARTED", "never_started", "span", "state_text"]


def span(seconds: float | None) -> str:
    """A compact duration: ``4.2s``, ``45s``, ``12m``, ``3h``, ``2d``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def state_text(state: State) -> str:
    """The state word as people read it: "stopping…" while a requested run goes on,
    "finished (a stop was asked but the task did not stop)" after, "queued (2nd in
    line)" while it waits."""
    if state.in_progress and state.cancel_requested:
        return f"{state.state}, stopping…"
    if never_started(state):
        return NEVER_STARTED
    if state.state == "queued" and state.position is not None:
        return f"queued ({_ordinal(state.position)} in line)"
    if state.state in ("finished", "failed") and state.cancel_requested:
        return f"{state.state} (a stop was asked but the task did not stop)"
    return state.state


#: What a queued run cancelled before a worker or thread took it up says it is.
NEVER_STARTED = "cancelled before it started"


def never_started(state: State) -> bool:
    """Whether ``state`` is a queued run cancelled before it ran: its times are those
    it waited in line, not a run's, so the commands show no elapsed or start time."""
    return state.state == "cancelled" and state.count == 0 and state.status == NEVER_STARTED


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
