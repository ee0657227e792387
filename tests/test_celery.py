"""``tracked.celery``: a real ``celery worker`` (solo pool) runs plain ``@tracked`` tasks
(tests/tracked_celery_jobs.py) of an app with ``tracked.celery.install(app)``."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import tracked
from tests.conftest import ROOT, RedisServer
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


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def until(
    read: Callable[[], tracked.State | None], holds: Callable[[tracked.State], bool]
) -> tracked.State:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        state = read()
        if state is not None and holds(state):
            return state
        time.sleep(0.02)
    raise AssertionError(f"never held; last state: {read()}")


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
        assert first.get(timeout=DEADLINE) == done.result  # Celery's result and the run's agree
        flaky = until(
            lambda: store.load(f"celery-flaky\0{retried.id}"), lambda s: not s.in_progress
        )
        assert (flaky.state, flaky.attempt, flaky.result) == ("finished", 2, 2)
        assert flaky.messages == ("attempt 1", "attempt 2") and flaky.count == 2
        assert retried.get(timeout=DEADLINE) == 2
        # The cancelled one never ran (revoked, or skipped if it was already received).
        time.sleep(0.5)
        assert not (side / "c-dropped.started").exists()
        assert store.load(f"celery-import\0{dropped.id}").state == "cancelled"  # type: ignore[union-attr]
    finally:
        stop(process)
