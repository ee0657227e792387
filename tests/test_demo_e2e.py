"""The demo (examples/app.py) under real gunicorn with 3 sync workers, driven over HTTP.

One client runs the long route, which holds its worker; other clients poll the
status route, so their answers come from the other worker processes.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT, free_port, wait_for_port

APP = ROOT / "examples" / "app.py"
SECONDS = 3.0
STEPS = 20
DEADLINE = 60.0


def load_demo_module() -> ModuleType:
    """examples/app.py as a module, for the messages its job is meant to emit."""
    spec = importlib.util.spec_from_file_location("tracked_demo_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


demo_app = load_demo_module()


class DemoServer:
    """``python examples/app.py`` on a free port, in a process group of its own."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.store = directory / "store"
        self.log_path = directory / "server.log"
        self.args = [
            sys.executable,
            str(APP),
            "--port",
            str(self.port),
            "--seconds",
            str(SECONDS),
            "--steps",
            str(STEPS),
            "--store",
            str(self.store),
            *extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"the demo did not start:\n{self.log()}") from None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this fixture started
            process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def demo_server(directory: Path, *extra: str) -> Iterator[DemoServer]:
    """A started demo server, stopped (master and workers) on leaving."""
    server = DemoServer(directory, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("demo")) as server:
        yield server


# ----------------------------------------------------------------------------- HTTP helpers


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """One HTTP request; any status (404, 304, ...) is returned, not raised."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def status_url(server: DemoServer, name: str, progress_id: str, since: int = 0) -> str:
    return f"{server.url}_progress_status/{name}?progress_id={progress_id}&since={since}"


def final_state(server: DemoServer, name: str, progress_id: str) -> dict[str, Any]:
    """Poll until the progress has ended; its last state."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        code, _, body = request(status_url(server, name, progress_id))
        if code == 200:
            state = json.loads(body)
            if not state["in_progress"]:
                return dict(state)
        time.sleep(0.05)
    raise AssertionError(f"{name}/{progress_id} did not end within {DEADLINE}s")


class Poller(threading.Thread):
    """A client polling with ``?since=`` as tracked.js does, checking what it gets."""

    def __init__(self, server: DemoServer, progress_id: str, job_done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.progress_id, self.job_done = server, progress_id, job_done
        self.counts: list[int] = []
        self.messages: list[str] = []
        self.gaps: list[tuple[int, int]] = []
        self.mid_job_sightings = 0  # answers showing 0 < count < total while the job ran
        self.final: dict[str, Any] | None = None
        self.failure: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE
        try:
            while self.final is None and time.monotonic() < deadline:
                self.poll_once()
                time.sleep(0.03)
        except Exception as exc:
            self.failure = repr(exc)

    def poll_once(self) -> None:
        running = not self.job_done.is_set()
        url = status_url(self.server, "demo-job", self.progress_id, len(self.messages))
        code, _, body = request(url)
        if code == 404 and not self.counts:
            return  # not started yet
        assert code == 200, (code, body)
        state = json.loads(body)
        first = state["message_count"] - len(state["messages"])
        if first != len(self.messages):
            self.gaps.append((len(self.messages), first))
        self.messages.extend(state["messages"])
        self.counts.append(state["count"])
        if running and 0 < state["count"] < state["total"]:
            self.mid_job_sightings += 1
        if not state["in_progress"]:
            self.final = state


def run_job(server: DemoServer, progress_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    """Start the long route in a thread (it blocks for the whole job)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        outcome["response"] = request(f"{server.url}jobs/main?progress_id={progress_id}", "POST")

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


# ----------------------------------------------------------------------------- tests


def test_other_workers_report_the_long_job_rising_to_finished_with_each_message_once(
    demo: DemoServer,
) -> None:
    progress_id = uuid.uuid4().hex
    job_done = threading.Event()
    pollers = [Poller(demo, progress_id, job_done) for _ in range(2)]
    for poller in pollers:
        poller.start()
    job, outcome = run_job(demo, progress_id)
    job.join(DEADLINE)
    job_done.set()
    for poller in pollers:
        poller.join(DEADLINE)

    code, _, body = outcome["response"]
    assert (code, json.loads(body)) == (200, {"result": "done", "steps": STEPS})
    expected = demo_app.job_messages(STEPS)
    for poller in pollers:
        assert poller.failure is None, poller.failure
        assert poller.counts == sorted(poller.counts), "a count went down"
        assert poller.final is not None
        assert poller.final["state"] == "finished"
        assert (poller.final["count"], poller.final["total"]) == (STEPS, STEPS)
        assert poller.final["percent"] == 100.0
        assert poller.gaps == []
        assert poller.messages == expected
    assert sum(p.mid_job_sightings for p in pollers) > 0, "no poll saw the job mid-way"


def test_an_unchanged_record_answers_304_from_every_worker(demo: DemoServer) -> None:
    """The ETag is the same in every worker process, so If-None-Match works whichever answers."""
    progress_id = uuid.uuid4().hex
    job, _ = run_job(demo, progress_id)
    job.join(DEADLINE)
    url = status_url(demo, "demo-job", progress_id)
    code, headers, _ = request(url)
    assert code == 200
    etag = headers["ETag"]
    answers = [request(url, headers={"If-None-Match": etag}) for _ in range(9)]
    assert [(code, body) for code, _, body in answers] == [(304, b"")] * 9
    assert {h["ETag"] for _, h, _ in answers} == {etag}


def test_job_names_are_kept_apart_by_progress_id(demo: DemoServer) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    job, _ = run_job(demo, first)
    job.join(DEADLINE)
    assert final_state(demo, "demo-job", first)["progress_id"] == first
    code, _, body = request(status_url(demo, "demo-job", second))
    assert code == 404
    assert json.loads(body)["status"] == "error"


def test_streaming_route_sends_each_line_as_it_is_recorded(demo: DemoServer) -> None:
    progress_id = uuid.uuid4().hex
    connection = http.client.HTTPConnection("127.0.0.1", demo.port, timeout=DEADLINE)
    connection.request("GET", f"/jobs/stream?progress_id={progress_id}")
    response = connection.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    first_line = response.readline().decode()
    mid = first_recorded_state(demo, "demo-stream", progress_id)
    rest = response.read().decode()
    connection.close()

    lines = [first_line, *rest.splitlines(keepends=True)]
    assert lines == [demo_app.stream_line(step, STEPS) for step in range(1, STEPS + 1)]
    assert mid["in_progress"] is True, "the job ended before a poll saw it recorded"
    assert mid["messages"][0] == first_line.rstrip("\n")  # a message keeps no line break
    final = final_state(demo, "demo-stream", progress_id)
    assert final["state"] == "finished"
    assert final["count"] == STEPS
    assert final["messages"] == [line.rstrip("\n") for line in lines]


def first_recorded_state(server: DemoServer, name: str, progress_id: str) -> dict[str, Any]:
    """Poll until the progress has counted at least one step; that state."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        code, _, body = request(status_url(server, name, progress_id))
        if code == 200 and json.loads(body)["count"] > 0:
            return dict(json.loads(body))
        time.sleep(0.02)
    raise AssertionError(f"{name}/{progress_id} recorded no step within {DEADLINE}s")


def test_a_client_leaving_the_stream_cancels_its_progress(demo: DemoServer) -> None:
    progress_id = uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", demo.port), timeout=DEADLINE) as sock:
        sock.sendall(
            f"GET /jobs/stream?progress_id={progress_id} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\n\r\n".encode()
        )
        received = b""
        while b"line 1 of" not in received:
            chunk = sock.recv(4096)
            assert chunk, "the stream ended before its first line"
            received += chunk
    final = final_state(demo, "demo-stream", progress_id)
    assert final["state"] == "cancelled"
    assert final["count"] < STEPS


def test_demo_refuses_to_run_on_a_single_sync_worker(tmp_path: Path) -> None:
    """The long request holds its worker: one sync worker could never answer a poll."""
    result = subprocess.run(
        [sys.executable, str(APP), "--workers", "1", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--workers >= 2" in result.stderr


def test_waitress_alternative_serves_polls_while_the_job_runs(tmp_path: Path) -> None:
    """``--server waitress``: one process, threads instead of worker processes."""
    with demo_server(tmp_path, "--server", "waitress", "--threads", "4") as server:
        progress_id = uuid.uuid4().hex
        job_done = threading.Event()
        poller = Poller(server, progress_id, job_done)
        poller.start()
        job, _ = run_job(server, progress_id)
        job.join(DEADLINE)
        job_done.set()
        poller.join(DEADLINE)
        assert poller.failure is None, poller.failure
        assert poller.final is not None and poller.final["state"] == "finished"
        assert poller.messages == demo_app.job_messages(STEPS)
        assert poller.mid_job_sightings > 0
