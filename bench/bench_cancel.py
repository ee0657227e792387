"""Cancel latency: from ``tracked.cancel()`` returning to the task seeing ``Cancelled``.

A task in another process yields every 10 ms (a ``@tracked`` generator, default
``min_interval=0.1``); this process waits a random 0-100 ms into each run, calls
``tracked.cancel()`` and notes the time it returned; the task notes the time
``Cancelled`` reached it at its next yield. Both clocks are this host's
``time.time()``. Reports p50/p99/max over ``--cancels`` runs, for a FileStore and
a RedisStore (its own redis-server on a free port, no persistence). Goal:
p99 <= min_interval + 50 ms.

``--joined``: the same to a *joined* worker. This process starts each run and
shares it; the worker process joins it (``tracked.join(token)``) and, every 10 ms,
adds 1 and calls ``check()``; the latency is from ``tracked.cancel()`` returning to
``check()`` raising in the worker.

    .venv/bin/python bench/bench_cancel.py [--cancels 200] [--min-interval 0.1] [--joined]
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tracked


def main() -> int:
    args = parse_args()
    if args.worker and args.joined:
        return joined_worker(args.worker, args.cancels)
    if args.worker:
        return worker(args.worker, args.cancels, args.min_interval)
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        port = free_port()
        redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            stores = {"file": str(Path(tmp) / "store"), "redis": f"redis://127.0.0.1:{port}/0"}
            goal = args.min_interval + 0.05
            print(f"# {args.cancels} cancels per store; task yields every 10 ms; "
                  f"min_interval={args.min_interval}; goal p99 <= {goal * 1000:.0f} ms")
            if args.joined:
                print("# to a joined worker (tracked.join in another process)")
            for kind, url in stores.items():
                measured = measure_joined if args.joined else measure
                latencies = measured(url, args.cancels, args.min_interval)
                report(kind, latencies, goal)
        finally:
            redis.terminate()
            redis.wait()
    return 0


def measure(store: str, cancels: int, min_interval: float) -> list[float]:
    """Seconds from cancel() returning to the task seeing it, one per run."""
    task = subprocess.Popen(
        [sys.executable, __file__, "--worker", store, "--cancels", str(cancels),
         "--min-interval", str(min_interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert task.stdin is not None and task.stdout is not None
    opened = tracked.open_store(store)
    latencies = []
    try:
        for _ in range(cancels):
            assert task.stdout.readline().strip() == "running"
            time.sleep(random.uniform(0, 0.1))  # any phase of the flusher's poll
            assert tracked.cancel("bench-cancel", store=opened)
            returned = time.time()
            seen = float(task.stdout.readline().split()[1])
            latencies.append(seen - returned)
    finally:
        task.stdin.close()
        task.wait(30)
    return latencies


def measure_joined(store: str, cancels: int, min_interval: float) -> list[float]:
    """Seconds from cancel() returning to a joined worker's check() raising, per run."""
    task = subprocess.Popen(
        [sys.executable, __file__, "--worker", store, "--cancels", str(cancels), "--joined"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert task.stdin is not None and task.stdout is not None
    opened = tracked.open_store(store)
    latencies = []
    try:
        for _ in range(cancels):
            with tracked.start("bench-joined", total=None, store=opened,
                               min_interval=min_interval) as run:
                task.stdin.write(run.share() + "\n")
                task.stdin.flush()
                assert task.stdout.readline().strip() == "running"
                time.sleep(random.uniform(0, 0.1))  # any phase of the worker's poll
                assert tracked.cancel("bench-joined", store=opened)
                returned = time.time()
                seen = float(task.stdout.readline().split()[1])
                latencies.append(seen - returned)
    finally:
        task.stdin.close()
        task.wait(30)
    return latencies


def joined_worker(store: str, runs: int) -> int:
    """The joined task: for each token read, join and add 1 every 10 ms until
    ``check()`` raises."""
    opened = tracked.open_store(store)
    for _ in range(runs):
        token = sys.stdin.readline().strip()
        try:
            with tracked.join(token, store=opened) as part:
                print("running", flush=True)
                while True:
                    time.sleep(0.01)
                    part += 1
                    part.check()
        except tracked.Cancelled:
            print("seen", repr(time.time()), flush=True)
    return 0


def report(kind: str, latencies: list[float], goal: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    verdict = "meets" if p99 <= goal * 1000 else "misses"
    print(f"{kind:5}: p50 {p50:6.1f} ms | p99 {p99:6.1f} ms | max {ms[-1]:6.1f} ms | "
          f"min {ms[0]:5.1f} ms | n={len(ms)} | {verdict} the goal")


def worker(store: str, runs: int, min_interval: float) -> int:
    """The task: one run after another, each yielding every 10 ms until cancelled."""
    opened = tracked.open_store(store)

    @tracked.tracked("bench-cancel", total=None, store=opened, min_interval=min_interval)
    def job() -> object:
        print("running", flush=True)
        try:
            while True:
                time.sleep(0.01)
                yield
        except tracked.Cancelled:
            print("seen", repr(time.time()), flush=True)
            raise

    for _ in range(runs):
        try:
            for _ in job():
                pass
        except tracked.Cancelled:
            pass
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
    parser.add_argument("--cancels", type=int, default=200)
    parser.add_argument("--min-interval", type=float, default=0.1)
    parser.add_argument("--joined", action="store_true", help="cancel a joined worker")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
