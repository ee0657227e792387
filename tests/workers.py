"""Programs the tests run as real, separate processes: ``python tests/workers.py CMD ...``.

Each prints what the parent needs on stdout, one line per fact, and flushes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import tracked


def say(*words: object) -> None:
    print(*words, flush=True)


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.0005)


def publish(path: Path, text: str) -> None:
    """Write a file atomically, so the parent never reads it half written."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def race(store: str, name: str, rounds: str, sync_dir: str, me: str) -> None:
    """Each round: wait for the go file, try to start ``name``, report, hold until the
    end file, end the progress if it won, then report that it is done."""
    directory = Path(sync_dir)
    opened = tracked.open_store(store)
    for r in range(int(rounds)):
        wait_for(directory / f"go-{r}")
        try:
            progress = tracked.start(name, store=opened)
        except tracked.AlreadyRunning:
            progress = None
        publish(directory / f"result-{r}-{me}", "win" if progress else "lose")
        wait_for(directory / f"end-{r}")
        if progress is not None:
            progress.finish()
        publish(directory / f"done-{r}-{me}", "")


def writer(store: str, name: str, updates: str) -> None:
    """Make ``updates`` updates with ``min_interval=0``: every one is a write."""
    with tracked.start(name, total=int(updates), store=store, min_interval=0, max_messages=50) as p:
        say("started")
        for i in range(int(updates)):
            p.increment(1, f"update {i}")


def reader(store: str, name: str) -> None:
    """Read ``name`` until it has ended; report how many reads were valid or not."""
    opened = tracked.open_store(store)
    valid = invalid = 0
    last_count = -1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = opened.load(name)
        except tracked.StoreError as exc:
            invalid += 1
            say("invalid", exc)
            continue
        if state is None:
            continue
        if state.count < last_count or state.message_count != state.count:
            invalid += 1
            say("invalid", state)
        valid += 1
        last_count = state.count
        if not state.in_progress:
            break
    say("reads", valid, invalid)


def hold(store: str, name: str) -> None:
    """Start ``name``, report, and hold it until killed."""
    progress = tracked.start(name, total=10, store=store)
    say("started")
    time.sleep(3600)
    progress.finish()


def message_then_sleep(store: str, name: str, min_interval: str) -> None:
    """Start, add one message right after the first write, report when, then sleep."""
    with tracked.start(name, store=store, min_interval=float(min_interval)) as p:
        p.add_message("a")
        say("added", repr(time.time()))
        time.sleep(1.0)


def generator_job(store: str, name: str, steps: str) -> None:
    """A @tracked generator run to the end, as a batch job would."""

    @tracked.tracked(name=name, total=int(steps), store=store)
    def job(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            time.sleep(0.01)
            yield f"step {i}"

    for _ in job(int(steps)):
        pass
    say("done")


def big_writer(store: str, name: str) -> None:
    """Write large records (about 1 MB each) back to back until killed."""
    with tracked.start(name, total=None, store=store, min_interval=0, max_messages=1000) as p:
        say("started")
        while True:
            p.add_message("x" * 1000)


def read_only(store: str, name: str) -> None:
    """Read ``name`` and list the store, then try to claim a new name; report each."""
    opened = tracked.open_store(store)
    state = opened.load(name)
    say("load", None if state is None else state.state)
    say("list", *[s.name for s in opened.list()])
    try:
        tracked.start("new-claim", store=opened)
    except tracked.StoreError as exc:
        say("claim", type(exc).__name__, exc)
    else:
        say("claim", "succeeded")


def show_state(store: str, name: str) -> None:
    """Print the state word of ``name`` as this process reads it."""
    state = tracked.open_store(store).load(name)
    say("none" if state is None else state.state)


COMMANDS = {
    "race": race,
    "writer": writer,
    "reader": reader,
    "hold": hold,
    "message_then_sleep": message_then_sleep,
    "generator_job": generator_job,
    "big_writer": big_writer,
    "read_only": read_only,
    "show_state": show_state,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
