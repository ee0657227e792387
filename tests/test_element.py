"""``<tracked-progress>`` in a real headless Chromium: over Bottle (waitress, in this
process), to its end, stopped, with hostile text, in every state under axe-core, and
htmx's polling and SSE patterns on the HTML fragments.

axe-core and htmx come from the npm registry (``npm pack``), cached per session.
One browser per module, one page reused by every test.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

import tracked
from tests.element_app import STEPS, BottleServer

TIMEOUT_MS = 30_000
HOSTILE = '<img src=x onerror="window.pwned=1;alert(1)">'
#: Where screenshots go when $TRACKED_SHOTS is set (never into the repository).
SHOTS = Path(os.environ.get("TRACKED_SHOTS") or "/tmp/ui-shots")
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BottleServer]:
    started = BottleServer(tracked.FileStore(tmp_path_factory.mktemp("element-store")))
    yield started
    started.stop()


class Watched:
    """The one page of the module, with every console error, page error and dialog."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"{m.text} {m.location}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.problems.append("dialog: " + dialog.message)
        dialog.dismiss()


@pytest.fixture(scope="module")
def watched(chromium: Browser, server: BottleServer) -> Iterator[Watched]:
    context = chromium.new_context(viewport={"width": 640, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = Watched(page)
    yield watch
    context.close()


@pytest.fixture
def page(watched: Watched, server: BottleServer) -> Iterator[Page]:
    """The module's page on a fresh blank document; no problem may be left behind."""
    watched.problems.clear()
    watched.page.unroute("**/*")
    watched.page.emulate_media(color_scheme="light", reduced_motion="no-preference")
    watched.page.goto(server.url + "/")
    yield watched.page
    # The scripted "waiting" state is a 404, which Chromium logs; nothing else may be.
    assert [p for p in watched.problems if "/_fake/waiting" not in p] == []
    assert watched.page.evaluate("window.pwned") is None


ADD = """([src, attrs]) => {
  const bar = document.createElement('tracked-progress');
  bar.setAttribute('src', src);
  for (const [k, v] of Object.entries(attrs)) bar.setAttribute(k, v);
  window.seen = {values: [], updates: 0, ends: []};
  bar.addEventListener('tracked-update', (e) => {
    window.seen.updates += 1;
    const now = bar.shadowRoot.querySelector('[role=progressbar]').getAttribute('aria-valuenow');
    window.seen.values.push(now);
  });
  bar.addEventListener('tracked-end', (e) => window.seen.ends.push(e.detail.state));
  document.getElementById('slot').append(bar);
}"""


def start_job(page: Page, job: str, **attrs: str) -> str:
    """POST the job with a new progress_id and put an element following it on the page."""
    progress_id = uuid.uuid4().hex
    status = page.evaluate(
        "async ([job, id]) => (await fetch('/jobs/' + job + '?progress_id=' + id,"
        " {method: 'POST'})).status", [job, progress_id])
    assert status == 202
    page.evaluate(ADD, [f"/_progress_status/{job}", {"progress-id": progress_id, **attrs}])
    return progress_id


def part(page: Page, name: str) -> Any:
    return page.locator(f"tracked-progress [part~={name}]").first


def test_the_bar_rises_to_100_and_ends_finished(page: Page):
    start_job(page, "steps", messages="2")
    page.wait_for_selector("tracked-progress[state=finished]")
    bar = part(page, "track")
    assert bar.get_attribute("aria-valuenow") == "100"
    assert bar.get_attribute("aria-valuetext") == "100%"
    values = [int(v) for v in page.evaluate("window.seen.values") if v is not None]
    assert values == sorted(values) and values[-1] == 100 and len(values) >= 2
    assert page.evaluate("window.seen.ends") == ["finished"]
    assert page.locator("tracked-progress [part~=message]").all_text_contents() == [
        f"step {STEPS - 1} of {STEPS}", f"step {STEPS} of {STEPS}"]
    assert '"steps": 10' in (part(page, "result").text_content() or "")
    assert part(page, "state").text_content() == "finished"
    assert part(page, "stop").is_hidden()


def test_stop_ends_the_run_cancelled(page: Page):
    start_job(page, "forever", cancel="")
    page.wait_for_selector("tracked-progress[state=running]")
    part(page, "stop").click()
    page.wait_for_selector("tracked-progress[state=cancelled]")
    assert page.evaluate("window.seen.ends") == ["cancelled"]
    assert part(page, "stop").is_hidden()
    assert int(part(page, "track").get_attribute("aria-valuenow") or 0) < 100


def test_hostile_names_messages_status_errors_and_results_stay_text(page: Page, server):
    store = tracked.FileStore(Path(server.store_directory))
    failing = tracked.start(HOSTILE, total=4, status=HOSTILE, store=store)
    failing.increment(1, HOSTILE)
    failing.fail(HOSTILE)
    with tracked.start(HOSTILE + "ok", total=1, store=store) as done:
        done.increment()
        done.result = {HOSTILE: HOSTILE}
    for name, end in ((HOSTILE, "failed"), (HOSTILE + "ok", "finished")):
        page.evaluate("document.getElementById('slot').textContent = ''")
        src = page.evaluate("(name) => tracked.statusUrl(name)", name)
        page.evaluate(ADD, [src, {"messages": "5"}])
        page.wait_for_selector(f"tracked-progress[state={end}]")
        shadow_html = page.evaluate(
            "document.querySelector('tracked-progress').shadowRoot.innerHTML")
        assert "<img" not in shadow_html
        assert part(page, "label").text_content() == name
    assert json.loads(part(page, "result").text_content() or "") == {HOSTILE: HOSTILE}
    assert page.evaluate("window.pwned") is None


# ----------------------------------------------------------------------------- every state

BASE: dict[str, Any] = {
    "name": "export", "progress_id": None, "total": 10, "count": 4, "percent": 40.0,
    "messages": ["copied a.csv", "copied b.csv"], "message_count": 2, "in_progress": True,
    "state": "running", "cancel_requested": False, "position": None, "attempt": 1,
    "status": "copying files", "error": None, "start_time": 1.0e9, "current_time": 1.0e9 + 4,
    "finished_time": None, "elapsed": 4.0, "rate": 1.0, "eta": 6.0, "result": None,
}
STATES: dict[str, dict[str, Any]] = {
    "waiting": {},  # answered 404: not started yet
    "queued": {"state": "queued", "count": 0, "percent": 0.0, "position": 2, "eta": None,
               "messages": [], "message_count": 0, "status": "waiting"},
    "running": {},
    "unknown-total": {"total": None, "percent": None, "eta": None, "count": 7},
    "stopping": {"cancel_requested": True},
    "finished": {"state": "finished", "in_progress": False, "count": 10, "percent": 100.0,
                 "eta": None, "finished_time": 1.0e9 + 10, "result": {"rows": 1234567}},
    "failed": {"state": "failed", "in_progress": False, "eta": None,
               "error": "ValueError: row 5 is not a date"},
    "cancelled": {"state": "cancelled", "in_progress": False, "eta": None,
                  "cancel_requested": True},
    "abandoned": {"state": "abandoned", "in_progress": False, "eta": None},
    "group": {"name": "nightly", "total": 6, "count": 3, "percent": 50.0,
              "children": {"total": 6, "queued": 1, "running": 2, "finished": 2,
                           "failed": 1, "cancelled": 0, "abandoned": 0}},
}


def show_states(page: Page, lang: str = "en") -> None:
    """One element per state, each answered by a scripted status route."""

    def answer(route: Route) -> None:
        which = route.request.url.split("/_fake/")[1].split("?")[0]
        if which == "waiting":
            route.fulfill(status=404, content_type="application/json",
                          body='{"error": "no progress", "status": "error"}')
        else:
            route.fulfill(status=200, content_type="application/json",
                          headers={"X-Tracked-Events": "0"},
                          body=json.dumps({**BASE, **STATES[which]}))

    page.route("**/_fake/**", answer)
    page.evaluate("(lang) => document.documentElement.lang = lang", lang)
    for which in STATES:
        page.evaluate(ADD, [f"/_fake/{which}", {"cancel": "", "id": which, "interval": "60000"}])
    for which in STATES:
        if which != "waiting":
            page.wait_for_selector(f"#{which}[state]", state="attached")


def test_every_state_reads_as_it_should(page: Page):
    show_states(page)

    def text(which: str, name: str) -> str:
        return page.locator(f"#{which} [part~={name}]").first.text_content() or ""

    def aria(which: str, name: str) -> str | None:
        return page.locator(f"#{which} [role=progressbar]").get_attribute(name)

    assert text("queued", "state") == "queued (2nd in line)"
    assert aria("queued", "aria-valuetext") == "queued (2nd in line)"
    assert aria("running", "aria-valuenow") == "40"
    assert aria("running", "aria-valuetext") == "40% — about 6 sec left"
    assert aria("unknown-total", "aria-valuenow") is None
    assert aria("unknown-total", "aria-valuetext") == "7 done"
    assert text("stopping", "state") == "running, stopping…"
    assert page.locator("#stopping [part~=stop]").is_disabled()
    assert page.locator("#running [part~=stop]").is_enabled()
    assert text("finished", "result") == '{\n  "rows": 1234567\n}'
    assert text("failed", "error") == "ValueError: row 5 is not a date"
    assert page.locator("#failed [part~=stop]").is_hidden()
    assert page.locator("#group [part~=child-count]").all_text_contents() == [
        "6 runs", "1 queued", "2 running", "2 finished", "1 failed"]
    assert page.locator("#waiting").get_attribute("state") is None
    assert text("waiting", "state") == "waiting…"


def test_numbers_and_durations_follow_the_pages_language(page: Page):
    show_states(page, lang="de")
    running = page.locator("#running [role=progressbar]")
    assert running.get_attribute("aria-valuetext") == "40\u00a0% — about 6 Sek. left"
    assert page.locator("#group [part~=child-count]").first.text_content() == "6 runs"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_violation_in_any_state(page: Page, npm_files, scheme: str):
    page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
    show_states(page)
    page.add_script_tag(path=str(npm_files["axe-core"]))
    result = page.evaluate("async () => (await axe.run(document)).violations.map("
                           "v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))")
    assert result == []
    if os.environ.get("TRACKED_SHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"states-{scheme}.png"), full_page=True)


# ----------------------------------------------------------------------------- htmx

def serve_file(page: Page, url_glob: str, path: Path) -> None:
    page.route(url_glob, lambda route: route.fulfill(
        status=200, content_type="text/javascript", body=path.read_bytes()))


def test_htmx_polling_shows_the_run_to_its_end(page: Page, npm_files, server):
    serve_file(page, "**/htmx.min.js", npm_files["htmx.org"])
    progress_id = uuid.uuid4().hex
    page.evaluate("(id) => fetch('/jobs/steps?progress_id=' + id, {method: 'POST'})", progress_id)
    page.set_content(f"""<!doctype html><html lang="en"><head><title>htmx polling</title>
      <script src="{server.url}/htmx.min.js"></script></head><body><main><h1>Import</h1>
      <div id="poll" hx-get="/_progress_status/steps?progress_id={progress_id}"
           hx-trigger="load, every 200ms">starting…</div></main></body></html>""")
    page.wait_for_selector("#poll .tracked-progress[data-state=finished]")
    assert page.locator("#poll progress").get_attribute("value") == "100"
    page.add_script_tag(path=str(npm_files["axe-core"]))  # the fragment is accessible too
    assert page.evaluate("async () => (await axe.run(document)).violations.map(v => v.id)") == []
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "_progress_status" in r.url else None)
    page.wait_for_timeout(600)  # the 286 ended the polling: nothing more is asked
    assert requests == []


def test_htmx_sse_extension_shows_the_run_to_its_end(page: Page, npm_files, server):
    serve_file(page, "**/htmx.min.js", npm_files["htmx.org"])
    serve_file(page, "**/sse.js", npm_files["htmx-ext-sse"])
    progress_id = uuid.uuid4().hex
    page.evaluate("(id) => fetch('/jobs/steps?progress_id=' + id, {method: 'POST'})", progress_id)
    page.wait_for_function(
        "async (id) => (await fetch('/_progress_status/steps?progress_id=' + id)).ok",
        arg=progress_id)
    page.set_content(f"""<!doctype html><html lang="en"><head><title>htmx SSE</title>
      <script src="{server.url}/htmx.min.js"></script>
      <script src="{server.url}/sse.js"></script></head><body><main>
      <div hx-ext="sse" sse-connect="/_progress_status/steps?progress_id={progress_id}&format=html"
           sse-close="end"><div id="live" sse-swap="message">starting…</div></div>
      </main></body></html>""")
    page.wait_for_selector("#live .tracked-progress[data-state=finished]")
    assert page.locator("#live progress").get_attribute("value") == "100"


# ----------------------------------------------------------------------------- the examples

@pytest.fixture(scope="module", params=["flask", "fastapi"])
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """examples/flask_app.py under gunicorn (gthread), examples/fastapi_app.py under
    uvicorn, each on its own file store; started once for the module."""
    from tests.test_frameworks import Server

    started = Server(request.param, str(tmp_path_factory.mktemp(f"{request.param}-store")))
    yield started
    started.stop()


def test_the_examples_bar_page_runs_a_job_to_its_end_and_stops_one(watched: Watched, example):
    page = watched.page
    watched.problems.clear()
    page.goto(example.url + "/bar")
    page.click("#start")
    page.wait_for_selector("tracked-progress[state=finished]")
    assert part(page, "track").get_attribute("aria-valuenow") == "100"
    assert part(page, "label").text_content() == "Demo job"
    page.click("#start")
    page.wait_for_selector("tracked-progress[state=running]")
    part(page, "stop").click()
    page.wait_for_selector("tracked-progress[state=cancelled]")
    assert watched.problems == []
