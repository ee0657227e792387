"""RedisStore throughput, next to FileStore in the same run.

1. Coalesced updates: 8 processes each run one tracked task that increments as
   fast as it can for ``--duration`` seconds (default ``min_interval``, then
   ``min_interval=0`` so that every increment is written); reports increments/s
   and store writes/s summed over the 8 tasks, for each store.
2. Status reads: requests/s of the Bottle status route (``TrackedPlugin``, in
   process through WebTest) for a running and a finished record, and bare
   ``store.load()`` calls/s, for each store.

    .venv/bin/python bench/bench_redis.py [--duration 3] [--tasks 8]

Starts its own redis-server (no persistence) on a free port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tracked


def main() -> int:
    args = parse_args()
    if args.worker:
        return worker(args)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tracked-bench-redis-") as directory:
        server, url = start_redis(binary, Path(directory))
        if args.kept_reads:
            try:
                bench_kept_reads(url, str(Path(directory) / "store"), args)
            finally:
                server.terminate()
                server.wait(timeout=10)
            return 0
        try:
            stores = {"redis": url, "file": str(Path(directory) / "store")}
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{args.tasks} tasks x {args.duration}s, {os.cpu_count()} CPUs, load {load}")
            print("\n== coalesced updates (sums over all tasks) ==")
            print(f"{'store':6} {'min_interval':>12} {'increments/s':>14} {'writes/s':>10}")
            for interval in (0.1, 0.0):
                for kind, spec in stores.items():
                    incs, writes = bench_updates(spec, interval, args)
                    print(f"{kind:6} {interval:>12} {incs:>14,.0f} {writes:>10,.0f}")
            print("\n== status reads (one thread, in process) ==")
            print(f"{'store':6} {'what':28} {'reads/s':>10}")
            for kind, spec in stores.items():
                for label, rate in bench_reads(spec, args.duration):
                    print(f"{kind:6} {label:28} {rate:>10,.0f}")
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent tracked tasks")
    parser.add_argument("--worker", nargs=4, metavar=("STORE", "NAME", "INTERVAL", "START_AT"))
    parser.add_argument(
        "--kept-reads", action="store_true",
        help="only the status route with 10 and 1,000 messages kept, Redis and file, "
        "interleaved rounds (see --rounds)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --kept-reads")
    return parser.parse_args()


def start_redis(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ----------------------------------------------------------------------------- updates


def bench_updates(spec: str, interval: float, args: argparse.Namespace) -> tuple[float, float]:
    """Run ``args.tasks`` worker processes at once; (increments/s, writes/s) summed."""
    start_at = time.time() + 2.0  # time for every worker to import and connect
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--duration",
                str(args.duration),
                "--worker",
                spec,
                f"bench-{interval}-{i}",
                str(interval),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.tasks)
    ]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    elapsed = max(r["elapsed"] for r in results)
    return sum(r["increments"] for r in results) / elapsed, sum(
        r["writes"] for r in results
    ) / elapsed


def worker(args: argparse.Namespace) -> int:
    """One tracked task: increment as fast as possible from START_AT for --duration s."""
    spec, name, interval, start_at = args.worker
    store = tracked.open_store(spec)
    writes = count_writes(store)
    time.sleep(max(0.0, float(start_at) - time.time()))
    increments = 0
    began = time.monotonic()
    end = began + args.duration
    with tracked.start(name, total=None, store=store, min_interval=float(interval)) as progress:
        while True:
            for _ in range(100):
                progress.increment()
            increments += 100
            if time.monotonic() >= end:
                break
    elapsed = time.monotonic() - began
    print(json.dumps({"increments": increments, "writes": writes[0], "elapsed": elapsed}))
    store.close()
    return 0


def count_writes(store: tracked.Store) -> list[int]:
    """Count the store's successful writes of later snapshots (the coalesced writes),
    whether made by ``save`` or in a ``save_many`` batch; a ``save`` that a backend
    sends through its own ``save_many`` (or the other way round) counts once."""
    counter = [0]
    inside = threading.local()
    save, save_many = store.save, store.save_many

    def counted(state: tracked.State, owner: Any) -> None:
        outer = not getattr(inside, "busy", False)
        inside.busy = True
        try:
            save(state, owner)
        finally:
            inside.busy = not outer
        counter[0] += outer

    def counted_many(writes: Any) -> list[Exception | None]:
        outer = not getattr(inside, "busy", False)
        inside.busy = True
        try:
            results = save_many(writes)
        finally:
            inside.busy = not outer
        counter[0] += outer * sum(result is None for result in results)
        return results

    store.save = counted  # type: ignore[method-assign]
    store.save_many = counted_many  # type: ignore[method-assign]
    return counter


# ----------------------------------------------------------------------------- reads


def bench_reads(spec: str, duration: float) -> list[tuple[str, float]]:
    """Status route requests/s and ``store.load()`` calls/s for a running and a
    finished record of typical size (100 items, 20 messages)."""
    import bottle
    import webtest

    from tracked.bottle import TrackedPlugin

    store = tracked.open_store(spec)
    live = tracked.start("bench-running", total=100, store=store, min_interval=0)
    fill(live)
    with tracked.start("bench-finished", total=100, store=store, min_interval=0) as done:
        fill(done)
    app = bottle.Bottle()
    app.install(TrackedPlugin(store))
    client = webtest.TestApp(app)
    results = []
    for name in ("bench-running", "bench-finished"):
        state = store.load(name)
        assert state is not None and state.count == 100, state
        route = f"/_progress_status/{name}"
        results.append((f"status route, {name[6:]}", rate(lambda r=route: client.get(r), duration)))
        results.append((f"store.load(), {name[6:]}", rate(lambda n=name: store.load(n), duration)))
    live.finish()
    store.close()
    return results


def bench_kept_reads(redis_url: str, directory: str, args: argparse.Namespace) -> None:
    """Status route reads/s of a running record with 10 and with 1,000 messages kept,
    on Redis and on files; each round times the four in rotated order, the ratios are
    taken within the round and their medians reported."""
    import statistics

    import bottle
    import webtest

    from tracked.bottle import TrackedPlugin

    live = []
    routes: dict[str, Callable[[], object]] = {}
    for kind, spec in (("redis", redis_url), ("file", directory)):
        store = tracked.open_store(spec)
        app = bottle.Bottle()
        app.install(TrackedPlugin(store))
        client = webtest.TestApp(app)
        for kept in (10, 1000):
            progress = tracked.start(f"kept-{kept}", total=kept, store=store, max_messages=kept)
            for i in range(kept):
                progress.increment(1, f"step {i} done, with some text as a real job writes")
            progress.flush()
            live.append(progress)
            state = store.load(f"kept-{kept}")
            assert state is not None and len(state.messages) == kept, state
            routes[f"{kind} {kept}"] = lambda c=client, k=kept: c.get(f"/_progress_status/kept-{k}")
    names = list(routes)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        rounds.append({name: rate(routes[name], args.duration) for name in order})
    print(f"status route reads/s, running record, in process (WebTest), {args.rounds} rounds")
    for name in names:
        values = [round_[name] for round_ in rounds]
        print(f"  {name:12} median {statistics.median(values):>9,.0f}"
              f"  ({min(values):,.0f} - {max(values):,.0f})")
    for label, top, bottom, goal in (
        ("redis 1000 / redis 10", "redis 1000", "redis 10", ">= 0.8"),
        ("redis 10 / file 10", "redis 10", "file 10", ">= 0.5"),
        ("redis 1000 / file 1000", "redis 1000", "file 1000", ">= 0.5"),
    ):
        ratios = [round_[top] / round_[bottom] for round_ in rounds]
        print(f"  {label:24} median {statistics.median(ratios):.2f}"
              f"  ({min(ratios):.2f} - {max(ratios):.2f})  goal {goal}")
    for progress in live:
        progress.finish()


def fill(progress: tracked.Progress) -> None:
    for i in range(100):
        progress.increment(1, *([f"step {i} done"] if i % 5 == 0 else []))


def rate(call: Callable[[], object], duration: float) -> float:
    """Calls per second of ``call`` over about ``duration`` seconds."""
    for _ in range(50):
        call()
    calls = 0
    began = time.perf_counter()
    end = began + duration
    while True:
        for _ in range(20):
            call()
        calls += 20
        if time.perf_counter() >= end:
            return calls / (time.perf_counter() - began)


if __name__ == "__main__":
    sys.exit(main())
