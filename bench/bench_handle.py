"""Handle updates next to tqdm, per call: ``p += 1`` vs ``bar.update(1)``, or
``p.add_message("x")`` vs ``bar.set_postfix_str("x", refresh=False)``.

Run: ``python bench/bench_handle.py [--op add|message] [--n 300000] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from itertools import repeat
from typing import Any

from _common import interleaved, load_tracked, report_pair
from tqdm import tqdm

tracked = load_tracked()


def empty(n: int) -> None:
    for _ in repeat(None, n):
        pass


def add_one(progress: Any, n: int) -> None:
    for _ in repeat(None, n):
        progress += 1


def update_one(bar: Any, n: int) -> None:
    for _ in repeat(None, n):
        bar.update(1)


def add_message(progress: Any, n: int) -> None:
    for _ in repeat(None, n):
        progress.add_message("x")


def set_postfix(bar: Any, n: int) -> None:
    for _ in repeat(None, n):
        bar.set_postfix_str("x", refresh=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=["add", "message"], default="add")
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.n
    ours, theirs = (add_one, update_one) if args.op == "add" else (add_message, set_postfix)
    with tempfile.TemporaryDirectory() as directory, open(os.devnull, "w") as devnull:
        store = tracked.FileStore(directory)
        with (
            tracked.start("bench-handle", total=None, store=store) as progress,
            tqdm(total=None, file=devnull) as bar,
        ):
            rounds = interleaved(
                {
                    "empty loop": lambda: empty(n),
                    "tqdm": lambda: theirs(bar, n),
                    "tracked": lambda: ours(progress, n),
                },
                args.rounds,
            )
    label = "p += 1 vs bar.update(1)" if args.op == "add" else "add_message vs set_postfix_str"
    print(f"{label}, {n:,} calls per variant and round")
    report_pair(
        rounds, n, "empty loop", "tqdm", "tracked", "<= 1.0" if args.op == "add" else "<= 1.5"
    )


if __name__ == "__main__":
    main()
