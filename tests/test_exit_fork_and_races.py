"""Exit, fork and race regressions: a process that exits mid-run, a child forked while
threads hold locks, a run read while it ends, refused calls that must change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import bottle
import pytest
import webtest

import tracked
from tracked import FileStore, InvalidValue, MemoryStore, Store
from tracked.bottle import TrackedPlugin

# ------------------------------------------------------------------ a refused call


def test_a_call_refused_for_a_bad_message_changes_nothing(store: Store) -> None:
    with tracked.start("refused", total=10, store=store) as progress:
        progress.increment(2)
        with pytest.raises(InvalidValue):
            progress.increment(3, None)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            progress.decrement(1, "fine", 5)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            progress.add_message("fine", None)  # type: ignore[arg-type]
        assert (progress.count, progress.messages, progress.message_count) == (2, (), 0)


# ------------------------------------------------------------------ interpreter exit

EXITING_WITH_A_RUNNING_HANDLE = """
import sys, tracked
progress = tracked.start("left", total=None, store=sys.argv[1], min_interval=5)
for _ in range(1000):
    progress.increment(1)
progress.add_message("last")
"""


def test_a_process_exiting_with_a_running_handle_ends_it_without_hanging(
    tmp_path: Path,
) -> None:
    """The flusher thread used to be frozen by the interpreter's finalisation while
    holding its lock, and the handle collected then (ending its run) waited for it
    for ever: about one exit in two hung."""
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXITING_WITH_A_RUNNING_HANDLE))
    for round_ in range(12):
        directory = tmp_path / f"store{round_}"
        done = subprocess.run(
            [sys.executable, str(script), str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(tracked.__file__).parent.parent)},
        )
        assert done.returncode == 0, done.stderr
        state = FileStore(directory).load("left")
        assert state is not None
        assert (state.count, state.state, state.messages) == (1000, "finished", ("last",))


# ------------------------------------------------------------------ fork


def _exit_status(pid: int, limit: float = 10.0) -> int | None:
    """The child's exit status, or None (after killing it) if it hangs: a guard
    against a deadlock, not a timing assertion."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_threads_write_to_a_memory_store_can_claim_in_it() -> None:
    """The store's lock, held by a writing thread at the fork, stayed locked in the
    child for ever: its first claim hung (one fork in a few dozen)."""
    store = MemoryStore()
    stop = threading.Event()
    progress = tracked.start("parent", total=None, store=store, min_interval=0)

    def hammer() -> None:
        while not stop.is_set():
            progress.increment(1)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for round_ in range(80):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    with tracked.start(f"child{round_}", store=store, min_interval=0) as own:
                        own.increment(1)
                finally:
                    os._exit(0)
            statuses.append(_exit_status(pid))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        progress.finish()
    assert statuses == [0] * 80


# ------------------------------------------------------------------ a form's progress_id


def test_a_form_progress_id_is_read_whatever_the_case_of_its_media_type() -> None:
    """Bottle reads the form of ``Application/X-WWW-Form-Urlencoded`` (media types
    ignore case), but the plugin skipped its progress_id: the run got another name."""
    store = MemoryStore()
    app = bottle.Bottle()
    app.install(TrackedPlugin(store))

    @app.post("/upload")
    @tracked.tracked(total=5)
    def upload() -> str:
        tracked.current().increment(5)  # type: ignore[union-attr]
        return "note=" + (bottle.request.forms.getunicode("note") or "")

    client = webtest.TestApp(app)
    answer = client.post(
        "/upload",
        "progress_id=form-case&note=kept",
        content_type="Application/X-WWW-Form-Urlencoded; Charset=UTF-8",
    )
    assert answer.text == "note=kept"
    state = store.load("form-case")
    assert state is not None and state.count == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_threads_name_a_store_by_url_can_use_it() -> None:
    """The lock guarding the stores opened by path or URL, held by a thread at the
    fork, stayed locked in the child: its first ``load``/``start`` naming a store
    that way hung (nearly every fork while other threads did the same)."""
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            tracked.load("anything", store="memory://")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for _ in range(10):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    tracked.load("anything", store="memory://")
                    with tracked.start("child", store="memory://", min_interval=0) as own:
                        own.increment(1)
                finally:
                    os._exit(0)
            statuses.append(_exit_status(pid))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [0] * 10


@tracked.tracked(name="forked-job-{i}", store="memory://")
def _forked_job(i: int) -> int:
    return i


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_threads_submit_can_submit() -> None:
    """The job pool's lock, held by a submitting thread at the fork, stayed locked in
    the child: its first ``tracked.submit`` hung. The threads here take that lock
    as every ``submit`` does first (``_current_pool``), but without running jobs,
    so that a fork lands inside it at once."""
    from tracked import _jobs

    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            _jobs._current_pool()

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for round_ in range(5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                status = 2
                try:
                    status = 0 if tracked.submit(_forked_job, round_).wait(30) == round_ else 1
                finally:
                    os._exit(status)
            statuses.append(_exit_status(pid))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [0] * 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_threads_run_tracked_loops_can_run_one() -> None:
    """The lock of the loop-and-bar drivers, held by a thread at the fork, stayed
    locked in the child: its first ``tracked.track`` loop hung. The threads take
    that lock as every tracked loop does when it ends, without the loop around it,
    so that a fork lands inside it at once."""
    from tracked import _adopt

    stop = threading.Event()
    nobody = object()

    def hammer() -> None:
        while not stop.is_set():
            _adopt.release_driver(nobody, nobody)  # type: ignore[arg-type]

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    statuses = []
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                status = 2
                try:
                    loop = tracked.track(range(3), "forked-loop", store=MemoryStore())
                    status = 0 if sum(loop) == 3 else 1
                finally:
                    os._exit(status)
            statuses.append(_exit_status(pid))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [0] * 5


# ------------------------------------------------------------------ read, then judged


def test_a_run_that_ends_while_it_is_read_never_reads_abandoned(store: Store) -> None:
    """A reader that read the running record just before the owner wrote its final
    state and let go of the run judged the owner gone: the run read ``abandoned``
    (a terminal state: pollers stopped there) although it had finished."""
    states = []
    for round_ in range(300):
        name = f"ending-{round_}"
        progress = tracked.start(name, total=1, store=store, min_interval=0)
        ender = threading.Thread(target=progress.finish)
        ender.start()
        state = store.load(name)
        while state is not None and state.in_progress:
            state = store.load(name)
        ender.join()
        assert state is not None
        states.append(state.state)
    assert set(states) == {"finished"}


def test_a_child_forked_while_threads_claim_in_a_file_store_claims_at_once(
    file_store: FileStore,
) -> None:
    """Four threads start and finish three names in a tight loop while the main thread
    forks 60 children, each starting the same names: no child (and no thread) waits on
    a record lock its fork copied (one copy keeps a ``flock`` for as long as it lives)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        for i in range(10**9):
            if stop.is_set():
                return
            try:
                with tracked.start(f"shared-{i % 3}"):
                    pass
            except tracked.AlreadyRunning:
                pass
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    codes = []
    try:
        for _ in range(60):
            pid = os.fork()
            if pid == 0:  # the child: exit 0 if its starts waited on nothing
                code = 1
                try:
                    began = time.monotonic()
                    for i in range(3):
                        try:
                            with tracked.start(f"shared-{i}"):
                                pass
                        except tracked.AlreadyRunning:
                            pass
                    code = 0 if time.monotonic() - began < 5 else 3
                finally:
                    os._exit(code)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert codes == [0] * 60 and failures == []
