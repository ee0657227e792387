"""Jobs started from a web route with ``tracked.submit`` and answered with
``tracked.bottle.accepted``: in process (webtest) and under real gunicorn, 3 sync workers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle
import pytest
import webtest

import tracked
from tests.test_demo_e2e import DemoServer, demo_app, demo_server, final_state, request
from tracked import _jobs
from tracked.bottle import TrackedPlugin, accepted

DEADLINE = 30.0
#: Long enough that three jobs started one after another all still run when polled.
JOB_SECONDS = 8.0
STEPS = 20


# ----------------------------------------------------------------------------- in process


class Gate(threading.Event):
    """What the in-process jobs wait on, and the jobs submitted through it: the pool
    that runs them is process-wide, so a test's jobs must be over before the next
    test submits (a queued job's position counts every job still in line)."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tracked.Progress] = []

    def submit(self, func: Any, /, *args: Any) -> tracked.Progress:
        progress = tracked.submit(func, *args)
        self.jobs.append(progress)
        return progress


def build_app(store: tracked.Store, gate: Gate, **options: Any) -> bottle.Bottle:
    app = bottle.Bottle()
    app.install(TrackedPlugin(store, **options))

    @tracked.tracked("export")
    def export(rows: int) -> dict[str, int]:
        gate.wait(DEADLINE)
        return {"rows": rows}

    @tracked.tracked(progress_id=lambda rows: f"by-id-{rows}")
    def by_id(rows: int) -> None:
        gate.wait(DEADLINE)

    @app.post("/export")
    def start_export() -> Any:
        return accepted(gate.submit(export, 3))

    @app.post("/by-id")
    def start_by_id() -> Any:
        return accepted(gate.submit(by_id, 5))

    return app


@pytest.fixture
def gate() -> Iterator[Gate]:
    """Opened at teardown, which then waits for the test's jobs to end (not only to
    wake): no job of one test still holds a pool thread or a place in line in the next."""
    event = Gate()
    yield event
    event.set()
    for job in event.jobs:
        job.wait(DEADLINE)


@pytest.fixture(autouse=True)
def _idle_pool() -> None:
    """Start each test with no job of an earlier test (of any file this xdist worker
    ran) in the process-wide pool: a queued run's position counts every job in line."""
    deadline = time.monotonic() + DEADLINE
    while (pool := _jobs._pool) is not None and (pool.queue or pool.running):
        assert time.monotonic() < deadline, f"earlier tests' jobs never ended: {pool.running}"
        time.sleep(0.01)


def test_accepted_without_the_plugin_warns_once_that_the_clients_progress_id_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracked.bottle, "_warned_no_plugin", False)
    store = tracked.FileStore(tmp_path / "no-plugin-store")
    app = bottle.Bottle()  # no TrackedPlugin: nothing carries the request's progress_id

    @tracked.tracked("forgotten", total=1, store=store)
    def forgotten() -> None:
        tracked.current().increment()

    @app.post("/go")
    def go() -> Any:
        progress = tracked.submit(forgotten)
        progress.wait(DEADLINE)
        return accepted(progress)

    client = webtest.TestApp(app)
    with caplog.at_level("WARNING", logger="tracked"):
        client.post("/go?progress_id=tab-1", status=202)
        client.post("/go?progress_id=tab-2", status=202)
    warnings = [r.getMessage() for r in caplog.records if "install TrackedPlugin" in r.getMessage()]
    assert len(warnings) == 1 and "'forgotten'" in warnings[0]


def test_accepted_with_the_plugin_does_not_warn(
    tmp_path: Path, gate: Gate, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracked.bottle, "_warned_no_plugin", False)
    app = webtest.TestApp(build_app(tracked.FileStore(tmp_path / "app-store"), gate))
    with caplog.at_level("WARNING", logger="tracked"):
        app.post("/export?progress_id=tab-1", status=202)
        app.post("/by-id?progress_id=tab-2", status=202)
    assert not [r for r in caplog.records if "install TrackedPlugin" in r.getMessage()]


def test_accepted_answers_202_with_the_wire_json_and_the_status_url(
    tmp_path: Path, gate: Gate
) -> None:
    store = tracked.FileStore(tmp_path / "app-store")
    app = webtest.TestApp(build_app(store, gate))
    response = app.post("/export?progress_id=tab-1", status=202)
    assert response.headers["Location"] == "/_progress_status/export?progress_id=tab-1"
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert (body["name"], body["progress_id"]) == ("export", "tab-1")
    assert (body["state"], body["status"], body["position"]) in (
        ("queued", "queued", 1),
        ("running", "in progress", None),
    )
    assert body["in_progress"] is True and body["result"] is None
    gate.set()
    deadline = time.monotonic() + DEADLINE
    while app.get(response.headers["Location"]).json["in_progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    final = app.get(response.headers["Location"]).json
    assert (final["state"], final["result"]) == ("finished", {"rows": 3})


def test_a_second_start_while_the_job_runs_answers_409(
    tmp_path: Path, gate: Gate
) -> None:
    app = webtest.TestApp(build_app(tracked.FileStore(tmp_path / "s"), gate))
    app.post("/export?progress_id=tab-2", status=202)
    refused = app.post("/export?progress_id=tab-2", status=409)
    assert "already running" in refused.json["error"]
    app.post("/export?progress_id=tab-3", status=202)  # another client's id is its own run


def test_the_status_url_follows_the_plugin_prefix_and_the_mount_point(
    tmp_path: Path, gate: Gate
) -> None:
    inner = build_app(tracked.FileStore(tmp_path / "s"), gate, prefix="/progress")
    outer = bottle.Bottle()
    outer.mount("/app/", inner)
    app = webtest.TestApp(outer)
    named = app.post("/app/export", status=202)
    assert named.headers["Location"] == "/app/progress/export"
    assert app.get(named.headers["Location"]).json["name"] == "export"
    alone = app.post("/app/by-id", status=202)
    assert alone.headers["Location"] == "/app/progress/by-id-5"
    assert app.get(alone.headers["Location"]).json["progress_id"] == "by-id-5"


# ----------------------------------------------------------------------------- under gunicorn


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    directory = tmp_path_factory.mktemp("jobs-demo")
    extra = ("--seconds", str(JOB_SECONDS), "--steps", str(STEPS))
    with demo_server(directory, *extra) as server:
        yield server


def start_job(server: DemoServer, progress_id: str) -> tuple[int, Any, dict[str, Any]]:
    code, headers, body = request(f"{server.url}jobs/background?progress_id={progress_id}", "POST")
    return code, headers, json.loads(body)


def test_submit_route_answers_202_and_the_job_runs_on_to_its_result(demo: DemoServer) -> None:
    progress_id = uuid.uuid4().hex
    code, headers, body = start_job(demo, progress_id)
    assert code == 202, body
    assert headers["Location"] == f"/_progress_status/demo-job?progress_id={progress_id}"
    assert (body["count"], body["progress_id"], body["in_progress"]) == (0, progress_id, True)
    assert body["state"] in ("queued", "running")  # "queued" until a pool thread takes it
    final = final_state(demo, "demo-job", progress_id)
    assert final["state"] == "finished"
    assert final["result"] == {"result": "done", "steps": STEPS}
    assert final["messages"] == demo_app.job_messages(STEPS)
    # The job wrote to the app's store (the plugin's), under the client's progress_id.
    stored = tracked.FileStore(demo.store).load(f"demo-job\0{progress_id}")
    assert stored is not None and stored.result == final["result"]


def test_three_running_jobs_hold_no_worker_so_polls_are_answered_meanwhile(
    demo: DemoServer,
) -> None:
    """3 sync workers, 3 jobs: in the request, every worker would be busy until a job
    ended; off it, each poll finds all three jobs still running."""
    ids = [uuid.uuid4().hex for _ in range(3)]
    for progress_id in ids:
        code, _, body = start_job(demo, progress_id)
        assert code == 202, body
    for _round in range(5):
        for progress_id in ids:
            code, _, body = request(
                f"{demo.url}_progress_status/demo-job?progress_id={progress_id}"
            )
            assert code == 200
            assert json.loads(body)["state"] in ("queued", "running")  # not ended
    for progress_id in ids:
        assert final_state(demo, "demo-job", progress_id)["state"] == "finished"


def test_starting_a_running_job_again_answers_409_from_any_worker(demo: DemoServer) -> None:
    progress_id = uuid.uuid4().hex
    assert start_job(demo, progress_id)[0] == 202
    for _attempt in range(3):  # likely reaching each of the 3 workers
        code, _, body = start_job(demo, progress_id)
        assert code == 409, body
        assert body["status"] == "error" and "already running" in body["error"]
    assert final_state(demo, "demo-job", progress_id)["state"] == "finished"


def test_stopping_the_server_ends_a_running_background_job_cancelled(tmp_path: Path) -> None:
    """gunicorn's SIGTERM makes each worker exit: the demo's jobs get exit_timeout (less
    than gunicorn's graceful_timeout), then end cancelled; none is left running."""
    progress_id = uuid.uuid4().hex
    with demo_server(tmp_path, "--seconds", "600", "--steps", "6000") as server:
        assert start_job(server, progress_id)[0] == 202
        deadline = time.monotonic() + DEADLINE
        while True:
            code, _, body = request(
                f"{server.url}_progress_status/demo-job?progress_id={progress_id}"
            )
            if code == 200 and json.loads(body)["count"] >= 1:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store = tracked.FileStore(server.store)
    record = store.read(f"demo-job\0{progress_id}")  # raw: no liveness rule applied
    assert record is not None
    assert (record.state.state, record.state.in_progress) == ("cancelled", False)
