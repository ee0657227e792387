"""``tracked.rq``: real ``rq worker`` processes run plain ``@tracked`` functions
(tests/tracked_jobs.py) enqueued with ``tracked.rq.enqueue``, on a real redis-server."""

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

import pytest
import redis
import rq
from rq import Retry

import tracked
import tracked.rq
from tests.conftest import ROOT, RedisServer
from tests.conftest import stop_group as stop
from tests.conftest import until_state as until
from tracked.redis import RedisStore

LEASE = 1.0
DEADLINE = 60.0


@pytest.fixture(scope="module")
def url(redis_server: RedisServer) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/5"


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("side-effects")


@pytest.fixture(scope="module")
def env(url: str, side: Path) -> Iterator[dict[str, str]]:
    values = {
        "TRACKED_JOBS_REDIS": url,
        "TRACKED_JOBS_LEASE": str(LEASE),
        "TRACKED_JOBS_SIDE": str(side),
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
    tracked.configure(store=None)


@pytest.fixture(scope="module")
def jobs(env: dict[str, str]) -> ModuleType:
    """tests/tracked_jobs.py as the workers import it: its store is this test's store."""
    return importlib.import_module("tests.tracked_jobs")


@pytest.fixture(scope="module")
def connection(url: str) -> Iterator[redis.Redis]:  # type: ignore[type-arg]
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(jobs: ModuleType, url: str) -> Iterator[RedisStore]:
    reader = RedisStore(url, lease=LEASE)
    tracked.configure(store=reader)  # the publisher's store is the workers' (conftest resets it)
    yield reader
    tracked.configure(store=None)
    reader.close()


def worker(env: dict[str, str], queue: str, *, burst: bool, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).parent / "rq"),
        "worker",
        "--url",
        env["TRACKED_JOBS_REDIS"],
    ]
    if burst:
        command.append("--burst")
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, queue],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_queued_with_positions_then_cancel_before_start_never_runs(
    jobs: ModuleType,
    connection: redis.Redis,
    store: RedisStore,
    env: dict[str, str],  # type: ignore[type-arg]
    side: Path,
    tmp_path: Path,
) -> None:
    queue = rq.Queue("line", connection=connection)
    enqueued = [tracked.rq.enqueue(queue, jobs.import_rows, 4, 0.1, f"line{i}") for i in range(5)]
    states = [store.load(f"import\0{job.id}") for job in enqueued]
    # Readable at once, before any worker exists: queued, in line, nothing done.
    assert [(s.state, s.in_progress, s.position, s.count, s.attempt) for s in states if s] == [
        ("queued", True, n, 0, 1) for n in range(1, 6)
    ]
    assert [job.meta["tracked"]["progress_id"] for job in enqueued] == [j.id for j in enqueued]
    # A duplicate job id while queued: refused, nothing enqueued twice.
    with pytest.raises(tracked.AlreadyRunning):
        tracked.rq.enqueue(queue, jobs.import_rows, 4, 0.1, "dup", job_id=enqueued[0].id)
    assert queue.count == 5
    # Cancel in this process (it enqueued, so it can drop the job from RQ).
    assert tracked.cancel("import", progress_id=enqueued[1].id)
    cancelled = store.load(f"import\0{enqueued[1].id}")
    assert cancelled is not None
    assert (cancelled.state, cancelled.count, cancelled.in_progress) == ("cancelled", 0, False)
    assert enqueued[1].get_status(refresh=True) == "canceled"
    # Cancel by the CLI, a process without the queue: the job stays in line...
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracked",
            "cancel",
            "import",
            "--progress-id",
            enqueued[3].id,
            "--store",
            env["TRACKED_JOBS_REDIS"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert store.load(f"import\0{enqueued[3].id}").state == "cancelled"  # type: ignore[union-attr]
    assert queue.count == 4
    # ...and a burst worker drains the queue; places move as it does.
    seen: list[int] = []
    last = f"import\0{enqueued[4].id}"
    process = worker(env, "line", burst=True, log=tmp_path / "rq.log")
    try:

        def track_position(state: tracked.State) -> bool:
            if state.position is not None and (not seen or seen[-1] != state.position):
                seen.append(state.position)
            return state.state != "queued"

        until(lambda: store.load(last), track_position)
    finally:
        stop(process)
    assert seen[0] == 5 and seen[-1] < 5 and seen == sorted(seen, reverse=True), seen
    for i, job in enumerate(enqueued):
        state = until(lambda job=job: store.load(f"import\0{job.id}"), lambda s: not s.in_progress)
        if i == len(enqueued) - 1:
            stop(process)  # (a burst worker of RQ 3 can hang at its exit, in pubsub teardown)
        if i in (1, 3):  # cancelled while queued: never started, no side effect
            assert (state.state, state.count) == ("cancelled", 0)
            assert not (side / f"line{i}.started").exists()
        else:
            assert (state.state, state.count, state.result) == ("finished", 4, {"rows": 4})
            assert (side / f"line{i}.done").exists()
            assert state.progress_id == job.id and state.position is None


def test_a_retried_job_is_one_run(
    jobs: ModuleType,
    connection: redis.Redis,
    store: RedisStore,
    env: dict[str, str],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    queue = rq.Queue("retry", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.flaky, "flaky1", retry=Retry(max=1))
    process = worker(env, "retry", burst=True, log=tmp_path / "rq.log")
    try:
        state = until(lambda: store.load(f"flaky\0{job.id}"), lambda s: not s.in_progress)
    finally:
        stop(process)
    assert (state.state, state.attempt, state.result) == ("finished", 2, 2)
    assert state.messages == ("attempt 1", "attempt 2")
    assert state.count == 2  # the first attempt's step is kept


@pytest.fixture(scope="module")
def running_worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("rq-log") / "rq.log"
    process = worker(env, "long", burst=False, log=log)
    yield log
    stop(process)


@pytest.mark.parametrize("checks", [True, False])
def test_cancel_of_a_running_job(
    jobs: ModuleType,
    connection: redis.Redis,
    store: RedisStore,
    running_worker: Path,  # type: ignore[type-arg]
    side: Path,
    checks: bool,
) -> None:
    queue = rq.Queue("long", connection=connection)
    mark = f"running-{checks}"
    job = tracked.rq.enqueue(queue, jobs.import_rows, 40, 0.05, mark, checks)
    key = f"import\0{job.id}"
    until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 2)
    assert tracked.cancel("import", progress_id=job.id, store=store)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    if checks:  # the task stopped at the request: cancelled, the rest never ran
        assert state.state == "cancelled" and state.count < 40
        assert not (side / f"{mark}.done").exists()
    else:  # it never looked: its own end, and the request is on record (honest end)
        assert (state.state, state.count, state.cancel_requested) == ("finished", 40, True)
        assert (side / f"{mark}.done").exists()


def test_kill_9_of_the_work_horse_reads_abandoned(
    jobs: ModuleType,
    connection: redis.Redis,
    store: RedisStore,
    running_worker: Path,  # type: ignore[type-arg]
) -> None:
    queue = rq.Queue("long", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.import_rows, 400, 0.05, "killed")
    key = f"import\0{job.id}"
    state = until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 1)
    horse = int(state.messages[0].split()[1])
    os.kill(horse, signal.SIGKILL)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert state.state == "abandoned" and state.count < 400


def test_a_purged_queue_ends_its_runs_abandoned_after_the_queued_timeout(
    jobs: ModuleType,
    connection: redis.Redis,
    store: RedisStore,  # type: ignore[type-arg]
) -> None:
    queue = rq.Queue("purged", connection=connection)
    tracked.configure(queued_timeout=1.0)
    try:
        job = tracked.rq.enqueue(queue, jobs.import_rows, 3)
    finally:
        tracked.configure(queued_timeout=86400)
    key = f"import\0{job.id}"
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    queue.empty()
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert state.state == "abandoned" and state.count == 0
    # The key is free again: the same job id can be enqueued anew.
    again = tracked.rq.enqueue(queue, jobs.import_rows, 3, job_id=job.id)
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    queue.empty()
    assert again.id == job.id


def test_a_job_that_fails_before_its_call_ends_the_run_failed(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
    running_worker: Path,
    side: Path,
) -> None:
    queue = rq.Queue("long", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.import_rows, 3, jobs.Poison(), "poisoned")
    state = until(lambda: store.load(f"import\0{job.id}"), lambda s: not s.in_progress)
    assert state.state == "failed" and "cannot be loaded here" in (state.error or "")
    assert not (side / "poisoned.started").exists()


def test_places_at_the_front_and_of_jobs_waiting_for_others(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
) -> None:
    queue = rq.Queue("places", connection=connection)
    first = tracked.rq.enqueue(queue, jobs.import_rows, 1)
    second = tracked.rq.enqueue(queue, jobs.import_rows, 1)
    front = tracked.rq.enqueue(queue, jobs.import_rows, 1, at_front=True)
    waiting = tracked.rq.enqueue(queue, jobs.import_rows, 1, depends_on=first)
    places = [store.load(f"import\0{job.id}").position for job in (first, second, front, waiting)]  # type: ignore[union-attr]
    assert places == [1, 2, 1, None]
    queue.empty()


def test_rqs_stop_job_command_ends_the_run_cancelled(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
    running_worker: Path,
    side: Path,
) -> None:
    from rq.command import send_stop_job_command

    queue = rq.Queue("long", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.import_rows, 400, 0.05, "stopped", False)
    key = f"import\0{job.id}"
    until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 1)
    send_stop_job_command(connection, job.id)  # RQ kills the work-horse
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert state.state == "cancelled" and state.count < 400
    assert not (side / "stopped.done").exists()


KILLED_MID_ENQUEUE = """
import os, signal, redis, rq
import tracked, tracked.rq
from tests import tracked_jobs as jobs

tracked.configure(queued_timeout=1.0)


class Dying(rq.Queue):
    def enqueue(self, *args, **kwargs):  # the step after the record is published
        os.kill(os.getpid(), signal.SIGKILL)


queue = Dying("dying", connection=redis.Redis.from_url(os.environ["TRACKED_JOBS_REDIS"]))
tracked.rq.enqueue(queue, jobs.import_rows, 3, job_id="killed-mid-enqueue")
"""


def test_kill_9_between_the_record_and_the_push(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
    env: dict[str, str],
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_MID_ENQUEUE], env=env, cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL
    key = "import\0killed-mid-enqueue"
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    assert rq.Queue("dying", connection=connection).count == 0  # never pushed
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert (state.state, state.count) == ("abandoned", 0)  # after its queued timeout
    queue = rq.Queue("dying", connection=connection)
    tracked.rq.enqueue(queue, jobs.import_rows, 3, job_id="killed-mid-enqueue")  # free again
    assert store.load(key).state == "queued"  # type: ignore[union-attr]
    queue.empty()


def test_a_killed_work_horse_whose_job_rq_retries_stays_one_run(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
    running_worker: Path,
) -> None:
    queue = rq.Queue("long", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.import_rows, 20, 0.05, None, False, retry=Retry(max=1))
    key = f"import\0{job.id}"
    state = until(lambda: store.load(key), lambda s: s.state == "running" and s.count >= 3)
    os.kill(int(state.messages[0].split()[1]), signal.SIGKILL)
    # RQ retries at once; the next work-horse waits out the dead one's lease, then
    # takes the same run over: attempt 2, the first attempt's count and messages kept.
    done = until(lambda: store.load(key), lambda s: not s.in_progress)
    assert (done.state, done.attempt) == ("finished", 2)
    assert done.count >= 23 and done.messages[0].startswith("pid ")
    assert sum(m.startswith("pid ") for m in done.messages) == 2


def test_a_server_that_lost_its_scripts_still_gets_the_record(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
) -> None:
    queue = rq.Queue("noscript", connection=connection)
    tracked.rq.enqueue(queue, jobs.import_rows, 1)  # the scripts are loaded
    connection.script_flush()  # as a restarted server would have it
    job = tracked.rq.enqueue(queue, jobs.import_rows, 1)  # one transaction, NOSCRIPT inside
    state = store.load(f"import\0{job.id}")
    assert state is not None and (state.state, state.in_progress) == ("queued", True)
    again = tracked.rq.enqueue(queue, jobs.import_rows, 1)  # loaded again: placed again
    assert store.load(f"import\0{again.id}").position == 3  # type: ignore[union-attr]
    queue.empty()


def test_a_job_asked_to_stop_is_not_run_again_by_its_retry(
    jobs: ModuleType,
    connection: redis.Redis,  # type: ignore[type-arg]
    store: RedisStore,
    running_worker: Path,
    side: Path,
) -> None:
    # The first attempt saw the request but failed on its own; RQ's retry used to
    # claim the ended key afresh and run the body again (attempt 1, count 0).
    queue = rq.Queue("long", connection=connection)
    job = tracked.rq.enqueue(queue, jobs.stubborn, "stubborn-retry", 1.0, retry=Retry(max=1))
    key = f"stubborn\0{job.id}"
    until(lambda: store.load(key), lambda s: s.state == "running")
    assert tracked.cancel("stubborn", progress_id=job.id, store=store)
    state = until(lambda: store.load(key), lambda s: not s.in_progress)
    deadline = time.monotonic() + DEADLINE
    while job.get_status(refresh=True) not in ("finished", "failed", "canceled"):
        assert time.monotonic() < deadline, job.get_status()
        time.sleep(0.05)
    time.sleep(0.3)
    assert not (side / "stubborn-retry.attempt2").exists()
    final = store.load(key)
    assert final == state
    assert (final.state, final.cancel_requested, final.count) == ("failed", True, 1)
    assert "the first attempt fails" in (final.error or "")


def test_a_group_of_50_enqueued_jobs_reads_queued_then_ends_exactly(
    jobs: ModuleType, store: RedisStore, env: dict[str, str], connection: redis.Redis,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    queue = rq.Queue("groups", connection=connection)
    with tracked.group("rq-batch", store=store) as batch:
        enqueued = [
            tracked.rq.enqueue(queue, jobs.import_rows, 2, 0.0, group=batch) for _ in range(50)
        ]
    state = store.load("rq-batch")
    assert state is not None and state.children == {  # counted before any worker runs
        "total": 50, "queued": 50, "running": 0, "finished": 0, "failed": 0,
        "cancelled": 0, "abandoned": 0,
    }
    assert "group" not in enqueued[0].kwargs  # ours, never handed to the function
    process = worker(env, "groups", burst=True, log=tmp_path / "worker.log")
    try:
        assert process.wait(DEADLINE * 2) == 0
    finally:
        stop(process)
    state = until(lambda: store.load("rq-batch"), lambda s: not s.in_progress, DEADLINE)
    assert state.children == {
        "total": 50, "queued": 0, "running": 0, "finished": 50, "failed": 0,
        "cancelled": 0, "abandoned": 0,
    }
    assert (state.state, state.count, state.percent) == ("finished", 50, 100.0)
    with pytest.raises(tracked.InvalidValue, match="closed"):  # closed: no new child
        tracked.rq.enqueue(queue, jobs.import_rows, 2, 0.0, group=batch)
    assert queue.count == 0  # the refused job left in the queue ran later, uncounted
