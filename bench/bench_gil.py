"""How long a thread waits for the GIL after a system call while K threads are busy.

    .venv/bin/python bench/bench_gil.py [--ks 0,10,100]

K threads spin in pure Python; another thread calls ``os.stat`` in a loop (up to
300 calls or 2 s) and then runs the system calls of one in-place FileStore write
(open, flock, fstat, pread, pwrite, close) in a loop (up to 50 or 3 s). Prints the
share of ``stat`` calls that lost the GIL (slower than 1 ms), how long those waited,
the mean per call, and the median time of the write sequence: what the flusher of
a busy process pays per write (issue 19, goals 1 and 7).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import tempfile
import threading
import time


def spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="0,10,100")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        record = os.path.join(directory, "record.json")
        fd = os.open(record, os.O_RDWR | os.O_CREAT, 0o666)
        for k in (int(k) for k in args.ks.split(",")):
            stop = threading.Event()
            threads = [threading.Thread(target=spin, args=(stop,)) for _ in range(k)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            stats: list[float] = []
            end = time.monotonic() + 2
            while time.monotonic() < end and len(stats) < 300:
                began = time.perf_counter()
                os.stat(directory)
                stats.append(time.perf_counter() - began)
            writes: list[float] = []
            end = time.monotonic() + 3
            while time.monotonic() < end and len(writes) < 50:
                began = time.perf_counter()
                opened = os.open(record, os.O_RDWR)
                fcntl.flock(opened, fcntl.LOCK_EX)
                os.fstat(opened)
                os.pread(opened, 1024, 0)
                os.pwrite(opened, b" " * 600, 0)
                os.close(opened)
                writes.append(time.perf_counter() - began)
            stop.set()
            for thread in threads:
                thread.join()
            slow = [s for s in stats if s > 0.001]
            print(f"K={k:3}: os.stat n={len(stats)}, lost the GIL {len(slow) / len(stats):4.0%}, "
                  f"those waited median {statistics.median(slow or [0]) * 1e3:6.1f} ms, "
                  f"mean per call {statistics.mean(stats) * 1e3:6.2f} ms | 6-call write "
                  f"median {statistics.median(writes) * 1e3:8.2f} ms (n={len(writes)})",
                  flush=True)
        os.close(fd)


if __name__ == "__main__":
    main()
