"""A @tracked generator next to tqdm(gen), per yield: ``str`` items or ``None`` items.

Run: ``python bench/bench_generator.py [--item str|none] [--n 300000] [--rounds 7]
[--processes 1]``. With ``--processes N`` it runs itself in N fresh interpreters
and also prints the median of their ratios: one process's ratio can move by 0.15
with its memory layout.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
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
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.processes > 1:
        across_processes(args)
        return
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


def across_processes(args: argparse.Namespace) -> None:
    """Run this benchmark in fresh interpreters, one after another; median of ratios."""
    command = [sys.executable, __file__, "--item", args.item, "--n", str(args.n)]
    ratios = []
    for _ in range(args.processes):
        out = subprocess.run(
            [*command, "--rounds", str(args.rounds)], capture_output=True, text=True, check=True
        ).stdout
        print(out.strip().splitlines()[-1])
        found = re.search(r"ratio median ([0-9.]+)", out)
        assert found, out
        ratios.append(float(found.group(1)))
    print(
        f"median over {args.processes} processes: {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
