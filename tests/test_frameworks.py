"""Flask and FastAPI: the middlewares in process, then the example apps under real
servers (Flask under gunicorn, 2 gthread workers; FastAPI under uvicorn), polled,
streamed and followed by tracked.js in Chromium, on a file store and on Redis."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import flask.testing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import tracked
from tests.conftest import ROOT, SHARED_STORE_KINDS, free_port, require_binary, wait_for_port
from tracked.asgi import TrackedMiddleware as AsgiMiddleware
from tracked.wsgi import TrackedMiddleware as WsgiMiddleware

STEPS = 20
SECONDS = 2.0
EXPECTED = [f"step {i} of {STEPS} done" for i in range(1, STEPS + 1)]
FRAMEWORKS = ["flask", "fastapi"]


# ----------------------------------------------------------------------------- in process


def _flask_client(store: tracked.Store) -> Any:
    app = flask.Flask(__name__)
    app.wsgi_app = WsgiMiddleware(app.wsgi_app, store)  # type: ignore[method-assign]

    @app.route("/job", methods=["GET", "POST"])
    @tracked.tracked("job")
    def job() -> Any:
        return {"key": tracked.current().key}

    return app.test_client()


def _fastapi_client(store: tracked.Store) -> Any:
    app = FastAPI()
    app.add_middleware(AsgiMiddleware, store=store)

    @app.api_route("/job", methods=["GET", "POST"])
    @tracked.tracked("job")
    def job() -> dict[str, str]:
        return {"key": tracked.current().key}

    @app.get("/async")
    @tracked.tracked("async-job")
    async def async_job() -> dict[str, str]:
        return {"key": tracked.current().key}

    return TestClient(app)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(framework: str) -> Iterator[Any]:
    store = tracked.MemoryStore()
    made = _flask_client(store) if framework == "flask" else _fastapi_client(store)
    made.store = store
    yield made


def _json(response: Any) -> Any:
    return response.get_json() if hasattr(response, "get_json") else response.json()


def _send(client: Any, how: str) -> Any:
    """One request carrying progress_id ``abc`` the way ``how`` says."""
    is_flask = isinstance(client, flask.testing.FlaskClient)
    if how == "query":
        return client.get("/job?progress_id=abc")
    if how == "header":
        return client.get("/job", headers={"X-Progress-Id": "abc"})
    if how == "form":
        return client.post("/job", data={"progress_id": "abc", "other": "x"})
    if is_flask:
        return client.post("/job", data={"progress_id": "abc", "f": (io.BytesIO(b"x"), "f.txt")},
                           content_type="multipart/form-data")
    return client.post("/job", data={"progress_id": "abc"}, files={"f": ("f.txt", b"x")})


@pytest.mark.parametrize("how", ["query", "header", "form", "multipart"])
def test_progress_id_from_query_header_or_form_names_the_tracked_route(client, how):
    response = _send(client, how)
    assert response.status_code == 200
    assert _json(response)["key"] == "job\0abc"
    assert client.store.load("job\0abc").state == "finished"


@pytest.mark.parametrize(
    ("query", "header"),
    [("progress_id=abc", "def"), ("progress_id=abc&progress_id=def", None),
     ("progress_id=bad%20id", None)],
)
def test_conflicting_or_invalid_progress_ids_are_400_json(client, query, header):
    headers = {"X-Progress-Id": header} if header else {}
    response = client.get("/job?" + query, headers=headers)
    assert response.status_code == 400
    body = _json(response)
    assert body["status"] == "error"
    assert "progress_id" in body["error"]
    assert client.store.list() == []


def test_middleware_serves_the_status_route(client):
    with tracked.start("job", progress_id="abc", store=client.store) as progress:
        progress.add_message("hello")
    response = client.get("/_progress_status/job?progress_id=abc")
    assert response.status_code == 200
    assert _json(response)["messages"] == ["hello"]
    assert client.get("/_progress_status/nothing").status_code == 404


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_middleware_passes_cancel_and_show_errors_to_its_status_route(framework):
    store = tracked.MemoryStore()
    if framework == "flask":
        app = flask.Flask(__name__)
        app.wsgi_app = WsgiMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, store, cancel=True, show_errors=False
        )
        client: Any = app.test_client()
    else:
        fastapi_app = FastAPI()
        fastapi_app.add_middleware(AsgiMiddleware, store=store, cancel=True, show_errors=False)
        client = TestClient(fastapi_app)
    assert "DELETE" in client.options("/_progress_status/job").headers["Allow"]
    with pytest.raises(tracked.Cancelled), tracked.start(
        "job", store=store, min_interval=0.02
    ) as progress:
        answer = client.delete("/_progress_status/job")
        assert answer.status_code == 202 and _json(answer)["in_progress"] is True
        deadline = time.monotonic() + 10
        while not progress.cancel_requested:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        progress.check()
    assert _json(client.get("/_progress_status/job"))["state"] == "cancelled"
    with pytest.raises(RuntimeError), tracked.start("broken", store=store):
        raise RuntimeError("password=hunter2")
    assert _json(client.get("/_progress_status/broken"))["error"] == "failed"


def test_async_fastapi_endpoint_sees_the_progress_id():
    client = _fastapi_client(tracked.MemoryStore())
    response = client.get("/async", headers={"X-Progress-Id": "xyz"})
    assert response.json()["key"] == "async-job\0xyz"


# ----------------------------------------------------------------------------- real servers


class Server:
    def __init__(self, framework: str, store_url: str) -> None:
        self.port = free_port()
        env = {**os.environ, "TRACKED_STORE": store_url, "TRACKED_DEMO_SECONDS": str(SECONDS),
               "TRACKED_DEMO_STEPS": str(STEPS), "PYTHONPATH": str(ROOT)}
        if framework == "flask":
            command = [str(Path(sys.executable).with_name("gunicorn")), "-k", "gthread",
                       "--threads", "8", "-w", "2", "-b", f"127.0.0.1:{self.port}",
                       "--log-level", "warning", "examples.flask_app:create_app()"]
        else:
            command = [sys.executable, "-m", "uvicorn", "--factory",
                       "examples.fastapi_app:create_app", "--port", str(self.port),
                       "--log-level", "warning"]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env)
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def start_job(self, progress_id: str) -> threading.Thread:
        def post() -> None:
            request = urllib.request.Request(
                f"{self.url}/jobs/main?progress_id={progress_id}", method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200

        thread = threading.Thread(target=post)
        thread.start()
        return thread


@pytest.fixture(params=[(f, s) for f in FRAMEWORKS for s in SHARED_STORE_KINDS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def server(request: pytest.FixtureRequest, make_store_url: Any) -> Iterator[Server]:
    framework, kind = request.param
    if framework == "flask":
        require_binary(str(Path(sys.executable).with_name("gunicorn")))
    started = Server(framework, make_store_url(kind))
    yield started
    started.stop()


def test_polling_follows_a_job_to_the_end(server):
    progress_id = uuid.uuid4().hex
    job = server.start_job(progress_id)
    url = f"{server.url}/_progress_status/demo-job?progress_id={progress_id}"
    received: list[str] = []
    deadline = time.monotonic() + 30
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            response = http.get(f"{url}&since={len(received)}")
            if response.status_code == 404:
                time.sleep(0.05)
                continue
            state = response.json()
            assert state["message_count"] - len(state["messages"]) == len(received)
            received.extend(state["messages"])
            if not state["in_progress"]:
                break
            time.sleep(0.1)
    job.join(30)
    assert received == EXPECTED
    assert state["state"] == "finished"


def test_event_stream_follows_a_job_to_the_end(server):
    progress_id = uuid.uuid4().hex
    job = server.start_job(progress_id)
    url = f"{server.url}/_progress_status/demo-job?progress_id={progress_id}"
    received: list[str] = []
    events = []
    with httpx.Client(timeout=10) as http:
        deadline = time.monotonic() + 10
        while http.get(url).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.02)
        with http.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event: dict[str, Any] = {}
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line.startswith("event: "):
                    event["event"] = line[7:]
                elif line == "" and event:
                    events.append(event)
                    if event.get("event") == "end":
                        break
                    data = event["data"]
                    assert data["message_count"] - len(data["messages"]) == len(received)
                    received.extend(data["messages"])
                    event = {}
    job.join(30)
    assert received == EXPECTED
    assert events[-1]["event"] == "end"
    assert events[-2]["data"]["state"] == "finished"
    assert len(events) > 3  # pushed as it went, not one answer at the end


# ----------------------------------------------------------------------------- Chromium


@pytest.mark.parametrize("transport", ["auto", "sse", "poll"])
def test_page_follows_the_job_with_each_transport(chromium, server, transport):
    page = chromium.new_page()
    try:
        streams = []
        page.on("request", lambda r: streams.append(r.url)
                if r.headers.get("accept") == "text/event-stream" else None)
        page.goto(f"{server.url}/?transport={transport}")
        page.click("#start")
        page.wait_for_function("document.getElementById('state').textContent === 'finished'",
                               timeout=30_000)
        assert page.locator("#messages li").all_text_contents() == EXPECTED
        assert page.locator("#percent").text_content() == "100%"
        if transport == "poll":
            assert streams == []
        else:
            assert streams, "no event stream was opened"
            assert page.locator("#transport").text_content() == "sse"
    finally:
        page.close()


def test_auto_falls_back_to_polling_when_the_server_refuses_streams(chromium, server):
    page = chromium.new_page()
    refused = []

    def refuse(route: Any) -> None:
        if route.request.headers.get("accept") == "text/event-stream":
            refused.append(route.request.url)
            route.fulfill(status=503, content_type="application/json",
                          body='{"error": "no streams here", "status": "error"}')
        else:
            route.continue_()

    try:
        page.route("**/_progress_status/**", refuse)
        page.goto(f"{server.url}/?transport=auto")
        page.click("#start")
        page.wait_for_function("document.getElementById('state').textContent === 'finished'",
                               timeout=30_000)
        assert page.locator("#messages li").all_text_contents() == EXPECTED
        assert len(refused) == 2
        assert page.locator("#transport").text_content() == "poll"
    finally:
        page.close()



@pytest.mark.parametrize("middleware", [WsgiMiddleware, AsgiMiddleware], ids=["wsgi", "asgi"])
@pytest.mark.parametrize("prefix", ["", "progress", 7, None])
def test_a_middleware_refuses_a_prefix_that_is_not_a_url_path(middleware, prefix):
    with pytest.raises(tracked.InvalidValue, match="prefix must be a URL path"):
        middleware(lambda *args: None, tracked.MemoryStore(), prefix=prefix)


@pytest.mark.parametrize("middleware", [WsgiMiddleware, AsgiMiddleware], ids=["wsgi", "asgi"])
@pytest.mark.parametrize(("prefix", "kept"), [("/p/", "/p"), ("/p", "/p")])
def test_a_middleware_keeps_its_prefix_without_the_trailing_slash(middleware, prefix, kept):
    assert middleware(lambda *args: None, tracked.MemoryStore(), prefix=prefix).prefix == kept
