"""Results: a run's return value reaches every reader as ``result``; ``progress_id=`` on
``@tracked`` names a run the way a queue worker needs."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracked
from tests.test_cli import run_cli
from tracked._state import DEFAULT_MAX_RESULT_BYTES


@pytest.fixture
def limit() -> Iterator[int]:
    """A small result limit for the test, the default again afterwards."""
    tracked.configure(max_result_bytes=100)
    yield 100
    tracked.configure(max_result_bytes=DEFAULT_MAX_RESULT_BYTES)


def encoded_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def test_a_functions_return_value_is_its_result_in_every_store(store: tracked.Store) -> None:
    @tracked.tracked("report")
    def report() -> dict[str, object]:
        return {"rows": 3, "files": ("a.csv", "b.csv"), "name": "Zoë"}

    report()
    state = tracked.load("report", store=store)
    assert state is not None
    assert state.result == {"rows": 3, "files": ["a.csv", "b.csv"], "name": "Zoë"}
    assert state.to_dict()["result"] == state.result


def test_a_generators_return_value_is_its_result(store: tracked.Store) -> None:
    @tracked.tracked("steps", total=2)
    def steps() -> Iterator[str]:
        yield "one"
        yield "two"
        return "both done"  # type: ignore[misc]

    assert list(steps()) == ["one", "two"]
    state = tracked.load("steps")
    assert state is not None and state.result == "both done"


def test_result_is_null_while_running_and_set_once_ended(store: tracked.Store) -> None:
    with tracked.start("handle", total=None, min_interval=0) as progress:
        progress.result = [1, 2]
        progress.increment()
        running = tracked.load("handle")
        assert running is not None and running.in_progress and running.result is None
    ended = tracked.load("handle")
    assert ended is not None and ended.result == [1, 2]


def test_a_result_set_on_the_handle_stays_when_the_function_returns_none(
    file_store: tracked.FileStore,
) -> None:
    @tracked.tracked("sets-its-own")
    def sets_its_own() -> None:
        tracked.current().result = {"imported": 7}

    sets_its_own()
    state = tracked.load("sets-its-own")
    assert state is not None and state.result == {"imported": 7}


def test_a_failed_run_keeps_its_error_and_no_result(file_store: tracked.FileStore) -> None:
    @tracked.tracked("breaks")
    def breaks() -> int:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        breaks()
    state = tracked.load("breaks")
    assert state is not None
    assert (state.state, state.error, state.result) == ("failed", "KeyError: 'missing'", None)


def test_a_result_that_is_not_json_is_null_with_one_warning(
    file_store: tracked.FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    @tracked.tracked("opaque")
    def opaque() -> object:
        return object()

    with caplog.at_level(logging.WARNING, logger="tracked"):
        opaque()
        opaque()
    state = tracked.load("opaque")
    assert state is not None and state.state == "finished" and state.result is None
    warnings = [r.getMessage() for r in caplog.records if "result" in r.getMessage()]
    assert len(warnings) == 1
    assert "'opaque'" in warnings[0] and "not JSON-serialisable" in warnings[0]


@pytest.mark.parametrize("over", [-1, 0, 1])
def test_a_result_up_to_max_result_bytes_is_kept_and_one_byte_more_is_null(
    file_store: tracked.FileStore, limit: int, over: int
) -> None:
    value = "x" * (limit + over - 2)  # the JSON string adds two quotes
    assert encoded_size(value) == limit + over
    with tracked.start(f"sized{over}") as progress:
        progress.result = value
    state = tracked.load(f"sized{over}")
    assert state is not None
    assert state.result == (value if over <= 0 else None)


def test_the_default_result_limit_is_64_kib() -> None:
    assert DEFAULT_MAX_RESULT_BYTES == 64 * 1024


def test_a_bad_max_result_bytes_is_refused() -> None:
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(tracked.InvalidValue, match="max_result_bytes"):
            tracked.configure(max_result_bytes=bad)  # type: ignore[arg-type]


def test_tracked_show_prints_the_result(file_store: tracked.FileStore) -> None:
    with tracked.start("shown") as progress:
        progress.result = {"rows": 3}
    shown = run_cli("show", "shown", store=str(file_store.directory))
    assert shown.returncode == 0, shown.stderr
    assert 'result:       {"rows": 3}' in shown.stdout
    as_json = run_cli("show", "shown", "--json", store=str(file_store.directory))
    assert json.loads(as_json.stdout)["result"] == {"rows": 3}


def test_progress_id_given_to_the_decorator_names_each_run(
    file_store: tracked.FileStore,
) -> None:
    @tracked.tracked("import", progress_id=lambda job_id, path: job_id)
    def import_file(job_id: str, path: str) -> str:
        return path

    @tracked.tracked(progress_id="nightly")
    def nightly() -> None:
        pass

    import_file("job-1", "a.csv")
    import_file("job-2", "b.csv")
    nightly()
    first = tracked.load("import", progress_id="job-1")
    second = tracked.load("import", progress_id="job-2")
    assert first is not None and first.result == "a.csv"
    assert second is not None and second.result == "b.csv"
    alone = tracked.load(None, progress_id="nightly")
    assert alone is not None and alone.name is None and alone.state == "finished"


def test_a_bad_progress_id_on_the_decorator_is_refused() -> None:
    with pytest.raises(tracked.InvalidName):
        tracked.tracked("x", progress_id="has space")
    with pytest.raises(tracked.InvalidName):
        tracked.tracked("x", progress_id=42)  # type: ignore[arg-type]

    @tracked.tracked("x", progress_id=lambda: "bad/id")
    def job() -> None:
        pass

    with pytest.raises(tracked.InvalidName):
        job()


@pytest.fixture
def undecodable_dir(tmp_path: Path) -> str:
    """A directory holding one file whose name is not UTF-8 (``os.listdir`` gives a
    surrogate for the byte 0xE9), as on a disk written by another system."""
    folder = tmp_path / "latin-1"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.txt"), "wb"):
        pass
    return str(folder)


def test_a_result_with_surrogates_is_stored_replaced_and_the_caller_gets_it_unchanged(
    store: tracked.Store, undecodable_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    @tracked.tracked("listing")
    def listing() -> list[str]:
        return os.listdir(undecodable_dir)

    @tracked.tracked("walking", total=1)
    def walking() -> Iterator[None]:
        yield None
        return os.listdir(undecodable_dir)  # type: ignore[misc]

    with caplog.at_level(logging.WARNING, logger="tracked"):
        assert listing() == ["caf\udce9.txt"]
        assert list(walking()) == [None]
        job = tracked.submit(listing)
        assert job.wait(10) == ["caf\udce9.txt"]
    for name in ("listing", "walking"):
        state = tracked.load(name, store=store)
        assert state is not None and state.state == "finished", name
        assert state.result == ["caf\ufffd.txt"], name
    assert not [r for r in caplog.records if "result" in r.getMessage()]


class _BrokenItems(dict):  # type: ignore[type-arg]
    """A mapping whose encoding runs user code that raises something unexpected."""

    def items(self) -> Any:
        raise RuntimeError("items() is broken")


def test_a_result_whose_encoding_raises_anything_is_null_with_one_warning(
    store: tracked.Store, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"odd-mapping-{uuid.uuid4().hex}"  # the warning is once per name and process

    @tracked.tracked(name)
    def odd_mapping() -> dict[str, int]:
        return _BrokenItems(a=1)

    with caplog.at_level(logging.WARNING, logger="tracked"):
        assert odd_mapping() == {"a": 1}
        assert tracked.submit(odd_mapping).wait(10) == {"a": 1}
    state = tracked.load(name, store=store)
    assert state is not None and state.state == "finished" and state.result is None
    warnings = [r.getMessage() for r in caplog.records if "result" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0], warnings
