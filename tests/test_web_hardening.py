"""The status service under hostile or unusual requests, on every adapter (Bottle
plugin, WSGI middleware and app, ASGI middleware and app): unrelated requests pass
through untouched, one answer to a path that is not UTF-8, prefixes that cannot
work are refused, a DELETE bound to the run the client saw, caches bounded in bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes
from wsgiref.validate import validator

import bottle
import pytest

import tracked
from tests.conftest import ROOT, free_port, wait_for_port
from tracked.asgi import TrackedMiddleware as AsgiMiddleware
from tracked.asgi import status_app as asgi_status_app
from tracked.bottle import TrackedPlugin
from tracked.wsgi import TrackedMiddleware as WsgiMiddleware
from tracked.wsgi import status_app as wsgi_status_app

PREFIX = "/_progress_status"
MIDDLEWARES = ["bottle", "wsgi", "asgi"]


# ----------------------------------------------------------------------------- drivers


def run_apart(coroutine: Any) -> None:
    """Run ``coroutine`` to its end on a new event loop in a thread of its own (this
    thread may already run a loop: Playwright's sync API keeps one)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # raised again in the caller
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def asgi_call(
    app: Callable[..., Any], method: str, path: str, query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
    root_path: str = "", raw_path: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to an ASGI app as a server sends it: (status, headers, body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode("utf-8", "replace"),
        "root_path": root_path, "query_string": query, "headers": headers or [],
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
    }
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    run_apart(app(scope, receive, send))
    start = sent[0]
    found = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], found, b"".join(m.get("body", b"") for m in sent[1:])


def wsgi_call(
    app: Callable[..., Any], method: str, path: bytes, query: bytes = b"", body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request to a WSGI app as a server sends it (the path's raw bytes read as
    latin-1, PEP 3333), checked by ``wsgiref.validate``: (status, headers, body)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"), "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)) if body else "",
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
    if not environ["CONTENT_LENGTH"]:
        del environ["CONTENT_LENGTH"]
    started: list[Any] = []

    def start_response(status: str, listed: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, listed]
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return int(started[0].split()[0]), {k.lower(): v for k, v in started[1]}, data


def echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """An unrelated WSGI route: echoes its raw query, body and the request scope's id."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "application/json")])
    return [_echo(environ.get("QUERY_STRING", "").encode("latin-1"), body)]


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The same route for ASGI."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": _echo(scope["query_string"], body)})


def _echo(query: bytes, body: bytes) -> bytes:
    from tracked._scope import request_scope

    scope = request_scope.get()
    return json.dumps({
        "query": query.decode("latin-1"), "body": body.decode("latin-1"),
        "progress_id": None if scope is None else scope.progress_id,
    }).encode()


def bottle_app(store: tracked.Store, **options: Any) -> bottle.Bottle:
    app = bottle.Bottle()
    app.install(TrackedPlugin(store, **options))

    @app.route("/search", method=["GET", "POST"])
    def search() -> bytes:
        query = bottle.request.environ["QUERY_STRING"].encode("latin-1")
        return _echo(query, bottle.request.body.read())

    return app


Answer = tuple[int, dict[str, str], bytes]
Call = Callable[..., Answer]


@pytest.fixture(params=MIDDLEWARES)
def call(request: pytest.FixtureRequest) -> Callable[..., Call]:
    """``make(store, **options)`` -> ``call(method, path, query=b"", body=b"", headers={})``
    for one adapter wrapping an unrelated route ``/search`` and the status route."""

    def make(store: tracked.Store, **options: Any) -> Call:
        if request.param == "asgi":
            app = AsgiMiddleware(echo_asgi, store, **options)

            def via_asgi(method: str, path: str, query: bytes = b"", body: bytes = b"",
                         headers: dict[str, str] | None = None) -> Answer:
                listed = [(k.lower().encode(), v.encode("latin-1"))
                          for k, v in (headers or {}).items()]
                if body:
                    listed.append((b"content-length", str(len(body)).encode()))
                raw = path.encode("ascii")
                return asgi_call(app, method, unquote(path), query, listed, body, raw_path=raw)

            return via_asgi
        wsgi = (bottle_app(store, **options) if request.param == "bottle"
                else WsgiMiddleware(echo_wsgi, store, **options))

        def via_wsgi(method: str, path: str, query: bytes = b"", body: bytes = b"",
                     headers: dict[str, str] | None = None) -> Answer:
            return wsgi_call(wsgi, method, unquote_to_bytes(path), query, body, headers)

        return via_wsgi

    return make


# ----------------------------------------------------------------------------- item 3


@pytest.mark.parametrize("query", [b"q=%E9t%E9", b"q=%FF", b"%E9=1", b"q=\xe9t\xe9", b"a=1&b=%C3"])
def test_an_unrelated_query_that_is_not_utf8_reaches_the_app_untouched(call, query):
    status, _, body = call(tracked.MemoryStore())("GET", "/search", query)
    assert status == 200
    assert json.loads(body) == {"query": query.decode("latin-1"), "body": "", "progress_id": None}


def test_an_unrelated_form_that_is_not_utf8_reaches_the_app_untouched(call):
    form = b"city=Z%FCrich&raw=\xfc&progress_id=abc"
    status, _, body = call(tracked.MemoryStore())(
        "POST", "/search", b"", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json.loads(body) == {"query": "", "body": form.decode("latin-1"), "progress_id": "abc"}


def test_a_query_that_is_not_utf8_elsewhere_still_gives_its_progress_id(call):
    status, _, body = call(tracked.MemoryStore())("GET", "/search", b"q=%E9&progress_id=abc")
    assert status == 200
    assert json.loads(body)["progress_id"] == "abc"


@pytest.mark.parametrize(
    ("query", "form"),
    [(b"progress_id=%E9", b""), (b"", b"progress_id=%E9"), (b"", b"progress_id=\xe9")],
)
def test_only_a_progress_id_that_is_not_utf8_is_refused(call, query, form):
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
    status, found, body = call(tracked.MemoryStore())("POST", "/search", query, form, headers)
    assert status == 400
    assert found["content-type"].startswith("application/json")
    assert "progress_id" in json.loads(body)["error"]


def test_the_status_route_ignores_fields_it_does_not_read(call):
    store = tracked.MemoryStore()
    with tracked.start("job", store=store):
        pass
    answer = call(store)
    status, _, body = answer("GET", PREFIX + "/job", b"utm=%E9t%E9")
    assert status == 200
    assert json.loads(body)["name"] == "job"
    status, _, body = answer("GET", PREFIX + "/job", b"since=%E9")
    assert status == 400
    assert json.loads(body)["error"] == "the query's since is not UTF-8"


# ----------------------------------------------------------------------------- item 10

NOT_UTF8_PATHS = ["/caf%E9", "/%FF%FE", "/a/%C3", "/caf%E9/x", "/%ED%A0%80"]


@pytest.mark.parametrize("path", NOT_UTF8_PATHS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_a_status_path_that_is_not_utf8_is_one_400_json_on_every_middleware(call, path, method):
    store = tracked.MemoryStore()
    with tracked.start("caf\ufffd", store=store):  # what a lax decoding would name
        pass
    status, found, body = call(store, cancel=True)(method, PREFIX + path)
    assert status == 400
    assert found["content-type"] == "application/json; charset=utf-8"
    if method != "HEAD":
        assert json.loads(body) == {"error": "the URL path is not UTF-8", "status": "error"}


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_path_that_is_not_utf8_is_a_400_from_the_plain_status_apps(kind):
    store = tracked.MemoryStore()
    with tracked.start("caf\ufffd", store=store):
        pass
    if kind == "wsgi":
        status, _, body = wsgi_call(wsgi_status_app(store), "GET", b"/caf\xe9")
    else:
        status, _, body = asgi_call(asgi_status_app(store), "GET", "/caf\ufffd",
                                    raw_path=b"/caf%E9")
    assert (status, json.loads(body)["error"]) == (400, "the URL path is not UTF-8")


def test_an_unrelated_path_that_is_not_utf8_reaches_the_app(call):
    assert call(tracked.MemoryStore())("GET", "/search%E9")[0] in (200, 404)


def test_a_utf8_status_path_still_names_its_progress(call):
    store = tracked.MemoryStore()
    with tracked.start("caf\u00e9", store=store):
        pass
    status, _, body = call(store)("GET", PREFIX + "/caf%C3%A9")
    assert (status, json.loads(body)["name"]) == (200, "caf\u00e9")


# ----------------------------------------------------------------------------- item 11

REFUSED_PREFIXES = ["/", "//", "///", "/a//b", "/a/./b", "/..", "/a/..", "/.", "/a?b", "/a#b",
                    "/a%2Fb", "/a b", "/a\tb", "/a\nb", "/a\\b", "/a\x00b"]


def make_adapter(kind: str, store: tracked.Store, prefix: str) -> Any:
    if kind == "bottle":
        return bottle_app(store, prefix=prefix)
    return (WsgiMiddleware(echo_wsgi, store, prefix=prefix) if kind == "wsgi"
            else AsgiMiddleware(echo_asgi, store, prefix=prefix))


@pytest.mark.parametrize("kind", MIDDLEWARES)
@pytest.mark.parametrize("prefix", REFUSED_PREFIXES)
def test_a_prefix_that_cannot_work_is_refused_with_invalid_value(kind, prefix):
    with pytest.raises(tracked.InvalidValue, match="prefix must be a URL path") as caught:
        make_adapter(kind, tracked.MemoryStore(), prefix)
    assert isinstance(caught.value, tracked.TrackedError)
    assert repr(prefix) in str(caught.value)


@pytest.mark.parametrize("prefix", ["/<name>", "/:name", "/a:b", "/a>"])
def test_the_bottle_plugin_refuses_a_prefix_bottle_reads_as_a_wildcard(prefix):
    with pytest.raises(tracked.InvalidValue, match="prefix must be a URL path"):
        TrackedPlugin(tracked.MemoryStore(), prefix=prefix)


@pytest.mark.parametrize("kind", MIDDLEWARES)
@pytest.mark.parametrize(("prefix", "kept"), [
    ("/p", "/p"), ("/p/", "/p"), ("/p//", "/p"), ("/a/b", "/a/b"), ("/caf\u00e9", "/caf\u00e9"),
    ("/_progress-status.v1~", "/_progress-status.v1~"),
])
def test_a_prefix_that_works_is_kept_without_its_trailing_slash_and_matches(kind, prefix, kept):
    store = tracked.MemoryStore()
    with tracked.start("job", store=store):
        pass
    adapter = make_adapter(kind, store, prefix)
    plugins = [p for p in getattr(adapter, "plugins", ()) if isinstance(p, TrackedPlugin)]
    assert (plugins[0] if plugins else adapter).prefix == kept
    answer = _caller(kind, adapter)
    quoted = quote(kept)
    status, _, body = answer("GET", quoted + "/job")
    assert (status, json.loads(body)["name"]) == (200, "job")
    status, _, body = answer("GET", quoted)  # the prefix alone names nothing: a JSON 400
    assert status == 400 and "names no progress" in json.loads(body)["error"]
    status, _, body = answer("GET", quoted + "job")  # a longer segment is not the prefix
    if kind == "bottle":  # no route of the app: Bottle's own 404
        assert status == 404 and b"names no progress" not in body
    else:
        assert status == 200 and "query" in json.loads(body)


def _caller(kind: str, adapter: Any) -> Call:
    """``call(method, target)`` for one adapter; ``target`` may hold a query."""

    def call(method: str, target: str) -> Answer:
        path, _, query = target.partition("?")
        if kind == "asgi":
            return asgi_call(adapter, method, unquote(path), query.encode(),
                             raw_path=path.encode("ascii"))
        return wsgi_call(adapter, method, unquote_to_bytes(path), query.encode())

    return call


@pytest.mark.parametrize("root", ["/", "/app", "/app/", "/app//"])
def test_asgi_middleware_matches_under_any_root_path_spelling(root):
    store = tracked.MemoryStore()
    with tracked.start("job", store=store):
        pass
    app = AsgiMiddleware(echo_asgi, store)
    path = root.rstrip("/") + PREFIX + "/job"
    status, _, body = asgi_call(app, "GET", path, root_path=root)
    assert (status, json.loads(body)["name"]) == (200, "job")
    status, _, body = asgi_call(asgi_status_app(store), "GET", root.rstrip("/") + "/job",
                                root_path=root)
    assert (status, json.loads(body)["name"]) == (200, "job")


@pytest.mark.parametrize("script", ["/", "/app/"])
def test_wsgi_middleware_matches_when_the_mount_point_keeps_the_slash(script):
    store = tracked.MemoryStore()
    with tracked.start("job", store=store):
        pass
    seen: dict[str, str] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        seen.update(script=environ["SCRIPT_NAME"], path=environ["PATH_INFO"])
        return WsgiMiddleware(echo_wsgi, store)(environ, start_response)

    environ_path = PREFIX[1:] + "/job"
    status, body = _wsgi_mounted(app, script, environ_path)
    assert (status, json.loads(body)["name"]) == (200, "job")


def _wsgi_mounted(app: Any, script: str, path: str) -> tuple[int, bytes]:
    """A WSGI request whose SCRIPT_NAME ends with the slash PATH_INFO lacks."""
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script, "PATH_INFO": path,
               "QUERY_STRING": "", "wsgi.input": io.BytesIO(b"")}
    started: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc=None: started.append(status)))
    return int(started[0].split()[0]), body


# ----------------------------------------------------------------------------- real ASGI servers


class AsgiServer:
    """``tests.web_apps:app`` under a real ASGI server on a free port, its store a
    FileStore in ``directory``."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.port = free_port()
        self.store = tracked.FileStore(directory)
        env = {**os.environ, "TRACKED_STORE": str(directory), "PYTHONPATH": str(ROOT)}
        binaries = Path(sys.executable).parent
        commands = {
            "uvicorn": [sys.executable, "-m", "uvicorn", "tests.web_apps:app",
                        "--port", str(self.port), "--log-level", "warning"],
            "hypercorn": [str(binaries / "hypercorn"), "-b", f"127.0.0.1:{self.port}",
                          "--log-level", "warning", "tests.web_apps:app"],
            "daphne": [str(binaries / "daphne"), "-b", "127.0.0.1", "-p", str(self.port),
                       "-v", "0", "tests.web_apps:app"],
        }
        self.process = subprocess.Popen(commands[kind], cwd=ROOT, env=env)
        wait_for_port(self.port)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> Answer:
        """Send ``target`` as is (raw bytes, no re-quoting): (status, headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            found = {k.lower(): v for k, v in response.getheaders()}
            return response.status, found, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module", params=["uvicorn", "hypercorn", "daphne"])
def asgi_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AsgiServer]:
    """One real ASGI server per kind for the module (the store is shared by its tests)."""
    server = AsgiServer(str(request.param), tmp_path_factory.mktemp(str(request.param)))
    yield server
    server.stop()


def test_real_asgi_servers_pass_unrelated_queries_and_forms_that_are_not_utf8(asgi_server):
    status, _, body = asgi_server.request("GET", "/search?q=%E9t%E9")
    assert (status, json.loads(body)["query"]) == (200, "q=%E9t%E9")
    status, _, body = asgi_server.request(
        "POST", "/search", {"Content-Type": "application/x-www-form-urlencoded"},
        b"city=Z%FCrich")
    assert (status, json.loads(body)["body"]) == (200, "city=Z%FCrich")


@pytest.mark.parametrize("path", NOT_UTF8_PATHS)
def test_real_asgi_servers_answer_a_status_path_that_is_not_utf8_with_400_json(asgi_server, path):
    with tracked.start("caf\ufffd", store=asgi_server.store):
        pass
    for method in ("GET", "DELETE"):
        status, found, body = asgi_server.request(method, PREFIX + path)
        assert status == 400
        assert found["content-type"] == "application/json; charset=utf-8"
        assert json.loads(body) == {"error": "the URL path is not UTF-8", "status": "error"}
    status, _, body = asgi_server.request("GET", PREFIX + "/caf%EF%BF%BD")
    assert (status, json.loads(body)["name"]) == (200, "caf\ufffd")


# ----------------------------------------------------------------------------- item 13: log lines

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


def _log_formats() -> list[tuple[str, int, str]]:
    """(file, line, format string) of every logging call in the package."""
    import ast

    found = []
    for path in sorted((ROOT / "tracked").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[1] if name == "log" and len(node.args) > 1 else node.args[0]
            if name in LOG_METHODS and isinstance(first, ast.Constant) and isinstance(
                    first.value, str):
                found.append((path.name, node.lineno, first.value))
    return found


def test_no_log_line_repeats_the_logger_name():
    formats = _log_formats()
    assert len(formats) > 20  # the walk finds the package's log calls
    assert [f for f in formats if f[2].lower().startswith("tracked:")] == []


def test_a_status_route_warning_reads_once_tracked(tmp_path, caplog):
    store = tracked.FileStore(tmp_path)
    tmp_path.joinpath(store.path_for("job").name).write_text("{not json")
    with caplog.at_level("WARNING", logger="tracked"):
        status, _, _ = wsgi_call(wsgi_status_app(store), "GET", b"/job")
    assert status == 500
    lines = [f"{r.levelname}:{r.name}:{r.getMessage()}" for r in caplog.records]
    assert lines and lines[0].startswith("WARNING:tracked:status route cannot read 'job'")


# ----------------------------------------------------------------------------- tracked serve


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tracked serve`` on a free port over a store of 50 ended records, one of them a
    tqdm-style run whose status is its name."""
    directory = tmp_path_factory.mktemp("serve") / "store"
    store = tracked.FileStore(directory)
    for number in range(49):
        with tracked.start(f"job-{number}", total=10, store=store) as progress:
            progress.increment(number % 10, f"step {number}")
    with tracked.start("Processing records", total=10, store=store) as progress:
        progress.status = "Processing records"  # what a tqdm bar named after its desc writes
        progress.increment(4)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tracked", "serve", "--port", str(port), "--store", str(directory)],
        stdout=subprocess.DEVNULL, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


CONCURRENT_CLIENTS = 200


def test_serve_answers_200_concurrent_clients_without_a_failure(served):
    """Every client connects at once (a barrier), then asks for /progresses.json."""
    host, port = served.removeprefix("http://").split(":")
    barrier = threading.Barrier(CONCURRENT_CLIENTS)
    outcomes: list[str] = []

    def client() -> None:
        try:
            barrier.wait(timeout=30)
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                connection.request("GET", "/progresses.json")
                response = connection.getresponse()
                body = json.loads(response.read())
                outcomes.append("ok" if response.status == 200
                                and len(body["progresses"]) == 50 else f"{response.status}")
            finally:
                connection.close()
        except Exception as exc:  # counted, and shown if any
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    failures = [o for o in outcomes if o != "ok"]
    assert len(outcomes) == CONCURRENT_CLIENTS and failures == []


def test_serve_page_shows_a_run_named_after_its_status_once(served, chromium):
    page = chromium.new_page()
    try:
        page.goto(served + "/progress?name=Processing%20records")
        page.wait_for_selector("#progress[state=finished]", timeout=30_000)
        assert page.locator("#progress [part~=status]").text_content() == ""
        assert page.locator("#progress [part~=label]").is_hidden()  # the h1 names it
        assert page.locator("h1").text_content() == "Processing records"
        page.goto(served + "/progress?name=job-3")  # a status saying more is still shown
        page.wait_for_selector("#progress[state=finished]", timeout=30_000)
        assert page.locator("h1").text_content() == "job-3"
    finally:
        page.close()


def test_the_readme_describes_tracked_js_by_its_default_transport():
    script = (ROOT / "tracked" / "static" / "tracked.js").read_text(encoding="utf-8")
    assert "transport: 'auto'" in script  # streams first, polls as a fallback
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    sentence = next(s for s in readme.split(". ") if "`tracked.js`" in s)
    assert "polls it" not in sentence
    assert "Server-Sent Events" in sentence and "default transport (`auto`)" in sentence
    assert "polling where streams are off or fail" in sentence
    assert "when the answer says the server streams" in sentence  # X-Tracked-Events


# ----------------------------------------------------------------------------- item 9: If-Match


def _etag(answer: Call, name: str, query: bytes = b"") -> str:
    status, found, _ = answer("GET", f"{PREFIX}/{name}", query)
    assert status == 200
    return found["etag"]


def test_a_delete_bound_to_an_earlier_run_is_412_and_the_new_run_goes_on(call):
    store = tracked.MemoryStore()
    answer = call(store, cancel=True)
    with tracked.start("job", store=store):
        first = _etag(answer, "job")
    with tracked.start("job", store=store) as second:  # the same counts, another run
        assert _etag(answer, "job") != first
        status, found, body = answer("DELETE", PREFIX + "/job", headers={"If-Match": first})
        assert status == 412
        assert found["content-type"] == "application/json; charset=utf-8"
        assert "another run" in json.loads(body)["error"]
        assert not second.cancel_requested
        assert store.load("job").cancel_requested is False
        current = _etag(answer, "job", b"since=0")
        status, _, body = answer("DELETE", PREFIX + "/job", headers={"If-Match": current})
        assert (status, json.loads(body)["state"]) == (202, "running")


@pytest.mark.parametrize("header", [
    "*", "{etag}", "W/{etag}", '"nonsense", {etag}', "{run}", "{etag_since}",
])
def test_if_match_naming_the_current_run_cancels_it(call, header):
    store = tracked.MemoryStore()
    answer = call(store, cancel=True)
    with tracked.start("job", store=store) as progress:
        progress.add_message("one")
        etag = _etag(answer, "job")
        progress.add_message("two")  # the content moved on: the run did not
        since = _etag(answer, "job", b"since=1")
        value = header.format(etag=etag, etag_since=since, run=etag.partition(".")[0] + '"')
        status, _, _ = answer("DELETE", PREFIX + "/job", headers={"If-Match": value})
        assert status == 202


@pytest.mark.parametrize("header", [
    "", "nonsense", '"nonsense"', '""', '"."', "W/", '"', "**", '"1.2", "3"', "x" * 10_000,
    '"{run_minus}.x"', '"{run_plus}"', "{run_unquoted}",
])
def test_if_match_naming_no_run_of_the_name_is_412(call, header):
    store = tracked.MemoryStore()
    answer = call(store, cancel=True)
    with tracked.start("job", store=store) as progress:
        run = int(_etag(answer, "job").strip('"').partition(".")[0])
        value = header.format(run_minus=run - 1, run_plus=run + 1, run_unquoted=run)
        status, _, body = answer("DELETE", PREFIX + "/job", headers={"If-Match": value})
        assert status == 412 and json.loads(body)["status"] == "error"
        assert not progress.cancel_requested


def test_if_match_on_an_ended_run_is_409_and_on_no_record_404(call):
    store = tracked.MemoryStore()
    answer = call(store, cancel=True)
    with tracked.start("job", store=store):
        etag = _etag(answer, "job")
    assert answer("DELETE", PREFIX + "/job", headers={"If-Match": etag})[0] == 409
    assert answer("DELETE", PREFIX + "/none", headers={"If-Match": etag})[0] == 404


def test_tracked_js_sends_if_match_naming_the_run_it_saw(served, chromium):
    state = json.loads(urllib.request.urlopen(served + PREFIX + "/job-3", timeout=30).read())
    with urllib.request.urlopen(served + PREFIX + "/job-3", timeout=30) as response:
        etag = response.headers["ETag"]
    run = str(math.floor(state["start_time"] * 1e6))
    assert etag.startswith(f'"{run}.')  # the route's ETag and tracked.js agree on the run
    page = chromium.new_page()
    deletes: list[dict[str, str]] = []

    def intercept(route: Any) -> None:
        if route.request.method == "DELETE":
            deletes.append(route.request.headers)
            route.fulfill(status=202, content_type="application/json", body="{}")
        else:
            route.continue_()

    try:
        page.route("**/_progress_status/**", intercept)
        page.goto(served + "/")
        page.add_script_tag(url="/tracked.js")
        answer = page.evaluate("""async () => {
            const watcher = await new Promise((resolve) => {
                const w = tracked.trackProgress('/_progress_status/job-3',
                    {transport: 'poll', onProgress: () => setTimeout(() => resolve(w), 0)});
            });
            return await watcher.cancel();
        }""")
    finally:
        page.close()
    assert answer["httpStatus"] == 202
    assert [d.get("if-match") for d in deletes] == [f'"{run}"']


# ----------------------------------------------------------------------------- item 1: memory

from tracked._web import (  # noqa: E402
    CACHE_BYTES,
    EventCache,
    RenderCache,
    StatusService,
    Wait,
    event_schedule,
    render,
)

BIG_MESSAGE = "m" * 1000


def _service_of(adapter: Any) -> StatusService:
    plugins = [p for p in getattr(adapter, "plugins", ()) if isinstance(p, TrackedPlugin)]
    if plugins:
        return plugins[0].service
    status = getattr(adapter, "status", adapter)
    return status.service  # type: ignore[no-any-return]


def _adapter(kind: str, store: tracked.Store, **options: Any) -> Any:
    if kind == "bottle":
        return bottle_app(store, **options)
    if kind == "wsgi":
        return WsgiMiddleware(echo_wsgi, store, **options)
    return AsgiMiddleware(echo_asgi, store, **options)


def test_the_default_cache_budget_is_documented_and_refused_when_bad():
    assert CACHE_BYTES == 32 * 1024 * 1024
    assert StatusService(tracked.MemoryStore()).cache_bytes == CACHE_BYTES
    for bad in (-1, 1.5, True, "1", None):
        with pytest.raises(tracked.InvalidValue, match="cache_bytes"):
            StatusService(tracked.MemoryStore(), cache_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", MIDDLEWARES)
def test_a_since_sweep_stays_within_the_render_budget_on_every_adapter(kind, tmp_path):
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("big", total=None, store=store, max_messages=200) as progress:
        for number in range(200):
            progress.add_message(f"{number} {BIG_MESSAGE}")
    budget = 1 << 20  # 512 KiB of rendered answers: about 2 of the whole record
    adapter = _adapter(kind, store, cache_bytes=budget)
    service = _service_of(adapter)
    answer = _caller(kind, adapter)
    time.sleep(RenderCache.SETTLE_NS / 1e9)  # ended files are cached once settled
    sizes = []
    for since in range(0, 220, 2):
        status, _, body = answer("GET", f"{PREFIX}/big?since={since}")
        assert status == 200 and json.loads(body)["message_count"] == 200
        sizes.append(service.held_bytes)
    assert max(sizes) <= budget // 2
    assert max(sizes) > budget // 4  # it still caches: several bodies at once
    status, _, _ = answer("GET", f"{PREFIX}/big?since=200")  # cached bodies still answer
    assert status == 200


def test_a_since_sweep_of_a_redis_record_stays_within_the_render_budget(redis_url):
    """A RedisStore's bodies (reused by version token) count in the budget as a
    FileStore's do: a sweep of ``?since=`` over a 200 KB record holds at most the
    render half of ``cache_bytes``, measured by what Python still has allocated.
    (They were kept by entry count alone: 1,024 bodies of any size.)"""
    import gc
    import tracemalloc

    from tracked.redis import RedisStore

    store = RedisStore(redis_url)
    with tracked.start("big", total=None, store=store, max_messages=200) as progress:
        for number in range(200):
            progress.add_message(f"{number} {BIG_MESSAGE}")
    budget = 1 << 20
    adapter = _adapter("wsgi", store, cache_bytes=budget)
    answer = _caller("wsgi", adapter)
    answer("GET", f"{PREFIX}/big?since=0")  # connections and caches of the first read
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for since in range(1, 120):
            status, _, body = answer("GET", f"{PREFIX}/big?since={since}")
            assert status == 200 and json.loads(body)["message_count"] == 200
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < budget  # the render half, plus the answers' small change
    assert 0 < _service_of(adapter).held_bytes <= budget // 2
    store.close()


@pytest.mark.parametrize("budget", [0, 4096])
def test_render_cache_entry_boundaries(tmp_path, budget):
    store = tracked.FileStore(tmp_path / "store")
    cache = RenderCache(store, budget)
    limit = budget // 4 - RenderCache.OVERHEAD  # the largest body one entry may hold

    def body_of(size: int) -> Any:
        return render(tracked.State(name="x")).__class__(b"x" * size, '"e"', None, None)

    signature = (1, 0, 1)  # an old file: settled
    for size in (limit - 1, limit, limit + 1):
        if size < 0:
            continue
        cache.put("k", size, signature, body_of(size), False, time.monotonic())
        kept = cache.get("k", size, signature, time.monotonic())
        assert (kept is not None) == (size <= limit), size
        assert cache.size <= budget
    for since in range(100):
        cache.put("k", 1000 + since, signature, body_of(max(limit, 0)), False, time.monotonic())
        assert cache.size <= budget
    assert budget == 0 or cache.get("k", 1099, signature, time.monotonic()) is not None
    assert cache.get("k", 1000, signature, time.monotonic()) is None  # the oldest went


def test_event_cache_keeps_nothing_for_a_key_without_streams_and_stays_in_budget():
    cache = EventCache(10_000)
    state = tracked.State(name="k", messages=("a" * 100,), message_count=1)
    cache.put("k", False, state, 0, b"x" * 100)
    assert cache.size == 0 and cache.get("k", False, state, 0) is None  # no stream
    cache.opened("k")
    cache.opened("k")
    cache.put("k", False, state, 0, b"x" * 100)
    assert cache.get("k", False, state, 0) == b"x" * 100
    assert 0 < cache.size <= 10_000
    cache.put("k", False, state, 1, b"y" * 20_000)  # bigger than the budget: not kept
    assert cache.get("k", False, state, 1) is None and cache.size <= 10_000
    cache.closed("k")
    assert cache.get("k", False, state, 0) == b"x" * 100  # one stream still follows it
    cache.closed("k")
    assert cache.size == 0 and cache.get("k", False, state, 0) is None
    for number in range(200):  # many keys: the budget holds
        key = f"k{number}"
        cache.opened(key)
        cache.put(key, False, state, 0, b"z" * 1000)
        assert cache.size <= 10_000
    for number in range(200):
        cache.closed(f"k{number}")
    assert cache.size == 0


@pytest.mark.parametrize("text", ["a", "\u00e9", "\u20ac", "\U0001f600"])
def test_event_cache_counts_messages_as_the_bytes_python_holds_them_in(text):
    messages = tuple(text * 1000 for _ in range(10))  # 1, 2 or 4 bytes a character
    state = tracked.State(name="k", messages=messages, message_count=10)
    held = sum(map(sys.getsizeof, messages))
    cache = EventCache(held + 2048)  # room for the messages as held, and the event
    cache.opened("k")
    cache.put("k", False, state, 0, b"x")
    assert cache.size >= held
    assert cache.size <= cache.max_bytes
    cache.closed("k")


@pytest.mark.parametrize("kind", ["bottle", "wsgi", "asgi"])
@pytest.mark.parametrize("store_kind", ["memory", "file"])
def test_streams_share_events_and_nothing_is_kept_once_they_close(kind, store_kind, tmp_path):
    store: tracked.Store = (tracked.MemoryStore() if store_kind == "memory"
                            else tracked.FileStore(tmp_path / "store"))
    streams = 12
    with tracked.start("big", total=None, store=store, min_interval=0) as progress:
        for number in range(100):
            progress.add_message(f"{number} {BIG_MESSAGE}")
        adapter = _adapter(kind, store, cache_bytes=8 << 20)
        service = _service_of(adapter)
        opened = [_open_stream(kind, adapter) for _ in range(streams)]
        try:
            for stream in opened:
                assert b"data:" in stream.next_event()
            progress.add_message("one more")
            for stream in opened:
                assert b"one more" in stream.next_event()
            held = service.held_bytes
            assert 0 < held <= 4 << 20  # the shared state and its event, in the budget
            assert held < 3 * 100 * len(BIG_MESSAGE)  # not one copy per stream (12 here)
        finally:
            for stream in opened:
                stream.close()
        assert service.held_bytes == 0


class _SyncStream:
    """An event stream of a WSGI adapter, read in this thread."""

    def __init__(self, body: Any) -> None:
        self.body = body  # closed as a server closes it
        self.chunks = iter(body)
        self.pending = b""

    def next_event(self) -> bytes:
        while b"\n\n" not in self.pending:
            self.pending += next(self.chunks)
        event, _, self.pending = self.pending.partition(b"\n\n")
        return event if b"data:" in event else self.next_event()

    def close(self) -> None:
        self.body.close()


class _AsgiStream:
    """An event stream of an ASGI adapter, run on its own loop in a thread."""

    def __init__(self, app: Any) -> None:
        import queue

        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.pending = b""
        self.loop = asyncio.new_event_loop()
        self.gone = asyncio.Event()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": PREFIX + "/big",
                 "raw_path": (PREFIX + "/big").encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"accept", b"text/event-stream")],
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}

        async def receive() -> dict[str, Any]:
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.chunks.put(message.get("body", b""))

        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(app(scope, receive, send),))
        self.thread.start()

    def next_event(self) -> bytes:
        while b"\n\n" not in self.pending:
            self.pending += self.chunks.get(timeout=30)
        event, _, self.pending = self.pending.partition(b"\n\n")
        return event if b"data:" in event else self.next_event()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.gone.set)
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.loop.close()


def _open_stream(kind: str, adapter: Any) -> Any:
    if kind == "asgi":
        return _AsgiStream(adapter)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": PREFIX + "/big",
        "QUERY_STRING": "", "HTTP_ACCEPT": "text/event-stream", "SERVER_NAME": "x",
        "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http",
    }
    body = adapter(environ, lambda status, headers, exc=None: None)
    return _SyncStream(body)


def test_a_waiting_stream_holds_no_copy_of_the_record():
    """The schedule keeps what it sent without its messages (a 2 MB record is not
    held once per open stream), after the first event and after a later one."""
    messages = tuple(f"{n} {BIG_MESSAGE}" for n in range(50))
    state = tracked.State(name="k", messages=messages, message_count=50, total=None)
    steps = event_schedule(state, 0, clock=lambda: 0.0)
    assert b"data:" in next(steps)
    assert isinstance(next(steps), Wait)
    held = list(steps.gi_frame.f_locals.values())
    assert all(value is not state and value is not messages for value in held)
    later = dataclasses.replace(state, messages=(*messages, "new"), message_count=51,
                                current_time=1.0)
    assert b"new" in steps.send((True, later))
    assert isinstance(next(steps), Wait)
    held = list(steps.gi_frame.f_locals.values())
    assert all(value is not later and value is not later.messages for value in held)
    steps.close()


def test_a_record_whose_start_time_is_not_finite_answers_json_everywhere(call, tmp_path):
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("odd", store=store):
        pass
    path = store.path_for("odd")
    record = json.loads(path.read_text())
    record["start_time"] = 1e999  # written as "Infinity": json.loads reads it back
    path.write_text(json.dumps(record))
    answer = call(store, cancel=True)
    for method, headers in (("GET", {}), ("DELETE", {"If-Match": '"0"'}),
                            ("GET", {"Accept": "text/event-stream"})):
        status, found, _ = answer(method, PREFIX + "/odd", headers=headers)
        assert status < 500 or found["content-type"].startswith("application/json")


class _CountingFileStore(tracked.FileStore):
    """A real FileStore that counts its reads."""

    loads = 0

    def load(self, key: str) -> tracked.State | None:
        type(self).loads += 1
        return super().load(key)


def test_streams_opened_together_read_and_encode_the_record_once(tmp_path):
    from tracked._web import StatusRequest

    store = _CountingFileStore(tmp_path / "store")
    with tracked.start("big", total=None, store=store) as progress:
        for number in range(100):
            progress.add_message(f"{number} {BIG_MESSAGE}")
        progress.flush()
        time.sleep(RenderCache.SETTLE_NS / 1e9 + 0.02)  # a settled file
        service = StatusService(store)
        _CountingFileStore.loads = 0
        streams = [service.open(StatusRequest("GET", "big", accept="text/event-stream"))
                   for _ in range(10)]
        try:
            firsts = [next(stream.steps) for stream in streams]  # type: ignore[union-attr]
            assert _CountingFileStore.loads == 1
            assert all(first is firsts[0] for first in firsts)  # encoded once
            assert firsts[0].startswith(b"retry: ")
        finally:
            for stream in streams:
                stream.close()  # type: ignore[union-attr]
        assert service.held_bytes == 0
