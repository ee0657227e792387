"""DELETE on the status route (cancel) and ``show_errors``, for every adapter."""

from __future__ import annotations

import time
from typing import Any

import pytest

import tracked
from tests.test_status_route import PREFIX, build, store  # noqa: F401 - fixtures

WAIT = 10.0


def test_delete_is_a_json_405_while_cancel_is_off(build, store):  # noqa: F811
    client = build(store)
    with tracked.start("job", store=store) as progress:
        response = client.delete(f"{PREFIX}/job", status=405)
        assert response.json["status"] == "error"
        assert "DELETE" not in response.headers["Allow"]
        assert not progress.cancel_requested
    assert tracked.load("job", store=store).state == "finished"


def test_delete_asks_a_running_progress_to_stop_with_202_and_its_json(build, store):  # noqa: F811
    client = build(store, cancel=True)
    with pytest.raises(tracked.Cancelled), tracked.start(
        "job", store=store, min_interval=0.02
    ) as progress:
        response = client.delete(f"{PREFIX}/job", status=202)
        assert response.json["name"] == "job"
        assert response.json["in_progress"] is True
        assert "Access-Control-Allow-Origin" not in response.headers
        deadline = time.monotonic() + WAIT
        while not progress.cancel_requested:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        progress.check()
    after = client.get(f"{PREFIX}/job").json
    assert (after["state"], after["status"], after["error"]) == ("cancelled", "cancelled", None)


def test_delete_reaches_only_the_progress_id_it_names(build, store):  # noqa: F811
    client = build(store, cancel=True)
    with tracked.start("job", progress_id="mine", store=store):
        client.delete(f"{PREFIX}/job?progress_id=yours", status=404)
        client.delete(f"{PREFIX}/job?progress_id=mine", status=202)


def test_delete_of_an_unknown_progress_is_404(build, store):  # noqa: F811
    client = build(store, cancel=True)
    assert client.delete(f"{PREFIX}/nothing", status=404).json["status"] == "error"


def test_delete_of_an_ended_progress_is_409(build, store):  # noqa: F811
    client = build(store, cancel=True)
    with tracked.start("job", store=store):
        pass
    response = client.delete(f"{PREFIX}/job", status=409)
    assert "finished" in response.json["error"]


def test_delete_refused_by_the_cancel_callable_is_403(build, store):  # noqa: F811
    asked: list[str] = []

    def only_admins(request: Any, key: str) -> bool:
        asked.append(key)
        return False

    client = build(store, cancel=only_admins)
    with tracked.start("job", store=store, min_interval=0.02) as progress:
        client.delete(f"{PREFIX}/job", status=403)
        time.sleep(0.1)
        assert not progress.cancel_requested
    assert asked == ["job"]


def test_delete_allowed_by_the_cancel_callable_is_202(build, store):  # noqa: F811
    client = build(store, cancel=lambda request, key: key == "job")
    with tracked.start("job", store=store):
        client.delete(f"{PREFIX}/job", status=202)


def test_delete_refused_by_authorize_is_403_even_with_cancel_on(build, store):  # noqa: F811
    client = build(store, cancel=True, authorize=lambda request, key: False)
    with tracked.start("job", store=store):
        client.delete(f"{PREFIX}/job", status=403)


def test_options_names_delete_only_while_cancel_is_on(build, store):  # noqa: F811
    assert "DELETE" in build(store, cancel=True).options(f"{PREFIX}/job").headers["Allow"]
    assert "DELETE" not in build(store).options(f"{PREFIX}/job").headers["Allow"]


def test_hidden_errors_read_failed_while_the_store_keeps_the_text(build, store):  # noqa: F811
    hidden, shown = build(store, show_errors=False), build(store)
    with pytest.raises(RuntimeError), tracked.start("job", store=store):
        raise RuntimeError("password=hunter2")
    assert hidden.get(f"{PREFIX}/job").json["error"] == "failed"
    assert shown.get(f"{PREFIX}/job").json["error"] == "RuntimeError: password=hunter2"
    assert tracked.load("job", store=store).error == "RuntimeError: password=hunter2"


def test_a_cancelled_generator_route_stream_simply_ends(store):  # noqa: F811
    import bottle
    import webtest

    from tracked.bottle import TrackedPlugin

    app = bottle.Bottle()
    app.install(TrackedPlugin(store, cancel=True))
    cleaned: list[str] = []

    @app.get("/stream", tracked={"name": "stream", "total": None, "min_interval": 0.02})
    def stream() -> Any:
        try:
            for i in range(100_000):
                if i == 2:
                    assert tracked.cancel("stream", store=store)
                time.sleep(0.005)
                yield f"line {i}\n"
        finally:
            cleaned.append("finally")

    response = webtest.TestApp(app).get("/stream", status=200)
    assert response.text.startswith("line 0\nline 1\n")
    assert len(response.text.splitlines()) < 100_000
    assert cleaned == ["finally"]
    assert tracked.load("stream", store=store).state == "cancelled"
