"""Hot-path rows of two checkouts of tracked in one process, interleaved: per-item
overhead of each above a bare loop, and the paired ratio branch/base.

Run: ``python bench/bench_versions.py BASE_DIR [--items 300000] [--rounds 15]``, where
BASE_DIR holds the other ``tracked`` package (``git archive main tracked | tar -x -C
BASE_DIR``). One process and alternating rounds cancel most of a shared machine's
drift, which separate runs of the other scripts do not; ratios near 1.00 mean the
change did not move the row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str, directory: str) -> ModuleType:
    """Import the ``tracked`` package in ``directory`` under the module name ``name``."""
    path = os.path.join(directory, "tracked")
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cases(t: Any, tag: str, n: int, directory: str) -> dict[str, Callable[[], None]]:
    store = t.FileStore(os.path.join(directory, tag))

    @t.tracked("gen-none-" + tag, total=None, store=store)
    def gen_none() -> Any:
        for _ in range(n):
            yield None

    @t.tracked("gen-str-" + tag, total=None, store=store)
    def gen_str() -> Any:
        for _ in range(n):
            yield "x"

    def add_one() -> None:
        with t.start("add-" + tag, total=None, store=store) as p:
            for _ in range(n):
                p += 1

    def message() -> None:
        with t.start("msg-" + tag, total=None, store=store, max_messages=100) as p:
            add = p.add_message
            for _ in range(n):
                add("x")

    def track() -> None:
        for _ in t.track(range(n), "track-" + tag, store=store):
            pass

    def track_live() -> None:
        with t.start("live-" + tag, total=None, store=store):
            for _ in t.track(range(n)):
                pass

    def consume(make: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in make():
                pass

        return run

    return {
        "@tracked generator, yield None": consume(gen_none),
        "@tracked generator, yield str": consume(gen_str),
        "p += 1": add_one,
        "add_message": message,
        "track()": track,
        "track() driving a live progress": track_live,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = args.items
    branch = load("tracked", HERE)
    base = load("tracked_base", args.base)

    def bare() -> None:
        for _ in range(n):
            pass

    with tempfile.TemporaryDirectory() as directory:
        of_base = cases(base, "base", n, directory)
        of_branch = cases(branch, "branch", n, directory)
        times: dict[str, dict[str, list[float]]] = {
            k: {"base": [], "branch": [], "bare": []} for k in of_base
        }
        for r in range(args.rounds):
            for row in of_base:
                order = [("base", of_base[row]), ("branch", of_branch[row]), ("bare", bare)]
                for tag, run in order if r % 2 else order[::-1]:
                    start = time.perf_counter()
                    run()
                    times[row][tag].append((time.perf_counter() - start) / n * 1e9)
    print(f"{n:,} items, {args.rounds} rounds interleaved; ns per item above a bare loop")
    for row, got in times.items():
        over = {tag: [t - b for t, b in zip(got[tag], got["bare"], strict=True)]
                for tag in ("base", "branch")}
        ratios = [a / b for a, b in zip(over["branch"], over["base"], strict=True) if b > 0]
        quartiles = statistics.quantiles(ratios, n=4)
        print(
            f"  {row:34} base +{statistics.median(over['base']):6.1f} | branch "
            f"+{statistics.median(over['branch']):6.1f} | branch/base "
            f"{statistics.median(ratios):.2f} (IQR {quartiles[0]:.2f}-{quartiles[2]:.2f})"
        )


if __name__ == "__main__":
    main()
