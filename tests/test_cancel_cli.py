"""``tracked cancel`` run as a real process against a task running in another process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracked
from tests.conftest import ROOT

WAIT = 10.0

#: A run that never checks for a cancel request: it ignores one until it is killed.
DEAF = r"""
import sys, time, tracked
with tracked.start(sys.argv[2], store=sys.argv[1]):
    print("started", flush=True)
    time.sleep(3600)
"""


def tracked_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracked", *args],
        capture_output=True, text=True, timeout=60,
    )


def start_process(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    return process


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return str(tmp_path / "store")


@pytest.fixture
def worker(store_dir: str) -> Iterator[subprocess.Popen[str]]:
    process = start_process(str(ROOT / "tests" / "cancel_worker.py"), store_dir, "remote")
    deadline = time.monotonic() + WAIT
    while not tracked.is_running("remote", store=store_dir):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_cancel_with_wait_exits_0_once_the_run_ended_cancelled(store_dir, worker):
    done = tracked_cli("--store", store_dir, "cancel", "remote", "--wait", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "asked progress 'remote' to stop", "progress 'remote' ended cancelled",
    ]
    assert worker.wait(WAIT) == 0
    state = tracked.load("remote", store=store_dir)
    assert state is not None and state.state == "cancelled"
    assert state.messages[-1] == "cleanup ran"


def test_cancel_without_wait_exits_0_once_asked(store_dir, worker):
    done = tracked_cli("cancel", "remote", "--store", store_dir)
    assert (done.returncode, done.stdout.strip()) == (0, "asked progress 'remote' to stop")
    assert worker.wait(WAIT) == 0


def test_cancel_of_an_unknown_progress_exits_1_with_one_line(store_dir):
    done = tracked_cli("--store", store_dir, "cancel", "nothing")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "'nothing' is not in" in done.stderr


def test_cancel_of_an_ended_progress_exits_1(store_dir):
    with tracked.start("old", store=store_dir):
        pass
    done = tracked_cli("--store", store_dir, "cancel", "old")
    assert done.returncode == 1 and "already ended finished" in done.stderr


def test_cancel_names_a_progress_id(store_dir):
    with tracked.start("job", progress_id="abc", store=store_dir, min_interval=0.02) as progress:
        other = tracked_cli("--store", store_dir, "cancel", "job", "--progress-id", "x")
        assert other.returncode == 1
        mine = tracked_cli("--store", store_dir, "cancel", "job", "--progress-id", "abc")
        assert mine.returncode == 0
        deadline = time.monotonic() + WAIT
        while not progress.cancel_requested:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_a_run_that_ignores_the_request_past_wait_exits_1(store_dir):
    deaf = start_process("-c", DEAF, store_dir, "deaf")
    try:
        done = tracked_cli("--store", store_dir, "cancel", "deaf", "--wait", "0.3")
        assert done.returncode == 1
        assert "still runs after 0.3s" in done.stderr
    finally:
        deaf.kill()
        deaf.wait()
    done = tracked_cli("--store", store_dir, "cancel", "deaf")  # its owner is dead now
    assert done.returncode == 1 and "already ended abandoned" in done.stderr


@pytest.mark.parametrize(
    "args",
    [["cancel"], ["cancel", "job", "--wait", "soon"], ["cancel", "job", "--progress-id", ""]],
)
def test_cancel_with_bad_input_exits_2_with_one_line(store_dir, args):
    done = tracked_cli("--store", store_dir, *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr


#: Stops at the request, and at once starts a new run of the same name that never ends.
RESTARTS = r"""
import sys, time, tracked
try:
    with tracked.start(sys.argv[2], store=sys.argv[1], min_interval=0.02) as progress:
        print("started", flush=True)
        while True:
            progress.check()
            time.sleep(0.01)
except tracked.Cancelled:
    pass
with tracked.start(sys.argv[2], store=sys.argv[1]):
    time.sleep(3600)
"""


def test_cancel_wait_does_not_take_a_new_run_of_the_name_for_the_one_it_asked(store_dir):
    # It followed the new run: "still runs after 20s" (or that run's end), exit 1,
    # about a run it never asked to stop.
    process = start_process("-c", RESTARTS, store_dir, "restarts")
    try:
        started = time.monotonic()
        done = tracked_cli("--store", store_dir, "cancel", "restarts", "--wait", "20")
        # The CLI reads the record every 50 ms: it sees the cancelled end only if it
        # reads in the instant between the two runs; either answer is about that run.
        assert (done.returncode, done.stderr.strip() or done.stdout.splitlines()[-1]) in {
            (0, "progress 'restarts' ended cancelled"),
            (1, "tracked cancel: progress 'restarts' ended and a new run of it started"
                " before its end could be read"),
        }
        assert time.monotonic() - started < 15
    finally:
        process.kill()
        process.wait()
