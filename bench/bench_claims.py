"""1,000 FileStore starts of distinct names: one after another, against all at once
from 1,000 threads of one process and from 10 processes of 100 threads.

Run: ``python bench/bench_claims.py [--jobs 1000] [--rounds 3]``. Prints, per
variant, the median wall time from the go to the last start, the failed starts
(a ``StoreError`` when a claim timed out) and each burst's ratio to the
sequential starts of the same round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import load_tracked, median

tracked = load_tracked()


def sequential(store: str, jobs: int) -> tuple[float, int]:
    opened = tracked.open_store(store)
    started = time.perf_counter()
    handles = [tracked.start(f"seq-{i}", store=opened) for i in range(jobs)]
    took = time.perf_counter() - started
    for handle in handles:
        handle.finish()
    return took, 0


def burst(store: str, prefix: str, jobs: int, go: str | None = None) -> tuple[float, int]:
    """``jobs`` threads start one run each at the go (a barrier, or a file appearing);
    seconds from the go to the end of the last start, and the failed starts. A child
    process prints when its last start ended instead (the parent takes the latest)."""
    opened = tracked.open_store(store)
    barrier = threading.Barrier(jobs + 1)
    handles: list[object] = []
    failures: list[BaseException] = []
    done = [0.0]

    def start(i: int) -> None:
        barrier.wait()
        try:
            handles.append(tracked.start(f"{prefix}-{i}", store=opened))
        except Exception as exc:
            failures.append(exc)
        done[0] = max(done[0], time.time())

    threads = [threading.Thread(target=start, args=(i,)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    if go is not None:
        while not os.path.exists(go):
            time.sleep(0.0005)
    began = time.time()
    barrier.wait()
    for thread in threads:
        thread.join()
    if go is not None:
        print(f"{done[0]:.6f}", len(failures), flush=True)
    for handle in handles:
        handle.finish()  # type: ignore[attr-defined]
    return done[0] - began, len(failures)


def processes(store: str, prefix: str, jobs: int, count: int) -> tuple[float, int]:
    """``count`` processes of ``jobs // count`` threads each, released by one go file."""
    go = os.path.join(store, f".go-{prefix}")
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", store, f"{prefix}-{c}", str(jobs // count), go],
            stdout=subprocess.PIPE, text=True, env={**os.environ},
        )
        for c in range(count)
    ]
    time.sleep(1.0)  # every child has started its threads
    began = time.time()
    Path(go).touch()
    ends, failed = [], 0
    for child in children:
        out, _ = child.communicate(timeout=300)
        end, fails = out.splitlines()[-1].split()  # after the "# tracked from" line
        ends.append(float(end))
        failed += int(fails)
    os.unlink(go)
    return max(ends) - began, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store, prefix, jobs, go = args.child
        burst(store, prefix, int(jobs), go)
        return
    results: dict[str, list[tuple[float, int]]] = {"sequential": [], "threads": [], "processes": []}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as directory:
            store = os.path.join(directory, "store")
            os.mkdir(store)
            order = ["sequential", "threads", "processes"]
            order = order[r % 3 :] + order[: r % 3]
            for variant in order:
                if variant == "sequential":
                    results[variant].append(sequential(store, args.jobs))
                elif variant == "threads":
                    results[variant].append(burst(store, f"t{r}", args.jobs))
                else:
                    results[variant].append(processes(store, f"p{r}", args.jobs, 10))
    for variant, runs in results.items():
        ratios = [t / s[0] for (t, _), s in zip(runs, results["sequential"], strict=True)]
        print(
            f"{variant}: {args.jobs} starts in {median([t for t, _ in runs]):.2f} s (median of"
            f" {len(runs)}), failed {sum(f for _, f in runs)}, / sequential"
            f" {median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
