"""``tracked serve``'s pages and tracked.js name exactly the progress they show, in real
Chromium: names holding dot segments (``x/../b``, ``.``, ``..``) reach their own record."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

import tracked
from tests.conftest import ROOT, free_port, wait_for_port
from tracked._views import printable

TIMEOUT_MS = 30_000
#: Each name with a count of its own; "b", "y/z" and "z" are what the browser would
#: reach if it resolved the dot segments of the others.
COUNTS = {
    "b": 1, "x/../b": 2, ".": 3, "y/./z": 4, "..": 5, "y/z": 6, "z": 7, "x/..": 8,
    "report\n2024": 9, "a b?c#d": 10, "/lead": 12, "//host/x": 13,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tracked serve`` on a free port over a store holding one ended record per name."""
    directory = tmp_path_factory.mktemp("serve-pages") / "store"
    store = tracked.FileStore(directory)
    for name, count in COUNTS.items():
        with tracked.start(name, total=100, store=store) as progress:
            progress.increment(count)
    with tracked.start("..", progress_id="p-1", total=100, store=store) as progress:
        progress.increment(11)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tracked", "serve", "--port", str(port), "--store", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def test_serve_page_of_every_dot_segment_name_shows_that_progress(served, page):
    from playwright.sync_api import expect

    for name, count in COUNTS.items():
        page.goto(f"{served}/progress?{urlencode({'name': name})}")
        expect(page.locator("#progress [part~=count]")).to_have_text(f"{count} / 100")
        expect(page.locator("#progress [part~=state]")).to_have_text("finished")
        assert page.locator("#title").get_attribute("data-label") == printable(name)
    page.goto(f"{served}/progress?{urlencode({'name': '..', 'progress_id': 'p-1'})}")
    expect(page.locator("#progress [part~=count]")).to_have_text("11 / 100")


def test_list_page_links_open_the_progress_they_name(served, page):
    from playwright.sync_api import expect

    page.goto(f"{served}/")
    link = page.get_by_role("link", name="x/../b", exact=True)
    expect(link).to_be_visible()
    link.click()
    expect(page.locator("#progress [part~=count]")).to_have_text("2 / 100")


def test_tracked_js_status_urls_reach_every_name_in_chromium(served, page):
    page.goto(f"{served}/progress?name=b")
    page.wait_for_function("() => typeof tracked === 'object'")
    answers = page.evaluate(
        """async (names) => {
          const out = {};
          for (const name of names) {
            const response = await fetch(tracked.statusUrl(name));
            const body = await response.json();
            out[name] = [response.status, body.name, body.count];
          }
          const prefixed = await fetch(tracked.statusUrl('..', {prefix: '/_progress_status/'})
                                       + '&progress_id=p-1');
          out['..?p-1'] = [prefixed.status, (await prefixed.json()).count];
          out.rooted = tracked.statusUrl('//host/x', {prefix: '/'});  // never `//host`
          return out;
        }""",
        list(COUNTS),
    )
    assert answers == {
        **{name: [200, name, count] for name, count in COUNTS.items()},
        "..?p-1": [200, 11],
        "rooted": "/%2F%2Fhost%2Fx",
    }


def test_tracked_js_follows_a_dot_segment_name_to_its_end(served, page):
    page.goto(f"{served}/progress?name=b")
    page.wait_for_function("() => typeof tracked === 'object'")
    done = page.evaluate(
        """() => new Promise((resolve, reject) => {
          tracked.trackProgress(tracked.statusUrl('x/..'), {
            interval: 10, onDone: (state) => resolve([state.name, state.count]), onError: reject,
          });
        })"""
    )
    assert done == ["x/..", 8]


def test_serve_status_urls_in_the_list_name_each_progress(served):
    """The list's ``status_url`` fields use the same dot-segment-safe form."""
    with urllib.request.urlopen(f"{served}/progresses.json?all=1", timeout=10) as response:
        listed = json.load(response)["progresses"]
    urls = {(p["name"], p["progress_id"]): p["status_url"] for p in listed}
    assert urls[("x/../b", None)] == "/_progress_status/x%2F..%2Fb"
    assert urls[("..", None)] == "/_progress_status/?name=.."
    assert urls[("..", "p-1")] == "/_progress_status/?name=..&progress_id=p-1"
    assert urls[("report\n2024", None)] == "/_progress_status/report%0A2024"



def test_tracked_js_state_text_says_what_tracked_show_says(served, page):
    """tracked.stateText and the CLI's state text agree, for every case issue 17 names."""
    from tracked._views import state_text

    page.goto(f"{served}/progress?name=b")
    page.wait_for_function("() => typeof tracked === 'object'")
    base = tracked.State(name="x").to_dict()
    cases = [
        {**base},
        {**base, "cancel_requested": True},
        {**base, "state": "queued", "position": 1},
        {**base, "state": "queued", "position": 2},
        {**base, "state": "queued", "position": 11},
        {**base, "state": "queued", "position": 23},
        {**base, "in_progress": False, "state": "finished", "cancel_requested": True},
        {**base, "in_progress": False, "state": "failed", "cancel_requested": True},
        {**base, "in_progress": False, "state": "cancelled", "cancel_requested": True},
        {**base, "in_progress": False, "state": "finished"},
    ]
    shown = page.evaluate("(cases) => cases.map((c) => tracked.stateText(c))", cases)
    expected = [state_text(tracked.State.from_dict(case)) for case in cases]
    assert shown == expected
    assert expected[1] == "running, stopping…"
    assert expected[2:6] == [f"queued ({n} in line)" for n in ("1st", "2nd", "11th", "23rd")]
    assert expected[6] == "finished (a stop was asked but the task did not stop)"


def test_axe_finds_no_violation_on_the_list_and_progress_pages(served, page, npm_files):
    from playwright.sync_api import expect

    pages = ("/", f"/progress?{urlencode({'name': 'x/../b'})}")
    for scheme, path in [(scheme, path) for scheme in ("light", "dark") for path in pages]:
        page.emulate_media(color_scheme=scheme)
        page.goto(served + path)
        if path != "/":
            expect(page.locator("#progress")).to_have_attribute("state", "finished")
        else:
            expect(page.get_by_role("link", name="x/../b", exact=True)).to_be_visible()
        page.add_script_tag(path=str(npm_files["axe-core"]))
        violations = page.evaluate(
            "async () => (await axe.run(document)).violations.map("
            "v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))")
        assert violations == [], (scheme, path, violations)
