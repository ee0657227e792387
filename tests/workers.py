"""Programs the tests run as real, separate processes: ``python tests/workers.py CMD ...``.

Each prints what the parent needs on stdout, one line per fact, and flushes.
"""

from __future__ import annotations

import itertools
import os
import signal
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
        time.sleep(10.0 * float(min_interval) + 3.0)  # well past any flush, even under load


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


def stopped_writer(store: str, name: str) -> None:
    """Write large records as ``big_writer`` does, but stop this whole process (SIGSTOP)
    in its first write of a temporary file, half of it written: the parent kills it
    there, exactly mid-write, whatever the machine's load."""
    real_write = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            return real_write(fd, data)
        os.write = real_write  # once
        written = real_write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGSTOP)
        return written

    os.write = write
    big_writer(store, name)


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


def stale_writer(store: str, keys: str, passes_file: str) -> None:
    """Hold runs of ``keys`` (comma-separated) and save each in a tight loop; a run found
    superseded is claimed again once the name is free. After each pass over the keys,
    the number of passes and of runs superseded are written (8 bytes each, in place)
    to ``passes_file``."""
    import dataclasses

    from tracked._store import Owner, register_live_run

    opened = tracked.open_store(store)
    held: dict[str, tuple[tracked.State, Owner] | None] = dict.fromkeys(keys.split(","))
    fd = os.open(passes_file, os.O_RDWR | os.O_CREAT, 0o644)
    superseded = 0
    for passes in itertools.count(1):
        for key, run in held.items():
            if run is None:
                owner = Owner.for_this_process()
                register_live_run(owner.run)
                now = time.time()
                state = tracked.State(name=key, start_time=now, current_time=now)
                try:
                    opened.claim(state, owner)
                except tracked.AlreadyRunning:
                    continue
                held[key] = run = (state, owner)
            try:
                opened.save(dataclasses.replace(run[0], count=passes), run[1])
            except tracked.RunSuperseded:
                held[key] = None
                superseded += 1
        os.pwrite(fd, passes.to_bytes(8, "little") + superseded.to_bytes(8, "little"), 0)


def burst(store: str, prefix: str, count: str, go: str) -> None:
    """Once ``go`` exists, start ``count`` runs named ``prefix-i`` at once, one thread
    each, and hold them until all have started; print how many starts failed, and why."""
    import threading

    opened = tracked.open_store(store)
    barrier = threading.Barrier(int(count) + 1)
    failures: list[str] = []
    started: list[tracked.Progress] = []

    def start(i: int) -> None:
        barrier.wait()
        try:
            started.append(tracked.start(f"{prefix}-{i}", store=opened))
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(int(count))]
    for thread in threads:
        thread.start()
    wait_for(Path(go))
    barrier.wait()
    for thread in threads:
        thread.join()
    say("failed", len(failures), *failures[:1])
    for progress in started:
        progress.finish()


def claim_loop(store: str, prefix: str) -> None:
    """Start and finish runs of new names in a tight loop, forever."""
    opened = tracked.open_store(store)
    say("looping")
    for i in itertools.count():
        with tracked.start(f"{prefix}-{i}", store=opened):
            pass


def sized_writer(store: str, name: str, size: str) -> None:
    """Write records of about ``size`` bytes back to back until killed: a message of
    ``size`` characters, and each update's own count, so every write differs."""
    with tracked.start(name, total=None, store=store, min_interval=0, max_messages=1) as p:
        say("started")
        for i in itertools.count():
            p.add_message(str(i).ljust(int(size), "x"))


COMMANDS = {
    "race": race,
    "sized_writer": sized_writer,
    "claim_loop": claim_loop,
    "burst": burst,
    "stale_writer": stale_writer,
    "writer": writer,
    "reader": reader,
    "hold": hold,
    "message_then_sleep": message_then_sleep,
    "generator_job": generator_job,
    "big_writer": big_writer,
    "stopped_writer": stopped_writer,
    "read_only": read_only,
    "show_state": show_state,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
