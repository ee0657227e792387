"""Start + finish of an empty job on a FileStore against one atomic write of a small
JSON file (a temporary file, then ``os.replace``) in the same directory.

Run: ``python bench/bench_short_job.py [--jobs 500] [--rounds 9]``. Each round runs
every variant once, the order rotated: ``with tracked.start(NAME): pass`` with the
same name each time (a ``@tracked`` route, which starts its ended record again),
the same with a new name each time (a ``progress_id`` per request), and the atomic
write. Prints the median us per job and the median of the per-round ratios to the
atomic write (goal: <= 1.5).

``--redis`` instead counts what a short job costs a RedisStore: the round trips the
client sends (redis-py's ``send_packed_command`` calls, one per command or pipeline)
and the commands the server ran (``INFO commandstats``), per start and per finish
(goal: one round trip each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import threading

from _common import interleaved, load_tracked, median

tracked = load_tracked()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--redis", action="store_true", help="count Redis round trips instead")
    args = parser.parse_args()
    if args.redis:
        redis_trips(args.jobs)
        return
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(directory)
        fresh = itertools.count()
        record = os.path.join(directory, "plain.json")
        small = {"name": "plain", "count": 0, "state": "running", "messages": []}
        serial = itertools.count()

        def same_name() -> None:
            for _ in range(args.jobs):
                with tracked.start("short", store=store):
                    pass

        def new_names() -> None:
            for _ in range(args.jobs):
                with tracked.start(f"short-{next(fresh)}", store=store):
                    pass

        def atomic_write() -> None:
            for i in range(args.jobs):
                small["count"] = i
                data = json.dumps(small, separators=(",", ":")).encode()
                tmp = os.path.join(directory, f".plain-{next(serial)}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                os.replace(tmp, record)

        same_name()  # the first start creates the record; the rounds re-start it
        rounds = interleaved(
            {"same name": same_name, "new names": new_names, "atomic write": atomic_write},
            args.rounds,
        )
    each = {k: median([r[k] for r in rounds]) / args.jobs * 1e6 for k in rounds[0]}
    for variant in ("same name", "new names"):
        ratios = [r[variant] / r["atomic write"] for r in rounds]
        print(
            f"start + finish, {variant}: {each[variant]:.0f} us | atomic write"
            f" {each['atomic write']:.0f} us | ratio median {median(ratios):.2f}"
            f" (range {min(ratios):.2f}-{max(ratios):.2f}, {len(rounds)} rounds) | goal <= 1.5"
        )


def redis_trips(jobs: int) -> None:
    """Round trips and server commands per start and per finish on a RedisStore."""
    import shutil
    from pathlib import Path

    import redis
    from bench_redis import start_redis

    sent = [0]
    send = redis.connection.Connection.send_packed_command
    caller = threading.get_ident()

    def counting(self: object, *args: object, **kwargs: object) -> None:
        sent[0] += threading.get_ident() == caller  # the flusher's own trips left out
        send(self, *args, **kwargs)  # type: ignore[arg-type]

    redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as directory:
        server, url = start_redis(shutil.which("redis-server") or "redis-server", Path(directory))
        try:
            store = tracked.open_store(url)
            admin = redis.Redis.from_url(url)
            with tracked.start("short", store=store):
                pass  # the script loads and the pool's connection opens here
            admin.config_resetstat()
            trips = {"start": 0, "finish": 0}
            for _ in range(jobs):
                before = sent[0]
                progress = tracked.start("short", store=store)
                trips["start"] += sent[0] - before
                before = sent[0]
                progress.finish()
                trips["finish"] += sent[0] - before
            stats = admin.info("commandstats")
            admin.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    commands = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    commands.pop("info", None)
    print(f"RedisStore, {jobs} short jobs: round trips per start {trips['start'] / jobs:.2f}, "
          f"per finish {trips['finish'] / jobs:.2f} | server commands per job "
          + ", ".join(f"{k} {v / jobs:.2f}" for k, v in sorted(commands.items()))
          + " | goal: one round trip each")


if __name__ == "__main__":
    main()
