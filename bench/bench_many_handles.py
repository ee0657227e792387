"""Updates/s of 1,000 live handles updated round-robin from one thread, next to 100,
and the store writes/s that cost (FileStore, default ``min_interval=0.1``).

Run: ``python bench/bench_many_handles.py [--seconds 1] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from _common import load_tracked, median

tracked = load_tracked()


class CountingFileStore(tracked.FileStore):  # type: ignore[misc,name-defined]
    """A FileStore that counts its successful saves."""

    saves = 0

    def save(self, state: Any, owner: Any) -> None:
        super().save(state, owner)
        CountingFileStore.saves += 1


def updates_per_second(handles: list[Any], duration: float) -> tuple[float, float]:
    """(updates/s, saves/s) while updating ``handles`` round-robin for ``duration`` s."""
    saves = CountingFileStore.saves
    updates = 0
    start = time.perf_counter()
    deadline = start + duration
    while time.perf_counter() < deadline:
        for progress in handles:
            progress += 1
        updates += len(handles)
    elapsed = time.perf_counter() - start
    return updates / elapsed, (CountingFileStore.saves - saves) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = CountingFileStore(directory)
        handles = [tracked.start(f"h{i}", total=None, store=store) for i in range(1000)]
        results: dict[int, list[tuple[float, float]]] = {1000: [], 100: []}
        for r in range(args.rounds):
            for size in (1000, 100) if r % 2 == 0 else (100, 1000):
                results[size].append(updates_per_second(handles[:size], args.seconds))
        for progress in handles:
            progress.finish()
    for size, runs in results.items():
        rates = [u for u, _ in runs]
        writes = [w for _, w in runs]
        print(
            f"{size:5} live handles, one thread: {median(rates) / 1e3:8.1f} k updates/s"
            f" (range {min(rates) / 1e3:.1f}-{max(rates) / 1e3:.1f} k), {median(writes):6.0f}"
            f" writes/s, {args.rounds} rounds of {args.seconds} s | goal >= 100 k/s for 1000"
        )


if __name__ == "__main__":
    main()
