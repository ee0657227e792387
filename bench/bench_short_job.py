"""Start + finish of an empty job on a FileStore against one atomic write of a small
JSON file (a temporary file, then ``os.replace``) in the same directory.

Run: ``python bench/bench_short_job.py [--jobs 500] [--rounds 9]``. Each round runs
every variant once, the order rotated: ``with tracked.start(NAME): pass`` with the
same name each time (a ``@tracked`` route, which starts its ended record again),
the same with a new name each time (a ``progress_id`` per request), and the atomic
write. Prints the median us per job and the median of the per-round ratios to the
atomic write (goal: <= 1.5).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile

from _common import interleaved, load_tracked, median

tracked = load_tracked()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
