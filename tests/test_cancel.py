"""Cancel from anywhere: the Store contract's requests, the owner's side, across processes."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import tracked
from tracked import Cancelled, State, Store
from tracked._store import Owner, register_live_run

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # generous bound for anything asynchronous: never a timing assertion


def running(name: str = "job") -> State:
    now = time.time()
    return State(name=name, start_time=now, current_time=now)


def held_owner() -> Owner:
    owner = Owner.for_this_process()
    register_live_run(owner.run)
    return owner


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


# ----------------------------------------------------------------------------- the contract


def test_a_request_reaches_the_running_run_it_names(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    assert store.cancels_requested([("job", owner)]) == [False]
    assert store.request_cancel("job") is True
    assert store.cancels_requested([("job", owner)]) == [True]


def test_asking_twice_is_harmless(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    assert store.request_cancel("job") is True
    assert store.request_cancel("job") is True
    assert store.cancels_requested([("job", owner)]) == [True]


def test_a_request_for_an_ended_run_is_refused(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    store.save(running().ended("finished", time.time()), owner)
    assert store.request_cancel("job") is False
    assert store.cancels_requested([("job", owner)]) == [False]


def test_a_request_for_an_unknown_key_is_refused(store: Store) -> None:
    assert store.request_cancel("nothing here") is False
    assert store.request_cancel(State(name="job", progress_id="abc").key) is False


def test_a_request_for_run_a_never_reaches_run_b_of_the_same_name(store: Store) -> None:
    first = held_owner()
    store.claim(running(), first)
    assert store.request_cancel("job") is True
    # Run A ends without removing its request (its process died, say).
    store.save(running().ended("failed", time.time(), "gone"), first)
    second = held_owner()
    store.claim(running(), second)
    assert store.cancels_requested([("job", second)]) == [False]
    assert store.cancels_requested([("job", first)]) == [True]


def test_the_owner_removes_its_request_when_its_run_ends(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    store.request_cancel("job")
    store.clear_cancel("job", owner)
    assert store.cancels_requested([("job", owner)]) == [False]


def test_a_request_names_one_progress_id_only(store: Store) -> None:
    mine, other = held_owner(), held_owner()
    store.claim(dataclasses.replace(running(), progress_id="a"), mine)
    store.claim(dataclasses.replace(running(), progress_id="b"), other)
    assert store.request_cancel(State(name="job", progress_id="a").key) is True
    keys = [(State(name="job", progress_id=p).key, o) for p, o in (("a", mine), ("b", other))]
    assert store.cancels_requested(keys) == [True, False]


def test_prune_removes_a_request_left_by_an_ended_run(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    owner = held_owner()
    store.claim(running(), owner)
    store.request_cancel("job")
    marker = store.cancel_path("job", owner.run)
    assert marker.exists()
    store.save(running().ended("finished", time.time()), owner)
    store.prune(3600)
    assert not marker.exists()


# ----------------------------------------------------------------------------- the owner's side


def test_a_handle_sees_the_request_and_ends_cancelled(store: Store) -> None:
    with pytest.raises(Cancelled), tracked.start("job", min_interval=0.05) as progress:
        assert tracked.cancel("job") is True
        eventually(lambda: progress.cancel_requested, "the request is seen")
        progress.check()
    state = tracked.load("job")
    assert state is not None
    assert (state.state, state.status, state.error, state.in_progress) == (
        "cancelled", "cancelled", None, False,
    )
    assert tracked.cancel("job") is False
    if isinstance(store, tracked.FileStore):
        assert not list(store.directory.glob("*.cancel")), "the owner removed its request"


def test_check_does_nothing_until_asked() -> None:
    with tracked.start("quiet") as progress:
        progress.check()
        assert progress.cancel_requested is False
    assert progress.state == "finished"


def test_except_exception_cannot_swallow_cancelled() -> None:
    assert not issubclass(Cancelled, Exception)
    assert issubclass(Cancelled, BaseException)
    assert not issubclass(Cancelled, tracked.TrackedError)


def test_a_task_that_ignores_the_request_reads_its_own_end_with_cancel_requested() -> None:
    """Rule 1 of issue 17: a run that never got ``Cancelled`` did not stop because of
    the request, so it must not read ``cancelled`` (the old code said it did)."""
    with tracked.start("stubborn", min_interval=0.02) as progress:
        tracked.cancel("stubborn")
        eventually(lambda: progress.cancel_requested, "the request is seen")
        progress.status = "all done"
    state = tracked.load("stubborn")
    assert state is not None
    assert (state.state, state.status, state.cancel_requested) == ("finished", "all done", True)


def test_a_generator_gets_cancelled_at_its_next_yield_and_its_finally_runs() -> None:
    cleaned: list[str] = []

    @tracked.tracked("gen", total=None, min_interval=0.02)
    def job() -> Iterator[int]:
        try:
            i = 0
            while True:
                time.sleep(0.005)
                yield i
                i += 1
        finally:
            cleaned.append("finally")

    seen = []
    with pytest.raises(Cancelled):
        for i in job():
            seen.append(i)
            if i == 3:
                assert tracked.cancel("gen")
    assert cleaned == ["finally"]
    state = tracked.load("gen")
    assert state is not None
    assert (state.state, state.status, state.error) == ("cancelled", "cancelled", None)


def test_a_generator_that_catches_cancelled_and_returns_ends_quietly_as_cancelled() -> None:
    @tracked.tracked("polite", total=None, min_interval=0.02)
    def job() -> Iterator[int]:
        try:
            while True:
                time.sleep(0.005)
                yield 1
        except Cancelled:
            tracked.current().add_message("stopped cleanly")
            return "partial"  # type: ignore[return-value]

    for _ in job():
        tracked.cancel("polite")
    state = tracked.load("polite")
    assert state is not None
    assert (state.state, state.error, state.messages) == ("cancelled", None, ("stopped cleanly",))
    assert state.result == "partial"


def test_an_async_generator_gets_cancelled_at_its_next_yield() -> None:
    cleaned: list[str] = []

    @tracked.tracked("agen", total=None, min_interval=0.02)
    async def job() -> AsyncIterator[int]:
        try:
            while True:
                await asyncio.sleep(0.005)
                yield 1
        finally:
            cleaned.append("finally")

    async def consume() -> None:
        async for _ in job():
            tracked.cancel("agen")

    with pytest.raises(Cancelled):
        asyncio.run(consume())
    assert cleaned == ["finally"]
    state = tracked.load("agen")
    assert state is not None and state.state == "cancelled"


def test_a_coroutine_is_cancelled_at_its_next_await() -> None:
    cleaned: list[str] = []

    @tracked.tracked("coro", total=None, min_interval=0.02)
    async def job() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("finally")

    async def main() -> None:
        task = asyncio.ensure_future(job())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(tracked.cancel, "coro")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)

    asyncio.run(main())
    assert cleaned == ["finally"]
    state = tracked.load("coro")
    assert state is not None and (state.state, state.error) == ("cancelled", None)


def test_a_plain_function_stops_where_it_checks() -> None:
    @tracked.tracked("plain", total=None, min_interval=0.02)
    def job() -> int:
        progress = tracked.current()
        steps = 0
        try:
            while True:
                progress.check()
                steps += 1
                time.sleep(0.005)
        except tracked.Cancelled:  # caught and returned: it still stopped on request
            return steps

    threading.Timer(0.1, tracked.cancel, ["plain"]).start()
    assert job() > 0
    state = tracked.load("plain")
    assert state is not None and state.state == "cancelled"


def test_a_queued_submitted_job_never_starts_and_a_running_one_stops() -> None:
    tracked.configure(max_workers=1)
    started: list[str] = []

    @tracked.tracked(lambda n: n, total=None, min_interval=0.02)
    def job(n: str) -> Iterator[None]:
        started.append(n)
        while True:
            time.sleep(0.005)
            yield

    try:
        first = tracked.submit(job, "first")
        second = tracked.submit(job, "second")
        eventually(lambda: started == ["first"], "the first job runs")
        assert tracked.cancel("second") is True
        eventually(lambda: not second.in_progress, "the queued job ends")
        assert tracked.cancel("first") is True
        with pytest.raises(Cancelled):
            first.wait(WAIT)
    finally:
        tracked.configure(max_workers=4)
    assert started == ["first"]
    for name in ("first", "second"):
        state = tracked.load(name)
        assert state is not None and (state.state, state.in_progress) == ("cancelled", False)


# ----------------------------------------------------------------------------- across processes


def test_a_task_in_another_process_stops_when_asked_from_here(shared_store_url: str) -> None:
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "cancel_worker.py"), shared_store_url, "remote"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        eventually(lambda: tracked.is_running("remote"), "the worker runs")
        assert tracked.cancel("remote") is True
        out, err = worker.communicate(timeout=WAIT)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0, err
    assert out.split() == ["started", "cancelled"]
    state = tracked.load("remote")
    assert state is not None
    assert (state.state, state.status, state.error) == ("cancelled", "cancelled", None)
    assert state.messages[-1] == "cleanup ran"
    assert tracked.cancel("remote") is False


@pytest.mark.parametrize("count", [0, 1, 31, 32, 33])
@pytest.mark.parametrize("crowded", [False, True])
def test_the_file_cancel_poll_of_many_runs_is_exact_listed_or_stated(
    tmp_path: Path, count: int, crowded: bool
) -> None:
    """From 32 runs on, a FileStore's poll lists the directory once instead of a
    ``stat`` per run, unless the directory is much larger than the runs (``crowded``:
    then it stats); either way exactly the runs asked read True, and another run of
    an asked name reads False."""
    (tmp_path / "store").mkdir()
    store = tracked.FileStore(tmp_path / "store")
    if crowded:  # other records: more than 1 KiB of directory per polled run
        for i in range(max(1, count) * 24):
            (tmp_path / "store" / f"other-{i:060d}.json").write_bytes(b"")
    owner = held_owner()
    runs = []
    for i in range(count):
        store.claim(running(f"poll-{i}"), owner)
        runs.append((f"poll-{i}", owner))
    asked = {i for i in (0, 30, 31, 32) if i < count}
    for i in asked:
        assert store.request_cancel(f"poll-{i}") is True
    assert store.cancels_requested(runs) == [i in asked for i in range(count)]
    other = held_owner()  # a later run of an asked name was not asked
    assert store.cancels_requested([(key, other) for key, _ in runs]) == [False] * count
    if runs:
        assert store.cancels_requested(runs[:1]) == [0 in asked]
