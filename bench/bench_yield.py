"""Per-yield cost of a @tracked generator next to tqdm, and flush cost against message count.

Run: ``python bench/bench_yield.py [--yields 1000000] [--repeat 5]``

Everything is a ratio against a bare generator measured in the same run, since
these machines are shared and absolute times drift. The best of ``--repeat``
runs is kept for each variant.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator

from tqdm import tqdm

import tracked


def bare(n: int, item: object) -> Iterator[object]:
    for _ in range(n):
        yield item


def consume(iterable: Iterator[object]) -> None:
    for _ in iterable:
        pass


def best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def per_yield(n: int, repeat: int, item: object, store: tracked.Store) -> dict[str, float]:
    """Seconds per yield for bare, tqdm and tracked generators yielding ``item``."""
    devnull = open(os.devnull, "w")  # closed below
    job = tracked.tracked(name="bench-yield", total=n, store=store)(bare)
    results = {
        "bare": best_of(repeat, lambda: consume(bare(n, item))),
        "tqdm": best_of(repeat, lambda: consume(tqdm(bare(n, item), total=n, file=devnull))),
        "tracked": best_of(repeat, lambda: consume(job(n, item))),
    }
    devnull.close()
    return {k: v / n for k, v in results.items()}


def flush_cost(messages: int, repeat: int, store: tracked.Store) -> float:
    """Seconds for one flush of a progress that has emitted ``messages`` messages."""
    with tracked.start(f"bench-flush-{messages}", store=store, min_interval=3600) as progress:
        for i in range(messages):
            progress.add_message(f"message number {i}")
        flushes = 200
        return best_of(repeat, lambda: [progress.flush() for _ in range(flushes)]) / flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yields", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        print(
            f"per-yield cost, {args.yields:,} yields, best of {args.repeat} (file store, defaults)"
        )
        for label, item in (("None", None), ("str", "a short message")):
            t = per_yield(args.yields, args.repeat, item, store)
            tqdm_over = t["tqdm"] - t["bare"]
            tracked_over = t["tracked"] - t["bare"]
            print(
                f"  yield {label:4}: bare {t['bare'] * 1e9:6.1f} ns"
                f" | tqdm +{tqdm_over * 1e9:6.1f} ns"
                f" | tracked +{tracked_over * 1e9:6.1f} ns | tracked/tqdm overhead ="
                f" {tracked_over / tqdm_over:.2f}"
            )
        few, many = flush_cost(10, args.repeat, store), flush_cost(100_000, args.repeat, store)
        print(
            f"flush: 10 messages {few * 1e6:.0f} us | 100,000 messages {many * 1e6:.0f} us"
            f" (capped at 1000 kept) | ratio {many / few:.2f}"
        )


if __name__ == "__main__":
    main()
