"""The status route's behaviour, one suite run against every adapter (Bottle plugin,
WSGI app, ASGI app).

Each adapter is mounted at ``/_progress_status`` and driven through WebTest (the
ASGI app through a small driver that runs it on an event loop per request, as an
ASGI server would); records are written with ``tracked.start`` into the
adapter's own store.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import bottle
import pytest
import webtest

import tracked
from tests.conftest import free_port, wait_for_port
from tracked._web import RenderCache
from tracked.asgi import status_app as asgi_status_app
from tracked.bottle import TrackedPlugin
from tracked.wsgi import status_app

PREFIX = "/_progress_status"
ADAPTERS = ["bottle", "wsgi", "asgi"]
WIRE_KEYS = [
    "name", "progress_id", "total", "count", "percent", "messages", "message_count",
    "in_progress", "state", "cancel_requested", "position", "attempt", "status", "error",
    "start_time", "current_time",
    "finished_time", "elapsed", "rate", "eta", "result",
]

Build = Callable[..., webtest.TestApp]


def mounted(app: Callable[..., Any], prefix: str) -> Callable[..., Any]:
    """Mount a WSGI app at ``prefix`` the way Werkzeug's DispatcherMiddleware does:
    the prefix moves from PATH_INFO to SCRIPT_NAME; other paths get a plain 404."""

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == prefix or path.startswith(prefix + "/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            environ["PATH_INFO"] = path[len(prefix):]
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]

    return dispatch


def asgi_driver(app: Callable[..., Any]) -> Callable[..., Any]:
    """Serve an ASGI app to WSGI callers the way an ASGI server does: the scope's path is
    the full decoded path (UTF-8, undecodable bytes replaced, as uvicorn does), its
    ``root_path`` the mount point; the app runs to completion on a fresh event loop."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raw = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
        headers = [(key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
                   for key, value in environ.items() if key.startswith("HTTP_")]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": environ["REQUEST_METHOD"], "scheme": "http",
            "path": raw.decode("utf-8", "replace"), "raw_path": raw,
            "root_path": environ.get("SCRIPT_NAME", ""),
            "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
            "headers": headers, "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        start, body = sent[0], sent[1]
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        code = start["status"]
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Other"
        start_response(f"{code} {phrase}",
                       [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]])
        return [body["body"]]

    return wsgi


@pytest.fixture(params=ADAPTERS)
def build(request: pytest.FixtureRequest) -> Build:
    """Make a WebTest client for one adapter serving ``store`` at ``PREFIX``."""

    def make(store: tracked.Store | None, **options: Any) -> webtest.TestApp:
        if request.param == "bottle":
            app = bottle.Bottle()
            app.install(TrackedPlugin(store, **options))
            return webtest.TestApp(app)
        if request.param == "asgi":
            return webtest.TestApp(mounted(asgi_driver(asgi_status_app(store, **options)), PREFIX))
        return webtest.TestApp(mounted(status_app(store, **options), PREFIX))

    return make


@pytest.fixture
def store(tmp_path: Path) -> tracked.FileStore:
    # Opening a FileStore creates nothing; tests that write files by hand need the directory.
    (tmp_path / "status-store").mkdir()
    return tracked.FileStore(tmp_path / "status-store")


@pytest.fixture
def client(build: Build, store: tracked.FileStore) -> webtest.TestApp:
    return build(store)


def finished(store: tracked.Store, name: str | None, count: int = 2, *messages: str,
             progress_id: str | None = None, total: int = 100) -> None:
    """Write an ended record: ``count`` done, with ``messages``."""
    with tracked.start(name, progress_id=progress_id, total=total, store=store) as progress:
        progress.increment(count, *messages)


def status(client: webtest.TestApp, name: str, expect: int = 200, **params: str) -> Any:
    return client.get(f"{PREFIX}/{name}", params=params, status=expect)


def assert_json_error(response: Any, code: int) -> str:
    assert response.status_int == code
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json["status"] == "error"
    assert isinstance(response.json["error"], str) and response.json["error"]
    return str(response.json["error"])


# ----------------------------------------------------------------------------- answers


def test_status_is_the_wire_json_with_etag_and_no_store(client, store):
    finished(store, "job", 2, "a", "b")
    response = status(client, "job")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"].startswith('"')
    assert list(json.loads(response.body)) == WIRE_KEYS
    assert (response.json["count"], response.json["messages"]) == (2, ["a", "b"])


def test_head_gets_the_headers_without_a_body(client, store):
    finished(store, "job")
    response = client.head(f"{PREFIX}/job", status=200)
    assert response.body == b""
    assert response.headers["ETag"] == status(client, "job").headers["ETag"]


def test_unknown_name_is_404_json(client):
    assert "never-started" in assert_json_error(status(client, "never-started", expect=404), 404)


def test_prefix_without_a_name_is_400_json(client):
    assert_json_error(client.get(PREFIX + "/", status=400), 400)
    assert_json_error(client.get(PREFIX, status=400), 400)


def test_progress_id_is_combined_with_the_name(client, store):
    finished(store, "job", 3, progress_id="abc")
    state = status(client, "job", progress_id="abc").json
    assert (state["name"], state["progress_id"], state["count"]) == ("job", "abc", 3)
    assert_json_error(status(client, "job", expect=404), 404)


def test_nameless_progress_is_found_by_its_progress_id(client, store):
    finished(store, None, 5, progress_id="1000")
    assert status(client, "1000").json["count"] == 5


@pytest.mark.parametrize("bad", ["a/b", "", "x" * 129, "caf\u00e9", "a b", "<script>"])
def test_invalid_progress_id_is_400_json(client, bad):
    assert_json_error(status(client, "job", expect=400, progress_id=bad), 400)


@pytest.mark.parametrize("name", ["a%00b", "n" * 513])
def test_invalid_name_is_400_json(client, name):
    assert_json_error(client.get(f"{PREFIX}/{name}", status=400), 400)


def test_matching_if_none_match_gets_304_without_body(client, store):
    finished(store, "job")
    etag = status(client, "job").headers["ETag"]
    for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        response = client.get(f"{PREFIX}/job", headers={"If-None-Match": header}, status=304)
        assert response.body == b""
        assert response.headers["ETag"] == etag
    client.get(f"{PREFIX}/job", headers={"If-None-Match": '"other"'}, status=200)


def test_since_returns_only_messages_from_that_index(client, store):
    with tracked.start("m", store=store, max_messages=3) as progress:
        for i in range(5):
            progress.add_message(f"m{i}")
    assert status(client, "m").json["messages"] == ["m2", "m3", "m4"]
    assert status(client, "m", since="3").json["messages"] == ["m3", "m4"]
    assert status(client, "m", since="5").json["messages"] == []
    assert status(client, "m", since="3").headers["ETag"] != status(client, "m").headers["ETag"]


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", "", "\u00b2", "9" * 40])
def test_bad_since_is_400_json(client, store, bad):
    finished(store, "job")
    assert_json_error(status(client, "job", expect=400, since=bad), 400)


def test_authorize_refusal_is_403_before_revealing_anything(build, store):
    asked: list[str] = []

    def authorize(request: Any, key: str) -> bool:
        asked.append(key)
        return False

    finished(store, "job", progress_id="p1")
    client = build(store, authorize=authorize)
    refused = client.get(f"{PREFIX}/job?progress_id=p1", status=403)
    assert "count" not in assert_json_error(refused, 403)
    assert_json_error(status(client, "never-started", expect=403), 403)
    assert asked == [tracked.State("job", "p1").key, "never-started"]


def test_corrupt_record_is_500_json_without_the_path(client, store):
    store.path_for("broken").write_bytes(b"{not json")
    message = assert_json_error(client.get(f"{PREFIX}/broken", status=500), 500)
    assert str(store.directory) not in message


def test_memory_store_is_served_too(build):
    memory = tracked.MemoryStore()
    finished(memory, "job", 4)
    assert status(build(memory), "job").json["count"] == 4


def test_process_default_store_is_read_when_none_is_given(build, tmp_path):
    tracked.configure(store=tmp_path / "configured")
    finished(tracked.default_store(), "job", 6)
    assert status(build(None), "job").json["count"] == 6


@pytest.mark.parametrize(
    "path",
    ["%ff%fe", "%E2%98%83/%C3%A9", "%25%32%65", "a" * 4000, "x?since=-1", "x?progress_id=&since=",
     "x;y", "%0d%0aSet-Cookie:%20a=b", "%u002e%u002e", "../../etc/passwd"],
)
def test_odd_requests_answer_json_not_500(client, path):
    response = client.get(f"{PREFIX}/{path}", expect_errors=True)
    assert response.status_int in (400, 404)
    if response.content_type == "application/json":
        assert response.json["status"] == "error"
    assert "Set-Cookie" not in response.headers


def test_ended_record_is_served_from_cache_while_its_file_is_unchanged(client, store):
    finished(store, "job", 2)
    path = store.path_for("job")
    backdate(path)
    assert status(client, "job").json["count"] == 2
    rewrite_in_place(path, b'"count":2', b'"count":9')
    assert status(client, "job").json["count"] == 2


# ----------------------------------------------------------------------------- helpers


def backdate(path: Path, seconds: float = 60.0) -> None:
    """Set a file's mtime into the past, as if written long ago."""
    past = int((time.time() - seconds) * 1e9)
    os.utime(path, ns=(past, past))


def quiet(path: Path, still: float = 0.1) -> None:
    """Wait until nothing has replaced ``path`` for ``still`` seconds: the owner's
    flusher may write a snapshot once more just after an inline write."""
    before = path.stat()
    while True:
        time.sleep(still)
        now = path.stat()
        if (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns):
            return
        before = now


def rewrite_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Change a record file's bytes keeping its inode, size and mtime."""
    assert len(old) == len(new)
    before = path.stat()
    data = path.read_bytes()
    assert old in data
    with open(path, "r+b") as file:
        file.write(data.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))



# ----------------------------------------------------------------------------- issue 8 regressions


def corrupt(store: tracked.FileStore, key: str, fields: dict[str, Any]) -> None:
    """Rewrite ``key``'s record file with ``fields`` of its state replaced."""
    path = store.path_for(key)
    document = json.loads(path.read_bytes())
    document["state"].update(fields)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "fields",
    [{"progress_id": "bad id!"}, {"count": "5"}, {"in_progress": "yes"}, {"messages": [1]},
     {"name": 7}],
    ids=["bad-progress-id", "count-str", "in-progress-str", "message-int", "name-int"],
)
def test_corrupt_record_reads_as_a_json_error_not_html(client, store, fields):
    finished(store, "rec", 2)
    corrupt(store, "rec", fields)
    response = client.get(f"{PREFIX}/rec", expect_errors=True)
    message = assert_json_error(response, 500)
    assert str(store.directory) not in message


NAMES = [
    "report\n2024", "x/../b", "y/./z", ".", "..", "...", "a//b", "/lead", "trail/",
    "tab\there", "crlf\r\nx", "caf\u00e9 \u2603", "?q=1#f", "%41%2F", "+plus+", " spaced ",
    "\u2028sep", "%2e%2e", "n" * 512,
]


@pytest.mark.parametrize("name", NAMES, ids=[repr(n)[:20] for n in NAMES])
def test_every_name_start_accepts_is_reachable_by_path_and_by_query(client, store, name):
    finished(store, name, 3)
    finished(store, name, 4, progress_id="p1")
    by_path = client.get(f"{PREFIX}/{quote(name, safe='')}").json
    by_query = client.get(f"{PREFIX}/?{urlencode({'name': name})}").json
    bare_prefix = client.get(f"{PREFIX}?{urlencode({'name': name, 'progress_id': 'p1'})}").json
    assert (by_path["name"], by_path["count"]) == (name, 3)
    assert (by_query["name"], by_query["count"]) == (name, 3)
    assert (bare_prefix["name"], bare_prefix["progress_id"]) == (name, "p1")
    assert bare_prefix["count"] == 4


def test_a_name_in_the_path_and_another_in_the_query_is_400(client, store):
    finished(store, "a")
    finished(store, "b")
    assert_json_error(client.get(f"{PREFIX}/a?name=b", status=400), 400)
    assert_json_error(client.get(f"{PREFIX}/?name=a&name=b", status=400), 400)
    assert client.get(f"{PREFIX}/a?name=a").json["name"] == "a"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND"])
def test_other_methods_get_a_json_405_with_allow(client, store, method):
    finished(store, "job")
    for path in (f"{PREFIX}/job", f"{PREFIX}/", PREFIX, f"{PREFIX}/never-started"):
        response = client.request(path, method=method, expect_errors=True)
        assert_json_error(response, 405)
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert status(client, "job").json["count"] == 2


def test_options_answers_204_with_allow(client, store):
    finished(store, "job")
    for path in (f"{PREFIX}/job", PREFIX):
        response = client.options(path, status=204)
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert response.body == b""


def test_percent_encoded_query_names_are_decoded(client, store):
    finished(store, "job", 3, progress_id="abc123")
    state = client.get(f"{PREFIX}/job?%70rogress_id=abc123&%73ince=0").json
    assert (state["progress_id"], state["count"]) == ("abc123", 3)


def test_progress_id_header_is_read_by_the_status_route(client, store):
    finished(store, "job", 3, progress_id="hdr")
    state = client.get(f"{PREFIX}/job", headers={"X-Progress-Id": "hdr"}).json
    assert (state["progress_id"], state["count"]) == ("hdr", 3)
    agreeing = client.get(f"{PREFIX}/job?progress_id=hdr", headers={"X-Progress-Id": "hdr"})
    assert agreeing.json["progress_id"] == "hdr"


@pytest.mark.parametrize(
    ("query", "header"),
    [("progress_id=a", "b"), ("progress_id=a&progress_id=b", None),
     ("%70rogress_id=a&progress_id=b", None)],
)
def test_conflicting_progress_ids_are_400(client, store, query, header):
    finished(store, "job", progress_id="a")
    headers = {"X-Progress-Id": header} if header else {}
    response = client.get(f"{PREFIX}/job?{query}", headers=headers, status=400)
    assert "conflicting progress_id" in assert_json_error(response, 400)


def test_nameless_progress_is_found_by_a_progress_id_in_the_query(client, store):
    finished(store, None, 5, progress_id="..")
    assert client.get(f"{PREFIX}/?progress_id=..").json["count"] == 5
    assert client.get(f"{PREFIX}?progress_id=..").json["progress_id"] == ".."


# ----------------------------------------------------------------------------- issue 9: cache


@pytest.fixture
def long_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Liveness re-judged every 60 s instead of 1 s: cache hits without a race with the clock."""
    monkeypatch.setattr(RenderCache, "RECHECK_S", 60.0)


def test_running_record_is_served_from_cache_while_its_file_is_unchanged(
    client, store, long_recheck
):
    with tracked.start("live", store=store, min_interval=0) as progress:
        progress.increment(2)
        path = store.path_for("live")
        quiet(path)
        backdate(path)
        first = status(client, "live")
        assert (first.json["count"], first.json["in_progress"]) == (2, True)
        rewrite_in_place(path, b'"count":2', b'"count":9')
        assert status(client, "live").json["count"] == 2  # same inode, mtime, size
        etag = first.headers["ETag"]
        client.get(f"{PREFIX}/live", headers={"If-None-Match": etag}, status=304)
        progress.increment(1)  # a real write replaces the file
        assert status(client, "live").json["count"] == 3
        client.get(f"{PREFIX}/live", headers={"If-None-Match": etag}, status=200)
    assert status(client, "live").json["state"] == "finished"


def test_young_running_record_is_cached_only_until_it_settles(client, store, long_recheck):
    """A file written within the file system's clock tick may be replaced unseen."""
    with tracked.start("live", store=store, min_interval=0) as progress:
        progress.increment(2)
        path = store.path_for("live")
        quiet(path)
        backdate(path, seconds=-3600.0)  # young, whatever the speed of this machine
        assert status(client, "live").json["count"] == 2
        rewrite_in_place(path, b'"count":2', b'"count":9')
        time.sleep(2 * RenderCache.SETTLE_NS / 1e9)
        assert status(client, "live").json["count"] == 9


OWNER = """
import sys, time, tracked
progress = tracked.start("owned", store=sys.argv[1], min_interval=0)
progress.increment(4)
print("running", flush=True)
time.sleep(120)
"""


def test_running_record_whose_owner_is_killed_reads_abandoned_after_the_recheck(
    client, store, tmp_path
):
    """The file does not change when its owner dies: the liveness is judged again
    (at most a second later) and the route answers ``abandoned``."""
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(script), str(store.directory)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "running\n"
        quiet(store.path_for("owned"))
        backdate(store.path_for("owned"))
        assert status(client, "owned").json["state"] == "running"
        before = store.path_for("owned").stat()
    finally:
        owner.kill()
        owner.wait(timeout=30)
    deadline = time.monotonic() + 15
    while (state := status(client, "owned").json)["state"] == "running":
        assert time.monotonic() < deadline, "never seen abandoned"
        time.sleep(0.05)
    assert (state["state"], state["count"], state["in_progress"]) == ("abandoned", 4, False)
    assert store.path_for("owned").stat().st_mtime_ns == before.st_mtime_ns


# ----------------------------------------------------------------------------- a real server

GUNICORN_APP = '''
import os
import bottle
from tracked.bottle import TrackedPlugin
from tracked.asgi import status_app as asgi_status_app
from tracked.wsgi import status_app

plain = status_app(os.environ["TEST_STORE"])


def app(environ, start_response):
    """/plain/... is the WSGI app mounted at /plain; the rest is the Bottle plugin's."""
    path = environ.get("PATH_INFO", "")
    if path == "/plain" or path.startswith("/plain/"):
        environ["SCRIPT_NAME"] += "/plain"
        environ["PATH_INFO"] = path[len("/plain"):]
        return plain(environ, start_response)
    return plugged(environ, start_response)


plugged = bottle.Bottle()
plugged.install(TrackedPlugin(os.environ["TEST_STORE"]))
'''


def test_names_with_newlines_slashes_and_dots_reach_both_adapters_under_gunicorn(
    tmp_path, store
):
    """A real server decodes the path (``%0A``, ``%2F``) before either adapter sees it."""
    names = ["report\n2024", "x/../b", "..", "b", "caf\u00e9 \u2603"]
    for count, name in enumerate(names, start=1):
        finished(store, name, count)
    (tmp_path / "both_app.py").write_text(GUNICORN_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1",
         "--pythonpath", str(tmp_path), "--log-level", "warning", "both_app:app"],
        env={**os.environ, "TEST_STORE": str(store.directory)},
    )
    try:
        wait_for_port(port)
        for prefix in ("/_progress_status", "/plain"):
            for count, name in enumerate(names, start=1):
                for url in (f"{prefix}/{quote(name, safe='')}",
                            f"{prefix}/?{urlencode({'name': name})}"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{url}") as response:
                        state = json.load(response)
                    assert (state["name"], state["count"]) == (name, count), url
            request = urllib.request.Request(f"http://127.0.0.1:{port}{prefix}/b", method="PUT")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request)
            assert refused.value.code == 405
            assert refused.value.headers["Allow"] == "GET, HEAD, OPTIONS"
            assert json.load(refused.value)["status"] == "error"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_asgi_app_answers_lifespan_and_refuses_other_scopes():
    app = asgi_status_app(tracked.MemoryStore())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    with pytest.raises(ValueError, match="HTTP only"):
        asyncio.run(app({"type": "websocket", "path": "/x"}, receive, send))


def test_asgi_app_reads_the_store_off_the_event_loop(tmp_path):
    """Store reads block: the answer is computed in a worker thread, never on the loop."""
    threads: list[str] = []

    def authorize(scope: Any, key: str) -> bool:
        threads.append(threading.current_thread().name)
        return True

    store = tracked.FileStore(tmp_path / "s")
    finished(store, "job", 3)
    client = webtest.TestApp(mounted(asgi_driver(asgi_status_app(store, authorize=authorize)),
                                     PREFIX))
    assert status(client, "job").json["count"] == 3
    assert threads and threads[0] != threading.main_thread().name


def test_a_query_sent_as_raw_utf8_names_the_progress_as_its_escaped_form(
    client: webtest.TestApp, store: tracked.FileStore
) -> None:
    """Clients such as curl send ``?name=café`` unescaped; servers hand the query over
    as latin-1, which used to be read as ``cafÃ©`` (a 404) while the path was UTF-8."""
    finished(store, "café", 3, progress_id="abc")
    raw = "name=café&progress_id=abc".encode().decode("latin-1")
    answer = client.get(PREFIX + "/?" + raw)
    assert (answer.json["name"], answer.json["count"]) == ("café", 3)
    bad = client.get(PREFIX + "/?name=caf\xe9", status=400)
    assert bad.json["status"] == "error"


def asgi_answer(app: Callable[..., Any], method: str, path: str, query: bytes = b"",
                headers: tuple[tuple[bytes, bytes], ...] = (), root: str = PREFIX,
                ) -> list[dict[str, Any]]:
    """What an ASGI app sends for one request to ``PREFIX + path``, the app mounted at
    ``root`` (``root_path``: ``PREFIX`` for a status app, "" for a middleware)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": PREFIX + path, "raw_path": (PREFIX + path).encode(),
        "root_path": root, "query_string": query, "headers": [(b"host", b"x"), *headers],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if "headers" in message:  # any iterable of pairs is ASGI: compare them as a list
            message = {**message, "headers": list(message["headers"])}
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize("method, path, query, headers", [
    ("GET", "/job", b"", ()),
    ("HEAD", "/job", b"", ()),
    ("GET", "/job", b"", ((b"if-none-match", b"ETAG"),)),
    ("HEAD", "/job", b"", ((b"if-none-match", b'W/"other", ETAG'),)),
    ("GET", "/job", b"", ((b"if-none-match", b'"other"'),)),
    ("GET", "/job", b"", ((b"accept", b"application/json"), (b"accept", b"text/*"))),
    ("GET", "/job", b"", ((b"accept", b"*/*"), (b"if-none-match", b"ETAG"))),
    ("GET", "/job", b"", ((b"if-none-match", b'"other"'), (b"if-none-match", b"ETAG"))),
    ("HEAD", "/job", b"", ((b"accept", b"text/event-stream"),)),
    ("GET", "/job", b"", ((b"last-event-id", b"3"),)),
    ("GET", "/job", b"since=2", ()),
    ("GET", "/", b"name=job", ()),
    ("GET", "/job", b"progress_id=abc", ()),
    ("GET", "/job", b"", ((b"x-progress-id", b"abc"),)),
    ("GET", "", b"progress_id=abc", ()),
])
def test_asgi_answer_from_the_render_cache_is_the_computed_one(
    tmp_path: Path, method: str, path: str, query: bytes, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    """The event loop answers a cached record itself (``StatusService.cached``, or
    for a plain poll ``cached_poll``): every header, 304 and HEAD body as a fresh app
    computes it in a worker thread."""
    from tracked.asgi import _request

    store = tracked.FileStore(tmp_path / "s")
    finished(store, "job", 3, "a", "b", "c")
    finished(store, "job", 4, "d", progress_id="abc")
    finished(store, None, 5, progress_id="abc")
    for key in ("job", "job\0abc", "abc"):
        backdate(store.path_for(key))  # settled: ended records are cached
    etag = dict(asgi_answer(asgi_status_app(store), "GET", path, query)[0]["headers"])[b"etag"]
    headers = tuple((name, value.replace(b"ETAG", etag)) for name, value in headers)
    computed = asgi_answer(asgi_status_app(store), method, path, query, headers)
    warm = asgi_status_app(store)
    asgi_answer(warm, "GET", path, query,
                tuple(h for h in headers if h[0] not in (b"if-none-match", b"accept")))
    request = _request({"method": method, "path": PREFIX + path, "root_path": PREFIX,
                        "query_string": query, "headers": list(headers)}, PREFIX, path)
    assert warm.service.cached(request) is not None  # type: ignore[attr-defined]
    assert asgi_answer(warm, method, path, query, headers) == computed
    assert computed[0]["status"] == (304 if etag in dict(headers).get(b"if-none-match", b"")
                                     else 200)
    # Through TrackedMiddleware (mounted at "", serving PREFIX): the same answers.
    from tracked.asgi import TrackedMiddleware

    wrapped = TrackedMiddleware(asgi_status_app(store), store, prefix=PREFIX)
    for _ in range(2):  # computed, then cached
        assert asgi_answer(wrapped, method, path, query, headers, root="") == computed


def test_asgi_plain_polls_are_answered_without_building_a_request(tmp_path: Path) -> None:
    """A GET or HEAD naming a cached record in its path, with no query and nothing
    but ``If-None-Match`` and a non-stream ``Accept``, takes the poll shortcut;
    anything else is read in full."""
    from tracked.asgi import _poll_answer

    store = tracked.FileStore(tmp_path / "s")
    finished(store, "job", 3, "a")
    backdate(store.path_for("job"))
    app = asgi_status_app(store)
    asgi_answer(app, "GET", "/job")
    service = app.service  # type: ignore[attr-defined]

    def poll(method: str, path: str, *headers: tuple[bytes, bytes]) -> Any:
        return _poll_answer(service, {"headers": [(b"host", b"x"), *headers]}, method, path)

    assert poll("GET", "/job").status == 200
    assert poll("HEAD", "/job", (b"accept", b"text/event-stream")).status == 200
    assert poll("GET", "/job", (b"accept", b"*/*"), (b"if-none-match", b"*")).status == 304
    assert poll("GET", "/job", (b"accept", b"text/event-stream")) is None
    assert poll("GET", "/job", (b"x-progress-id", b"abc")) is None
    assert poll("GET", "/job", (b"last-event-id", b"1")) is None
    assert poll("GET", "/job", (b"if-none-match", b"*"), (b"if-none-match", b"*")) is None
    assert poll("GET", "/") is None and poll("GET", "") is None
    assert poll("GET", "/other") is None and poll("GET", "/..") is None


def test_asgi_headers_given_as_a_one_shot_iterator_are_all_read(tmp_path: Path) -> None:
    """ASGI lets ``headers`` be any iterable: a generator from a middleware upstream
    must still reach every check (here ``X-Progress-Id`` picks the record)."""
    store = tracked.FileStore(tmp_path / "s")
    finished(store, "job", 1)
    finished(store, "job", 7, progress_id="abc")
    app = asgi_status_app(store)

    async def count_for_id_header() -> int:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "method": "GET", "path": "/job", "root_path": "",
                 "query_string": b"", "headers": iter([(b"x-progress-id", b"abc")])}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(json.loads(sent[1]["body"])["count"])

    assert [asyncio.run(count_for_id_header()) for _ in range(2)] == [7, 7]  # computed, cached


def test_asgi_cached_answers_send_headers_a_middleware_outside_may_extend(
    tmp_path: Path,
) -> None:
    """An outer middleware appending a response header in place (as tracing ones do)
    works on cached answers too: each answer's headers are a fresh list."""
    store = tracked.FileStore(tmp_path / "s")
    finished(store, "job", 3)
    backdate(store.path_for("job"))
    inner = asgi_status_app(store)

    async def tracing(scope: Any, receive: Any, send: Any) -> None:
        async def traced(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"traceparent", b"00-1-2-01"))
            await send(message)

        await inner(scope, receive, traced)

    for _ in range(3):  # computed, then cached twice
        start = asgi_answer(tracing, "GET", "/job")[0]
        assert start["status"] == 200
        assert start["headers"].count((b"traceparent", b"00-1-2-01")) == 1
