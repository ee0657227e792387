"""``tracked.submit``: claimed in the caller, run on a bounded pool of threads, waited on."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracked
from tracked._scope import RequestScope, request_scope

DEADLINE = 30.0


@pytest.fixture(autouse=True)
def _pool_settings() -> Iterator[None]:
    yield
    tracked.configure(max_workers=4, exit_timeout=10.0)


def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds (a guard against hanging, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        time.sleep(0.005)


@tracked.tracked("blocked-{n}", total=1)
def blocked(n: int, gate: threading.Event) -> int:
    gate.wait(DEADLINE)
    tracked.current().increment()
    return n


def test_submit_has_claimed_the_run_when_it_returns_and_wait_returns_the_result(
    store: tracked.Store,
) -> None:
    gate = threading.Event()
    progress = tracked.submit(blocked, 1, gate)
    claimed = tracked.load("blocked-1")
    assert claimed is not None and claimed.in_progress and claimed.state in ("queued", "running")
    assert (progress.key, progress.name, progress.progress_id) == ("blocked-1", "blocked-1", None)
    assert progress.snapshot().in_progress
    gate.set()
    assert progress.wait(DEADLINE) == 1
    ended = tracked.load("blocked-1")
    assert ended is not None
    assert (ended.state, ended.count, ended.result) == ("finished", 1, 1)


def test_a_conflict_raises_already_running_in_the_caller_and_runs_nothing(
    file_store: tracked.FileStore,
) -> None:
    gate = threading.Event()
    calls: list[int] = []

    @tracked.tracked("only-one")
    def only_one() -> None:
        calls.append(1)
        gate.wait(DEADLINE)

    first = tracked.submit(only_one)
    with pytest.raises(tracked.AlreadyRunning):
        tracked.submit(only_one)
    gate.set()
    first.wait(DEADLINE)
    assert calls == [1]


def test_a_job_raising_ends_failed_and_wait_raises_its_error(
    file_store: tracked.FileStore,
) -> None:
    @tracked.tracked("raises")
    def raises() -> None:
        raise LookupError("no such customer")

    progress = tracked.submit(raises)
    with pytest.raises(LookupError, match="no such customer"):
        progress.wait(DEADLINE)
    state = tracked.load("raises")
    assert state is not None
    assert (state.state, state.error) == ("failed", "LookupError: no such customer")


def test_a_generator_job_runs_to_exhaustion_and_returns_its_result(
    file_store: tracked.FileStore,
) -> None:
    @tracked.tracked("lines", total=3)
    def lines(prefix: str) -> Iterator[str]:
        for i in range(3):
            yield f"{prefix} {i}"
        return f"{prefix}: 3 lines"  # type: ignore[misc]

    progress = tracked.submit(lines, "row")
    assert progress.wait(DEADLINE) == "row: 3 lines"
    state = tracked.load("lines")
    assert state is not None
    assert (state.state, state.count, state.messages) == (
        "finished",
        3,
        ("row 0", "row 1", "row 2"),
    )
    assert state.result == "row: 3 lines"


def test_a_method_can_be_submitted(file_store: tracked.FileStore) -> None:
    class Importer:
        def __init__(self, rows: int) -> None:
            self.rows = rows

        @tracked.tracked("importer-{self.rows}")
        def run(self) -> int:
            return self.rows * 2

    progress = tracked.submit(Importer(5).run)
    assert (progress.key, progress.wait(DEADLINE)) == ("importer-5", 10)


def test_the_request_scope_reaches_the_job(tmp_path: Path) -> None:
    """The client's progress_id and the app's store, as a web integration sets them."""
    app_store = tracked.FileStore(tmp_path / "app-store")
    seen: list[tuple[str, str | None]] = []

    @tracked.tracked("export")
    def export() -> None:
        seen.append((tracked.current().key, request_scope.get() and "scope"))

    token = request_scope.set(RequestScope(progress_id="client-7", store=app_store))
    try:
        progress = tracked.submit(export)
    finally:
        request_scope.reset(token)
    progress.wait(DEADLINE)
    assert seen == [("export\0client-7", "scope")]
    state = tracked.load("export", progress_id="client-7", store=app_store)
    assert state is not None and state.state == "finished"
    assert tracked.load("export", progress_id="client-7") is None  # not the default store


@pytest.mark.parametrize("submitted", [1, 2, 3, 4, 6])
def test_runs_beyond_max_workers_wait_queued_in_line(
    file_store: tracked.FileStore, submitted: int
) -> None:
    """With max_workers=3: 1, cap-1, cap, cap+1 and twice the cap jobs at once; the
    waiting ones read ``queued`` with their place in line (1 = next), in the store."""
    tracked.configure(max_workers=3)
    gate = threading.Event()
    runs = [tracked.submit(blocked, n, gate) for n in range(submitted)]
    started = min(submitted, 3)

    def stored() -> list[tuple[str, int | None]]:
        states = [tracked.load(f"blocked-{n}") for n in range(submitted)]
        return [(s.state, s.position) for s in states if s is not None]

    expected = [("running", None)] * started + [
        ("queued", place) for place in range(1, submitted - started + 1)
    ]
    eventually(lambda: stored() == expected)
    assert [run.position for run in runs] == [p for _, p in expected]
    gate.set()
    assert [run.wait(DEADLINE) for run in runs] == list(range(submitted))
    assert {run.snapshot().status for run in runs} == {"finished"}
    assert {(s, p) for s, p in stored()} == {("finished", None)}


def test_wait_with_a_timeout_raises_timeout_error_while_the_job_runs(
    file_store: tracked.FileStore,
) -> None:
    gate = threading.Event()
    progress = tracked.submit(blocked, 9, gate)
    with pytest.raises(TimeoutError):
        progress.wait(0)
    gate.set()
    assert progress.wait(DEADLINE) == 9


def test_wait_on_a_progress_not_submitted_is_a_type_error(file_store: tracked.FileStore) -> None:
    with tracked.start("by-hand") as progress, pytest.raises(TypeError, match="submit"):
        progress.wait()


def test_submit_refuses_an_undecorated_function_naming_it(file_store: tracked.FileStore) -> None:
    def plain() -> None:
        pass

    with pytest.raises(TypeError, match=r"plain: decorate it with @tracked\.tracked") as caught:
        tracked.submit(plain)
    assert "test_jobs" in str(caught.value) and "0x" not in str(caught.value)


def test_bad_pool_settings_are_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(tracked.InvalidValue, match="max_workers"):
            tracked.configure(max_workers=bad)  # type: ignore[arg-type]
    with pytest.raises(tracked.InvalidValue, match="exit_timeout"):
        tracked.configure(exit_timeout=-1)


EXITING = r"""
import sys, threading, time, tracked
store, mode = sys.argv[1:3]
tracked.configure(store=store, max_workers=1, exit_timeout=float(sys.argv[3]))
release = threading.Event()
printed = threading.Event()  # the job's line is out before the main thread prints its own

@tracked.tracked("job-{n}", total=1)
def job(n):
    print("started", n, flush=True)
    printed.set()
    if mode == "stuck":
        release.wait()  # never set: only the exit timeout ends it
    else:
        time.sleep(0.3)
    tracked.current().increment()
    return n

runs = [tracked.submit(job, n) for n in range(4)]
printed.wait(30)
assert runs[0].snapshot().state != "queued"
print("exiting", flush=True)
"""


def run_exiting(tmp_path: Path, mode: str, exit_timeout: float) -> tuple[str, tracked.FileStore]:
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    store = tracked.FileStore(tmp_path / "exit-store")
    finished = subprocess.run(
        [sys.executable, str(script), str(store.directory), mode, str(exit_timeout)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout, store


def test_interpreter_exit_cancels_queued_runs_and_waits_for_the_running_one(
    tmp_path: Path,
) -> None:
    out, store = run_exiting(tmp_path, "quick", exit_timeout=30)
    assert out.splitlines() == ["started 0", "exiting"]
    states = {s.name: s for s in store.list()}
    assert states["job-0"].state == "finished" and states["job-0"].result == 0
    for n in (1, 2, 3):
        assert (states[f"job-{n}"].state, states[f"job-{n}"].status) == (
            "cancelled", "cancelled before it started"
        )
    assert not any(s.in_progress for s in store.list())


def test_interpreter_exit_ends_a_run_still_going_after_exit_timeout_cancelled(
    tmp_path: Path,
) -> None:
    out, store = run_exiting(tmp_path, "stuck", exit_timeout=0.2)
    assert out.splitlines() == ["started 0", "exiting"]
    assert [(s.name, s.state) for s in sorted(store.list(), key=lambda s: s.name or "")] == [
        ("job-0", "cancelled"),
        ("job-1", "cancelled"),
        ("job-2", "cancelled"),
        ("job-3", "cancelled"),
    ]
    # Read raw, without the liveness rule: the records themselves are ended.
    assert not any(store.read(s.key).state.in_progress for s in store.list())  # type: ignore[union-attr]


def test_a_queued_run_cancelled_at_exit_makes_wait_raise_cancelled(
    file_store: tracked.FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the exit handler does to a queued run, seen from a waiting thread."""
    from tracked import _jobs

    monkeypatch.setattr(_jobs, "_pool", _jobs._Pool())  # this test closes it
    tracked.configure(max_workers=1)
    gate = threading.Event()
    running = tracked.submit(blocked, 1, gate)
    queued = tracked.submit(blocked, 2, gate)
    eventually(lambda: running.snapshot().status == "in progress")
    pool = _jobs._current_pool()
    stopper = threading.Thread(target=pool.shutdown, args=(DEADLINE,))
    stopper.start()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.wait(DEADLINE)
    gate.set()
    stopper.join(DEADLINE)
    assert running.wait(DEADLINE) == 1
    with pytest.raises(RuntimeError, match="exit"):
        tracked.submit(blocked, 3, gate)
    state = tracked.load("blocked-2")
    assert state is not None and state.state == "cancelled"


def test_a_generator_whose_claim_fails_is_closed_unrun(file_store: tracked.FileStore) -> None:
    ran: list[str] = []

    @tracked.tracked("feed")
    def feed() -> Iterator[str]:
        try:
            ran.append("body")
            yield "item"
        finally:
            ran.append("closed")

    with tracked.start("feed"), pytest.raises(tracked.AlreadyRunning):
        tracked.submit(feed)
    assert ran == []
