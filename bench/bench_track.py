"""Per-item overhead of ``tracked.track()`` next to tqdm and ``rich.progress.track``.

Run: ``python bench/bench_track.py [--items 500000] [--rounds 5]``

Each round times, in rotating order, a bare ``for`` loop over ``range(items)``,
the same loop through ``tqdm`` (``file=devnull``), through ``rich.progress.track``
(a console writing to devnull) and through ``tracked.track`` (its own progress
in a file store), and ``tracked.track`` driving a live progress. Overheads
are per item above the bare loop, medians over the rounds.

``track()`` counts each item with ``Progress.increment()``, so its per-item cost
is the handle's: what this measures moves with the core's handle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import track as rich_track
from tqdm import tqdm

import tracked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.items
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        console = Console(file=devnull)

        def bare() -> None:
            for _ in range(n):
                pass

        def with_tqdm() -> None:
            for _ in tqdm(range(n), file=devnull):
                pass

        def with_rich() -> None:
            for _ in rich_track(range(n), console=console):
                pass

        def with_track() -> None:
            for _ in tracked.track(range(n), name="bench-track", store=store):
                pass

        def driving() -> None:
            with tracked.start("bench-track-live", total=None, store=store):
                for _ in tracked.track(range(n)):
                    pass

        runs: dict[str, Callable[[], None]] = {
            "bare": bare,
            "tqdm": with_tqdm,
            "rich.progress.track": with_rich,
            "tracked.track": with_track,
            "tracked.track, driving a live progress": driving,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                runs[name]()
                times[name].append((time.perf_counter() - start) / n)
    print(f"{n:,} items per run, {args.rounds} rounds, medians")
    bare_times = times.pop("bare")
    print(f"  {'bare':40}: {statistics.median(bare_times) * 1e9:7.1f} ns per item")
    for name, samples in times.items():
        over = [t - b for t, b in zip(samples, bare_times, strict=True)]
        print(f"  {name:40}: +{statistics.median(over) * 1e9:7.1f} ns per item")


if __name__ == "__main__":
    main()
