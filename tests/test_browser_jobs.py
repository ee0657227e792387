"""tracked.js's ``onSuccess`` hands the page a job's ``result``, in headless Chromium: the
demo's Start button (a job run with ``tracked.submit`` under gunicorn) and scripted ends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.test_browser import TIMEOUT_MS, FakeStatus, PageWatch, state
from tests.test_demo_e2e import STEPS, DemoServer, demo_app, demo_server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    with demo_server(tmp_path_factory.mktemp("browser-jobs-demo")) as server:
        yield server


@pytest.fixture
def watched(chromium: Browser, demo: DemoServer) -> Iterator[PageWatch]:
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    watch = PageWatch(page)
    page.goto(demo.url)
    yield watch
    context.close()


def test_start_runs_the_job_off_the_request_and_shows_its_result(watched: PageWatch) -> None:
    page = watched.page
    with page.expect_response("**/jobs/background?*") as started:
        page.click("#start")
    assert started.value.status == 202
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    expect(page.locator("#result")).to_have_text(
        json.dumps({"result": "done", "steps": STEPS}, separators=(",", ":"))
    )
    assert page.locator("#messages li").all_text_contents() == demo_app.job_messages(STEPS)
    assert watched.errors == [] and watched.dialogs == []


def test_start_polls_only_once_the_job_is_claimed_at_the_url_its_202_names(
    watched: PageWatch,
) -> None:
    page = watched.page
    polls: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: polls.append((r.url, r.status)) if "/_progress_status/" in r.url else None,
    )
    with page.expect_response("**/jobs/background?*") as started:
        page.click("#start")
    location = started.value.headers["location"]
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    assert polls and all(status in (200, 304) for _, status in polls), polls
    assert all(location in url for url, _ in polls), (location, polls)


def test_a_job_that_returns_nothing_shows_no_result_rather_than_null(watched: PageWatch) -> None:
    page = watched.page
    page.click("#start-stream")
    expect(page.locator("#state")).to_have_text("finished", timeout=TIMEOUT_MS)
    expect(page.locator("#result")).to_have_text("none (the job returned nothing)")


ENDS_JS = """
([url]) => new Promise((resolve) => {
  const seen = {success: [], done: []};
  tracked.trackProgress(url, {
    interval: 10,
    onSuccess: (s) => seen.success.push(s.result),
    onDone: (s) => { seen.done.push(s.state); resolve(seen); },
  });
})
"""


def ended(final: str, result: Any) -> dict[str, Any]:
    body = state(10, [], total_messages=0, ended=True)
    body.update(state=final, status=final, result=result)
    return body


@pytest.mark.parametrize(
    ("final", "result", "successes"),
    [
        ("finished", {"rows": 3, "file": "a.csv"}, [{"rows": 3, "file": "a.csv"}]),
        ("finished", None, [None]),
        ("failed", None, []),
        ("cancelled", None, []),
        ("abandoned", None, []),
    ],
)
def test_on_success_gets_the_result_once_and_only_for_a_finished_run(
    watched: PageWatch, final: str, result: Any, successes: list[Any]
) -> None:
    page: Page = watched.page
    fake = FakeStatus(lambda n, since, etag: (200, ended(final, result), None))
    page.route("**/fake/end?*", fake)
    seen = page.evaluate(ENDS_JS, ["/fake/end"])
    assert seen == {"success": successes, "done": [final]}
