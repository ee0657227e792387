"""``tracked.rq.enqueue`` against RQ's own ``Queue.enqueue`` on a local redis-server.

Interleaved rounds of ``N`` calls each, medians per call, and the median of the
rounds' ratios (each round pairs the two, so a load spike hits both); then ``N``
reads of the record right after ``enqueue`` returns, counting 404s (None). Run:
``PYTHONPATH=. python bench/bench_enqueue.py`` (starts its own redis-server).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time

import redis
import rq

import tracked
import tracked.rq
from tests.conftest import free_port, wait_for_port
from tests.tracked_jobs import import_rows
from tracked.redis import RedisStore

N = 200
ROUNDS = 15


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            run(f"redis://127.0.0.1:{port}/0")
        finally:
            server.terminate()
            server.wait()


def run(url: str) -> None:
    connection = redis.Redis.from_url(url)
    store = RedisStore(url)
    tracked.configure(store=store)
    queue = rq.Queue("bench", connection=connection)
    ours, theirs = [], []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(N):
            queue.enqueue(import_rows, 3)
        theirs.append((time.perf_counter() - start) / N)
        start = time.perf_counter()
        for _ in range(N):
            tracked.rq.enqueue(queue, import_rows, 3)
        ours.append((time.perf_counter() - start) / N)
        queue.empty()
    missing = 0
    for _ in range(N):
        job = tracked.rq.enqueue(queue, import_rows, 3)
        missing += store.load(f"import\0{job.id}") is None
    queue.empty()
    rq_us, tracked_us = statistics.median(theirs) * 1e6, statistics.median(ours) * 1e6
    ratios = sorted(o / t for o, t in zip(ours, theirs, strict=True))
    print(f"rq Queue.enqueue      {rq_us:8.1f} us/call (median of {ROUNDS} rounds of {N})")
    print(f"tracked.rq.enqueue    {tracked_us:8.1f} us/call")
    print(
        f"ratio                 {statistics.median(ratios):8.2f}x (median of the rounds' ratios;"
        f" {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )
    print(f"reads right after enqueue answering 404: {missing} of {N}")


if __name__ == "__main__":
    main()
