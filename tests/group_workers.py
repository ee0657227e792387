"""Processes the group tests run: ``python tests/group_workers.py CMD ...``.

Each prints what the parent needs on stdout, one line per fact, and flushes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import tracked


def opened(url: str) -> tracked.Store:
    """The store at ``url``; a Redis one with the lease in ``TRACKED_TEST_LEASE`` if set."""
    lease = os.environ.get("TRACKED_TEST_LEASE")
    if lease and url.startswith("redis"):
        return tracked.RedisStore(url, lease=float(lease))
    return tracked.open_store(url)


def join(url: str, token: str, count: str) -> None:
    """Start ``count`` children of the group ``token``, one after another, each 3 items."""
    store = opened(url)
    for i in range(int(count)):
        with tracked.start(f"p{os.getpid()}-{i}", total=3, store=store, group=token) as p:
            for _ in range(3):
                p += 1
    print("done", flush=True)


def hang(url: str, token: str, ready: str) -> None:
    """Start one child of the group ``token`` and hang in it until killed."""
    store = opened(url)
    with tracked.start(f"hang-{os.getpid()}", total=10, store=store, group=token):
        Path(ready).write_text("ready")
        time.sleep(600)


def read(url: str, name: str, out: str) -> None:
    """Poll group ``name`` until it ends, writing each distinct ``children`` as a line."""
    store = opened(url)
    last = None
    with open(out, "w") as file:
        while True:
            state = store.load(name)
            if state is not None and state.children is not None:
                seen = (state.children, state.count, state.total, state.in_progress)
                if seen != last:
                    file.write(json.dumps([dict(state.children), state.count, state.total]) + "\n")
                    file.flush()
                    last = seen
                if not state.in_progress:
                    break
            time.sleep(0.002)
    print("ended", flush=True)


def full(url: str, count: str) -> None:
    """Fail ``count`` children of group ``full`` while no file may grow past 2 KiB (a
    full disk, without root: ``RLIMIT_FSIZE``), close it, then lift the limit."""
    store = opened(url)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with tracked.group("full", store=store) as group:
        rows = [tracked.start(f"row-{i:02}", store=store, group=group) for i in range(int(count))]
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
        for row in rows:
            row.fail("a bad row, whose line makes the group's record grow")
    print("closed" if tracked.load("full", store=store) else "gone", flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    group.close()  # the block's close could not be written: again, with room


if __name__ == "__main__":
    {"join": join, "hang": hang, "read": read, "full": full}[sys.argv[1]](*sys.argv[2:])
