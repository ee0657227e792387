"""The Bottle plugin: request scope for routes and the JSON status route, through WebTest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle
import pytest
import webob
import webtest

import tracked
from tests.conftest import free_port, wait_for_port
from tracked._scope import request_scope
from tracked.bottle import TrackedPlugin

PREFIX = "/_progress_status"
WIRE_KEYS = [
    "name", "progress_id", "total", "count", "percent", "messages", "message_count",
    "in_progress", "state", "cancel_requested", "position", "attempt", "status", "error",
    "start_time", "current_time",
    "finished_time", "elapsed", "rate", "eta", "result",
]


@pytest.fixture
def plugin_store(tmp_path: Path) -> tracked.FileStore:
    """The plugin's own store; the process default stays a different directory."""
    (tmp_path / "plugin-store").mkdir()  # opening a FileStore no longer creates it
    return tracked.FileStore(tmp_path / "plugin-store")


def build_app(store: tracked.Store, **plugin_options: Any) -> bottle.Bottle:
    """An app with the routes the tests exercise, the plugin installed."""
    app = bottle.Bottle()
    app.install(TrackedPlugin(store, **plugin_options))

    @app.get("/twice")
    @tracked.tracked("twice")
    def twice() -> str:
        tracked.current().increment()
        tracked.current().increment()
        return "done"

    @app.get("/two-hundred")
    def two_hundred() -> str:
        with tracked.start("two-hundred", total=200) as progress:
            progress.increment()
            progress.add_message("first message")
            progress.increment(1, "second message")
            progress += 1
        return "done"

    @app.get("/duplicate")
    def duplicate() -> dict[str, Any]:
        with tracked.start("dup", total=200):
            try:
                tracked.start("dup", total=300)
            except tracked.AlreadyRunning as exc:
                return {"refused": str(exc)}
        return {"refused": None}

    @app.get("/nameless")
    @tracked.tracked()
    def nameless() -> str:
        tracked.current().increment(5)
        return "done"

    @app.get("/job")
    @tracked.tracked("job", total=lambda: int(bottle.request.query.get("total", "10")))
    def job() -> str:
        tracked.current().increment(3)
        return "done"

    @app.get("/messages")
    @tracked.tracked("messages", total=5, max_messages=3)
    def messages() -> str:
        for i in range(5):
            tracked.current().increment(1, f"m{i}")
        return "done"

    @app.get("/busy")
    @tracked.tracked("busy")
    def busy() -> str:
        return "ran"

    @app.get("/user/<user>")
    @tracked.tracked("import-{user}")
    def user_import(user: str) -> str:
        return user

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.get("/config", tracked={"name": "configured", "total": 7})
    def configured() -> str:
        tracked.current().increment(2)
        return "done"

    @app.get("/config-default", tracked=True)
    def config_default() -> str:
        tracked.current().increment()
        return "done"

    @app.get("/stream", tracked={"name": "stream", "total": 5, "min_interval": 0})
    def stream() -> Iterator[str]:
        for i in range(5):
            yield f"line {i}\n"

    @app.get("/gen-start")
    def gen_start() -> Iterator[str]:
        with tracked.start("busy"):
            yield "working\n"

    @app.get("/inner-start")
    def inner_start() -> Iterator[str]:
        yield "before\n"
        with tracked.start("inner", total=1) as progress:
            progress.increment()
            yield "inside\n"

    return app


@pytest.fixture
def app(plugin_store: tracked.FileStore) -> webtest.TestApp:
    return webtest.TestApp(build_app(plugin_store))


def status(app: webtest.TestApp, name: str, expect: int = 200, **params: str) -> Any:
    """GET the status route for ``name``; return the response (status checked)."""
    return app.get(f"{PREFIX}/{name}", params=params, status=expect)


def assert_json_error(response: Any, code: int) -> str:
    assert response.status_int == code
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json["status"] == "error"
    assert isinstance(response.json["error"], str) and response.json["error"]
    return str(response.json["error"])


# ----------------------------------------------------------------------------- the seed's cases


def test_route_incrementing_twice_reads_total_100_count_2_not_in_progress(app):
    app.get("/twice")
    state = status(app, "twice").json
    assert (state["total"], state["count"], state["in_progress"]) == (100, 2, False)
    assert state["state"] == "finished"


def test_total_200_with_three_increments_and_two_messages(app):
    app.get("/two-hundred")
    state = status(app, "two-hundred").json
    assert (state["total"], state["count"]) == (200, 3)
    assert state["messages"] == ["first message", "second message"]
    assert state["in_progress"] is False


def test_duplicate_start_in_one_request_fails_and_keeps_the_first_total(app):
    refused = app.get("/duplicate").json["refused"]
    assert refused is not None and "dup" in refused
    state = status(app, "dup").json
    assert state["total"] == 200
    assert state["state"] == "finished"


def test_nameless_progress_is_found_by_its_progress_id_alone(app):
    app.get("/nameless", params={"progress_id": "1000"})
    state = status(app, "1000").json
    assert state["name"] is None
    assert state["progress_id"] == "1000"
    assert state["count"] == 5


# ----------------------------------------------------------------------------- the wire response


def test_status_is_the_wire_json_with_content_type_and_no_store(app):
    app.get("/twice")
    response = status(app, "twice")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert list(json.loads(response.body)) == WIRE_KEYS


def test_head_request_gets_the_headers_without_a_body(app):
    app.get("/twice")
    response = app.head(f"{PREFIX}/twice", status=200)
    assert response.body == b""
    assert response.headers["ETag"] == status(app, "twice").headers["ETag"]


def test_progress_id_is_combined_with_the_route_name(app):
    app.get("/job", params={"progress_id": "abc"})
    state = status(app, "job", progress_id="abc").json
    assert (state["name"], state["progress_id"], state["count"]) == ("job", "abc", 3)
    assert_json_error(status(app, "job", expect=404), 404)
    assert_json_error(status(app, "abc", expect=404), 404)


def test_clients_with_different_progress_ids_see_only_their_own(app):
    app.get("/job", params={"progress_id": "client-a", "total": "10"})
    app.get("/job", params={"progress_id": "client-b", "total": "20"})
    a = status(app, "job", progress_id="client-a").json
    b = status(app, "job", progress_id="client-b").json
    assert (a["progress_id"], a["total"]) == ("client-a", 10)
    assert (b["progress_id"], b["total"]) == ("client-b", 20)


def test_unknown_name_is_404_json(app):
    message = assert_json_error(status(app, "never-started", expect=404), 404)
    assert "never-started" in message


def test_prefix_without_a_name_is_400_json(app):
    assert_json_error(app.get(PREFIX + "/", status=400), 400)
    assert_json_error(app.get(PREFIX, status=400), 400)


@pytest.mark.parametrize("bad", ["a/b", "", "x" * 129, "caf\u00e9", "a b", "<script>"])
def test_invalid_progress_id_is_400_json_on_status_and_tracked_routes(app, bad):
    assert_json_error(status(app, "job", expect=400, progress_id=bad), 400)
    assert_json_error(app.get("/job", params={"progress_id": bad}, status=400), 400)
    assert not tracked.is_running("job", store=app.app.plugins[-1].store)


def test_percent_encoded_progress_id_parameter_is_understood(app):
    app.get("/nameless?progress%5Fid=encoded")
    assert status(app, "encoded").json["progress_id"] == "encoded"


def test_longest_valid_progress_id_is_accepted(app):
    longest = "A-z0._~9" * 16
    app.get("/nameless", params={"progress_id": longest})
    assert status(app, longest).json["progress_id"] == longest


@pytest.mark.parametrize("name", ["a%00b", "n" * 513])
def test_invalid_name_is_400_json(app, name):
    assert_json_error(app.get(f"{PREFIX}/{name}", status=400), 400)


def test_invalid_name_from_route_arguments_is_400_json(app):
    assert_json_error(app.get("/user/" + "u" * 600, status=400), 400)
    assert app.get("/user/ann").text == "ann"
    assert status(app, "import-ann").json["state"] == "finished"


@pytest.mark.parametrize(
    "path",
    [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "../outside",
        "/../../outside.json",
        "..\\..\\outside",
    ],
)
def test_traversal_looking_names_are_only_names(tmp_path, plugin_store, path):
    """A record planted outside the store under the name's path is never served."""
    planted = tmp_path / "outside.json"
    planted.write_text(json.dumps({"version": 1, "state": {"name": "planted"}, "owner": None}))
    app = webtest.TestApp(build_app(plugin_store))
    response = app.get(f"{PREFIX}/{path}", status=404)
    assert_json_error(response, 404)
    assert "planted" not in response.text


def test_traversal_looking_name_is_stored_inside_the_store(tmp_path, plugin_store):
    name = "../../etc/passwd"
    with tracked.start(name, store=plugin_store) as progress:
        progress.increment(4)
    app = webtest.TestApp(build_app(plugin_store))
    assert status(app, name).json["count"] == 4
    encoded = app.get(f"{PREFIX}/..%2F..%2Fetc%2Fpasswd").json
    assert (encoded["name"], encoded["count"]) == (name, 4)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files and all(p.parent == plugin_store.directory for p in files)


@pytest.mark.parametrize(
    "path",
    ["%ff%fe", "%E2%98%83/%C3%A9", "%25%32%65", "a" * 4000, "x?since=-1", "x?progress_id=&since=",
     "x;y", "%0d%0aSet-Cookie:%20a=b", "%u002e%u002e"],
)
def test_odd_status_requests_answer_json_not_500(app, path):
    response = app.get(f"{PREFIX}/{path}", expect_errors=True)
    assert response.status_int in (400, 404)
    if response.content_type == "application/json":
        assert response.json["status"] == "error"
    assert "Set-Cookie" not in response.headers


# ----------------------------------------------------------------------------- conditional polling


def test_matching_if_none_match_gets_304_without_body(app):
    app.get("/twice")
    etag = status(app, "twice").headers["ETag"]
    response = app.get(f"{PREFIX}/twice", headers={"If-None-Match": etag}, status=304)
    assert response.body == b""
    assert response.headers["ETag"] == etag
    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        app.get(f"{PREFIX}/twice", headers={"If-None-Match": header}, status=304)
    assert status(app, "twice").headers["ETag"] == etag


def test_etag_changes_whenever_the_record_changes(plugin_store):
    app = webtest.TestApp(build_app(plugin_store))
    with tracked.start("live", store=plugin_store, min_interval=0) as progress:
        first = status(app, "live").headers["ETag"]
        progress.increment()
        second = status(app, "live").headers["ETag"]
        app.get(f"{PREFIX}/live", headers={"If-None-Match": first}, status=200)
    ended = status(app, "live").headers["ETag"]
    assert len({first, second, ended}) == 3


def test_etag_differs_with_the_since_cursor(app):
    app.get("/messages")
    full = status(app, "messages").headers["ETag"]
    assert status(app, "messages", since="4").headers["ETag"] != full


# ----------------------------------------------------------------------------- the since cursor


def test_since_returns_only_messages_from_that_index(app):
    app.get("/messages")  # five messages m0..m4, the last three kept
    full = status(app, "messages").json
    assert (full["messages"], full["message_count"]) == (["m2", "m3", "m4"], 5)
    assert status(app, "messages", since="3").json["messages"] == ["m3", "m4"]
    assert status(app, "messages", since="5").json["messages"] == []
    assert status(app, "messages", since="99").json["messages"] == []
    assert status(app, "messages", since="0").json["messages"] == ["m2", "m3", "m4"]
    assert status(app, "messages", since="1").json["messages"] == ["m2", "m3", "m4"]


def test_polling_with_since_sees_every_message_once(plugin_store):
    app = webtest.TestApp(build_app(plugin_store))
    seen: list[str] = []
    with tracked.start("poll", store=plugin_store, min_interval=0) as progress:
        for i in range(6):
            progress.add_message(f"msg {i}")
            state = status(app, "poll", since=str(len(seen))).json
            seen.extend(state["messages"])
    assert seen == [f"msg {i}" for i in range(6)]


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", "", "\u00b2", "9" * 40])
def test_bad_since_is_400_json(app, bad):
    app.get("/messages")
    assert_json_error(status(app, "messages", expect=400, since=bad), 400)


# ----------------------------------------------------------------------------- access control


def test_authorize_refusal_is_403_json_and_sees_the_combined_key(plugin_store):
    asked: list[str] = []

    def authorize(request: Any, key: str) -> bool:
        asked.append(key)
        return request.get_header("X-Token") == "secret"

    app = webtest.TestApp(build_app(plugin_store, authorize=authorize))
    app.get("/job", params={"progress_id": "p1"})
    refused = app.get(f"{PREFIX}/job?progress_id=p1", status=403)
    assert_json_error(refused, 403)
    assert "count" not in refused.text
    allowed = app.get(f"{PREFIX}/job?progress_id=p1", headers={"X-Token": "secret"})
    assert allowed.json["count"] == 3
    assert asked == [tracked.State("job", "p1").key] * 2


def test_authorize_is_asked_before_revealing_whether_a_name_exists(plugin_store):
    app = webtest.TestApp(build_app(plugin_store, authorize=lambda request, key: False))
    assert_json_error(status(app, "never-started", expect=403), 403)


# ----------------------------------------------------------------------------- store and scope


def test_plugin_store_is_the_default_for_the_apps_routes(app, plugin_store):
    app.get("/two-hundred")
    assert plugin_store.load("two-hundred") is not None
    assert tracked.load("two-hundred") is None  # the process default store


def test_status_route_uses_the_process_default_without_a_store(tmp_path):
    tracked.configure(store=tmp_path / "configured")
    app = webtest.TestApp(build_app(None))  # type: ignore[arg-type]
    app.get("/twice")
    assert tracked.load("twice") is not None
    assert status(app, "twice").json["count"] == 2


def test_request_scope_does_not_outlive_the_request(app):
    app.get("/job", params={"progress_id": "scoped"})
    assert request_scope.get() is None
    with tracked.start("outside") as progress:
        assert progress.progress_id is None


def test_progress_id_on_an_untracked_route_is_harmless(app):
    assert app.get("/plain", params={"progress_id": "p"}).text == "plain"


def test_corrupt_record_is_500_json_without_the_path(plugin_store):
    plugin_store.path_for("broken").write_bytes(b"{not json")
    app = webtest.TestApp(build_app(plugin_store))
    response = app.get(f"{PREFIX}/broken", status=500)
    message = assert_json_error(response, 500)
    assert str(plugin_store.directory) not in message


def test_statuses_of_a_memory_store_are_served_too():
    store = tracked.MemoryStore()
    app = webtest.TestApp(build_app(store))
    app.get("/twice")
    assert status(app, "twice").json["count"] == 2


# ----------------------------------------------------------------------------- conflicts


def test_route_starting_a_running_name_is_409_and_leaves_it_untouched(app, plugin_store):
    with tracked.start("busy", total=50, store=plugin_store) as running:
        running.increment(7)
        running.flush()
        response = app.get("/busy", status=409)
        assert_json_error(response, 409)
        assert "busy" in response.json["error"]
        state = status(app, "busy").json
        assert (state["total"], state["count"], state["in_progress"]) == (50, 7, True)
    app.get("/busy", status=200)


def test_generator_route_starting_a_running_name_is_409(app, plugin_store):
    with tracked.start("stream", store=plugin_store):
        assert_json_error(app.get("/stream", status=409), 409)


def test_generator_route_refused_before_its_first_chunk_is_409(app, plugin_store):
    """A start inside the body fails before anything is sent: still a JSON 409."""
    with tracked.start("busy", store=plugin_store):
        assert_json_error(app.get("/gen-start", status=409), 409)
    assert app.get("/gen-start").text == "working\n"


def test_second_plugin_on_one_app_is_refused(plugin_store):
    app = bottle.Bottle()
    app.install(TrackedPlugin(plugin_store))
    with pytest.raises(bottle.PluginError, match="already has a TrackedPlugin"):
        app.install(TrackedPlugin(plugin_store))


@pytest.mark.parametrize("prefix", ["no-slash", "/x/<name>", None])
def test_bad_prefix_is_refused(prefix):
    with pytest.raises(tracked.InvalidValue):
        TrackedPlugin(prefix=prefix)  # type: ignore[arg-type]


def test_prefix_is_configurable(plugin_store):
    app = webtest.TestApp(build_app(plugin_store, prefix="/progress/"))
    app.get("/twice")
    assert app.get("/progress/twice").json["count"] == 2
    app.get(f"{PREFIX}/twice", status=404)


# ----------------------------------------------------------------------------- route config form


def test_route_config_form_tracks_the_route(app):
    app.get("/config")
    state = status(app, "configured").json
    assert (state["total"], state["count"], state["state"]) == (7, 2, "finished")


def test_route_config_true_tracks_a_nameless_route_by_progress_id(app):
    app.get("/config-default", params={"progress_id": "cfg"})
    assert status(app, "cfg").json["count"] == 1


def test_route_config_with_an_unknown_option_is_refused(plugin_store):
    app = bottle.Bottle()
    app.config["catchall"] = False
    app.install(TrackedPlugin(plugin_store))

    @app.get("/typo", tracked={"nmae": "x"})
    def typo() -> str:
        return "never"

    with pytest.raises(tracked.InvalidValue, match="nmae"):
        webtest.TestApp(app).get("/typo")


# ----------------------------------------------------------------------------- generator routes


def wsgi_get(app: bottle.Bottle, url: str) -> tuple[list[str], Any]:
    """Call the WSGI app directly: the status line and the unconsumed body iterable."""
    started: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append(line)
        return lambda data: None

    body = app(webob.Request.blank(url).environ, start_response)
    return started, body


def test_generator_route_streams_while_recorded(plugin_store):
    app = build_app(plugin_store)
    client = webtest.TestApp(app)
    started, body = wsgi_get(app, "/stream?progress_id=s1")
    assert started == ["200 OK"]
    chunks = []
    for chunk in body:
        chunks.append(chunk)
        state = status(client, "stream", progress_id="s1").json
        if len(chunks) < 5:
            assert state["in_progress"] is True
            assert len(chunks) <= state["count"] < 5
            # a message keeps no trailing line break; the streamed body keeps it
            assert state["messages"][: len(chunks)] == [c.decode().rstrip("\n") for c in chunks]
    body.close()
    assert chunks == [f"line {i}\n".encode() for i in range(5)]
    state = status(client, "stream", progress_id="s1").json
    assert (state["count"], state["state"], state["message_count"]) == (5, "finished", 5)
    assert tracked.load("stream", progress_id="s1") is None  # not in the process default


def test_closing_the_body_early_cancels_the_progress(plugin_store):
    """The WSGI server closes the body when the client goes away."""
    app = build_app(plugin_store)
    _, body = wsgi_get(app, "/stream?progress_id=gone")
    iterator = iter(body)
    assert [next(iterator), next(iterator)] == [b"line 0\n", b"line 1\n"]
    body.close()
    state = plugin_store.load(tracked.State("stream", "gone").key)
    assert state is not None
    assert (state.state, state.in_progress, state.count) == ("cancelled", False, 2)


def test_generator_route_body_runs_in_the_request_scope(plugin_store):
    """Bottle iterates the body after the callback returned: the scope must still hold."""
    app = build_app(plugin_store)
    _, body = wsgi_get(app, "/inner-start?progress_id=inner-1")
    assert b"".join(body) == b"before\ninside\n"
    body.close()
    state = plugin_store.load(tracked.State("inner", "inner-1").key)
    assert state is not None and (state.count, state.state) == (1, "finished")
    assert tracked.load("inner") is None and tracked.load("inner", progress_id="inner-1") is None


def test_generator_routes_in_concurrent_threads_keep_their_own_scope(plugin_store):
    """Four streaming requests, all inside their bodies at once, each record its own id."""
    app = build_app(plugin_store)
    barrier = threading.Barrier(4, timeout=20)

    @app.get("/together")
    def together() -> Iterator[str]:
        yield "before\n"
        barrier.wait()
        with tracked.start("together", total=1) as progress:
            progress.increment()
            yield "inside\n"

    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            _, body = wsgi_get(app, f"/together?progress_id=t{i}")
            assert b"".join(body) == b"before\ninside\n"
            body.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    for i in range(4):
        state = plugin_store.load(tracked.State("together", f"t{i}").key)
        assert state is not None and (state.progress_id, state.state) == (f"t{i}", "finished")


def test_only_files_of_the_store_are_written(tmp_path, plugin_store):
    app = webtest.TestApp(build_app(plugin_store))
    app.get("/twice")
    app.get("/nameless", params={"progress_id": "f1"})
    outside = sorted(
        os.path.relpath(p, tmp_path)
        for p in tmp_path.rglob("*")
        if p.is_file() and plugin_store.directory not in p.parents
    )
    assert outside == []



# ------------------------------------------------------------------------ ended-record cache


def backdate(path: Path, seconds: float = 60.0) -> None:
    """Set a file's mtime into the past, as if written long ago."""
    past = int((time.time() - seconds) * 1e9)
    os.utime(path, ns=(past, past))


def rewrite_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Change a record file's bytes keeping its inode, size and mtime."""
    assert len(old) == len(new)
    before = path.stat()
    data = path.read_bytes()
    assert old in data
    with open(path, "r+b") as file:
        file.write(data.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_ended_record_is_served_without_rereading_an_unchanged_file(app, plugin_store):
    app.get("/twice")
    path = plugin_store.path_for("twice")
    backdate(path)
    assert status(app, "twice").json["count"] == 2
    rewrite_in_place(path, b'"count":2', b'"count":9')
    assert status(app, "twice").json["count"] == 2  # same inode, mtime, size: cached


def test_running_record_is_reread_once_its_file_changes(app, plugin_store):
    """Issue 9: a running record's body is cached while its file is unchanged (and its
    owner judged alive within a second), and read again as soon as the file changes."""
    with tracked.start("live", store=plugin_store, min_interval=0) as progress:
        progress.increment(2)
        backdate(plugin_store.path_for("live"))
        assert status(app, "live").json["count"] == 2
        progress.increment(7)
        assert status(app, "live").json["count"] == 9


def test_rerun_of_a_cached_ended_record_is_served_fresh(app, plugin_store):
    app.get("/job", params={"total": "10"})
    path = plugin_store.path_for("job")
    backdate(path)
    first = status(app, "job").json
    app.get("/job", params={"total": "20"})
    second = status(app, "job").json
    assert (first["total"], second["total"]) == (10, 20)
    assert second["start_time"] > first["start_time"]


def test_deleted_cached_record_is_404(app, plugin_store):
    app.get("/twice")
    backdate(plugin_store.path_for("twice"))
    status(app, "twice")
    assert plugin_store.delete("twice")
    assert_json_error(status(app, "twice", expect=404), 404)


def test_record_written_moments_ago_is_not_cached(app, plugin_store):
    """Within the file system's timestamp tick a replaced file could look unchanged."""
    app.get("/twice")
    path = plugin_store.path_for("twice")
    backdate(path, seconds=-3600.0)  # "now", whatever the speed of this machine
    assert status(app, "twice").json["count"] == 2
    rewrite_in_place(path, b'"count":2', b'"count":9')
    assert status(app, "twice").json["count"] == 9


# ------------------------------------------------------------------------ under a real server

STREAMING_APP = '''
import os, time
import bottle
import tracked
from tracked.bottle import TrackedPlugin

app = bottle.Bottle()
app.install(TrackedPlugin(os.environ["TEST_STORE"]))


@app.get("/ticks", tracked={"name": "ticks", "total": 2000, "min_interval": 0})
def ticks():
    for i in range(2000):
        yield "tick %d\\n" % i
        time.sleep(0.01)
'''


def test_client_disconnecting_from_a_streaming_route_cancels_it(tmp_path, plugin_store):
    """gunicorn closes the body once writes to the gone client fail."""
    (tmp_path / "streaming_app.py").write_text(STREAMING_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1",
         "--pythonpath", str(tmp_path), "--log-level", "warning", "streaming_app:app"],
        env={**os.environ, "TEST_STORE": str(plugin_store.directory)},
    )
    try:
        wait_for_port(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /ticks?progress_id=gone HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"tick 2\n" not in received:
                chunk = client.recv(4096)
                assert chunk, "the server closed the stream early"
                received += chunk
        key = tracked.State("ticks", "gone").key
        deadline = time.monotonic() + 30
        state = plugin_store.load(key)
        while state is not None and state.in_progress and time.monotonic() < deadline:
            time.sleep(0.05)
            state = plugin_store.load(key)
        assert state is not None
        assert (state.state, state.in_progress) == ("cancelled", False)
        assert 3 <= state.count < 2000
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------------ issue 8 regressions


def form_app(store: tracked.Store) -> webtest.TestApp:
    """A tracked nameless POST route that still reads its own form afterwards."""
    app = bottle.Bottle()
    app.install(TrackedPlugin(store))

    @app.post("/upload")
    @tracked.tracked(total=5)
    def upload() -> str:
        tracked.current().increment(5)
        return "note=" + (bottle.request.forms.getunicode("note") or "")

    return webtest.TestApp(app)


def test_percent_encoded_progress_id_name_is_read_on_tracked_routes(app):
    app.get("/nameless?%70rogress_id=abc123")
    state = status(app, "abc123").json
    assert (state["progress_id"], state["count"]) == ("abc123", 5)
    assert tracked.load("__main__.nameless", store=app.app.plugins[-1].store) is None


def test_progress_id_from_a_urlencoded_form_field(plugin_store):
    client = form_app(plugin_store)
    assert client.post("/upload", {"progress_id": "form-1", "note": "kept"}).text == "note=kept"
    assert plugin_store.load("form-1") is not None


def test_progress_id_from_a_multipart_form_field(plugin_store):
    client = form_app(plugin_store)
    response = client.post(
        "/upload", {"progress_id": "multi-1", "note": "caf\u00e9"},
        upload_files=[("file", "data.bin", b"\x00\x01payload")],
    )
    assert response.text == "note=caf\u00e9"
    state = plugin_store.load("multi-1")
    assert state is not None and state.count == 5


def test_progress_id_from_the_x_progress_id_header(plugin_store):
    client = form_app(plugin_store)
    client.post("/upload", headers={"X-Progress-Id": "hdr-1"})
    assert plugin_store.load("hdr-1") is not None


def test_agreeing_progress_id_sources_are_accepted(plugin_store):
    client = form_app(plugin_store)
    client.post("/upload?progress_id=same", {"progress_id": "same"},
                headers={"X-Progress-Id": "same"})
    assert plugin_store.load("same") is not None


@pytest.mark.parametrize(
    ("url", "form", "header"),
    [("/upload?progress_id=a", {"progress_id": "b"}, None),
     ("/upload?progress_id=a", {}, "b"),
     ("/upload", {"progress_id": "a"}, "b"),
     ("/upload?progress_id=a&%70rogress_id=b", {}, None)],
)
def test_conflicting_progress_ids_on_a_tracked_route_are_400_and_run_nothing(
    plugin_store, url, form, header
):
    client = form_app(plugin_store)
    headers = {"X-Progress-Id": header} if header else {}
    response = client.post(url, form, headers=headers, status=400)
    assert "conflicting progress_id" in assert_json_error(response, 400)
    assert plugin_store.list() == []


def stream_app(store: tracked.Store) -> bottle.Bottle:
    app = bottle.Bottle()
    app.install(TrackedPlugin(store))

    @app.get("/mixed", tracked={"name": "mixed", "total": 8, "min_interval": 0})
    def mixed() -> Iterator[Any]:
        yield "text\n"
        yield None
        yield 42
        yield b"bytes\n"
        yield {"not": "sent"}
        yield ""
        yield "caf\u00e9\n"
        yield b""

    @app.get("/bytes-first", tracked={"name": "bytes-first", "min_interval": 0})
    def bytes_first() -> Iterator[Any]:
        yield b"one\n"
        yield None
        yield "two\n"

    @app.get("/undecodable", tracked={"name": "undecodable", "min_interval": 0})
    def undecodable() -> Iterator[Any]:
        yield "caf\udce9.txt\n"  # a file name from os.listdir on a non-UTF-8 name
        yield "\ud800 lone\n"

    @app.get("/breaks", tracked={"name": "breaks", "min_interval": 0})
    def breaks() -> Iterator[Any]:
        yield "before\n"
        yield None
        raise RuntimeError("disk on fire")

    return app


def test_generator_route_sends_only_str_and_bytes_and_counts_every_item(plugin_store):
    client = webtest.TestApp(stream_app(plugin_store))
    assert client.get("/mixed").body == "text\nbytes\ncaf\u00e9\n".encode()
    state = plugin_store.load("mixed")
    assert state is not None
    assert (state.state, state.error, state.count) == ("finished", None, 8)
    assert client.get("/bytes-first").body == b"one\ntwo\n"
    state = plugin_store.load("bytes-first")
    assert state is not None and (state.state, state.count) == ("finished", 3)


def test_exception_while_streaming_ends_the_run_failed_with_its_error(plugin_store):
    _, body = wsgi_get(stream_app(plugin_store), "/breaks")
    chunks = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        for chunk in body:
            chunks.append(chunk)
    body.close()
    assert chunks == [b"before\n"]
    state = plugin_store.load("breaks")
    assert state is not None
    assert (state.state, state.in_progress, state.count) == ("failed", False, 2)
    assert state.error is not None and "disk on fire" in state.error


def test_streamed_text_that_cannot_be_encoded_never_breaks_the_stream(plugin_store):
    client = webtest.TestApp(stream_app(plugin_store))
    assert client.get("/undecodable").body == b"caf\xe9.txt\n? lone\n"


def test_a_route_with_many_query_fields_still_runs(app):
    fields = "&".join(f"f{i}=v" for i in range(500))
    app.get(f"/nameless?{fields}&progress_id=many")
    assert status(app, "many").json["count"] == 5
