"""The demo page and tracked.js in a real headless Chromium (Debian's), driven by Playwright.

The demo runs under real gunicorn. The client tests serve scripted status answers
from ``page.route`` on the demo's origin, so each behaviour of tracked.js (cursor,
gaps, ETag, 404 while starting, back-off, stop) meets exactly the answers it is about.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.test_demo_e2e import STEPS, DemoServer, demo_app, demo_server

SCREENSHOT = Path("/tmp/tracked-demo.png")
TIMEOUT_MS = 30_000
MARKUP = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("browser-demo")) as server:
        yield server


class PageWatch:
    """A page plus every dialog and uncaught error it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def watched(chromium: Browser, demo: DemoServer) -> Iterator[PageWatch]:
    context = chromium.new_context(viewport={"width": 900, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = PageWatch(page)
    page.goto(demo.url)
    yield watch
    context.close()


# ----------------------------------------------------------------------------- the demo


def test_start_fills_the_bar_and_lists_every_message_as_text(watched: PageWatch) -> None:
    page = watched.page
    page.click("#start")
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    expect(page.locator("#percent")).to_have_text("100%")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "100")
    assert page.locator("#bar-fill").evaluate("e => e.style.width") == "100%"
    assert page.locator("#messages li").all_text_contents() == demo_app.job_messages(STEPS)
    markup_item = page.locator("#messages li", has_text=MARKUP)
    expect(markup_item).to_have_count(1)
    assert page.locator("img").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []
    expect(page.locator("#start")).to_be_enabled()
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_streaming_job_shows_its_output_and_its_messages(watched: PageWatch) -> None:
    page = watched.page
    page.click("#start-stream")
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    lines = [demo_app.stream_line(step, STEPS) for step in range(1, STEPS + 1)]
    expect(page.locator("#stream-output")).to_have_text("".join(lines), use_inner_text=False)
    # messages keep no trailing line break; the streamed output does
    assert page.locator("#messages li").all_text_contents() == [s.rstrip("\n") for s in lines]
    assert page.locator("img").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []


def test_the_page_shows_the_progress_id_it_sent(watched: PageWatch) -> None:
    page = watched.page
    page.click("#start")
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    progress_id = page.locator("#progress-id").text_content() or ""
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", progress_id
    )


# ----------------------------------------------------------------------------- the client

TRACKER_JS = """
([name, url, options]) => {
  window.logs = window.logs || {};
  window.handles = window.handles || {};
  const log = window.logs[name] = {
    progress: [], messages: [], gaps: [], waiting: 0, done: null, errors: [],
  };
  const callbacks = {
    onProgress: (s) => log.progress.push(s.count),
    onMessage: (text, index) => log.messages.push([text, index]),
    onWaiting: () => { log.waiting += 1; },
    onDone: (s) => { log.done = s.state; },
    onError: (e) => log.errors.push({kind: e.kind, lastKind: e.lastKind || null,
                                     status: e.status, message: e.message}),
  };
  if (options.gaps) callbacks.onGap = (n, first) => log.gaps.push([n, first]);
  delete options.gaps;
  window.handles[name] = tracked.trackProgress(url, Object.assign(callbacks, options));
}
"""


class FakeStatus:
    """A scripted status route: answers from ``respond(request_number, since, etag)``."""

    def __init__(self, respond: Callable[[int, int, str | None], tuple[int, Any, str | None]]):
        self.respond = respond
        self.requests: list[dict[str, Any]] = []

    def __call__(self, route: Route) -> None:
        request = route.request
        query = parse_qs(urlsplit(request.url).query)
        since = int(query.get("since", ["0"])[0])
        etag = request.headers.get("if-none-match")
        self.requests.append({"since": since, "etag": etag, "query": query})
        status, body, new_etag = self.respond(len(self.requests), since, etag)
        if status is None:
            route.abort("connectionrefused")
            return
        headers = {"Cache-Control": "no-store"}
        if new_etag:
            headers["ETag"] = new_etag
        if status == 304:
            route.fulfill(status=304, headers=headers, body="")
        else:
            route.fulfill(status=status, headers=headers, json=body)


def state(
    count: int,
    messages: list[str],
    *,
    total_messages: int,
    ended: bool = False,
    start: float = 1.0,
) -> dict:
    """A wire state whose ``messages`` are the newest of ``total_messages`` ever added."""
    return {
        "name": "fake",
        "progress_id": None,
        "total": 10,
        "count": count,
        "percent": count * 10.0,
        "messages": messages,
        "message_count": total_messages,
        "in_progress": not ended,
        "state": "finished" if ended else "running",
        "status": "finished" if ended else "in progress",
        "error": None,
        "start_time": start,
        "current_time": start + 1.0,
        "finished_time": 2.0 if ended else None,
        "elapsed": 1.0,
        "rate": 1.0,
        "eta": 0.0,
    }


def growing_job(*, honour_since: bool, keep: int = 1000) -> Callable[..., Any]:
    """Request n sees n messages (the job adds one per poll); done at 10. Keeps the
    newest ``keep``; with ``honour_since`` false it ignores the cursor, as an old server."""

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        total = min(n, 10)
        all_messages = [f"message {i}" for i in range(total)]
        first = max(0, total - keep)
        if honour_since:
            first = max(first, since)
        return (
            200,
            state(total, all_messages[first:], total_messages=total, ended=total == 10),
            None,
        )

    return respond


def start_tracker(page: Page, name: str, fake: FakeStatus, **options: Any) -> None:
    url = f"/fake/{name}"
    page.route(f"**/fake/{name}?*", fake)
    options.setdefault("interval", 10)
    options.setdefault("transport", "poll")  # these scripted answers are polls
    page.evaluate(TRACKER_JS, [name, url, options])


def log_of(page: Page, name: str) -> dict[str, Any]:
    return dict(page.evaluate("(name) => window.logs[name]", name))


def wait_until(page: Page, expression: str, name: str) -> None:
    page.wait_for_function(
        f"() => {{ const log = window.logs[{json.dumps(name)}]; return {expression}; }}"
    )


@pytest.mark.parametrize("honour_since", [True, False], ids=["server-cursor", "old-server"])
def test_client_reports_each_message_once_in_order(watched: PageWatch, honour_since: bool) -> None:
    page = watched.page
    fake = FakeStatus(growing_job(honour_since=honour_since))
    start_tracker(page, "grow", fake)
    wait_until(page, "log.done !== null", "grow")
    log = log_of(page, "grow")
    assert log["messages"] == [[f"message {i}", i] for i in range(10)]
    assert log["progress"] == sorted(log["progress"]) and log["progress"][-1] == 10
    assert log["done"] == "finished" and log["errors"] == []
    assert [r["since"] for r in fake.requests] == list(range(10))


def test_client_reports_messages_the_server_dropped_as_a_gap(watched: PageWatch) -> None:
    page = watched.page

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        if n == 1:
            return 200, state(1, ["m0"], total_messages=1), None
        # 7 messages were added since; the server kept only the newest 2 (m5, m6).
        return 200, state(10, ["m5", "m6"], total_messages=7, ended=True), None

    start_tracker(page, "gap", FakeStatus(respond), gaps=True)
    start_tracker(page, "gap-default", FakeStatus(respond))
    wait_until(page, "log.done !== null", "gap")
    wait_until(page, "log.done !== null", "gap-default")
    assert log_of(page, "gap")["gaps"] == [[4, 1]]
    assert log_of(page, "gap")["messages"] == [["m0", 0], ["m5", 5], ["m6", 6]]
    assert log_of(page, "gap-default")["messages"] == [
        ["m0", 0],
        ["[4 earlier messages were dropped by the server]", None],
        ["m5", 5],
        ["m6", 6],
    ]


def test_a_restarted_run_is_followed_from_its_first_message(watched: PageWatch) -> None:
    """The name is started again mid-watch: its messages are not cut at the old cursor."""
    page = watched.page

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        if n == 1:
            return 200, state(2, ["a", "b"], total_messages=2), None
        new_run = ["x", "y"][since:]
        return 200, state(5, new_run, total_messages=2, ended=n > 2, start=9.0), None

    fake = FakeStatus(respond)
    start_tracker(page, "restart", fake)
    wait_until(page, "log.done !== null", "restart")
    assert log_of(page, "restart")["messages"] == [["a", 0], ["b", 1], ["x", 0], ["y", 1]]
    assert [r["since"] for r in fake.requests] == [0, 2, 0]


def test_client_sends_the_etag_back_and_a_304_changes_nothing(watched: PageWatch) -> None:
    page = watched.page

    def respond(n: int, since: int, etag: str | None) -> tuple[int, Any, str | None]:
        version = min(n // 3, 3)  # the record changes every third request
        current = f'"v{version}"'
        if etag == current:
            return 304, None, current
        count = version * 3 + 1
        return 200, state(count, [], total_messages=0, ended=version == 3), current

    fake = FakeStatus(respond)
    start_tracker(page, "etag", fake)
    wait_until(page, "log.done !== null", "etag")
    etags = [r["etag"] for r in fake.requests]
    assert etags[0] is None
    assert etags[1:] == ['"v0"', '"v0"', '"v1"', '"v1"', '"v1"', '"v2"', '"v2"', '"v2"']
    # Only 200s reach onProgress: requests 1, 3, 6 and 9.
    assert log_of(page, "etag")["progress"] == [1, 4, 7, 10]


def test_404_within_start_timeout_is_waiting_not_an_error(watched: PageWatch) -> None:
    page = watched.page

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        if n <= 3:
            return 404, {"error": "no progress named 'fake'", "status": "error"}, None
        return 200, state(10, ["ok"], total_messages=1, ended=True), None

    start_tracker(page, "late", FakeStatus(respond), startTimeout=20_000)
    wait_until(page, "log.done !== null", "late")
    log = log_of(page, "late")
    assert (log["waiting"], log["errors"], log["done"]) == (3, [], "finished")
    assert log["messages"] == [["ok", 0]]


def test_404_past_start_timeout_is_reported_once_and_stops(watched: PageWatch) -> None:
    page = watched.page

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        return 404, {"error": "no progress named 'fake'", "status": "error"}, None

    fake = FakeStatus(respond)
    start_tracker(page, "never", fake, startTimeout=150)
    wait_until(page, "log.errors.length > 0", "never")
    errors = log_of(page, "never")["errors"]
    assert len(errors) == 1
    assert (errors[0]["kind"], errors[0]["status"]) == ("not_found", 404)
    assert "no progress named 'fake'" in errors[0]["message"]
    assert page.evaluate("window.handles.never.stopped") is True


def test_a_refusal_is_reported_at_once_without_retrying(watched: PageWatch) -> None:
    page = watched.page

    def respond(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        return 403, {"error": "not allowed to read this progress", "status": "error"}, None

    fake = FakeStatus(respond)
    start_tracker(page, "denied", fake)
    wait_until(page, "log.errors.length > 0", "denied")
    errors = log_of(page, "denied")["errors"]
    assert [(e["kind"], e["status"]) for e in errors] == [("http", 403)]
    assert "not allowed" in errors[0]["message"]
    assert len(fake.requests) == 1


def test_network_errors_are_retried_then_given_up(watched: PageWatch) -> None:
    page = watched.page
    down = FakeStatus(lambda n, since, etag: (None, None, None))
    start_tracker(page, "down", down, maxRetries=3, maxBackoff=40)
    wait_until(page, "log.errors.length > 0", "down")
    errors = log_of(page, "down")["errors"]
    assert [(e["kind"], e["lastKind"], e["status"]) for e in errors] == [("gave_up", "network", 0)]
    assert len(down.requests) == 4  # the first try and 3 retries

    def flaky(n: int, since: int, _etag: str | None) -> tuple[Any, Any, str | None]:
        if n <= 2:
            return None, None, None
        if n == 3:
            return 503, {"error": "busy", "status": "error"}, None
        return 200, state(10, [], total_messages=0, ended=True), None

    start_tracker(page, "flaky", FakeStatus(flaky), maxRetries=3, maxBackoff=40)
    wait_until(page, "log.done !== null", "flaky")
    assert log_of(page, "flaky")["errors"] == []


def test_stop_ends_polling_and_callbacks(watched: PageWatch) -> None:
    """A stopped tracker makes no request while a running one makes ten more."""
    page = watched.page

    def forever(n: int, since: int, _etag: str | None) -> tuple[int, Any, str | None]:
        return 200, state(n % 10, [f"tick {n}"], total_messages=since + 1), None

    stopped, running = FakeStatus(forever), FakeStatus(forever)
    start_tracker(page, "stopped", stopped)
    start_tracker(page, "running", running)
    wait_until(page, "log.messages.length >= 3", "stopped")
    page.evaluate("window.handles.stopped.stop()")
    requests_at_stop = len(stopped.requests)
    log_at_stop = log_of(page, "stopped")
    goal = len(running.requests) + 10
    wait_until(page, f"log.progress.length >= {goal}", "running")
    # A request the page sent just before stop() may reach the server after it.
    settled = len(stopped.requests)
    assert settled <= requests_at_stop + 1
    wait_until(page, f"log.progress.length >= {goal + 10}", "running")
    assert len(stopped.requests) == settled  # ten more polls elsewhere, none here
    assert log_of(page, "stopped") == log_at_stop  # and no callback after stop()
    assert page.evaluate("window.handles.stopped.stopped") is True
    page.evaluate("window.handles.running.stop()")


def test_new_progress_ids_are_valid_and_distinct(watched: PageWatch) -> None:
    ids = watched.page.evaluate("Array.from({length: 200}, () => tracked.newProgressId())")
    assert len(set(ids)) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", i) for i in ids)


def test_a_whole_demo_run_logs_no_console_error(watched: PageWatch) -> None:
    """The demo's default server (sync workers) does not stream: the status answer says
    so (``X-Tracked-Events: 0``) and tracked.js never opens an EventSource, whose
    refusal Chromium would log as a MIME-type error."""
    page = watched.page
    console: list[str] = []
    streams: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    page.on("request", lambda r: streams.append(r.url)
            if r.headers.get("accept") == "text/event-stream" else None)
    page.click("#start")
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    element = page.locator("#element")
    expect(element).to_have_attribute("state", "finished")
    expect(element.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    assert console == []
    assert streams == []
    assert watched.errors == []
