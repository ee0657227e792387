"""A @tracked generator with a total (sized: it has ``len()``) next to one without,
per yield: the length must cost nothing on the per-yield path.

Run: ``python bench/bench_generator_len.py [--item str|none] [--n 300000] [--rounds 11]``
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator

from _common import interleaved, load_tracked, report_pair

tracked = load_tracked()


def bare(n: int, item: object) -> Iterator[object]:
    for _ in range(n):
        yield item


def consume(iterable: Iterator[object]) -> None:
    for _ in iterable:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item", choices=["str", "none"], default="none")
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    item = "a short message" if args.item == "str" else None
    n = args.n
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        plain = tracked.tracked(name="bench-plain", total=None, store=store)(bare)
        sized = tracked.tracked(name="bench-sized", total=n, store=store)(bare)
        rounds = interleaved(
            {
                "bare": lambda: consume(bare(n, item)),
                "plain": lambda: consume(plain(n, item)),
                "sized": lambda: consume(sized(n, item)),
            },
            args.rounds,
        )
    print(f"yield {args.item}, {n:,} yields per variant and round")
    report_pair(rounds, n, "bare", "plain", "sized", "~1.0")


if __name__ == "__main__":
    main()
