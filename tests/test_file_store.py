"""What is particular to the file store: files, paths, corrupt and foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tracked
from tracked import FileStore, StoreError


def test_the_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    FileStore(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_one_json_file_per_progress_named_by_a_hash(file_store: FileStore) -> None:
    with tracked.start("first"), tracked.start("second"):
        pass
    names = sorted(p.name for p in file_store.directory.glob("*.json"))
    assert len(names) == 2
    assert all(len(n) == len("0" * 40 + ".json") for n in names)


@pytest.mark.parametrize(
    "name",
    ["../escape", "../../../../tmp/escape", "/etc/passwd", "a/../../b", "..", ".", "~/x", "C:\\x"],
)
def test_no_name_reaches_a_path_outside_the_directory(tmp_path: Path, name: str) -> None:
    store = FileStore(tmp_path / "inside" / "store")
    with tracked.start(name, store=store):
        pass
    everything = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert all(p.startswith("inside") for p in everything), everything
    assert store.path_for(name).parent == store.directory


def test_no_temporary_files_are_left_behind(file_store: FileStore) -> None:
    with tracked.start("tidy", min_interval=0) as progress:
        for _ in range(100):
            progress.increment()
    leftovers = [p.name for p in file_store.directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_foreign_and_corrupt_files_do_not_break_listing(file_store: FileStore) -> None:
    with tracked.start("real"):
        pass
    (file_store.directory / "notes.txt").write_text("hello")
    (file_store.directory / ("f" * 40 + ".json")).write_text('{"version": 1, "state": 3}')
    (file_store.directory / ("e" * 40 + ".json")).write_bytes(b"\xff\xfe")
    assert [s.name for s in file_store.list()] == ["real"]


def test_a_foreign_json_file_under_a_progress_file_name_is_a_store_error(
    file_store: FileStore,
) -> None:
    path = file_store.path_for("victim")
    path.write_text('{"hello": "world"}')
    with pytest.raises(StoreError, match="corrupt progress record"):
        tracked.load("victim")


def test_a_record_holding_another_key_is_a_store_error(file_store: FileStore) -> None:
    with tracked.start("one"):
        pass
    os.replace(file_store.path_for("one"), file_store.path_for("two"))
    with pytest.raises(StoreError, match="another progress"):
        tracked.load("two")


def test_an_unusable_directory_is_a_store_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=str(blocker)):
        FileStore(blocker)


def test_an_unusable_default_store_makes_the_decorated_call_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TRACKED_STORE", str(blocker))
    tracked.configure(store=None)
    ran = []

    @tracked.tracked(name="never-runs")
    def work() -> None:
        ran.append(True)

    with pytest.raises(StoreError, match="cannot use"):
        work()
    assert ran == []


def test_a_file_url_and_the_environment_select_a_file_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(tracked.open_store(f"file://{tmp_path}/a"), FileStore)
    monkeypatch.setenv("TRACKED_STORE", f"file://{tmp_path}/b")
    tracked.configure(store=None)
    store = tracked.default_store()
    assert isinstance(store, FileStore) and store.directory == tmp_path / "b"


def test_an_unknown_store_scheme_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="unknown store"):
        tracked.open_store("ftp://example")
