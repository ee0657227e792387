"""HTML fragments on the status route (``?format=html``, ``Accept: text/html``,
``HX-Request: true``) on every adapter: escaped, accessible, with the JSON's ETags,
``since``, errors and authorization; and ``X-Tracked-Events`` on the JSON."""

from __future__ import annotations

import json
import threading
from html.parser import HTMLParser
from typing import Any

import pytest

import tracked
from tests import test_status_route
from tests.test_status_route import PREFIX, Build, corrupt, finished
from tracked._events import event_schedule

build = test_status_route.build  # the fixtures: one client per adapter, a FileStore
store = test_status_route.store
HOSTILE = '<img src=x onerror="window.pwned=1">&amp;"\''


class Tags(HTMLParser):
    """Every start tag of a fragment with its attributes, and its text."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(body)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def first(self, tag: str) -> dict[str, str | None]:
        return next(attrs for name, attrs in self.tags if name == tag)


@pytest.mark.parametrize("how", [
    {"params": {"format": "html"}},
    {"headers": {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}},
    {"headers": {"HX-Request": "true"}},
])
def test_each_way_of_asking_gets_the_same_fragment(build: Build, store, how: dict[str, Any]):
    finished(store, "job", 42, "one", "two", total=100)
    client = build(store)
    response = client.get(f"{PREFIX}/job", status="*", **how)
    assert response.status_int in (200, 286)
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "X-Tracked-Events" not in response.headers
    tags = Tags(response.text)
    bar = tags.first("progress")
    assert (bar["max"], bar["value"], bar["aria-valuetext"]) == ("100", "42", "42%")
    assert bar["aria-label"] == "Progress of job"
    assert tags.first("div")["data-state"] == "finished"
    assert ["one", "two"] == [t for t in tags.text if t in ("one", "two")]


def test_json_stays_the_default_and_format_json_wins_over_headers(build: Build, store):
    finished(store, "job")
    client = build(store)
    assert client.get(f"{PREFIX}/job").json["state"] == "finished"
    assert client.get(f"{PREFIX}/job", headers={"Accept": "application/json, text/html"}).json
    forced = client.get(f"{PREFIX}/job", params={"format": "json"}, headers={"HX-Request": "true"})
    assert forced.json["state"] == "finished"


@pytest.mark.parametrize("bad", ["xml", "HTML", "", "html&format=json"])
def test_a_bad_format_is_a_json_400(build: Build, store, bad: str):
    finished(store, "job")
    response = build(store).get(f"{PREFIX}/job?format={bad}", status=400)
    assert response.json["status"] == "error"
    assert "format" in response.json["error"]


def test_everything_from_the_run_is_escaped(build: Build, store):
    progress = tracked.start(HOSTILE, total=10, status=HOSTILE, store=store)
    progress.increment(3, HOSTILE)
    progress.fail(HOSTILE)
    body = build(store).get(f"{PREFIX}/{HOSTILE}", params={"format": "html"}).text
    assert "<img" not in body
    tags = Tags(body)
    assert {name for name, _ in tags.tags} <= {"div", "progress", "p", "span", "ul", "li"}
    assert tags.text.count(HOSTILE) == 3  # status, message, error: as text
    assert tags.first("p") is not None
    alert = [attrs for name, attrs in tags.tags if attrs.get("role") == "alert"]
    assert len(alert) == 1


def test_a_result_is_shown_as_escaped_json_once_finished(build: Build, store):
    with tracked.start("job", total=1, store=store) as progress:
        progress.increment()
        progress.result = {"html": HOSTILE}
    body = build(store).get(f"{PREFIX}/job", params={"format": "html"}).text
    assert "<img" not in body
    assert "tracked-result" in body and "&lt;img" in body


def test_unknown_total_is_an_indeterminate_bar_without_a_value(build: Build, store):
    with tracked.start("job", total=None, store=store) as progress:
        progress.increment(7)
    bar = Tags(build(store).get(f"{PREFIX}/job", params={"format": "html"}).text).first("progress")
    assert "value" not in bar
    assert bar["aria-valuetext"] == "7 done"


def test_queued_and_stopping_runs_say_so(build: Build, store):
    client = build(store)
    with tracked.start("q", total=5, store=store), tracked.start("s", total=5, store=store):
        corrupt(store, "q", {"state": "queued", "position": 2})  # a live owner's record
        corrupt(store, "s", {"cancel_requested": True})
        assert "queued (2nd in line)" in client.get(f"{PREFIX}/q", params={"format": "html"})
        assert "running, stopping…" in client.get(f"{PREFIX}/s", params={"format": "html"})


def test_errors_are_fragments_with_the_json_status_codes(build: Build, store):
    client = build(store, authorize=lambda request, key: key != "secret")
    missing = client.get(f"{PREFIX}/nothing", params={"format": "html"}, status=404)
    assert missing.headers["Content-Type"] == "text/html; charset=utf-8"
    assert Tags(missing.text).first("p")["role"] == "alert"
    assert "no progress" in missing.text
    refused = client.get(f"{PREFIX}/secret", headers={"HX-Request": "true"}, status=403)
    assert "not allowed" in refused.text and refused.headers["Content-Type"].startswith("text/html")
    bad = client.get(f"{PREFIX}/job", params={"format": "html", "since": "-1"}, status=400)
    assert "since" in bad.text and bad.headers["Content-Type"].startswith("text/html")


def test_fragments_have_their_own_etag_and_304(build: Build, store):
    finished(store, "job", 2, "a", "b", "c")
    client = build(store)
    json_tag = client.get(f"{PREFIX}/job").headers["ETag"]
    html = client.get(f"{PREFIX}/job", params={"format": "html"})
    assert html.headers["ETag"] != json_tag
    again = client.get(f"{PREFIX}/job", params={"format": "html"},
                       headers={"If-None-Match": html.headers["ETag"]}, status=304)
    assert again.body == b""
    since = client.get(f"{PREFIX}/job", params={"format": "html", "since": "2"}).text
    assert Tags(since).text.count("a") == 0 and "<li>c</li>" in since


def test_an_htmx_poll_of_an_ended_run_gets_286_and_a_running_one_200(build: Build, store):
    finished(store, "done")
    client = build(store)
    assert client.get(f"{PREFIX}/done", headers={"HX-Request": "true"}, status=286)
    assert client.get(f"{PREFIX}/done", params={"format": "html"}, status=200)
    with tracked.start("live", total=10, store=store):
        assert client.get(f"{PREFIX}/live", headers={"HX-Request": "true"}, status=200)


@pytest.mark.parametrize("streams", [True, False])
def test_json_answers_say_whether_the_route_streams(build: Build, store, streams: bool):
    finished(store, "job")
    client = build(store, max_stream_seconds=60 if streams else 0)
    assert client.get(f"{PREFIX}/job").headers["X-Tracked-Events"] == ("1" if streams else "0")


def test_html_events_carry_the_fragment_on_data_lines():
    state = tracked.State(name="job", total=4, count=1, in_progress=False, state="finished",
                          status="line one\r\nline two", messages=("m",), message_count=1)
    first = next(event_schedule(state, 0, html=True))
    lines = first.decode().split("\n")
    data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
    assert data.startswith('<div class="tracked-progress" data-state="finished"')
    assert "line one\nline two" in data
    assert all(line.startswith(("retry: ", "id: ", "data: ")) or line == "" for line in lines)


def test_an_event_stream_with_format_html_sends_fragments(tmp_path):
    """Over a real server: the WSGI app under wsgiref's threads."""
    import urllib.request
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIServer, make_server

    class Threaded(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    files = tracked.FileStore(tmp_path)
    finished(files, HOSTILE, 1, HOSTILE)
    from tracked._url import key_url
    from tracked.wsgi import status_app

    server = make_server("127.0.0.1", 0, status_app(files), server_class=Threaded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}{key_url('', HOSTILE)}?format=html"
        request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            body = response.read().decode()
    finally:
        server.shutdown()
        thread.join(10)
    data = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    assert "<img" not in body
    assert data[0].startswith('<div class="tracked-progress" data-state="finished"')
    assert "event: end" in body
    assert json.loads(data[-1]) == {}
