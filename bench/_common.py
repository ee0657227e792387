"""Shared by the bench scripts: which code to measure, interleaved rounds, medians.

Set ``TRACKED_CODE=/path/to/checkout`` to measure another checkout of tracked (the
code before a change, say) with this virtualenv's dependencies.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


def load_tracked() -> ModuleType:
    """Import tracked, from ``$TRACKED_CODE`` when set (the editable install set aside)."""
    code = os.environ.get("TRACKED_CODE")
    if code:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, code)
    module = importlib.import_module("tracked")
    print(f"# tracked from {os.path.dirname(module.__file__ or '')}")
    return module


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> list[dict[str, float]]:
    """Run every variant once per round, rotating the order; seconds per variant per round."""
    names = list(variants)
    results = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        results.append({name: seconds(variants[name]) for name in order})
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report_pair(
    rounds: list[dict[str, float]], n: int, base: str, anchor: str, ours: str, goal: str
) -> None:
    """Print ns above ``base`` for ``anchor`` and ``ours`` and their ratio, as medians."""
    over_anchor = [(r[anchor] - r[base]) / n * 1e9 for r in rounds]
    over_ours = [(r[ours] - r[base]) / n * 1e9 for r in rounds]
    ratios = [o / a for o, a in zip(over_ours, over_anchor, strict=True)]
    print(
        f"{ours}: +{median(over_ours):.1f} ns | {anchor}: +{median(over_anchor):.1f} ns"
        f" | ratio median {median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f},"
        f" {len(rounds)} rounds, base {median([r[base] / n * 1e9 for r in rounds]):.1f} ns)"
        f" | goal {goal}"
    )
