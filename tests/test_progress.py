"""The live handle: defaults, updates, messages, ending, coalesced writes, store failures."""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

import tracked
from tracked import AlreadyRunning, FileStore, InvalidValue, MemoryStore, State, StoreError
from tracked._store import Owner


class CountingStore(MemoryStore):
    """A real MemoryStore that also remembers every snapshot written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[State] = []

    def claim(self, state: State, owner: Owner) -> None:
        super().claim(state, owner)
        self.writes.append(state)

    def save(self, state: State, owner: Owner) -> None:
        super().save(state, owner)
        self.writes.append(state)


def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# ------------------------------------------------------------------ the seed's defaults


def test_defaults_are_total_100_count_0_no_messages(file_store: FileStore) -> None:
    with tracked.start("defaults"):
        state = tracked.load("defaults")
        assert state is not None
        assert (state.total, state.count, state.messages, state.in_progress) == (100, 0, (), True)
        assert (state.state, state.status, state.error) == ("running", "in progress", None)


def test_start_records_total_count_and_messages_given(file_store: FileStore) -> None:
    with tracked.start("given", total=200, count=5, messages=["a", "b"]):
        state = tracked.load("given")
        assert state is not None
        assert (state.total, state.count, state.messages, state.message_count) == (
            200,
            5,
            ("a", "b"),
            2,
        )


def test_a_duplicate_start_in_the_same_process_raises_and_changes_nothing(
    file_store: FileStore,
) -> None:
    with tracked.start("dup", total=200) as first:
        first.increment(3)
        first.flush()
        before = tracked.load("dup")
        with pytest.raises(AlreadyRunning):
            tracked.start("dup", total=5)
        assert tracked.load("dup") == before
        assert first.in_progress


def test_leaving_the_block_ends_the_progress(file_store: FileStore) -> None:
    with tracked.start("block") as progress:
        assert tracked.is_running("block")
    assert not progress.in_progress
    assert not tracked.is_running("block")
    state = tracked.load("block")
    assert state is not None and (state.in_progress, state.state, state.status) == (
        False,
        "finished",
        "finished",
    )


def test_an_exception_in_the_block_marks_it_failed_with_the_error(file_store: FileStore) -> None:
    with pytest.raises(ZeroDivisionError), tracked.start("boom"):
        1 / 0  # noqa: B018
    state = tracked.load("boom")
    assert state is not None
    assert (state.state, state.in_progress) == ("failed", False)
    assert state.error == "ZeroDivisionError: division by zero"


def test_a_handle_that_goes_out_of_scope_ends(file_store: FileStore) -> None:
    progress = tracked.start("scoped")
    assert tracked.is_running("scoped")
    del progress
    gc.collect()
    state = tracked.load("scoped")
    assert state is not None and not state.in_progress and state.state == "finished"


def test_cancel_ends_as_cancelled(file_store: FileStore) -> None:
    progress = tracked.start("cancel")
    progress.cancel()
    state = tracked.load("cancel")
    assert state is not None and state.state == "cancelled" and state.status == "cancelled"


def test_a_status_set_by_the_user_survives_the_end(file_store: FileStore) -> None:
    with tracked.start("status") as progress:
        progress.status = "copying files"
    state = tracked.load("status")
    assert state is not None and (state.status, state.state) == ("copying files", "finished")


def test_ending_twice_keeps_the_first_end(file_store: FileStore) -> None:
    progress = tracked.start("twice")
    progress.fail("first")
    progress.finish()
    state = tracked.load("twice")
    assert state is not None and (state.state, state.error) == ("failed", "first")


# ------------------------------------------------------------------ updates


def test_increment_decrement_and_operators_move_the_count(file_store: FileStore) -> None:
    with tracked.start("ops", min_interval=0) as progress:
        progress.increment()
        progress.increment(5, "five")
        progress += 2
        progress -= 1
        progress.decrement(2, "back")
        progress.count += 10
        assert progress.count == 15
    state = tracked.load("ops")
    assert state is not None and state.count == 15 and state.messages == ("five", "back")


def test_total_may_be_unknown_then_set(file_store: FileStore) -> None:
    with tracked.start("unknown", total=None, min_interval=0) as progress:
        progress.increment(4)
        state = tracked.load("unknown")
        assert state is not None and state.percent is None and state.eta is None
        progress.total = 8
        state = tracked.load("unknown")
        assert state is not None and state.percent == 50.0


def test_only_the_last_max_messages_are_kept_but_all_are_counted(file_store: FileStore) -> None:
    with tracked.start("capped", max_messages=3) as progress:
        for i in range(10):
            progress.add_message(f"m{i}")
    state = tracked.load("capped")
    assert state is not None
    assert state.messages == ("m7", "m8", "m9") and state.message_count == 10
    assert state.first_message_index == 7


def test_updates_from_many_threads_are_all_counted() -> None:
    store = MemoryStore()
    with tracked.start("threads", total=None, store=store, min_interval=0.01) as progress:

        def work() -> None:
            for i in range(2000):
                progress.increment(1, str(i))

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    state = store.load("threads")
    assert state is not None and state.count == 16000 and state.message_count == 16000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total": -1},
        {"total": "10"},
        {"count": 1.5},
        {"min_interval": -1},
        {"max_messages": -2},
        {"status": 5},
        {"messages": [1]},
    ],
)
def test_bad_arguments_raise_invalid_value_and_write_nothing(
    file_store: FileStore, kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidValue):
        tracked.start("bad", **kwargs)  # type: ignore[arg-type]
    assert tracked.load("bad") is None


def test_a_non_string_message_is_refused(file_store: FileStore) -> None:
    with tracked.start("msg") as progress, pytest.raises(InvalidValue):
        progress.add_message(42)  # type: ignore[arg-type]


class _EqualToAll(str):
    """A str subclass equal to every text, blanks included."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("method", ["increment", "decrement", "add_message"])
def test_str_subclass_messages_of_every_update_are_stored_as_plain_text(
    method: str,
) -> None:
    # One batch holding a blank: were the subclass kept, counting the blanks would
    # take it for one (three times over), and message_count would go below zero.
    store = MemoryStore()
    with tracked.start("subclass", store=store, min_interval=0) as progress:
        texts = (_EqualToAll("first"), "", _EqualToAll("second"))
        if method == "add_message":
            progress.add_message(*texts)
        else:
            getattr(progress, method)(1, *texts)
        state = progress.snapshot()
    assert (state.messages, state.message_count) == (("first", "second"), 2)
    assert [type(text) for text in state.messages] == [str, str]
    stored = store.load("subclass")
    assert stored is not None and stored.message_count == 2


def test_current_is_the_innermost_live_progress(file_store: FileStore) -> None:
    with pytest.raises(LookupError) as raised:
        tracked.current()
    assert isinstance(raised.value, tracked.NoActiveProgress)
    with tracked.start("outer") as outer:
        assert tracked.current() is outer
        with tracked.start("inner") as inner:
            assert tracked.current() is inner
        assert tracked.current() is outer
    with pytest.raises(tracked.NoActiveProgress):
        tracked.current()


def test_current_outside_a_progress_says_where_it_works_and_about_decorator_order(
    file_store: FileStore,
) -> None:
    import bottle
    from webtest import TestApp

    from tracked.bottle import TrackedPlugin

    app = bottle.Bottle()
    app.install(TrackedPlugin(store=file_store))
    app.catchall = False

    @tracked.tracked("job")  # above the route decorator: the route is the bare function
    @app.post("/job")
    def job() -> str:
        tracked.current().increment()
        return "ok"

    with pytest.raises(tracked.NoActiveProgress, match="under the route decorator"):
        TestApp(app).post("/job")
    with tracked.start("ended") as ended:
        ended.finish()
        with pytest.raises(tracked.NoActiveProgress, match=r"'ended'.* has ended"):
            tracked.current()


# ------------------------------------------------------------------ coalesced writes


def test_a_burst_of_updates_is_written_once_per_interval() -> None:
    store = CountingStore()
    with tracked.start("burst", store=store, min_interval=0.2) as progress:
        for _ in range(10_000):
            progress.increment()
    # the first state (the claim) and the final one, plus at most a few interval writes
    assert store.writes[0].count == 0 and store.writes[-1].count == 10_000
    assert len(store.writes) <= 4


def test_a_pending_change_is_written_by_the_flusher_when_the_task_goes_quiet() -> None:
    store = CountingStore()
    with tracked.start("quiet", store=store, min_interval=0.1) as progress:
        progress.add_message("late")
        wait_until(lambda: store.writes[-1].messages == ("late",), timeout=1.0)
        assert store.writes[-1].in_progress


def test_with_min_interval_zero_every_update_is_written() -> None:
    store = CountingStore()
    with tracked.start("eager", store=store, min_interval=0) as progress:
        for _ in range(50):
            progress.increment()
    assert [w.count for w in store.writes[:51]] == list(range(51))


def test_the_rate_is_smoothed_and_unknown_before_any_progress() -> None:
    store = CountingStore()
    with tracked.start("rate", store=store, min_interval=0) as progress:
        assert store.writes[-1].rate is None
        for _ in range(10):
            time.sleep(0.06)
            progress.increment(6)
        rate = store.writes[-1].rate
    assert rate is not None and 30 < rate < 120  # about 100 per second


# ------------------------------------------------------------------ store failures


def test_start_raises_store_error_when_the_store_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="a-file"):
        tracked.start("x", store=str(blocker / "store"))


def test_a_store_failing_mid_run_warns_once_and_the_task_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "store"
    store = FileStore(directory)
    with (
        caplog.at_level(logging.WARNING, logger="tracked"),
        tracked.start("resilient", store=store, min_interval=0) as progress,
    ):
        shutil.rmtree(directory)
        directory.write_text("the directory is now a file")  # every write fails
        for _ in range(100):
            progress.increment()
        failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(failures) == 1
        directory.unlink()  # the store works again: the flusher retries, not the task
        wait_until(lambda: any("resumed" in r.getMessage() for r in caplog.records))
    state = store.load("resilient")
    assert state is not None and state.count == 100 and state.state == "finished"


def test_a_corrupt_record_reads_as_a_store_error_and_a_new_start_replaces_it(
    file_store: FileStore,
) -> None:
    file_store.path_for("corrupt").write_text("{not json")
    with pytest.raises(StoreError, match=str(file_store.path_for("corrupt"))):
        tracked.load("corrupt")
    with tracked.start("corrupt", total=3):
        pass
    state = tracked.load("corrupt")
    assert state is not None and state.total == 3


def test_message_indices_stay_fixed_while_threads_add_and_a_reader_snapshots() -> None:
    """Each message keeps its index in every later snapshot, so a ``since`` cursor never
    skips or repeats one, and each thread's messages keep their order."""
    progress = tracked.Progress("indices", store=MemoryStore(), max_messages=100_000)
    stop = threading.Event()
    snapshots: list[State] = []

    def read() -> None:
        while not stop.is_set():
            snapshots.append(progress.snapshot())

    def work(t: int) -> None:
        for i in range(3000):
            progress.add_message(f"{t}:{i}")

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    final = progress.snapshot()
    assert final.message_count == len(final.messages) == 24_000
    for state in snapshots:
        assert state.message_count == len(state.messages)
        assert final.messages[: state.message_count] == state.messages
    for t in range(8):
        mine = [m for m in final.messages if m.startswith(f"{t}:")]
        assert mine == [f"{t}:{i}" for i in range(3000)]


# ------------------------------------------------------------------ who writes


class ThreadRecordingStore(MemoryStore):
    """A real MemoryStore that remembers which thread made each later write."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[tuple[str, State]] = []

    def save(self, state: State, owner: Owner) -> None:
        super().save(state, owner)
        self.writers.append((threading.current_thread().name, state))


def test_the_tasks_thread_writes_only_the_first_and_final_snapshots() -> None:
    store = ThreadRecordingStore()
    with tracked.start("quiet-task", store=store, min_interval=0.02, total=None) as progress:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            progress += 1
            progress.add_message("tick")
        running = list(store.writers)
    assert running, "the flusher wrote nothing while the task ran"
    assert {name for name, _ in running} == {"tracked-flusher"}
    name, final = store.writers[-1]
    assert name == threading.current_thread().name and not final.in_progress


def test_a_thousand_threads_updating_a_thousand_handles_share_two_redis_connections(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from tracked.redis import RedisStore

    pool = redis.ConnectionPool.from_url(redis_url, max_connections=2)
    store = RedisStore(redis.Redis(connection_pool=pool))
    handles = [
        tracked.start(f"h{i}", total=None, store=store, min_interval=0.05) for i in range(1000)
    ]
    go = threading.Event()

    def work(progress: tracked.Progress) -> None:
        go.wait()
        for _ in range(20):
            progress += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(p,)) for p in handles]
    with caplog.at_level(logging.WARNING, logger="tracked"):
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join()
        for progress in handles:
            progress.finish()
    assert [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()] == []
    assert all(store.load(f"h{i}").count == 20 for i in range(1000))  # type: ignore[union-attr]
