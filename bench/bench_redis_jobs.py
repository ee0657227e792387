"""Client CPU per Redis write with many jobs in one process (issue 19, goal 7).

    .venv/bin/python bench/bench_redis_jobs.py [--jobs 1000] [--seconds 5] [--period 0.05]

Starts its own redis-server. ``--jobs`` threads each run one tracked job that
updates its handle every ``--period`` seconds. Over a window of ``--seconds``,
after a warm-up, it reports the writes per job per second (``EVALSHA`` calls
counted by the server), the CPU the flusher thread spent per write (its
``/proc`` utime + stime), the whole process's CPU per write, the server's own
time per write (``INFO commandstats``), and the cancel-poll ``GET``s per write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_redis import start_redis

import tracked

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int) -> float:
    """Seconds of CPU a thread of this process has used (user + system)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def profile_flusher() -> object:
    """Run every flusher tick under one cProfile profiler (its thread only)."""
    import cProfile

    from tracked import _flusher

    profiler = cProfile.Profile()
    tick = _flusher._Flusher.tick

    def profiled(self: object) -> None:
        profiler.runcall(tick, self)

    _flusher._Flusher.tick = profiled  # type: ignore[method-assign]
    return profiler


def bare_cpu(args: argparse.Namespace) -> float:
    """CPU seconds per second of ``--jobs`` threads running the same loop untracked."""
    stop = threading.Event()
    counts = [0] * args.jobs

    def loop(i: int) -> None:
        while not stop.is_set():
            counts[i] += 1
            time.sleep(args.period)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.jobs)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    began, cpu = time.monotonic(), time.process_time()
    time.sleep(min(args.seconds, 3.0))
    used = (time.process_time() - cpu) / (time.monotonic() - began)
    stop.set()
    for thread in threads:
        thread.join()
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--period", type=float, default=0.05)
    parser.add_argument("--profile", action="store_true", help="cProfile the flusher's ticks")
    args = parser.parse_args()
    profiler = profile_flusher() if args.profile else None
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    import redis

    with tempfile.TemporaryDirectory(prefix="tracked-bench-jobs-") as directory:
        server, url = start_redis(binary, Path(directory))
        try:
            store = tracked.open_store(url)
            admin = redis.Redis.from_url(url)
            stop = threading.Event()
            threading.stack_size(256 * 1024)

            def job(i: int) -> None:
                with tracked.start(f"job-{i}", store=store) as progress:
                    while not stop.is_set():
                        progress.count += 1
                        time.sleep(args.period)

            threads = [threading.Thread(target=job, args=(i,)) for i in range(args.jobs)]
            for thread in threads:
                thread.start()
            time.sleep(2.0)  # every job started and written once
            flusher = next(t for t in threading.enumerate() if t.name == "tracked-flusher")
            assert flusher.native_id is not None
            admin.config_resetstat()
            cpu0, proc0 = thread_cpu(flusher.native_id), time.process_time()
            time.sleep(args.seconds)
            cpu1, proc1 = thread_cpu(flusher.native_id), time.process_time()
            stats = admin.info("commandstats")
            stop.set()
            for thread in threads:
                thread.join()
            evalsha = stats.get("cmdstat_evalsha", {})
            gets = stats.get("cmdstat_get", {}).get("calls", 0)
            mgets = stats.get("cmdstat_mget", {}).get("calls", 0)
            writes = max(1, evalsha.get("calls", 0))
            bare = bare_cpu(args) * args.seconds  # the same threads without tracked
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{args.jobs} jobs, an update every {args.period}s, {args.seconds}s window, "
                  f"load {load}")
            print(f"  writes per job per second   {writes / args.jobs / args.seconds:8.2f}")
            print(f"  flusher CPU per write (us)  {(cpu1 - cpu0) / writes * 1e6:8.1f}")
            print(f"  process CPU per write (us)  {(proc1 - proc0) / writes * 1e6:8.1f}")
            print(f"  process CPU per write, less the same loop untracked (us) "
                  f"{(proc1 - proc0 - bare) / writes * 1e6:8.1f}")
            print(f"  server time per write (us)  {evalsha.get('usec_per_call', 0):8.1f}")
            print(f"  cancel-poll GETs per write  {gets / writes:8.2f}"
                  f"  (MGETs {mgets / writes:.3f})")
            admin.close()
            if profiler is not None:
                import pstats

                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
