"""What is particular to the file store: files, paths, corrupt and foreign files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import tracked
from tests.conftest import NOBODY, python_process, readable_code
from tracked import FileStore, StoreError


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


# ------------------------------------------------------------------ corrupt records


def stored_document(store: FileStore, name: str) -> dict[str, Any]:
    return json.loads(store.path_for(name).read_bytes())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "edit",
    [
        {"progress_id": "bad id!"},
        {"name": ""},
        {"count": "5"},
        {"count": 2.5},
        {"total": True},
        {"messages": [1, 2]},
        {"message_count": 0, "messages": ["a"]},
        {"status": 7},
    ],
)
def test_a_record_with_a_bad_field_reads_as_corrupt_and_a_start_replaces_it(
    file_store: FileStore, edit: dict[str, object]
) -> None:
    with tracked.start("edited", progress_id="ok"):
        pass
    document = stored_document(file_store, "edited\0ok")
    document["state"].update(edit)
    file_store.path_for("edited\0ok").write_text(json.dumps(document))
    with pytest.raises(StoreError, match="corrupt progress record"):
        tracked.load("edited", progress_id="ok")
    with tracked.start("edited", progress_id="ok", total=3):
        pass
    state = tracked.load("edited", progress_id="ok")
    assert state is not None and state.total == 3 and state.state == "finished"


def test_a_negative_count_stored_by_an_older_version_reads_as_zero(file_store: FileStore) -> None:
    with tracked.start("old", total=10):
        pass
    document = stored_document(file_store, "old")
    document["state"]["count"] = -7
    file_store.path_for("old").write_text(json.dumps(document))
    state = tracked.load("old")
    assert state is not None and (state.count, state.percent) == (0, 0.0)


def test_unreadable_names_each_corrupt_record_that_records_skips(file_store: FileStore) -> None:
    with tracked.start("fine"):
        pass
    bad = file_store.path_for("broken")
    bad.write_text("{not json")
    assert [s.name for s in file_store.list()] == ["fine"]
    [problem] = file_store.unreadable()
    assert str(bad) in problem and "corrupt" in problem


# ------------------------------------------------------------------ access and files


def test_opening_and_reading_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    assert tracked.load("x", store=str(typo)) is None
    assert FileStore(typo).list() == [] and FileStore(typo).unreadable() == []
    assert FileStore(typo).prune(0) == 0
    assert not typo.exists()


def test_the_first_claim_creates_the_directory_with_its_parents(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "b" / "c")
    with tracked.start("first", store=store):
        pass
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_another_user_reads_a_store_it_cannot_write_and_only_a_claim_fails(
    shared_tmp: Path,
) -> None:
    store = shared_tmp / "store"
    with tracked.start("theirs", store=str(store)):
        pass
    store.chmod(0o555)
    code = readable_code(shared_tmp)  # this checkout may sit in a directory only we enter
    reader = python_process("read_only", str(store), "theirs", user=NOBODY, code=code)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert out.splitlines()[:2] == ["load finished", "list theirs"]
    claim = out.splitlines()[2]
    assert claim.startswith("claim StoreError") and str(store) in claim


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_record_files_get_the_mode_the_umask_allows(tmp_path: Path, umask: int) -> None:
    store = FileStore(tmp_path / "store")
    previous = os.umask(umask)
    try:
        with tracked.start("moded", store=store, min_interval=0) as progress:
            progress.increment()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(store.path_for("moded").stat().st_mode) == 0o666 & ~umask


def test_prune_removes_temporary_files_of_killed_writers_once_a_minute_old(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "store")
    writer = python_process("stopped_writer", str(store.directory), "killed")
    _, status = os.waitpid(writer.pid, os.WUNTRACED)  # it stops itself mid-write
    assert os.WIFSTOPPED(status), status
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leftovers = list(store.directory.glob(".*.tmp"))
    assert len(leftovers) == 1, leftovers
    assert leftovers[0].stat().st_size > 0  # half a record: the kill landed in the write
    records_before = sorted(p.name for p in store.directory.glob("*.json"))
    store.prune(older_than=3600)
    assert all(p.exists() for p in leftovers)  # too young: it may belong to a live writer
    a_minute_ago = time.time() - 61
    for path in leftovers:
        os.utime(path, (a_minute_ago, a_minute_ago))
    assert store.prune(older_than=3600) == 0  # temporaries are not counted as records
    assert list(store.directory.glob(".*.tmp")) == []
    assert sorted(p.name for p in store.directory.glob("*.json")) == records_before


def plant_bad_entries(store: FileStore) -> dict[str, Path]:
    """One entry of each kind that cannot be read, each where a record's file would be:
    a directory, a truncated record, a file that is not JSON, a FIFO (whose plain open
    would wait for a writer) and, read by a process that obeys file modes, a record
    without read permission."""
    with tracked.start("whole", store=store, total=3) as progress:
        progress.increment(2, "a message")
    whole = store.path_for("whole").read_bytes()
    bad = {kind: store.path_for(f"bad {kind}") for kind in ("dir", "cut", "text", "fifo", "mode")}
    bad["dir"].mkdir()
    bad["cut"].write_bytes(whole[: len(whole) // 2])
    bad["text"].write_text("hello, not JSON")
    os.mkfifo(bad["fifo"])
    bad["mode"].write_bytes(whole.replace(b'"whole"', b'"bad mode"'))
    bad["mode"].chmod(0)
    return bad


def test_every_kind_of_bad_entry_is_skipped_by_list_and_prune_and_named_by_unreadable(
    file_store: FileStore,
) -> None:
    with tracked.start("fine"):
        pass
    bad = plant_bad_entries(file_store)
    bad["mode"].unlink()  # this process (root in CI) would read it anyway: see test_cli
    del bad["mode"]
    assert sorted(s.name for s in file_store.list()) == ["fine", "whole"]
    problems = file_store.unreadable()
    assert len(problems) == len(bad)
    for path in bad.values():
        assert sum(str(path) in problem for problem in problems) == 1
    assert file_store.prune(older_than=0) == 2  # "fine" and "whole" ended; the rest stays
    assert all(os.path.lexists(path) for path in bad.values())


@pytest.mark.parametrize("page", [4096])
def test_records_across_one_page_read_back_exactly_as_they_grow_and_shrink(
    file_store: FileStore, page: int
) -> None:
    """A record that fits in one page is rewritten in place (padded with spaces when it
    shrinks), a longer one replaced: every size around the page, in both directions,
    reads back as the state written, and no temporary file stays behind."""
    progress = tracked.start("sizes", total=None, min_interval=3600, max_messages=1)
    progress.add_message("m")
    progress.flush()
    one = file_store.path_for("sizes").stat().st_size  # the record's size with 1 character
    # The times in a record vary its length by a byte or two: sweep across the page.
    sizes = [1, 2, *range(page - one - 3, page - one + 5), 2 * page, page - one, 5]
    for length in sizes + sizes[::-1]:
        progress.add_message("m" * length)
        progress.flush()
        state = tracked.load("sizes")
        assert state is not None and state.messages == ("m" * length,), length
        raw = file_store.path_for("sizes").read_bytes()
        assert json.loads(raw)["state"]["messages"] == ["m" * length]

    progress.finish()
    state = tracked.load("sizes")
    assert state is not None and state.state == "finished" and state.messages == ("m",)
    assert [p.name for p in file_store.directory.iterdir() if p.name.startswith(".")] == []


def test_every_write_changes_what_a_stat_of_the_record_says(file_store: FileStore) -> None:
    """Readers that ``stat`` a record to see whether it changed (the status route's
    cache, event streams) see each of 50 back-to-back writes of the same size, also
    those within one tick of the file system's clock. (Linux 6.13+ gives a file
    stat'ed since its last change a fine-grained mtime on its own; before, the
    store's own mtime step is what makes this pass.)"""
    progress = tracked.start("stat-me", total=None, min_interval=3600)
    path = file_store.path_for("stat-me")
    progress.status = "x" * 100  # then shorter ones: the file keeps its size (padded)
    progress.flush()
    seen = set()
    for i in range(50):
        progress.status = f"step {i % 10}"
        progress.flush()
        info = path.stat()
        seen.add((info.st_ino, info.st_mtime_ns, info.st_size))
    progress.finish()
    assert len({size for _, _, size in seen}) == 1  # only the mtime can tell them apart
    assert len(seen) == 50


def test_a_write_long_after_the_last_changes_what_a_stat_says_without_a_utime(
    file_store: FileStore,
) -> None:
    """A record whose mtime is older than the store's settle time (50 ms) is not
    ``utime``d after an in-place write (the write moves the mtime on by itself): a
    same-size write 60 ms, 0.2 s and 1 s after the last still changes the
    ``stat``, in both directions of the padding (shorter, then longer again)."""
    progress = tracked.start("stat-later", total=None, min_interval=3600)
    path = file_store.path_for("stat-later")
    progress.status = "x" * 100
    progress.flush()
    before = path.stat()
    for pause, status in ((0.06, "a"), (0.2, "b" * 100), (1.0, "c")):
        time.sleep(pause)
        progress.status = status
        progress.flush()
        after = path.stat()
        assert after.st_ino == before.st_ino  # rewritten in place, not replaced
        assert after.st_mtime_ns > before.st_mtime_ns, pause
        before = after
    progress.finish()


def test_an_empty_record_file_left_by_a_killed_claimer_reads_as_no_record(
    file_store: FileStore,
) -> None:
    """A claimer killed between creating a record's file and writing its first snapshot
    leaves it empty: it reads as no record (not as a bad one), its name starts again,
    and prune removes it once a minute old, as it does a killed writer's temporary."""
    for name in ("left", "old"):
        file_store.path_for(name).touch()
    an_hour_ago = time.time() - 3600
    os.utime(file_store.path_for("old"), (an_hour_ago, an_hour_ago))
    assert tracked.load("left") is None and file_store.list() == []
    assert file_store.unreadable() == []
    assert file_store.prune(older_than=0) == 0
    assert file_store.path_for("left").exists() and not file_store.path_for("old").exists()
    with tracked.start("left", total=3):
        pass
    state = tracked.load("left")
    assert state is not None and (state.state, state.total) == ("finished", 3)


def test_a_writer_stopped_holding_a_records_lock_makes_readers_wait_seconds_not_forever(
    file_store: FileStore,
) -> None:
    """Another process holds the record's locks, as a writer stopped in the middle of an
    in-place write would: a read gives up with a ``StoreError`` naming the file after
    ``READ_LOCK_TIMEOUT``, ``list()`` skips the record, and once the lock is let go
    the record reads again."""
    from tracked._filestore import READ_LOCK_TIMEOUT

    with tracked.start("stuck"):
        pass
    path = file_store.path_for("stuck")
    # A writer stopped between taking the range lock and its in-place write holds this:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, struct, sys, time\n"
         f"fd = os.open({str(path)!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))\n"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        with pytest.raises(StoreError, match=str(path)):
            tracked.load("stuck")
        assert READ_LOCK_TIMEOUT <= time.monotonic() - began < LOCK_WAIT_LIMIT
        assert file_store.list() == []
    finally:
        holder.kill()
        holder.wait()
    state = tracked.load("stuck")
    assert state is not None and state.state == "finished"


#: Far more than ``READ_LOCK_TIMEOUT`` and less than a writer's 10 s: a read gave up.
LOCK_WAIT_LIMIT = 8.0


def _stop_holding_a_lock(reader: subprocess.Popen[str], path: Path) -> None:
    """SIGSTOP ``reader`` (a process reading ``path`` in a loop) at a moment it holds a
    lock on the file: /proc/locks lists one on its inode (we hold none ourselves)."""
    inode = f":{path.stat().st_ino} "
    for _ in range(20_000):
        os.kill(reader.pid, signal.SIGSTOP)
        with open("/proc/locks") as locks:
            if inode in locks.read():
                return
        os.kill(reader.pid, signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError("the reader was never stopped holding the lock")


@pytest.mark.parametrize("size", [100, 6000])  # rewritten in place; replaced
def test_a_reader_stopped_holding_its_lock_never_holds_up_a_write(
    file_store: FileStore, size: int
) -> None:
    """A reader process SIGSTOPped in the middle of a read (holding its shared lock)
    never makes a task wait: the running run's update and final write and a new run
    of the name each land at once (a writer replaces the file rather than wait), and
    the reader, let go, reads the newest record whole. (Readers used to share the
    writers' ``flock``: each of these waited 10 s, and the new start failed.)"""
    progress = tracked.start("read-a-lot", total=3, min_interval=3600)
    progress.status = "x" * size
    progress.flush()
    path = file_store.path_for("read-a-lot")
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys, tracked\n"
         "store = tracked.FileStore(sys.argv[1])\n"
         "print('reading', flush=True)\n"
         "while True: store.read('read-a-lot')", str(file_store.directory)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "reading"
        _stop_holding_a_lock(reader, path)
        began = time.monotonic()
        progress.increment(1)
        assert progress.flush()
        progress.finish()
        _stop_holding_a_lock(reader, path)  # it may hold the old file's lock no more
        with tracked.start("read-a-lot", total=3) as again:
            again.increment(3)
        assert time.monotonic() - began < WRITE_WAIT_LIMIT
        os.kill(reader.pid, signal.SIGCONT)
        time.sleep(0.05)
        assert reader.poll() is None  # it reads on, never a torn or corrupt record
    finally:
        reader.kill()
        reader.wait()
    state = tracked.load("read-a-lot")
    assert state is not None and (state.state, state.count) == ("finished", 3)


#: A write that waited for a stopped reader took 10 s (the writers' lock timeout).
WRITE_WAIT_LIMIT = 3.0


def test_a_link_or_directory_in_place_of_a_record_is_a_store_error_and_nothing_outside_changes(
    file_store: FileStore, tmp_path: Path
) -> None:
    """A symbolic link planted under a record's name (to a small file outside the store)
    and a directory there: a start of the name, a running run's write and a read each
    raise ``StoreError`` naming the entry, ``list()`` skips it, and the file outside
    is never written. (Small records are rewritten in place: the write went through
    the link into the file it points to, and a start over a directory raised a bare
    ``IsADirectoryError``.)"""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    file_store.path_for("linked").symlink_to(victim)
    file_store.path_for("folder").mkdir()
    running = tracked.start("swapped", total=2, min_interval=3600)
    file_store.path_for("swapped").unlink()
    file_store.path_for("swapped").symlink_to(victim)
    for name in ("linked", "folder"):
        with pytest.raises(StoreError, match=str(file_store.path_for(name))):
            tracked.start(name)
        with pytest.raises(StoreError, match=str(file_store.path_for(name))):
            tracked.load(name)
    running.increment(2)
    assert not running.flush()
    running.finish()
    assert victim.read_text() == "precious\n"
    assert file_store.list() == []
    assert file_store.path_for("linked").is_symlink() and file_store.path_for("folder").is_dir()
