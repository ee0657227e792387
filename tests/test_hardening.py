"""The handle under hostile use: ended runs, forks, wrong types, bounds, unencodable text."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tracked
from tests.conftest import python_process
from tracked import FileStore, InvalidName, InvalidValue, MemoryStore, Store, StoreError, _flusher
from tracked._store import Owner

SURROGATE_NAME = "caf\udce9.txt"  # what os.listdir() returns for b"caf\xe9.txt"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# ------------------------------------------------------------------ an ended run


def test_an_ended_handle_ignores_updates_and_never_writes_over_the_next_run(
    store: Store,
) -> None:
    first = tracked.start("again", total=10, store=store)
    first.increment(3)
    first.finish()
    second = tracked.start("again", total=10, store=store)
    first.increment(5, "late")
    first.add_message("later")
    first.count = 9
    first.total = 50
    first.status = "zombie"
    assert first.flush() is False
    assert (first.count, first.total, first.messages, first.status) == (3, 10, (), "finished")
    state = store.load("again")
    assert state is not None and (state.count, state.in_progress) == (0, True)
    second.finish()


class FlakyFileStore(FileStore):
    """A real FileStore whose later writes fail while ``down`` (a full disk, say)."""

    down = False

    def save(self, state: tracked.State, owner: Owner) -> None:
        if self.down:
            raise StoreError(f"cannot write to {self.directory}: no space left on device")
        super().save(state, owner)


def pending_finals(key: str) -> list[object]:
    # The flusher holds each run's writer; the test compares the handles they write for.
    return [w.handle() for (_, k), w in _flusher._current().finals.items() if k == key]


def read_in_another_process(store: Path, name: str) -> str:
    reader = python_process("show_state", str(store), name)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    return out.strip()


def test_a_failed_final_write_is_retried_and_every_process_reads_it_running_meanwhile(
    tmp_path: Path,
) -> None:
    store = FlakyFileStore(tmp_path / "store")
    progress = tracked.start("outage", total=2, store=store)
    store.down = True
    progress.finish()
    mine = store.load("outage")
    assert mine is not None and mine.state == "running"
    assert read_in_another_process(store.directory, "outage") == "running"
    assert len(pending_finals("outage")) == 1
    store.down = False
    wait_until(lambda: not pending_finals("outage"))
    assert read_in_another_process(store.directory, "outage") == "finished"
    state = store.load("outage")
    assert state is not None and state.state == "finished"


def test_a_retried_final_write_is_dropped_rather_than_replace_a_newer_run(
    tmp_path: Path,
) -> None:
    store = FlakyFileStore(tmp_path / "store")
    old = tracked.start("contested", total=2, store=store)
    store.down = True
    old.finish()
    store.delete("contested")  # `tracked delete`, then another run claims the name
    newer = tracked.start("contested", total=7, store=FileStore(store.directory))
    store.down = False
    wait_until(lambda: not pending_finals("contested"))
    state = store.load("contested")
    assert state is not None and (state.total, state.in_progress) == (7, True)
    newer.finish()


def test_a_running_handle_whose_name_another_run_claimed_stops_writing(
    file_store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    old = tracked.start("taken", min_interval=0)
    file_store.delete("taken")  # `tracked delete` on a running record
    newer = tracked.start("taken", total=7)
    with caplog.at_level(logging.WARNING, logger="tracked"):
        old.increment(5)
        old.increment(5)
        old.finish()
    superseded = [r for r in caplog.records if "another run" in r.getMessage()]
    assert len(superseded) == 1
    state = tracked.load("taken")
    assert state is not None and (state.total, state.count, state.in_progress) == (7, 0, True)
    assert not pending_finals("taken")
    newer.finish()


def test_at_most_one_final_write_is_pending_per_key(tmp_path: Path) -> None:
    store = FlakyFileStore(tmp_path / "store")
    for total in range(1, 6):
        store.delete("pending")  # the only way a new run of the name can start meanwhile
        progress = tracked.start("pending", total=total, store=store)
        store.down = True
        progress.finish()
        assert pending_finals("pending") == [progress]
    store.down = False
    wait_until(lambda: not pending_finals("pending"))
    state = store.load("pending")
    assert state is not None and (state.total, state.state) == (5, "finished")


# ------------------------------------------------------------------ fork


def fork_child(body: Callable[[], None]) -> int:
    """Run ``body`` in a plain ``os.fork()`` child; return its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            body()
        except BaseException:
            code = 1
        os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # deadlocked: fail rather than hang the suite
    os.waitpid(pid, 0)
    return -signal.SIGKILL


def test_a_forked_child_never_writes_an_inherited_handle_nor_ends_the_parents_run(
    shared_store_url: str,
) -> None:
    with tracked.start("forked", total=10_000, min_interval=0) as progress:
        progress.increment(3)

        def child() -> None:
            progress.increment(5000)
            progress.add_message("from the child")
            progress.flush()
            progress.finish()

        assert fork_child(child) == 0
        state = tracked.load("forked")
        assert state is not None
        assert (state.count, state.messages, state.in_progress) == (3, (), True)
        assert tracked.is_running("forked")
    state = tracked.load("forked")
    assert state is not None and (state.count, state.state) == (3, "finished")


def test_leaving_the_block_in_a_forked_child_warns_once_and_leaves_the_run(
    shared_store_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "child.log"
    with tracked.start("forked-block", min_interval=0) as progress:

        def child() -> None:
            handler = logging.FileHandler(log)
            logging.getLogger("tracked").addHandler(handler)
            with progress:
                progress.increment()
                progress.increment()
            handler.close()

        assert fork_child(child) == 0
        assert tracked.is_running("forked-block")
    warnings = [line for line in log.read_text().splitlines() if "forked child" in line]
    assert len(warnings) == 1


def hold_lock_then_fork(progress: tracked.Progress) -> int:
    """Fork while another thread holds the handle's locks, as a flush in progress does."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with progress._lock, progress._write_lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    try:

        def child() -> None:
            progress.increment(2, "child")
            assert progress.count >= 0 and progress.messages is not None
            progress.flush()
            progress.finish()

        return fork_child(child)
    finally:
        release.set()
        thread.join()


def test_a_child_forked_while_a_lock_is_held_does_not_deadlock(file_store: FileStore) -> None:
    with tracked.start("locked", min_interval=0) as progress:
        assert hold_lock_then_fork(progress) == 0
        assert tracked.is_running("locked")


def child_of_multiprocessing(progress: tracked.Progress) -> None:
    progress.increment(100)
    progress.finish()


def test_a_multiprocessing_fork_child_leaves_the_parents_run_alone(
    shared_store_url: str,
) -> None:
    with tracked.start("mp", min_interval=0) as progress:
        progress.increment(1)
        context = multiprocessing.get_context("fork")
        child = context.Process(target=child_of_multiprocessing, args=(progress,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        state = tracked.load("mp")
        assert state is not None and (state.count, state.in_progress) == (1, True)


# ------------------------------------------------------------------ types


NOT_INTS = [0.5, 1.0, True, False, "1", None]


@pytest.mark.parametrize("value", NOT_INTS)
@pytest.mark.parametrize(
    "update",
    [
        lambda p, v: p.increment(v),
        lambda p, v: p.decrement(v),
        lambda p, v: p.__iadd__(v),
        lambda p, v: p.__isub__(v),
        lambda p, v: setattr(p, "count", v),
    ],
    ids=["increment", "decrement", "+=", "-=", "count ="],
)
def test_a_count_that_is_not_an_int_raises_invalid_value_and_writes_nothing(
    file_store: FileStore, value: object, update: Callable[[tracked.Progress, object], None]
) -> None:
    with tracked.start("typed", min_interval=0) as progress:
        with pytest.raises(InvalidValue):
            update(progress, value)
        assert progress.count == 0
    state = tracked.load("typed")
    assert state is not None and state.count == 0


@pytest.mark.parametrize("value", [0.5, True, "10"])
def test_a_total_that_is_not_an_int_raises_invalid_value_at_start_and_in_the_setter(
    file_store: FileStore, value: object
) -> None:
    with pytest.raises(InvalidValue):
        tracked.start("total", total=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        tracked.start("count", count=value)  # type: ignore[arg-type]
    with tracked.start("setter") as progress, pytest.raises(InvalidValue):
        progress.total = value  # type: ignore[assignment]


def test_integer_types_with_index_are_counts() -> None:
    class Index:
        def __index__(self) -> int:
            return 4

    with tracked.start("index", store=MemoryStore(), total=Index()) as progress:  # type: ignore[arg-type]
        progress.increment(Index())  # type: ignore[arg-type]
        assert (progress.count, progress.total) == (4, 4)


# ------------------------------------------------------------------ bounds


def test_the_count_stops_at_zero_and_percent_stays_within_0_and_100(store: Store) -> None:
    with tracked.start("bounded", total=10, store=store, min_interval=0) as progress:
        progress.decrement(7)
        assert progress.count == 0
        state = store.load("bounded")
        assert state is not None and (state.count, state.percent) == (0, 0.0)
        progress -= 1
        progress.count = -5
        progress.increment(33)
        state = store.load("bounded")
        assert state is not None and (state.count, state.percent) == (33, 100.0)
        assert state.to_dict()["percent"] == 100.0


# ------------------------------------------------------------------ unencodable text


def test_lone_surrogates_in_messages_status_and_error_are_stored_replaced(store: Store) -> None:
    with (
        pytest.raises(OSError),
        tracked.start("surrogates", store=store, min_interval=0) as progress,
    ):
        progress.status = f"copying {SURROGATE_NAME}"
        progress.increment(1, f"read {SURROGATE_NAME}")
        progress.add_message("\ud800\udc00 pair", "fine ✓")
        state = store.load("surrogates")
        assert state is not None and state.count == 1
        raise OSError(f"cannot open {SURROGATE_NAME}")
    state = store.load("surrogates")
    assert state is not None
    assert state.messages == ("read caf\ufffd.txt", "\ufffd\ufffd pair", "fine ✓")
    assert state.status == "copying caf\ufffd.txt"
    assert state.error == "OSError: cannot open caf\ufffd.txt"
    assert (state.state, state.in_progress) == ("failed", False)
    assert not tracked.is_running("surrogates", store=store)


def test_a_name_with_a_lone_surrogate_is_refused_at_start(file_store: FileStore) -> None:
    with pytest.raises(InvalidName, match="unicode"):
        tracked.start(SURROGATE_NAME)
