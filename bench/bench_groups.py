"""Groups: a read costs the same for any number of children, and a child costs little more.

Run: ``python bench/bench_groups.py [--redis URL] [--cluster URL] [--rounds 9]``.

1. Read: ``store.load(group)`` of a group with 10,000 children against one with 10
   (both closed and running, so the sweep window is not reached), interleaved, on a
   FileStore and on each Redis given. Goal: <= 1.2x.
2. A child's start + finish (``with tracked.start(NAME, group=g): pass``) against the
   same child outside a group, interleaved. Goal: <= 1.3x.
3. With ``--cluster``: 10,000 children started and finished by 8 threads on the
   Redis Cluster: children ended per second, and the writes each master ran
   (``INFO commandstats``: ``evalsha`` calls).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from typing import Any

from _common import interleaved, load_tracked, median, seconds

tracked = load_tracked()


def fill(store: Any, name: str, children: int, *, swept: bool = True) -> Any:
    """A running group with ``children`` running children (its block left open), their
    records never written; ``swept``: its sweep turn just taken, so no read sweeps it
    within the store's window (a sweep counts record-less children abandoned)."""
    group = tracked.group(name, store=store)
    run = group.token.split(".")[1]
    if swept:
        store.sweep_turn(group.key, run, 0.0)
    for i in range(children):
        store.move_child(group.key, run, f"{name}-child-{i}", "running", 0, None)
    return group


def reads(store: Any, label: str, rounds: int, n: int = 2000) -> None:
    doomed = fill(store, "doomed", 10_000, swept=False)
    sweep = seconds(lambda: store.load("doomed"))  # the first read sweeps: 10,000 running
    print(f"{label} one sweep of 10,000 running children, every one moved to abandoned"
          f" (no record): {sweep * 1e3:.0f} ms"
          f" (once per {store.sweep_window:.0f} s window, by one reader)")
    doomed.close()
    store.group_sweep_window = 3600.0  # steady reads: no sweep falls inside the rounds
    small, big = fill(store, "small", 10), fill(store, "big", 10_000)

    def read(name: str) -> Any:
        def run() -> None:
            for _ in range(n):
                store.load(name)
        return run

    results = interleaved({"10": read("small"), "10000": read("big")}, rounds)
    us = {k: median([r[k] for r in results]) / n * 1e6 for k in ("10", "10000")}
    ratios = [r["10000"] / r["10"] for r in results]
    print(f"{label} read: 10 children {us['10']:.1f} us, 10,000 children {us['10000']:.1f} us"
          f" | ratio median {median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f},"
          f" {rounds} rounds) | goal <= 1.2")
    small.close()
    big.close()


def child_cost(store: Any, label: str, rounds: int, n: int = 300) -> None:
    group = tracked.group(f"cost-{label}", store=store)
    serial = itertools.count()

    def inside() -> None:
        for _ in range(n):
            with tracked.start(f"in-{next(serial)}", store=store, group=group):
                pass

    def outside() -> None:
        for _ in range(n):
            with tracked.start(f"out-{next(serial)}", store=store):
                pass

    results = interleaved({"outside": outside, "inside": inside}, rounds)
    us = {k: median([r[k] for r in results]) / n * 1e6 for k in ("outside", "inside")}
    ratios = [r["inside"] / r["outside"] for r in results]
    print(f"{label} child start+finish: outside {us['outside']:.0f} us, in a group"
          f" {us['inside']:.0f} us | ratio median {median(ratios):.2f}"
          f" (range {min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds) | goal <= 1.3")
    group.close()


def cluster_throughput(url: str, children: int = 10_000, threads: int = 8) -> None:
    import redis

    store = tracked.RedisStore(url)
    nodes = store.client.get_primaries()  # type: ignore[attr-defined]
    before = {n.name: _evalsha(redis.Redis(host=n.host, port=n.port)) for n in nodes}
    group = tracked.group("cluster-batch", store=store)
    serial = itertools.count()

    def work() -> None:
        while (i := next(serial)) < children:
            with tracked.start(f"c-{i}", store=store, group=group):
                pass

    start = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    took = time.perf_counter() - start
    group.close()
    after = {n.name: _evalsha(redis.Redis(host=n.host, port=n.port)) for n in nodes}
    state = store.load("cluster-batch")
    print(f"cluster: {children} children by {threads} threads in {took:.1f} s:"
          f" {children / took:.0f} children ended/s; group {state.state if state else None}"
          f" {state.children if state else None}")
    for name in sorted(after):
        print(f"  master {name}: {after[name] - before[name]} script calls")


def _evalsha(client: Any) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="a redis:// URL (flushed!)")
    parser.add_argument("--cluster", default=None, help="a redis+cluster:// URL (flushed!)")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        reads(store, "FileStore", args.rounds)
        child_cost(store, "FileStore", args.rounds)
    for url, label in ((args.redis, "Redis"), (args.cluster, "Cluster")):
        if url is None:
            continue
        store = tracked.RedisStore(url, prefix=f"bench-{time.time_ns()}:")
        reads(store, label, args.rounds)
        child_cost(store, label, args.rounds)
    if args.cluster:
        cluster_throughput(args.cluster)


if __name__ == "__main__":
    main()
