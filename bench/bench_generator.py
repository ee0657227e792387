"""A @tracked generator next to tqdm(gen), per yield: ``str`` items or ``None`` items.

Run: ``python bench/bench_generator.py [--item str|none] [--n 300000] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator

from _common import interleaved, load_tracked, report_pair
from tqdm import tqdm

tracked = load_tracked()


def bare(n: int, item: object) -> Iterator[object]:
    for _ in range(n):
        yield item


def consume(iterable: Iterator[object]) -> None:
    for _ in iterable:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item", choices=["str", "none"], default="str")
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    item = "a short message" if args.item == "str" else None
    n = args.n
    with tempfile.TemporaryDirectory() as directory, open(os.devnull, "w") as devnull:
        store = tracked.FileStore(directory)
        job = tracked.tracked(name="bench-generator", total=n, store=store)(bare)
        rounds = interleaved(
            {
                "bare": lambda: consume(bare(n, item)),
                "tqdm": lambda: consume(tqdm(bare(n, item), total=n, file=devnull)),
                "tracked": lambda: consume(job(n, item)),
            },
            args.rounds,
        )
    goal = "<= 1.0" if args.item == "str" else "<= 0.8"
    print(f"yield {args.item}, {n:,} yields per variant and round")
    report_pair(rounds, n, "bare", "tqdm", "tracked", goal)


if __name__ == "__main__":
    main()
