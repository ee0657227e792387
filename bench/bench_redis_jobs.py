"""Client CPU per Redis write with many jobs in one process (issue 19, goal 7).

    .venv/bin/python bench/bench_redis_jobs.py [--jobs 1000] [--seconds 5] [--period 0.05]
    .venv/bin/python bench/bench_redis_jobs.py --store file   # the same on a FileStore
    .venv/bin/python bench/bench_redis_jobs.py --store cluster   # on a 3-master cluster

Starts its own redis-server. ``--jobs`` threads each run one tracked job that
updates its handle every ``--period`` seconds. Over a window of ``--seconds``,
after a warm-up, it reports the writes per job per second (``EVALSHA`` calls
counted by the server), the CPU the flusher thread spent per write (its
``/proc`` utime + stime), the whole process's CPU per write, the server's own
time per write (``INFO commandstats``), and the cancel-poll ``GET``s per write.
With ``--store file`` the jobs write to a FileStore in a temporary directory and
the writes are counted by wrapping that store's ``save_many`` (the flusher's only
write call while the jobs run); the server rows are then left out.
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


def file_jobs(args: argparse.Namespace, profiler: object) -> int:
    """The same jobs on a FileStore: writes counted on the store's ``save_many``."""
    with tempfile.TemporaryDirectory(prefix="tracked-bench-jobs-") as directory:
        store = tracked.FileStore(directory)
        written = [0]
        batches: list[int] = []
        save_many = store.save_many

        def counting(items: list) -> list:  # type: ignore[type-arg]
            results = save_many(items)
            written[0] += len(items)
            batches.append(len(items))
            return results

        store.save_many = counting  # type: ignore[method-assign]
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
        time.sleep(2.0)
        flusher = next(t for t in threading.enumerate() if t.name == "tracked-flusher")
        assert flusher.native_id is not None
        w0, b0 = written[0], len(batches)
        cpu0, proc0 = thread_cpu(flusher.native_id), time.process_time()
        time.sleep(args.seconds)
        cpu1, proc1 = thread_cpu(flusher.native_id), time.process_time()
        writes = max(1, written[0] - w0)
        sizes = sorted(batches[b0:]) or [0]
        stop.set()
        for thread in threads:
            thread.join()
        bare = bare_cpu(args) * args.seconds
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"FileStore: {args.jobs} jobs, an update every {args.period}s, "
              f"{args.seconds}s window, load {load}")
        print(f"  writes per job per second   {writes / args.jobs / args.seconds:8.2f}")
        print(f"  flusher CPU per write (us)  {(cpu1 - cpu0) / writes * 1e6:8.1f}")
        print(f"  flusher CPU share           {(cpu1 - cpu0) / args.seconds:8.2f}")
        print(f"  process CPU per write (us)  {(proc1 - proc0) / writes * 1e6:8.1f}")
        print(f"  process CPU per write, less the same loop untracked (us) "
              f"{(proc1 - proc0 - bare) / writes * 1e6:8.1f}")
        print(f"  batches {len(sizes)}, size median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
        if profiler is not None:
            import pstats

            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--period", type=float, default=0.05)
    parser.add_argument("--profile", action="store_true", help="cProfile the flusher's ticks")
    parser.add_argument("--store", choices=("redis", "cluster", "file"), default="redis")
    args = parser.parse_args()
    if args.store == "file":
        return file_jobs(args, profile_flusher() if args.profile else None)
    profiler = profile_flusher() if args.profile else None
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    import redis

    with tempfile.TemporaryDirectory(prefix="tracked-bench-jobs-") as directory:
        if args.store == "cluster":
            from bench_redis_flush import start_cluster

            cli = shutil.which("redis-cli") or "redis-cli"
            servers, url = start_cluster(binary, cli, Path(directory))
            seed = redis.Redis.from_url(url.replace("redis+cluster://", "redis://"))
            masters = [redis.Redis(host=name.split(":")[0], port=int(name.split(":")[1]))
                       for name, node in seed.cluster("nodes").items()
                       if "master" in node["flags"]]
            seed.close()
        else:
            server, url = start_redis(binary, Path(directory))
            servers, masters = [server], [redis.Redis.from_url(url)]
        try:
            store = tracked.open_store(url)
            batches: list[int] = []
            save_many = store.save_many

            def counting(items: list) -> list:  # type: ignore[type-arg]
                batches.append(len(items))
                return save_many(items)

            store.save_many = counting  # type: ignore[method-assign]
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
            for master in masters:
                master.config_resetstat()
            b0 = len(batches)
            cpu0, proc0 = thread_cpu(flusher.native_id), time.process_time()
            time.sleep(args.seconds)
            cpu1, proc1 = thread_cpu(flusher.native_id), time.process_time()
            every = [master.info("commandstats") for master in masters]
            stats = merge(every)
            sizes = sorted(batches[b0:]) or [0]
            stop.set()
            for thread in threads:
                thread.join()
            evalsha = stats.get("cmdstat_evalsha", {})
            gets = stats.get("cmdstat_get", {}).get("calls", 0)
            mgets = stats.get("cmdstat_mget", {}).get("calls", 0)
            writes = max(1, evalsha.get("calls", 0))
            bare = bare_cpu(args) * args.seconds  # the same threads without tracked
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{args.store}: {args.jobs} jobs, an update every {args.period}s, "
                  f"{args.seconds}s window, load {load}")
            print(f"  writes per job per second   {writes / args.jobs / args.seconds:8.2f}")
            print(f"  flusher CPU per write (us)  {(cpu1 - cpu0) / writes * 1e6:8.1f}")
            print(f"  process CPU per write (us)  {(proc1 - proc0) / writes * 1e6:8.1f}")
            print(f"  process CPU per write, less the same loop untracked (us) "
                  f"{(proc1 - proc0 - bare) / writes * 1e6:8.1f}")
            print(f"  server time per write (us)  {evalsha.get('usec_per_call', 0):8.1f}")
            print(f"  cancel-poll GETs per write  {gets / writes:8.2f}"
                  f"  (MGETs {mgets / writes:.3f})")
            if len(masters) > 1:
                per = [e.get("cmdstat_evalsha", {}).get("calls", 0) / args.seconds for e in every]
                print("  writes/s per master         " + " / ".join(f"{w:,.0f}" for w in per))
            print(f"  flusher batches {len(sizes)}, size median {sizes[len(sizes) // 2]}, "
                  f"max {sizes[-1]}")
            for master in masters:
                master.close()
            if profiler is not None:
                import pstats

                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)
    return 0


def merge(every: list[dict]) -> dict:  # type: ignore[type-arg]
    """Sum the masters' ``INFO commandstats`` calls; time per call weighted by calls."""
    merged: dict = {}  # type: ignore[type-arg]
    for stats in every:
        for name, row in stats.items():
            into = merged.setdefault(name, {"calls": 0, "usec": 0})
            into["calls"] += row.get("calls", 0)
            into["usec"] += row.get("usec", 0)
    for row in merged.values():
        row["usec_per_call"] = row["usec"] / max(1, row["calls"])
    return merged


if __name__ == "__main__":
    sys.exit(main())
