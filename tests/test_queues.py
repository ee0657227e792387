"""Jobs on real task queues: ``rq worker`` and ``celery worker`` processes run
``@tracked(progress_id=<the queue's job id>)`` functions (tests/queue_jobs.py)
against a real redis-server; a Bottle app enqueues them, answers 202 with the job
id, and serves their progress, result and failure from a RedisStore."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import bottle
import pytest
import webtest

import tracked
from tests.conftest import ROOT, RedisServer
from tracked.bottle import TrackedPlugin, status_url
from tracked.redis import RedisStore

DEADLINE = 60.0
#: The lease the workers' RedisStore holds runs with: a killed worker's job reads
#: abandoned once it lapses.
LEASE = 2.0
KINDS = ["rq", "celery"]
NAMES = {"rq": "rq-import", "celery": "celery-import"}


class Worker:
    """A real queue worker process (and its children) in a session of its own."""

    def __init__(self, kind: str, url: str, queue: str, log: Path) -> None:
        if kind == "rq":
            rq = str(Path(sys.executable).parent / "rq")
            self.command = [rq, "worker", "--url", url, queue]
        else:
            self.command = [
                *(sys.executable, "-m", "celery", "-A", "tests.queue_jobs", "worker"),
                *("--pool=prefork", "-c", "2", "-Q", queue, "--loglevel=INFO"),
                *("--without-heartbeat", "--without-gossip", "--without-mingle"),
            ]
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TRACKED_JOBS_REDIS": url,
            "TRACKED_JOBS_LEASE": str(LEASE),
        }
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, at once."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def queue_url(redis_server: RedisServer) -> str:
    """A database of the session's redis-server for this module's queues and stores."""
    return f"redis://127.0.0.1:{redis_server.port}/3"


@pytest.fixture(scope="module")
def queue_jobs(queue_url: str) -> Iterator[ModuleType]:
    """tests/queue_jobs.py, imported here as the workers import it: pointed at our Redis."""
    saved = os.environ.get("TRACKED_JOBS_REDIS")
    os.environ["TRACKED_JOBS_REDIS"] = queue_url
    try:
        yield importlib.import_module("tests.queue_jobs")
    finally:
        if saved is None:
            del os.environ["TRACKED_JOBS_REDIS"]
        else:
            os.environ["TRACKED_JOBS_REDIS"] = saved
        tracked.configure(store=None)


@pytest.fixture(scope="module")
def workers(
    queue_url: str, queue_jobs: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    """One running rq worker and one celery worker for the module, on queues of their own."""
    logs = tmp_path_factory.mktemp("worker-logs")
    started = {
        kind: Worker(kind, queue_url, f"{kind}-jobs", logs / f"{kind}.log").start()
        for kind in KINDS
    }
    yield started
    for worker in started.values():
        worker.stop()


def enqueue(queue_jobs: ModuleType, url: str, kind: str, queue: str) -> Callable[..., str]:
    """Put a job on the queue the way a web app does; return the queue's job id."""
    if kind == "rq":
        import redis
        import rq

        connection = redis.Redis.from_url(url)

        def put_rq(rows: int, pause: float, fail: bool) -> str:
            job = rq.Queue(queue, connection=connection).enqueue(
                queue_jobs.rq_import, rows, pause, fail
            )
            return str(job.id)

        return put_rq

    def put_celery(rows: int, pause: float, fail: bool) -> str:
        result = queue_jobs.celery_import.apply_async(args=(rows, pause, fail), queue=queue)
        return str(result.id)

    return put_celery


def web_app(store: tracked.Store, name: str, put: Callable[..., str]) -> webtest.TestApp:
    """The web side: ``POST /imports`` enqueues and answers 202 with the job id."""
    app = bottle.Bottle()
    app.install(TrackedPlugin(store))

    @app.post("/imports")
    def start_import() -> Any:
        query = bottle.request.query
        job_id = put(int(query.rows), float(query.pause or 0.01), query.fail == "1")
        body = json.dumps({"job_id": job_id, "status_url": status_url(name, job_id)})
        headers = {"Content-Type": "application/json", "Location": status_url(name, job_id)}
        return bottle.HTTPResponse(body, status=202, headers=headers)

    return webtest.TestApp(app)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def reader(queue_url: str) -> Iterator[RedisStore]:
    store = RedisStore(queue_url, lease=LEASE)
    yield store
    store.close()


def poll(app: webtest.TestApp, url: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the status route (404 until a worker starts the job) until ``until(state)``."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        response = app.get(url, expect_errors=True)
        if response.status_int == 200 and until(response.json):
            return dict(response.json)
        assert response.status_int in (200, 404), response
        time.sleep(0.02)
    raise AssertionError(f"{url}: the condition never held")


def ended(state: dict[str, Any]) -> bool:
    return not state["in_progress"]


def test_a_queued_job_reports_its_progress_and_result_by_job_id(
    kind: str,
    workers: dict[str, Worker],
    queue_jobs: ModuleType,
    queue_url: str,
    reader: RedisStore,
) -> None:
    app = web_app(reader, NAMES[kind], enqueue(queue_jobs, queue_url, kind, f"{kind}-jobs"))
    started = app.post("/imports?rows=5", status=202)
    job_id = started.json["job_id"]
    location = started.headers["Location"]
    assert location == f"/_progress_status/{NAMES[kind]}?progress_id={job_id}"
    final = poll(app, location, ended)
    assert (final["state"], final["count"], final["total"]) == ("finished", 5, 5), workers[
        kind
    ].log()
    assert (final["name"], final["progress_id"]) == (NAMES[kind], job_id)
    assert final["result"] == {"rows": 5, "by": "worker"}
    assert final["messages"][1:] == [f"row {row} imported" for row in range(5)]


def test_a_queued_job_that_raises_reads_failed_with_its_error(
    kind: str,
    workers: dict[str, Worker],
    queue_jobs: ModuleType,
    queue_url: str,
    reader: RedisStore,
) -> None:
    app = web_app(reader, NAMES[kind], enqueue(queue_jobs, queue_url, kind, f"{kind}-jobs"))
    location = app.post("/imports?rows=6&fail=1", status=202).headers["Location"]
    final = poll(app, location, ended)
    assert final["state"] == "failed", workers[kind].log()
    assert final["error"] == "ValueError: row 3 has no email address"
    assert (final["count"], final["result"]) == (4, None)


def test_a_worker_killed_mid_job_reads_abandoned_once_the_lease_lapses(
    kind: str, queue_jobs: ModuleType, queue_url: str, reader: RedisStore, tmp_path: Path
) -> None:
    """SIGKILL the worker and the process running the job (RQ's work horse has a
    process group of its own); the record reads abandoned within the lease + 1 s."""
    queue = f"{kind}-doomed"
    worker = Worker(kind, queue_url, queue, tmp_path / "worker.log").start()
    try:
        app = web_app(reader, NAMES[kind], enqueue(queue_jobs, queue_url, kind, queue))
        location = app.post("/imports?rows=10000&pause=0.05", status=202).headers["Location"]
        running = poll(app, location, lambda state: state["count"] >= 2)
        assert running["state"] == "running"
        horse = int(running["messages"][0].removeprefix("pid "))
        os.kill(horse, signal.SIGKILL)
        worker.kill()
        killed_at = time.monotonic()
        final = poll(app, location, ended)
        waited = time.monotonic() - killed_at
        assert final["state"] == "abandoned"
        assert waited <= LEASE + 1.0
        assert 2 <= final["count"] < 10000
    finally:
        worker.stop()
