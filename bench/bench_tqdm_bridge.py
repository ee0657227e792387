"""Per-iteration overhead of the tqdm bridge next to plain tqdm.

Run: ``python bench/bench_tqdm_bridge.py [--items 1000000] [--rounds 7]``

Each round times, back to back, a bare loop, plain ``tqdm.tqdm``, ``tracked.tqdm``
(its own progress in a file store) and a plain ``tqdm.tqdm`` under
``tracked.capture_tqdm()`` inside a live progress, once iterating the bar and
once calling ``bar.update(1)`` by hand; the order rotates from round to round.
Overhead is time per item above the bare loop; the figure that matters is the
ratio of the bridge's overhead to plain tqdm's within the same round, reported
as the median over the rounds (the machines are shared: ratios from interleaved
runs are steadier than absolute times).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from tqdm import tqdm as plain_tqdm

import tracked


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.items
    devnull = open(os.devnull, "w")  # closed at the end

    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)

        def bare_iter() -> None:
            for _ in range(n):
                pass

        def bare_update() -> None:
            for _ in range(n):
                pass

        def tqdm_iter(cls: Callable[..., plain_tqdm[int]], **extra: object) -> None:
            for _ in cls(range(n), file=devnull, **extra):
                pass

        def tqdm_update(cls: Callable[..., plain_tqdm[int]], **extra: object) -> None:
            with cls(total=n, file=devnull, **extra) as bar:
                update = bar.update
                for _ in range(n):
                    update(1)

        def captured(body: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with tracked.start("bench-capture", total=None, store=store):
                    with tracked.capture_tqdm():
                        body()

            return run

        variants: dict[str, dict[str, Callable[[], None]]] = {
            "iterate": {
                "bare": bare_iter,
                "tqdm": lambda: tqdm_iter(plain_tqdm),
                "tracked.tqdm": lambda: tqdm_iter(tracked.tqdm, name="bench-iter", store=store),
                "capture_tqdm": captured(lambda: tqdm_iter(plain_tqdm)),
            },
            "update(1)": {
                "bare": bare_update,
                "tqdm": lambda: tqdm_update(plain_tqdm),
                "tracked.tqdm": lambda: tqdm_update(tracked.tqdm, name="bench-update", store=store),
                "capture_tqdm": captured(lambda: tqdm_update(plain_tqdm)),
            },
        }
        print(f"{n:,} items per run, {args.rounds} interleaved rounds, medians")
        for label, runs in variants.items():
            ratios: dict[str, list[float]] = {"tracked.tqdm": [], "capture_tqdm": []}
            over: dict[str, list[float]] = {k: [] for k in ("tqdm", *ratios)}
            bare_times = []
            names = list(runs)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]  # no fixed first
                t = {name: timed(runs[name]) for name in order}
                bare_times.append(t["bare"])
                base = t["tqdm"] - t["bare"]
                over["tqdm"].append(base)
                for name in ratios:
                    over[name].append(t[name] - t["bare"])
                    ratios[name].append((t[name] - t["bare"]) / base)
            ns = 1e9 / n
            print(
                f"  {label:9}: bare {statistics.median(bare_times) * ns:5.1f} ns"
                f" | tqdm +{statistics.median(over['tqdm']) * ns:5.1f} ns"
                + "".join(
                    f" | {name} +{statistics.median(over[name]) * ns:5.1f} ns"
                    f" (x{statistics.median(ratios[name]):.2f} of tqdm's)"
                    for name in ratios
                )
            )
    devnull.close()


if __name__ == "__main__":
    main()
