"""tracked.django in a real project (tests/django_project) under gunicorn (WSGI,
gthread) and uvicorn (ASGI), each started once for the module: the include, the
middleware's scope, 400 and 409 as JSON, a JsonResponse view, the template tag,
event streams, and the element in Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for_port

HOSTILE = '<img src=x onerror="window.pwned=1">'


class DjangoServer:
    def __init__(self, kind: str, directory: Path) -> None:
        self.port = free_port()
        self.log = directory / "server.log"
        env = {**os.environ, "TRACKED_STORE": str(directory / "store"), "PYTHONPATH": str(ROOT),
               "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
        if kind == "wsgi":
            command = [str(Path(sys.executable).with_name("gunicorn")), "-k", "gthread",
                       "--threads", "8", "-w", "2", "-b", f"127.0.0.1:{self.port}",
                       "tests.django_project.wsgi:application"]
        else:
            command = [sys.executable, "-m", "uvicorn", "tests.django_project.asgi:application",
                       "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DjangoServer]:
    started = DjangoServer(request.param, tmp_path_factory.mktemp(f"django-{request.param}"))
    yield started
    started.stop()


def wait_for(http: httpx.Client, url: str, state: str, deadline: float = 30) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        answer = http.get(url)
        if answer.status_code == 200 and answer.json()["state"] == state:
            return dict(answer.json())
        time.sleep(0.05)
    raise AssertionError(f"{url} never reached {state}")


def test_a_json_response_view_runs_under_its_progress_id_and_publishes_no_result(server):
    progress_id = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.post(f"/jobs/main?progress_id={progress_id}")
        assert answer.status_code == 200 and answer.json() == {"done": 10}
        state = http.get(f"/_progress_status/django-job?progress_id={progress_id}").json()
    assert (state["state"], state["count"], state["result"]) == ("finished", 10, None)
    assert state["messages"][-1] == "step 10 of 10"
    assert "published as null" not in server.log.read_text()


def test_a_second_start_of_a_running_id_is_a_json_409_and_a_bad_id_a_json_400(server):
    progress_id = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = http.post("/jobs/background", headers={"X-Progress-Id": progress_id})
        assert first.status_code == 202
        second = http.post("/jobs/background", data={"progress_id": progress_id})
        assert second.status_code == 409
        assert second.json()["status"] == "error" and "running" in second.json()["error"]
        bad = http.post("/jobs/background?progress_id=bad%20id!")
        assert bad.status_code == 400 and bad.json()["status"] == "error"
        stop = http.delete(first.headers["Location"])
        assert stop.status_code == 202
        wait_for(http, first.headers["Location"], "cancelled")


def test_the_include_answers_json_fragments_304_and_errors(server):
    progress_id = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.post(f"/jobs/main?progress_id={progress_id}")
        url = f"/_progress_status/django-job?progress_id={progress_id}"
        first = http.get(url)
        assert first.headers["X-Tracked-Events"] == "1"
        assert http.get(url, headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
        html = http.get(url, headers={"HX-Request": "true"})
        assert html.status_code == 286 and 'data-state="finished"' in html.text
        assert http.get("/_progress_status/nothing").status_code == 404
        assert http.get(url + "&format=xml").status_code == 400
        script = http.get("/_progress_status/?tracked.js")
        assert script.headers["Content-Type"].startswith("text/javascript")
        assert "customElements.define('tracked-progress'" in script.text


def test_the_template_tag_renders_the_element_with_escaped_attributes(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        page = http.get("/", params={"name": HOSTILE, "progress_id": "abc"}).text
    assert '<script src="/_progress_status/?tracked.js" defer></script>' in page
    assert "<img" not in page
    assert ('<tracked-progress src="/_progress_status/%3Cimg%20src%3Dx%20onerror%3D%22window.'
            'pwned%3D1%22%3E" progress-id="abc" cancel="" label="Django job">') in page


def test_an_event_stream_follows_a_run_to_its_end(server):
    progress_id = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=30) as http:
        location = http.post("/jobs/background", params={"progress_id": progress_id})
        url = location.headers["Location"]
        data = []
        with http.stream("GET", url, headers={"Accept": "text/event-stream"}) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    data.append(json.loads(line[6:]))
                    if data[-1] == {}:  # the end event's
                        break
                    if len(data) == 3:
                        assert http.delete(url).status_code == 202
    assert data[-2]["state"] == "cancelled"
    assert len(data) >= 4


def test_the_element_on_a_django_page_ends_cancelled_after_stop(server, chromium):
    context = chromium.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            progress_id = uuid.uuid4().hex
            assert http.post("/jobs/background", params={"progress_id": progress_id}
                             ).status_code == 202
        page.goto(f"{server.url}/?progress_id={progress_id}")
        page.wait_for_selector("tracked-progress[state=running]", timeout=30_000)
        page.locator("tracked-progress [part~=stop]").click()
        page.wait_for_selector("tracked-progress[state=cancelled]", timeout=30_000)
        assert page.locator("tracked-progress [part~=label]").text_content() == "Django job"
    finally:
        context.close()
    assert problems == []
