"""Processes that play separate machines sharing one Redis (see test_redis_store.py).

Each run sets its own ``TRACKED_HOST_ID``; usage: ``redis_workers.py MODE URL NAME ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import tracked
from tracked.redis import RedisStore


def hold(url: str, name: str, lease: str) -> None:
    """Claim ``name`` and keep it, doing nothing, until killed; the flusher renews the lease."""
    store = RedisStore(url, lease=float(lease))
    _held = tracked.start(name, total=None, store=store)  # a live local: never collected
    print("claimed", flush=True)
    while True:
        time.sleep(1)


def watch(url: str, name: str, lease: str) -> None:
    """Report the state ``name`` reads as, wait for "go", then time until it reads as
    abandoned and start it again."""
    store = RedisStore(url, lease=float(lease))
    first = store.load(name)
    print("sees", None if first is None else first.state, flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = store.load(name)
        if state is not None and state.state == "abandoned":
            print("abandoned", time.time(), flush=True)
            break
        time.sleep(0.01)
    with tracked.start(name, total=1, store=store) as progress:
        progress.increment()
    print("restarted", flush=True)


def race(url: str, prefix: str, rounds: str, parties: str) -> None:
    """Try to start ``prefix-<round>`` in step with the other racers; keep what is won
    until every racer is done, then print what happened as JSON."""
    store = RedisStore(url)
    client = store.client  # the barrier's keys go through the same (maybe cluster) client
    held: list[tracked.Progress] = []
    outcome: dict[str, list[Any]] = {"won": [], "lost": [], "errors": []}
    for round_ in range(int(rounds)):
        _barrier(client, f"race:{prefix}:{round_}", int(parties))
        try:
            held.append(tracked.start(f"{prefix}-{round_}", store=store))
            outcome["won"].append(round_)
        except tracked.AlreadyRunning:
            outcome["lost"].append(round_)
        except Exception as exc:
            outcome["errors"].append(f"{round_}: {exc!r}")
    _barrier(client, f"race:{prefix}:end", int(parties))
    for progress in held:
        progress.finish()
    print(json.dumps(outcome), flush=True)


def _barrier(client: Any, name: str, parties: int) -> None:
    """Block until ``parties`` processes arrive, then release them all at once
    (both keys share a hash tag, for a cluster)."""
    if client.incr("{" + name + "}:arrived") == parties:
        client.rpush("{" + name + "}:go", *["go"] * parties)
    if client.blpop(["{" + name + "}:go"], timeout=60) is None:
        raise TimeoutError(f"barrier {name} was never released")


if __name__ == "__main__":
    modes: dict[str, Callable[..., None]] = {"hold": hold, "watch": watch, "race": race}
    modes[sys.argv[1]](*sys.argv[2:])
