"""One FileStore flush of a running progress keeping 1,000 messages vs keeping 10.

Run: ``python bench/bench_flush.py [--flushes 200] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from _common import interleaved, load_tracked, median

tracked = load_tracked()


def flushes(progress: Any, count: int) -> None:
    for _ in range(count):
        progress.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flushes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        few = tracked.start("few", store=store, min_interval=3600)
        many = tracked.start("many", store=store, min_interval=3600)
        for i in range(10):
            few.add_message(f"message number {i}")
        for i in range(100_000):
            many.add_message(f"message number {i}")
        rounds = interleaved(
            {
                "10 kept": lambda: flushes(few, args.flushes),
                "1000 kept": lambda: flushes(many, args.flushes),
            },
            args.rounds,
        )
        few.finish()
        many.finish()
    each = {k: median([r[k] for r in rounds]) / args.flushes * 1e6 for k in rounds[0]}
    ratios = [r["1000 kept"] / r["10 kept"] for r in rounds]
    print(
        f"one flush: 10 kept {each['10 kept']:.0f} us | 1000 kept {each['1000 kept']:.0f} us"
        f" | ratio median {median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f},"
        f" {len(rounds)} rounds) | goal <= 1.5"
    )


if __name__ == "__main__":
    main()
