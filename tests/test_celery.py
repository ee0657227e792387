"""``tracked.celery``: a real ``celery worker`` (solo pool) runs plain ``@tracked`` tasks
(tests/tracked_celery_jobs.py) of an app with ``tracked.celery.install(app)``."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import tracked
from tests.conftest import ROOT, RedisServer
from tests.conftest import stop_group as stop
from tests.conftest import until_state as until
from tracked.redis import RedisStore

LEASE = 1.0
DEADLINE = 60.0


@pytest.fixture(scope="module")
def url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/6"


@pytest.fixture(scope="module")
def env(url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    values = {
        "TRACKED_JOBS_REDIS": url,
        "TRACKED_JOBS_LEASE": str(LEASE),
        "TRACKED_JOBS_SIDE": str(tmp_path_factory.mktemp("celery-side")),
        "PYTHONPATH": str(ROOT),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield {**os.environ, **values}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def jobs(env: dict[str, str]) -> ModuleType:
    return importlib.import_module("tests.tracked_celery_jobs")


@pytest.fixture
def store(jobs: ModuleType, url: str) -> Iterator[RedisStore]:
    reader = RedisStore(url, lease=LEASE)
    tracked.configure(store=reader)
    yield reader
    tracked.configure(store=None)
    reader.close()


def outcome(result: Any) -> Any:
    """A task's result, polled: ``AsyncResult.get()`` would subscribe this process to the
    result backend's pub/sub for good, and other modules count the server's subscribers."""
    deadline = time.monotonic() + DEADLINE
    while not result.ready():
        assert time.monotonic() < deadline, result.state
        time.sleep(0.05)
    return result.result


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.tracked_celery_jobs",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def test_sent_tasks_read_queued_then_a_solo_worker_takes_them_over(
    jobs: ModuleType,
    store: RedisStore,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    side = Path(env["TRACKED_JOBS_SIDE"])
    first = jobs.import_rows.delay(3, 0.01, "c-first")
    dropped = jobs.import_rows.delay(3, 0.01, "c-dropped")
    retried = jobs.flaky.delay("c-flaky")
    # Queued before any worker exists: the record is there when delay() returns.
    for result, name in (
        (first, "celery-import"),
        (dropped, "celery-import"),
        (retried, "celery-flaky"),
    ):
        state = store.load(f"{name}\0{result.id}")
        assert state is not None and (state.state, state.count, state.attempt) == ("queued", 0, 1)
    assert tracked.cancel("celery-import", progress_id=dropped.id)
    state = store.load(f"celery-import\0{dropped.id}")
    assert state is not None and (state.state, state.count) == ("cancelled", 0)
    process = start_worker(env, tmp_path / "celery.log")
    try:
        done = until(lambda: store.load(f"celery-import\0{first.id}"), lambda s: not s.in_progress)
        assert (done.state, done.count, done.result) == ("finished", 3, {"rows": 3})
        assert outcome(first) == done.result  # Celery's result and the run's agree
        flaky = until(
            lambda: store.load(f"celery-flaky\0{retried.id}"), lambda s: not s.in_progress
        )
        assert (flaky.state, flaky.attempt, flaky.result) == ("finished", 2, 2)
        assert flaky.messages == ("attempt 1", "attempt 2") and flaky.count == 2
        assert outcome(retried) == 2
        # The cancelled one never ran (revoked, or skipped if it was already received).
        time.sleep(0.5)
        assert not (side / "c-dropped.started").exists()
        deadline = time.monotonic() + DEADLINE
        while dropped.state != "REVOKED":  # Celery's result agrees with the run's end
            assert time.monotonic() < deadline, dropped.state
            time.sleep(0.05)
        assert store.load(f"celery-import\0{dropped.id}").state == "cancelled"  # type: ignore[union-attr]
    finally:
        stop(process)


@pytest.fixture(scope="module")
def solo(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One solo worker for the module's remaining tests."""
    log = tmp_path_factory.mktemp("celery-solo") / "celery.log"
    process = start_worker(env, log)
    yield log
    stop(process)


@pytest.mark.parametrize("checks", [True, False])
def test_cancel_of_a_running_task(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str], checks: bool
) -> None:
    side = Path(env["TRACKED_JOBS_SIDE"])
    mark = f"c-running-{checks}"
    result = jobs.loop.delay(40, 0.05, mark, checks)
    key = f"celery-loop\0{result.id}"
    until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 2)
    assert tracked.cancel("celery-loop", progress_id=result.id, store=store)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    if checks:  # stopped at the request: cancelled, and Celery says revoked
        assert state.state == "cancelled" and state.count < 40
        assert not (side / f"{mark}.done").exists()
        deadline = time.monotonic() + DEADLINE
        while result.state != "REVOKED":
            assert time.monotonic() < deadline, result.state
            time.sleep(0.05)
    else:  # never looked: its own end, the request on record (honest end)
        assert (state.state, state.count, state.cancel_requested) == ("finished", 40, True)
        assert outcome(result) == state.result


def test_revoke_before_start_ends_the_run_cancelled_unrun(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str]
) -> None:
    side = Path(env["TRACKED_JOBS_SIDE"])
    result = jobs.loop.apply_async((3, 0.01, "c-revoked"), countdown=3)  # received, waiting
    key = f"celery-loop\0{result.id}"
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    time.sleep(0.5)
    result.revoke()
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert (state.state, state.count) == ("cancelled", 0)
    time.sleep(3.0)  # past its countdown: it still never runs
    assert not (side / "c-revoked.started").exists()


def test_an_error_before_the_body_ends_the_run_failed(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str]
) -> None:
    result = jobs.never_starts.delay("c-setup")
    key = f"celery-setup\0{result.id}"
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert state.state == "failed" and "the task's setup failed" in (state.error or "")
    assert not (Path(env["TRACKED_JOBS_SIDE"]) / "c-setup.started").exists()


def test_a_purged_queue_ends_its_runs_abandoned_after_the_queued_timeout(
    jobs: ModuleType, store: RedisStore
) -> None:
    tracked.configure(queued_timeout=1.0)
    try:
        result = jobs.loop.apply_async((3, 0.01, "c-purged"), queue="nobody-listens")
    finally:
        tracked.configure(queued_timeout=86400)
    key = f"celery-loop\0{result.id}"
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    jobs.app.control.purge()
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert (state.state, state.count) == ("abandoned", 0)


def test_prefork_soft_time_limit_fails_terminate_cancels_and_kill_9_reads_abandoned(
    jobs: ModuleType, store: RedisStore, env: dict[str, str], tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.tracked_celery_jobs",
        "worker",
        "--pool=prefork",
        "-c",
        "2",
        "-Q",
        "prefork",
        "--loglevel=INFO",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]
    with (tmp_path / "prefork.log").open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        limited = jobs.loop.apply_async((100, 0.05, "c-soft"), queue="prefork", soft_time_limit=0.5)
        killed = jobs.loop.apply_async((400, 0.05, "c-killed"), queue="prefork")
        state = until(lambda: store.load(f"celery-loop\0{limited.id}"), lambda s: not s.in_progress)
        assert state.state == "failed" and "SoftTimeLimitExceeded" in (state.error or "")
        terminated = jobs.loop.apply_async((400, 0.05, "c-term"), queue="prefork")
        term_key = f"celery-loop\0{terminated.id}"
        until(lambda: store.load(term_key), lambda s: s.state == "running" and s.count >= 1)
        terminated.revoke(terminate=True)  # the worker kills the task's process
        # Celery signals the task's process before it announces the revoke: the dying
        # process must write no end of its own (it wrote "failed SystemExit", read
        # before the worker's revoke handler said cancelled). Every read until the end.
        seen = [store.load(term_key)]
        deadline = time.monotonic() + DEADLINE
        while seen[-1] is None or seen[-1].in_progress:
            assert time.monotonic() < deadline, seen[-1]
            seen.append(store.load(term_key))
        assert {s.state for s in seen if s is not None} <= {"running", "cancelled"}, seen
        state = seen[-1]
        assert (state.state, state.error) == ("cancelled", None) and state.count < 400
        key = f"celery-loop\0{killed.id}"
        running = until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 1)
        os.kill(int(running.messages[0].split()[1]), signal.SIGKILL)
        state = until(lambda: store.load(key), lambda s: not s.in_progress)
        assert state.state == "abandoned" and state.count < 400
        assert store.load(term_key).state == "cancelled"  # nothing wrote over the verdict
    finally:
        stop(process)


def test_a_duplicate_task_id_runs_as_that_ids_run_never_under_the_bare_name(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str]
) -> None:
    # Celery swallows the publisher's AlreadyRunning and sends the message anyway;
    # its worker used to run it as a new run of the bare name "celery-loop", which
    # no reader of the task id looks for. Now it carries the task id's key: it runs
    # once the first run has ended, as a new run of that key.
    side = Path(env["TRACKED_JOBS_SIDE"])
    task_id = "c-dup-task"
    key = f"celery-loop\0{task_id}"
    jobs.loop.apply_async((10, 0.05, "c-dup-1"), task_id=task_id)
    until(lambda: store.load(key), lambda s: s.state == "running")
    jobs.loop.apply_async((3, 0.01, "c-dup-2"), task_id=task_id)  # while the first runs
    deadline = time.monotonic() + DEADLINE
    while not (side / "c-dup-2.done").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert (state.state, state.count, state.total) == ("finished", 3, 3)
    assert (side / "c-dup-1.done").exists()  # the first ran to its end first
    assert store.load("celery-loop") is None


def test_a_task_id_that_is_no_progress_id_fails_the_task_unrun(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str]
) -> None:
    # The publisher's InvalidName is only logged by Celery, and the message is sent
    # with no ticket: its worker used to run it as a run of the bare name, which no
    # reader of the task id finds. Now the task fails, saying why, and never runs.
    result = jobs.loop.apply_async((3, 0.01, "c-bad-id"), task_id="a b")
    error = outcome(result)
    assert result.state == "FAILURE"
    assert "'a b' cannot be tracked" in str(error) and "task_id" in str(error)
    assert not (Path(env["TRACKED_JOBS_SIDE"]) / "c-bad-id.started").exists()
    assert store.load("celery-loop") is None


def test_a_task_asked_to_stop_is_not_run_again_by_its_retry(
    jobs: ModuleType, store: RedisStore, solo: Path, env: dict[str, str]
) -> None:
    # self.retry() after a request the attempt never looked at: the retry used to
    # claim the ended key afresh and run the body again from scratch.
    side = Path(env["TRACKED_JOBS_SIDE"])
    result = jobs.stubborn.delay("c-stubborn", 1.0)
    key = f"celery-stubborn\0{result.id}"
    until(lambda: store.load(key), lambda s: s.state == "running")
    assert tracked.cancel("celery-stubborn", progress_id=result.id, store=store)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    time.sleep(1.5)  # the retry's message is received and handled
    assert not (side / "c-stubborn.attempt2").exists()
    assert store.load(key) == state
    assert (state.state, state.cancel_requested, state.count) == ("failed", True, 1)


def test_a_celery_group_of_50_tracked_tasks_is_one_tracked_group(
    jobs: ModuleType, store: RedisStore, env: dict[str, str], tmp_path: Path
) -> None:
    import celery

    with tracked.group("celery-batch", store=store) as batch:
        sent = celery.group(jobs.part.s(i, batch.token) for i in range(50)).apply_async(
            queue="groups"
        )
    late = jobs.part.apply_async((50, batch.token), queue="groups")  # the group is closed
    refused = store.load(f"part-50\0{late.id}")  # ended at once: the worker skips it
    assert refused is not None and (refused.state, refused.error) == (
        "cancelled", "its group is closed to new runs",
    )
    state = store.load("celery-batch")
    assert state is not None and state.children == {  # counted before any worker runs
        "total": 50, "queued": 50, "running": 0, "finished": 0, "failed": 0,
        "cancelled": 0, "abandoned": 0,
    }
    command = [sys.executable, "-m", "celery", "-A", "tests.tracked_celery_jobs", "worker",
               "--pool=solo", "-Q", "groups", "--without-heartbeat", "--without-gossip",
               "--without-mingle"]
    with (tmp_path / "worker.log").open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        state = until(lambda: store.load("celery-batch"), lambda s: not s.in_progress, DEADLINE)
    finally:
        stop(process)
    assert state.children == {
        "total": 50, "queued": 0, "running": 0, "finished": 49, "failed": 1,
        "cancelled": 0, "abandoned": 0,
    }
    assert state.state == "failed" and "part-7" in (state.error or "")
    assert sent.completed_count() == 49
    after = store.load(f"part-50\0{late.id}")
    assert after == refused, after  # never run, never counted
