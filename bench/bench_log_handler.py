"""Cost of ``tracked.LogHandler`` per log record, outside and inside a live progress.

Run: ``python bench/bench_log_handler.py [--records 200000] [--rounds 7]``

Times ``handler.handle(record)`` for one prepared record, in rotating order
each round: a ``logging.NullHandler`` (a bare method call: the floor), a
``LogHandler`` outside any progress (the path every record takes when nothing is
tracked), and a ``LogHandler`` inside a live progress (memory store: the record
is formatted and appended as a message). A full ``logger.info("row %d", i)``
through a logger with only a ``NullHandler`` is timed too, for scale: it is what
every log call costs before any handler runs. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import tracked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.records
    store = tracked.MemoryStore()
    logger = logging.getLogger("bench.log_handler")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "row %d", (1,), None)
    null, handler = logging.NullHandler(), tracked.LogHandler()

    def handle(target: logging.Handler) -> None:
        call = target.handle
        for _ in range(n):
            call(record)

    def inside() -> None:
        with tracked.start("bench-log", store=store):
            handle(handler)

    def log_call() -> None:
        info = logger.info
        for i in range(n):
            info("row %d", i)

    runs: dict[str, Callable[[], None]] = {
        "NullHandler.handle": lambda: handle(null),
        "LogHandler.handle, no progress live": lambda: handle(handler),
        "LogHandler.handle, inside a progress": inside,
        "logger.info(...) with a NullHandler": log_call,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) / n)
    print(f"{n:,} records per run, {args.rounds} rounds, medians")
    for name, samples in times.items():
        print(f"  {name:38}: {statistics.median(samples) * 1e9:7.0f} ns per record")


if __name__ == "__main__":
    main()
