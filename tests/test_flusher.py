"""The flusher thread never dies: handles come and go from many threads while it
scans them, an unexpected error is logged and the loop goes on, and a thread that
died anyway is started again by the next update."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import tracked
from tracked import _flusher


class LeasedMemoryStore(tracked.MemoryStore):
    """A MemoryStore with a lease, so the flusher's lease scan walks its handles too."""

    lease = 30.0


class FaultyStore(tracked.MemoryStore):
    """A MemoryStore whose cancel poll or batched write (each called by the flusher
    thread only) raises ``fault`` once, when ``where`` names it."""

    fault: BaseException | None = None
    where = "cancels"

    def _fault(self, where: str) -> None:
        if where == self.where and self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault

    def cancels_requested(self, runs: object) -> list[bool]:
        self._fault("cancels")
        return super().cancels_requested(runs)  # type: ignore[arg-type]

    def save(self, state: tracked.State, owner: object) -> None:
        self._fault("save")  # the task thread's own writes (its final one)
        super().save(state, owner)  # type: ignore[arg-type]

    def save_many(self, writes: object) -> list[Exception | None]:
        self._fault("save_many")  # with the handle taken off the flusher's schedule
        return super().save_many(writes)  # type: ignore[arg-type]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every few microseconds, so the flusher is interrupted in the
    middle of walking its handles as often as possible."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _thread() -> threading.Thread:
    thread = _flusher._current().thread
    assert thread is not None
    return thread


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("store_type", [tracked.MemoryStore, LeasedMemoryStore])
def test_the_flusher_survives_threads_adding_and_removing_handles_while_it_scans(
    store_type: type[tracked.MemoryStore],
    fast_switching: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = store_type()
    # Many live handles make each scan of them long; 16 threads start and end
    # handles all the while (each start adds to what the scan walks, each end removes).
    steady = [
        tracked.start(f"steady-{i}", total=None, store=store, min_interval=0.05)
        for i in range(3000)
    ]
    flusher = _thread()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                with tracked.start(f"churn-{worker}-{n}", store=store, min_interval=0.05) as p:
                    p += 1
                n += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(16)]
    with caplog.at_level(logging.ERROR, logger="tracked"):
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors
    assert flusher.is_alive() and _thread() is flusher  # never died, never replaced
    assert not [r for r in caplog.records if "flusher" in r.getMessage()]
    # Still writing: every steady handle's latest count reaches the store.
    for progress in steady:
        progress += 7
    _wait_for(lambda: all(store.load(p.key).count == 7 for p in steady))  # type: ignore[union-attr]
    for progress in steady:
        progress.finish()


def test_an_unexpected_error_in_a_tick_is_logged_once_and_the_flusher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenLease(tracked.MemoryStore):
        @property
        def lease(self) -> float:  # type: ignore[override]
            if threading.current_thread().name == "tracked-flusher":
                raise RuntimeError("lease is broken")
            return 30.0

    good = tracked.MemoryStore()
    with caplog.at_level(logging.ERROR, logger="tracked"):
        with tracked.start("good", total=None, store=good, min_interval=0.02) as progress:
            flusher = _thread()
            broken = tracked.start("broken", store=BrokenLease(), min_interval=0.02)
            # The lease scan runs at least every second: fails in each for 3 s.
            for _ in range(100):
                progress += 1
                time.sleep(0.03)
            _wait_for(lambda: good.load("good").count == 100)  # type: ignore[union-attr]
            assert flusher.is_alive() and _thread() is flusher
            broken.finish()
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(logged) == 1 and "lease is broken" in str(logged[0].exc_info[1])  # type: ignore[index]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("where", ["cancels", "save_many"])
@pytest.mark.parametrize("fault", [SystemExit(3), KeyboardInterrupt()])
def test_a_flusher_killed_by_an_unexpected_error_is_restarted_at_the_next_update(
    fault: BaseException, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore()
    store.where = where
    with tracked.start("revived", total=None, store=store, min_interval=0.05) as progress:
        progress += 1
        _wait_for(lambda: store.load("revived").count == 1)  # type: ignore[union-attr]
        dead = _thread()
        store.fault = fault  # the next cancel poll (or batched write) kills the thread
        progress += 1  # a change to write: the thread dies holding it (save_many)
        dead.join(10)
        assert not dead.is_alive()
        progress += 1  # one update whose handle the dead thread had scheduled
        with caplog.at_level(logging.WARNING, logger="tracked"):
            _wait_for(lambda: store.load("revived").count == 3)  # type: ignore[union-attr]
        assert _thread() is not dead and _thread().is_alive()
        assert any("started it again" in r.getMessage() for r in caplog.records)
        # and it keeps writing: later updates land too
        progress += 2
        _wait_for(lambda: store.load("revived").count == 5)  # type: ignore[union-attr]
        assert len([e for e in _flusher._current().schedule if e[2]() is progress._writer]) <= 1
    assert store.load("revived").state == "finished"  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", [KeyboardInterrupt(), SystemExit(3)])
def test_a_final_write_interrupted_on_the_task_thread_still_lands_later(
    fault: BaseException,
) -> None:
    """Ctrl-C (or ``SystemExit``) raised inside the store's write of a run's end goes on
    up to the task, as it should, and the flusher writes the end afterwards: the record
    reads ``finished``, not ``running`` for as long as the process lives. (The retry
    was only scheduled when the write returned.)"""
    store = FaultyStore()
    store.where = "save"
    with pytest.raises(type(fault)):
        with tracked.start("interrupted", total=2, store=store, min_interval=3600) as p:
            p += 2
            store.fault = fault
    _wait_for(lambda: store.load("interrupted").state != "running", 5.0)  # type: ignore[union-attr]
    state = store.load("interrupted")
    assert state is not None and (state.state, state.count) == ("finished", 2)
