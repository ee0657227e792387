"""Cancel over real servers: the demo under gunicorn with 3 sync workers (HTTP and its
Stop job button in headless Chromium) and ``tracked serve --allow-cancel``'s Stop button."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

import tracked
from tests.conftest import ROOT, free_port, wait_for_port
from tests.test_browser import TIMEOUT_MS, PageWatch
from tests.test_demo_e2e import (
    STEPS,
    DemoServer,
    demo_app,
    demo_server,
    final_state,
    request,
    run_job,
    status_url,
)

WAIT = 30.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("cancel-demo")) as server:
        yield server


def wait_until_counting(server: DemoServer, name: str, progress_id: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        code, _, body = request(status_url(server, name, progress_id))
        if code == 200 and json.loads(body)["count"] > 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start counting")


def test_a_delete_on_another_gunicorn_worker_stops_the_job_in_the_request(demo):
    # A sync worker holds the in-request job, so every other request reaches another worker.
    progress_id = uuid.uuid4().hex
    thread, outcome = run_job(demo, progress_id)
    wait_until_counting(demo, "demo-job", progress_id)
    code, _, body = request(status_url(demo, "demo-job", progress_id), "DELETE")
    assert code == 202, body
    assert json.loads(body)["in_progress"] is True
    thread.join(WAIT)
    job_code, _, job_body = outcome["response"]
    assert job_code == 409 and "asked to stop" in json.loads(job_body)["error"]
    state = final_state(demo, "demo-job", progress_id)
    assert (state["state"], state["status"], state["error"]) == ("cancelled", "cancelled", None)
    assert state["count"] < STEPS
    assert state["messages"][-1] == demo_app.CLEANUP_MESSAGE
    again, _, _ = request(status_url(demo, "demo-job", progress_id), "DELETE")
    assert again == 409


@pytest.fixture
def watched(chromium: Browser, demo: DemoServer) -> Iterator[PageWatch]:
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = PageWatch(page)
    page.goto(demo.url)
    yield watch
    context.close()


def test_the_demo_stop_button_stops_the_job_and_its_cleanup_runs(watched: PageWatch) -> None:
    page = watched.page
    page.click("#start")
    expect(page.locator("#state")).to_have_text("running")
    expect(page.locator("#messages li").first).to_be_visible()
    with page.expect_response(lambda r: r.request.method == "DELETE") as asked:
        page.click("#cancel")
    assert asked.value.status == 202
    expect(page.locator("#state")).to_have_text("cancelled")
    expect(page.locator("#bar")).to_have_class("bar ended-cancelled")
    expect(page.locator("#result")).to_have_text("stopped on request")
    percent = int(page.locator("#percent").inner_text().rstrip("%"))
    assert percent < 100, "the bar stopped before the end"
    assert page.locator("#messages li").last.inner_text() == demo_app.CLEANUP_MESSAGE
    assert watched.errors == [] and watched.dialogs == []


# ----------------------------------------------------------------------------- tracked serve


def start_serve(store: str, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tracked", "serve", "--port", str(port), "--store", store, *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    wait_for_port(port)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
def remote_job(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    store = tmp_path / "store"
    store.mkdir()
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "cancel_worker.py"), str(store), "remote"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + WAIT
    while not tracked.is_running("remote", store=str(store)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield str(store), worker
    worker.kill()
    worker.wait()


def test_serve_shows_no_stop_button_and_refuses_delete_unless_allowed(chromium, remote_job):
    store, _ = remote_job
    server, url = start_serve(store)
    try:
        code, _, _ = request(f"{url}/_progress_status/remote", "DELETE")
        assert code == 405
        page = chromium.new_page()
        page.goto(f"{url}/progress?name=remote")
        expect(page.locator("#progress [part~=state]")).to_have_text("running", timeout=TIMEOUT_MS)
        expect(page.locator("#progress [part~=stop]")).to_be_hidden()
        page.close()
    finally:
        server.terminate()
        server.wait(10)
    assert tracked.is_running("remote", store=store)


def test_serve_allow_cancel_shows_a_stop_button_that_stops_the_run(chromium, remote_job):
    store, worker = remote_job
    server, url = start_serve(store, "--allow-cancel")
    try:
        page = chromium.new_page()
        page.goto(f"{url}/progress?name=remote")
        expect(page.locator("#progress [part~=stop]")).to_be_visible(timeout=TIMEOUT_MS)
        page.click("#progress [part~=stop]")
        expect(page.locator("#progress [part~=state]")).to_have_text(
            "cancelled", timeout=TIMEOUT_MS)
        expect(page.locator("#progress [part~=stop]")).to_be_hidden()
        expect(page.locator("#progress [part~=message]").last).to_have_text("cleanup ran")
        page.close()
    finally:
        server.terminate()
        server.wait(10)
    assert worker.wait(WAIT) == 0
