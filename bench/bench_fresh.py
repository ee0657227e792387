"""Fresh under load: how old is what another process reads while K CPU-bound
threads update their own handles?

This process starts a reader process first, then K threads, each updating its own
handle (``p += 1`` in a tight loop, ``min_interval=0.1``) for ``--seconds``. The
reader reads the K records every 50 ms and takes, for each running one, the age of
what it read (its time now minus the snapshot's ``current_time``); it reports the
median and p90 age over the last two thirds of the load, and the store writes per
job per second this process made. Goal (issue 19): median age <= 2 x min_interval
at K = 10 and K = 100, on a FileStore and a RedisStore (its own redis-server).

    .venv/bin/python bench/bench_fresh.py [--ks 1,10,100] [--seconds 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import tracked

MIN_INTERVAL = 0.1


def main() -> int:
    args = parse_args()
    if args.reader:
        return reader(args.reader, args.k, args.seconds)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-fresh-") as tmp:
        port = free_port()
        redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            stores = {"file": str(Path(tmp) / "store"), "redis": f"redis://127.0.0.1:{port}/0"}
            print(f"# K CPU-bound threads, one handle each, min_interval={MIN_INTERVAL}; "
                  f"{args.seconds} s of load; goal median age <= {2 * MIN_INTERVAL * 1000:.0f} ms")
            for r in range(args.rounds):
                for kind, url in (stores.items() if r % 2 == 0 else reversed(stores.items())):
                    for k in ks:
                        median, p90, writes = measure(url, k, args.seconds)
                        verdict = "meets" if median <= 2 * MIN_INTERVAL else "misses"
                        print(f"{kind:5} K={k:3}: median age {median * 1000:7.1f} ms | "
                              f"p90 {p90 * 1000:7.1f} ms | {writes:5.2f} writes/job/s | "
                              f"{verdict} the goal", flush=True)
        finally:
            redis.terminate()
            redis.wait()
    return 0


class Counting:
    """Counts the store writes of this process (``save`` and ``save_many``)."""

    writes = 0


def measure(url: str, k: int, seconds: float) -> tuple[float, float, float]:
    """(median age, p90 age, writes per job per second) for K busy threads."""
    store = counting_store(url)
    for i in range(k):
        store.delete(f"fresh-{i}")
    read = subprocess.Popen(
        [sys.executable, __file__, "--reader", url, "--k", str(k), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    assert read.stdout is not None
    assert read.stdout.readline().strip() == "ready"
    stop = threading.Event()
    handles = [
        tracked.start(f"fresh-{i}", total=None, store=store, min_interval=MIN_INTERVAL)
        for i in range(k)
    ]

    def busy(progress: tracked.Progress) -> None:
        while not stop.is_set():
            for _ in range(1000):
                progress += 1

    threads = [threading.Thread(target=busy, args=(p,)) for p in handles]
    before = Counting.writes
    started = time.monotonic()
    for thread in threads:
        thread.start()
    ages = [float(x) for x in read.stdout.read().split()]
    elapsed = time.monotonic() - started
    writes = (Counting.writes - before) / elapsed / k
    stop.set()
    for thread in threads:
        thread.join()
    for progress in handles:
        progress.finish()
    read.wait(30)
    store.close()
    ages.sort()
    if not ages:
        return float("inf"), float("inf"), writes
    return statistics.median(ages), ages[int(0.9 * (len(ages) - 1))], writes


def counting_store(url: str) -> tracked.Store:
    store = tracked.open_store(url)
    save, save_many = store.save, store.save_many

    def counted_save(state: tracked.State, owner: object) -> None:
        save(state, owner)  # type: ignore[arg-type]
        Counting.writes += 1

    def counted_many(writes: list[tuple[tracked.State, object]]) -> list[Exception | None]:
        results = save_many(writes)  # type: ignore[arg-type]
        Counting.writes += sum(1 for r in results if r is None)
        return results

    store.save = counted_save  # type: ignore[method-assign]
    if type(store).save_many is not tracked.Store.save_many:  # else it calls save
        store.save_many = counted_many  # type: ignore[method-assign,assignment]
    return store


def reader(url: str, k: int, seconds: float) -> int:
    """Read the K records every 50 ms for ``seconds``; print the ages seen in the
    last two thirds."""
    store = tracked.open_store(url)
    print("ready", flush=True)
    start = time.time()
    ages = []
    while time.time() - start < seconds:
        time.sleep(0.05)
        for i in range(k):
            state = store.load(f"fresh-{i}")
            now = time.time()
            if state is not None and state.in_progress and now - start > seconds / 3:
                ages.append(now - state.current_time)
    print(" ".join(f"{a:.4f}" for a in ages), flush=True)
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ks", default="1,10,100")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--reader", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
