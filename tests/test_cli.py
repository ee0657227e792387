"""The ``tracked`` command, run as a real process against stores other processes write."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracked
from tests.conftest import ROOT, free_port, wait_for_port
from tracked._store import Owner

JOB = r"""
import sys, time, pathlib, tracked
store, name, total, outcome, gate = sys.argv[1:6]
progress_id = sys.argv[6] if len(sys.argv) > 6 else None
total = int(total)
with tracked.start(name, total=total, store=store, progress_id=progress_id, min_interval=0) as p:
    print("started", flush=True)
    if outcome == "hold":
        time.sleep(3600)
    for i in range(total):
        if i == total // 2 and gate != "-":
            deadline = time.monotonic() + 60
            while not pathlib.Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        p.increment(1, f"step {i}")
        time.sleep(0.01)
    if outcome == "fail":
        raise RuntimeError("the job broke")
print("done", flush=True)
"""


class Job:
    """A tracked job running in its own process; it pauses half-way until ``release()``."""

    def __init__(
        self,
        script: Path,
        store: str,
        name: str,
        total: int,
        outcome: str,
        gate: Path | None,
        progress_id: str | None,
    ) -> None:
        args = [str(script), store, name, str(total), outcome, str(gate) if gate else "-"]
        if progress_id is not None:
            args.append(progress_id)
        self.gate = gate
        self.process = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "started", self.process.stderr.read() if self.process.stderr else line

    def release(self) -> None:
        assert self.gate is not None
        self.gate.write_text("go")

    def wait(self) -> int:
        _out, _err = self.process.communicate(timeout=60)
        return self.process.returncode

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def start_job(tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """Start jobs in other processes; any still alive at the end are killed."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    jobs: list[Job] = []

    def start(
        store: str,
        name: str,
        *,
        total: int = 20,
        outcome: str = "finish",
        gated: bool = False,
        progress_id: str | None = None,
    ) -> Job:
        gate = tmp_path / f"gate-{len(jobs)}" if gated else None
        job = Job(script, store, name, total, outcome, gate, progress_id)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        if job.process.poll() is None:
            job.kill()


def run_cli(
    *args: str, store: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tracked ARGS`` (with ``--store``) and capture its output."""
    command = [sys.executable, "-m", "tracked", *args]
    if store is not None:
        command += ["--store", store]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def write_old_record(store_url: str, name: str, *, ended_ago: float) -> None:
    """Store a finished record that ended ``ended_ago`` seconds ago, as an old run leaves it."""
    store = tracked.open_store(store_url)
    ended = time.time() - ended_ago
    state = tracked.State(name=name, total=5, count=5, start_time=ended - 10, current_time=ended)
    owner = Owner.for_this_process()
    store.claim(state, owner)
    store.save(state.ended("finished", ended), owner)
    store.close()


# ----------------------------------------------------------------------------- list


def test_list_shows_a_progress_another_process_is_running(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    job = start_job(shared_store_url, "nightly-import", gated=True)
    wait_until(lambda: tracked.load("nightly-import", store=shared_store_url).count >= 10)
    table = run_cli("list", store=shared_store_url)
    assert table.returncode == 0, table.stderr
    header, row, _blank, _footer = table.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATE", "PROGRESS"]
    assert row.split()[:3] == ["nightly-import", "running", "10/20"]
    [wire] = json_lines(run_cli("list", "--json", store=shared_store_url).stdout)
    assert wire["name"] == "nightly-import" and wire["in_progress"] is True
    assert wire["count"] == 10 and wire["total"] == 20
    job.release()
    assert job.wait() == 0
    [done] = json_lines(run_cli("list", "--json", store=shared_store_url).stdout)
    assert (done["state"], done["count"], done["in_progress"]) == ("finished", 20, False)


def test_list_puts_running_progresses_first(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    start_job(shared_store_url, "finished-first", total=2).wait()
    start_job(shared_store_url, "still-running", gated=True)
    names = [
        w["name"] for w in json_lines(run_cli("list", "--json", store=shared_store_url).stdout)
    ]
    assert names == ["still-running", "finished-first"]


def test_list_hides_progresses_that_ended_long_ago_unless_all(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    write_old_record(store, "last-week", ended_ago=7 * 86400)
    write_old_record(store, "an-hour-ago", ended_ago=3600)
    recent = [w["name"] for w in json_lines(run_cli("list", "--json", store=store).stdout)]
    everything = run_cli("list", "--all", "--json", store=store).stdout
    assert recent == ["an-hour-ago"]
    assert sorted(w["name"] for w in json_lines(everything)) == ["an-hour-ago", "last-week"]


def test_list_escapes_control_characters_in_names(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with tracked.start("red\x1b[31mtext", store=store):
        pass
    output = run_cli("list", store=store).stdout
    assert "\x1b" not in output
    assert "red\\x1b[31mtext" in output


def test_store_option_is_accepted_before_the_command(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with tracked.start("placed-first", store=store):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "tracked", "--store", store, "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [w["name"] for w in json_lines(result.stdout)] == ["placed-first"]


def test_default_store_comes_from_the_environment(tmp_path: Path) -> None:
    """Without --store the command reads $TRACKED_STORE, as the library does."""
    with tracked.start("from-env"):  # conftest points $TRACKED_STORE at a temp directory
        pass
    result = run_cli("list", "--json")
    assert [w["name"] for w in json_lines(result.stdout)] == ["from-env"]


def test_list_ends_with_a_line_naming_the_store_it_read(tmp_path: Path) -> None:
    """An empty table cannot pass for an empty store, or for the store the user meant."""
    store = tmp_path / "store"
    write_old_record(str(store), "last-week", ended_ago=7 * 86400)
    write_old_record(str(store), "an-hour-ago", ended_ago=3600)
    result = run_cli("list", store=str(store))
    assert result.returncode == 0 and result.stderr == ""
    *_table, blank, footer = result.stdout.splitlines()
    assert blank == ""
    assert footer == (
        f"1 progress in FileStore({str(store)!r}); 1 ended over 24h ago (--all shows them)"
    )
    everything = run_cli("list", "--all", store=str(store)).stdout.splitlines()
    assert everything[-1] == f"2 progresses in FileStore({str(store)!r})"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("list", store=str(empty)).stdout.splitlines() == [
        "NAME  STATE  PROGRESS  RATE  STARTED  STATUS",
        "",
        f"0 progresses in FileStore({str(empty)!r})",
    ]


def test_list_names_the_default_store_when_none_is_given(tmp_path: Path) -> None:
    """Without --store and $TRACKED_STORE the footer shows the per-user directory it read."""
    environment = {k: v for k, v in os.environ.items() if k != "TRACKED_STORE"}
    environment["TMPDIR"] = str(tmp_path)  # the default directory lives under it
    result = subprocess.run(
        [sys.executable, "-m", "tracked", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    default = tmp_path / f"tracked-{os.getuid()}"
    assert result.stdout.splitlines()[-1] == f"0 progresses in FileStore({str(default)!r})"


def test_json_output_is_only_wire_json_and_stderr_stays_empty(tmp_path: Path) -> None:
    """The store is named in text mode only: ``--json`` stays parseable line by line."""
    store = str(tmp_path / "store")
    with tracked.start("scripted", store=store):
        pass
    for args in (("list", "--json"), ("show", "scripted", "--json")):
        result = run_cli(*args, store=store)
        assert result.returncode == 0 and result.stderr == ""
        assert [w["name"] for w in json_lines(result.stdout)] == ["scripted"]


def test_tracked_store_naming_a_missing_directory_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    """$TRACKED_STORE is checked as --store is: a typo is reported, not read as empty."""
    missing = tmp_path / "typo"
    result = subprocess.run(
        [sys.executable, "-m", "tracked", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRACKED_STORE": str(missing)},
    )
    assert_one_line_error(result, repr(str(missing)), "$TRACKED_STORE", "does not exist")
    assert not missing.exists()


# ----------------------------------------------------------------------------- show


def test_show_prints_a_running_progress_and_its_last_messages(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    start_job(shared_store_url, "report", gated=True)
    wait_until(lambda: tracked.load("report", store=shared_store_url).count >= 10)
    result = run_cli("show", "report", store=shared_store_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "state:        running" in lines
    assert "progress:     10/20 (50.0%)" in lines
    assert "messages:     10 shown of 10" in lines
    assert f"store:        {tracked.open_store(shared_store_url)!r}" in lines
    assert lines[-10:] == [f"  step {i}" for i in range(10)]


def test_show_json_is_the_wire_json(shared_store_url: str, start_job: Callable[..., Job]) -> None:
    start_job(shared_store_url, "wired", total=4).wait()
    [wire] = json_lines(run_cli("show", "wired", "--json", store=shared_store_url).stdout)
    state = tracked.load("wired", store=shared_store_url)
    assert state is not None
    assert wire == json.loads(json.dumps(state.to_dict()))


def test_show_finds_a_progress_by_name_and_progress_id(
    tmp_path: Path, start_job: Callable[..., Job]
) -> None:
    store = str(tmp_path / "store")
    start_job(store, "upload", total=3, progress_id="client-a").wait()
    start_job(store, "upload", total=5, progress_id="client-b").wait()
    result = run_cli("show", "upload", "--progress-id", "client-b", "--json", store=store)
    [wire] = json_lines(result.stdout)
    assert (wire["progress_id"], wire["total"]) == ("client-b", 5)
    missing = run_cli("show", "upload", store=store)
    assert_one_line_error(missing, "no progress 'upload'")


def test_show_and_watch_take_a_name_as_tracked_list_prints_it(
    tmp_path: Path, start_job: Callable[..., Job]
) -> None:
    store = str(tmp_path / "store")
    start_job(store, "upload", total=3, progress_id="client-a").wait()
    [line] = [row for row in run_cli("list", store=store).stdout.splitlines() if "upload" in row]
    listed = line.split()[0]
    assert listed == "upload?progress_id=client-a"
    [wire] = json_lines(run_cli("show", listed, "--json", store=store).stdout)
    assert (wire["name"], wire["progress_id"], wire["total"]) == ("upload", "client-a", 3)
    watched = run_cli("watch", listed, store=store)
    assert watched.returncode == 0 and "finished 3/3" in watched.stdout
    missing = run_cli("show", "upload", store=store)
    assert_one_line_error(missing, "no progress 'upload'", "--progress-id", "upload?progress_id=ID")


def test_a_name_that_holds_the_list_separator_is_found_as_it_is(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with tracked.start("odd?progress_id=x", total=2, store=store) as odd:
        odd += 2
    [wire] = json_lines(run_cli("show", "odd?progress_id=x", "--json", store=store).stdout)
    assert (wire["name"], wire["progress_id"], wire["count"]) == ("odd?progress_id=x", None, 2)


def test_show_of_an_unknown_name_fails_with_one_line_naming_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    assert_one_line_error(
        run_cli("show", "nothing-here", store=str(store)),
        f"no progress 'nothing-here' in FileStore({str(store)!r})",
    )


# ----------------------------------------------------------------------------- watch


def test_watch_follows_a_progress_to_the_end_in_plain_lines(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    job = start_job(shared_store_url, "followed", gated=True)
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracked",
            "watch",
            "followed",
            "--interval",
            "0.05",
            "--store",
            shared_store_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = watcher.stdout.readline()
    assert first.startswith("followed: ")
    job.release()
    rest = watcher.stdout.read()  # communicate() would miss what readline() buffered
    assert watcher.wait(timeout=60) == 0
    lines = (first + rest).splitlines()
    messages = [line.split(": message: ")[1] for line in lines if ": message: " in line]
    assert messages == [f"step {i}" for i in range(20)]
    progress = [line for line in lines if ": message: " not in line]
    counts = [int(line.split()[2].split("/")[0]) for line in progress]
    assert counts == sorted(counts)
    assert progress[-1].startswith("followed: finished 20/20 (100.0%) in ")


@pytest.mark.parametrize(("outcome", "shown"), [("fail", "failed"), ("finish", "finished")])
def test_watch_exit_status_says_how_the_progress_ended(
    tmp_path: Path, start_job: Callable[..., Job], outcome: str, shown: str
) -> None:
    store = str(tmp_path / "store")
    start_job(store, "ending", total=4, outcome=outcome).wait()
    result = run_cli("watch", "ending", store=store)
    assert result.returncode == (0 if outcome == "finish" else 1)
    assert result.stdout.splitlines()[-1].startswith(f"ending: {shown} 4/4")
    if outcome == "fail":
        assert "error: RuntimeError: the job broke" in result.stdout


def test_watch_of_a_killed_job_exits_1_as_abandoned(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    job = start_job(shared_store_url, "doomed", outcome="hold")
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracked",
            "watch",
            "doomed",
            "--interval",
            "0.05",
            "--store",
            shared_store_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline().startswith("doomed: running 0/20")
    job.kill()
    rest = watcher.stdout.read()
    assert watcher.wait(timeout=60) == 1
    assert rest.splitlines()[-1].startswith("doomed: abandoned 0/20")


def test_watch_of_a_missing_progress_exits_2_after_waiting(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    began = time.monotonic()
    result = run_cli("watch", "never", "--wait", "0.5", store=str(store))
    assert time.monotonic() - began >= 0.5
    assert_one_line_error(result, "no progress 'never'", "after waiting 0.5s")


def test_watch_waits_for_a_progress_that_starts_later(
    tmp_path: Path, start_job: Callable[..., Job]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracked",
            "watch",
            "late",
            "--wait",
            "60",
            "--interval",
            "0.05",
            "--store",
            str(store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    start_job(str(store), "late", total=3).wait()
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert out.splitlines()[-1].startswith("late: finished 3/3")


def read_terminal(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal as stdout and stderr; its exit status and output."""
    master, slave = pty.openpty()
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", **(env or {})}
    process = subprocess.Popen(command, stdout=slave, stderr=slave, env=environment, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_watch_draws_a_live_bar_on_a_terminal(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    job = start_job(shared_store_url, "on-screen", gated=True)
    job.release()
    status, screen = read_terminal(
        [
            sys.executable,
            "-m",
            "tracked",
            "watch",
            "on-screen",
            "--interval",
            "0.05",
            "--store",
            shared_store_url,
        ]
    )
    assert status == 0, screen
    assert "\x1b[" in screen  # drawn with terminal escapes, redrawn in place
    assert "━" in screen  # rich's bar
    assert "20/20 (100.0%)" in screen
    assert "finished" in screen and "step 19" in screen
    assert ": message: " not in screen  # not the plain view


def test_watch_without_rich_prints_plain_lines_on_a_terminal(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    with tracked.start("no-rich", total=2, store=store) as progress:
        progress.increment(2)
    blocked = (
        "import sys; sys.modules['rich'] = None; from tracked.cli import main; "
        f"sys.exit(main(['watch', 'no-rich', '--store', {store!r}]))"
    )
    status, screen = read_terminal([sys.executable, "-c", blocked])
    assert status == 0, screen
    assert "no-rich: finished 2/2 (100.0%)" in screen
    assert "━" not in screen


# ----------------------------------------------------------------------------- prune


def test_prune_deletes_old_ended_records_and_never_a_running_one(
    shared_store_url: str, start_job: Callable[..., Job]
) -> None:
    write_old_record(shared_store_url, "old-1", ended_ago=3 * 86400)
    write_old_record(shared_store_url, "old-2", ended_ago=3 * 86400)
    write_old_record(shared_store_url, "yesterday", ended_ago=86400)
    start_job(shared_store_url, "busy", outcome="hold")
    result = run_cli("prune", "--older-than", "2d", store=shared_store_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deleted 2 ended progresses older than 2d\n"
    again = run_cli("prune", "--older-than", "0s", store=shared_store_url)
    assert again.stdout == "deleted 1 ended progress older than 0s\n"
    left = json_lines(run_cli("list", "--all", "--json", store=shared_store_url).stdout)
    assert [(w["name"], w["state"]) for w in left] == [("busy", "running")]


@pytest.mark.parametrize("duration", ["", "7", "2 days", "-3h", "1y", "h"])
def test_prune_refuses_a_bad_duration(tmp_path: Path, duration: str) -> None:
    result = run_cli("prune", f"--older-than={duration}", store=str(tmp_path))
    assert_one_line_error(result, "bad duration", repr(duration))


def test_parse_duration_reads_each_unit() -> None:
    from tracked.cli import parse_duration

    assert [parse_duration(t) for t in ("30s", "15m", "2h", "7d", "1w", "1.5h")] == [
        30,
        900,
        7200,
        604800,
        604800,
        5400,
    ]


# ----------------------------------------------------------------------------- bad input


def test_unknown_store_scheme_is_one_line_and_exit_2() -> None:
    assert_one_line_error(run_cli("list", store="ftp://example.com/x"), "unknown store", "ftp://")


def test_missing_store_directory_is_one_line_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_cli("list", store=str(missing)), "does not exist")
    assert not missing.exists()


def test_store_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a store")
    assert_one_line_error(run_cli("show", "x", store=f"file://{a_file}"), "is not a directory")


def test_unreachable_redis_is_one_line_and_exit_2() -> None:
    result = run_cli("list", store=f"redis://127.0.0.1:{free_port()}/0")
    assert_one_line_error(result, "127.0.0.1")


PORT_RULE = "a port is 0 to 65535 (0: any free port)"
TOO_LONG_LABEL = "ü" * 70 + ".example"  # IDNA cannot encode a label this long


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["show", "x" * 600], ["at most 512 characters"]),
        (["show"], ["required", "NAME"]),
        (["show", ""], ["must not be empty"]),
        (["show", "job", "--progress-id", "not ok!"], ["progress_id"]),
        (["show", "job", "--progress-id", ""], ["progress_id"]),
        (["show", "caf\udce9"], ["caf"]),  # a non-UTF-8 byte in argv: never a traceback
        (["watch"], ["required", "NAME"]),
        (["watch", "job", "--wait", "soon"], ["--wait", "'soon'"]),
        (["watch", "job", "--wait", "-3"], ["--wait", ">= 0", "'-3'"]),
        (["watch", "job", "--wait", "inf"], ["--wait", "'inf'"]),
        (["watch", "job", "--wait", "nan"], ["--wait", "'nan'"]),
        (["watch", "job", "--interval", "-1"], ["--interval", "'-1'"]),
        (["watch", "job", "--interval", "1e300"], ["--interval", "<= 3600", "'1e300'"]),
        (["watch", "job", "--interval", "3600.5"], ["--interval", "<= 3600", "'3600.5'"]),
        (["watch", "job", "--interval", "3600"], ["no progress 'job'"]),  # the cap is accepted
        (["watch", "job", "--interval", "0"], ["no progress 'job'"]),
        (["prune", "--older-than", "-0s"], ["bad duration '-0s'", "cannot be negative"]),
        (["watch", "job", "--interval", ""], ["--interval", "''"]),
        (["prune"], ["required", "--older-than"]),
        (["prune", "--older-than", "-5d"], ["bad duration '-5d'", "cannot be negative", "5d?"]),
        (["prune", "--older-than", "9" * 400 + "s"], ["bad duration", "too long"]),
        (["serve", "--port", "eighty"], ["--port", PORT_RULE, "'eighty'"]),
        (["serve", "--port", "-1"], ["--port", PORT_RULE, "'-1'"]),
        (["serve", "--port", "65536"], ["--port", PORT_RULE, "'65536'"]),
        (["serve", "--port", "99999"], ["--port", PORT_RULE, "'99999'"]),
        (["serve", "--port", ""], ["--port", PORT_RULE, "''"]),
        (["serve", "--host", ""], ["--host is empty", "0.0.0.0"]),
        (["serve", "--host", "no-such-host.invalid"], ["cannot listen on no-such-host.invalid"]),
        (["serve", "--host", "256.0.0.1"], ["cannot listen on 256.0.0.1"]),
        (["serve", "--host", TOO_LONG_LABEL], ["cannot listen on", "idna"]),
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (["list", "--frobnicate"], ["unrecognized arguments", "--frobnicate"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    assert_one_line_error(run_cli(*args, store=str(tmp_path)), *words)


@pytest.mark.parametrize(
    ("store", "words"),
    [
        ("", ["--store is empty"]),
        ("   ", ["--store is empty"]),
        ("file://", ["--store names no directory"]),
        ("memory://", ["'memory://'", "inside one process"]),
        ("x" * 300, ["cannot use store directory", "File name too long"]),
        ("redis://localhost:99999/0", ["redis://localhost:99999/0", "Port out of range"]),
        ("redis://localhost:abc/0", ["redis://localhost:abc/0"]),
        ("redis://[::1/0", ["Redis store"]),
        ("redis://localhost:6379/abc", ["database 'abc'", "not an integer"]),
        ("redis+cluster://localhost:7000/0?junk=1", ["unknown option 'junk'"]),
        ("http://example.com/", ["unknown store", "http://example.com/"]),
    ],
)
def test_bad_store_is_one_line_and_exit_2(store: str, words: list[str]) -> None:
    for command in (["list"], ["show", "x"], ["watch", "x"], ["prune", "--older-than", "1d"]):
        assert_one_line_error(run_cli(*command, store=store), *words)


def test_a_store_inside_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a store")
    assert_one_line_error(run_cli("list", store=str(a_file / "sub")), "does not exist")


def without_file_permission_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so the program it runs obeys file modes even as root (as the tests run in CI)."""
    if os.geteuid() != 0:
        return  # an ordinary user obeys file modes already
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli_bound_by_file_modes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracked", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=without_file_permission_override,
    )


@pytest.mark.parametrize("where", ["store", "parent", "record"])
def test_unreadable_store_is_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    """A store directory, a parent of it, or a record that the user may not read."""
    store = tmp_path / "parent" / "store"
    store.parent.mkdir()
    with tracked.start("secret", store=str(store)):
        pass
    locked = {"store": store, "parent": store.parent, "record": next(store.glob("*.json"))}
    locked[where].chmod(0)
    try:
        for command in (["list"], ["show", "secret"], ["watch", "secret"]):
            result = run_cli_bound_by_file_modes(*command, "--store", str(store))
            if command == ["list"] and where == "record":  # skipped, as any bad entry
                assert result.returncode == 0 and "secret" not in result.stdout
                [line] = result.stderr.splitlines()
                assert line.startswith("tracked: skipped ") and str(locked[where]) in line
                continue
            assert_one_line_error(result, f"tracked {command[0]}: ")
            assert str(locked[where]) in result.stderr
    finally:
        locked[where].chmod(0o700)


def test_console_script_and_module_are_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("tracked")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    module = run_cli("--version")
    assert result.returncode == module.returncode == 0
    assert result.stdout == module.stdout == f"tracked {tracked.__version__}\n"


# ----------------------------------------------------------------------------- serve


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``tracked serve`` for a store (on a free port unless ``options`` name one);
    returns the base URL its startup line announces."""
    servers: list[subprocess.Popen[str]] = []

    def start(store: str, *options: str) -> str:
        if "://" not in store:
            Path(store).mkdir(exist_ok=True)  # an explicit store directory must exist
        if "--port" not in options:
            options = (*options, "--port", str(free_port()))
        server = subprocess.Popen(
            [sys.executable, "-m", "tracked", "serve", *options, "--store", store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        servers.append(server)
        assert server.stdout is not None
        banner = server.stdout.readline()  # printed once the socket listens, or EOF on failure
        assert banner.startswith("tracked: serving http://"), banner
        return banner.split()[2].rstrip("/")

    yield start
    for server in servers:
        server.terminate()
        server.wait(timeout=10)


def fetch(url: str) -> tuple[int, str, str]:
    """GET ``url``: status, content type and body (error statuses too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_serve_answers_the_status_route_for_a_job_another_process_runs(
    shared_store_url: str, start_job: Callable[..., Job], serve: Callable[..., str]
) -> None:
    base = serve(shared_store_url)
    job = start_job(shared_store_url, "batch/one", gated=True)
    wait_until(lambda: tracked.load("batch/one", store=shared_store_url).count >= 10)
    status, kind, body = fetch(f"{base}/_progress_status/batch/one")
    assert (status, kind) == (200, "application/json; charset=utf-8")
    wire = json.loads(body)
    assert (wire["name"], wire["count"], wire["state"]) == ("batch/one", 10, "running")
    status, _kind, body = fetch(f"{base}/progresses.json")
    [listed] = json.loads(body)["progresses"]
    assert listed["status_url"] == "/_progress_status/batch/one"
    assert listed["page_url"] == "/progress?name=batch%2Fone"
    job.release()
    assert job.wait() == 0
    wire = json.loads(fetch(f"{base}/_progress_status/batch/one")[2])
    assert (wire["count"], wire["state"]) == (20, "finished")


def test_serve_pages_and_client_script(tmp_path: Path, serve: Callable[..., str]) -> None:
    store = str(tmp_path / "store")
    base = serve(store)
    status, kind, page = fetch(base + "/")
    assert status == 200 and kind.startswith("text/html")
    assert "/progresses.json" in page
    status, kind, script = fetch(base + "/tracked.js")
    assert status == 200 and "javascript" in kind
    assert "function trackProgress" in script
    status, _kind, body = fetch(base + "/progress?name=job&progress_id=bad%20id")
    assert status == 400 and "progress_id" in json.loads(body)["error"]


def test_serve_never_puts_stored_text_into_html_unescaped(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    store = str(tmp_path / "store")
    name = '<img src=x onerror=alert(1)>"quoted'
    with tracked.start(name, store=store, progress_id="p-1") as progress:
        progress.add_message("<script>alert(2)</script>")
    base = serve(store)
    [listed] = json.loads(fetch(base + "/progresses.json")[2])["progresses"]
    status, _kind, page = fetch(base + listed["page_url"])
    assert status == 200
    assert "<img" not in page and '"quoted' not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;quoted?progress_id=p-1" in page
    encoded = "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%22quoted"
    assert f'src="/_progress_status/{encoded}?progress_id=p-1"' in page
    wire = json.loads(fetch(base + listed["status_url"])[2])
    assert wire["name"] == name


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(address)
    return found


def test_serve_binds_to_localhost_by_default(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(str(tmp_path / "store"))
    port = int(base.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0


def test_serve_on_a_busy_port_is_one_line_and_exit_2(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    base = serve(str(tmp_path / "store"))
    port = base.rsplit(":", 1)[1]
    result = run_cli("serve", "--port", port, store=str(tmp_path / "store"))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_serve_on_port_0_listens_on_a_free_port_and_announces_it(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    base = serve(str(tmp_path / "store"), "--port", "0")
    port = int(base.rsplit(":", 1)[1])
    assert 0 < port <= 65535
    assert fetch(base + "/progresses.json")[0] == 200


def test_serve_accepts_the_highest_port(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(str(tmp_path / "store"), "--port", "65535")
    assert base == "http://127.0.0.1:65535"
    assert fetch(base + "/progresses.json")[0] == 200


def test_serve_on_localhost_listens_on_ipv4_loopback(
    tmp_path: Path, serve: Callable[..., str]
) -> None:
    """A name with both an IPv4 and an IPv6 address binds the IPv4 one, as before."""
    base = serve(str(tmp_path / "store"), "--host", "localhost")
    assert base.startswith("http://127.0.0.1:")
    assert listening_addresses(int(base.rsplit(":", 1)[1])) == {"0100007F"}


def test_serve_listens_on_an_ipv6_address(tmp_path: Path, serve: Callable[..., str]) -> None:
    base = serve(str(tmp_path / "store"), "--host", "::1", "--port", "0")
    assert base.startswith("http://[::1]:")
    assert fetch(base + "/progresses.json")[0] == 200


def test_the_examples_client_is_the_packaged_file() -> None:
    """The JS client is one file: the package ships it and examples/ links to it."""
    packaged = ROOT / "tracked" / "static" / "tracked.js"
    example = ROOT / "examples" / "static" / "tracked.js"
    assert packaged.is_file() and example.is_symlink()
    assert example.samefile(packaged)


# ----------------------------------------------------------------------------- serve, in a browser


def test_serve_pages_follow_a_batch_job_live_in_a_browser(
    tmp_path: Path, start_job: Callable[..., Job], serve: Callable[..., str], chromium: Any
) -> None:
    """The list page links to the job; its page fills the bar and the messages through
    tracked.js as another process works; a name made of markup stays text."""
    from playwright.sync_api import expect

    store = str(tmp_path / "store")
    base = serve(store)
    name = "<img src=x onerror=alert(1)>"
    job = start_job(store, name, gated=True)
    page = chromium.new_page()
    page.set_default_timeout(30_000)
    dialogs: list[str] = []
    errors: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(base + "/")
    link = page.get_by_role("link", name=name)
    expect(link).to_be_visible()
    link.click()
    expect(page.locator("#title")).to_have_text(name)
    expect(page.locator("#progress [part~=state]")).to_have_text("running")
    expect(page.locator("#progress [part~=count]")).to_have_text("10 / 20")
    expect(page.locator("#progress [role=progressbar]")).to_have_attribute("aria-valuenow", "50")
    job.release()
    expect(page.locator("#progress [part~=count]")).to_have_text("20 / 20")
    expect(page.locator("#progress [part~=state]")).to_have_text("finished")
    expect(page.locator("#progress [part~=label]")).to_have_text(name)
    expect(page.locator("#progress [part~=message]")).to_have_text(
        [f"step {i}" for i in range(20)])
    assert job.wait() == 0
    assert dialogs == [] and errors == []
    page.close()


def test_printable_escapes_controls_and_text_reordering_marks() -> None:
    from tracked._views import printable

    assert printable("ok\x1b[2J\x07\r\n\u202egnp.exe\u2066") == (
        "ok\\x1b[2J\\x07\\x0d\\x0a\\u202egnp.exe\\u2066"
    )
    assert printable("naïve — 東京") == "naïve — 東京"


#: Every character the command must never write as it is (nor through ``--json``): all of
#: Unicode's Cc, Cf, Zl and Zp, which hold every bidirectional control.
UNSAFE = "".join(
    chr(code)
    for code in range(0x110000)
    if unicodedata.category(chr(code)) in {"Cc", "Cf", "Zl", "Zp"}
)
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def unsafe_in(output: bytes) -> set[str]:
    """The unsafe characters in ``output`` (UTF-8), line ends apart. Split on ``\\n`` only:
    ``str.splitlines`` would also split on (and so hide) ``\\x85``, ``\\u2028``..."""
    text = output.decode("utf-8")  # strict: lone surrogates would fail here
    return {char for line in text.split("\n") for char in line if char in UNSAFE}


def run_cli_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``run_cli`` without text mode, which would turn a raw ``\\r`` into ``\\n``."""
    command = [sys.executable, "-m", "tracked", *args]
    return subprocess.run(command, capture_output=True, timeout=60, cwd=ROOT)


def test_the_unsafe_set_holds_every_bidirectional_control() -> None:
    """Guards the category test: the bidi controls (U+061C among them) are all Cf."""
    assert set(BIDI_CONTROLS) <= set(UNSAFE)
    assert {"\x85", "\u2028", "\u2029", "\u200b", "\ufeff", "\U000e0001"} <= set(UNSAFE)


def test_text_output_escapes_every_control_format_and_separator_character(
    tmp_path: Path,
) -> None:
    """A name, status, error and message made of every unsafe character: list, show and
    watch print none of them raw, but their escapes, so stored text cannot drive the
    terminal or reorder the line it is on."""
    store = str(tmp_path / "store")
    name = "n" + UNSAFE.replace("\0", "")  # a name cannot hold NUL
    with pytest.raises(RuntimeError), tracked.start(name, store=store) as progress:
        progress.status = UNSAFE
        progress.add_message(UNSAFE)
        raise RuntimeError(UNSAFE)
    outputs = {
        "list": run_cli_bytes("list", "--store", store),
        "show": run_cli_bytes("show", name, "--store", store),
        "watch": run_cli_bytes("watch", name, "--store", store),
    }
    for command, result in outputs.items():
        assert result.returncode == (1 if command == "watch" else 0), result.stderr
        assert unsafe_in(result.stdout) == set(), command
        shown = result.stdout.decode()
        for escape in ("n\\x01\\x02", "\\x85", "\\u061c", "\\u202e", "\\u2029", "\\U000e007f"):
            assert escape in shown, (command, escape)
    assert "messages:     1 shown of 1" in outputs["show"].stdout.decode()


def test_json_output_escapes_c1_bidi_and_separator_characters_and_round_trips(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "store")
    with tracked.start("json\u202eeman", store=store) as progress:
        progress.status = "next\x85line"
        progress.add_message(UNSAFE)
    stored = json.loads(json.dumps(tracked.load("json\u202eeman", store=store).to_dict()))
    for args in (("list", "--json"), ("show", "json\u202eeman", "--json")):
        result = run_cli_bytes(*args, "--store", store)
        assert result.returncode == 0, result.stderr
        assert unsafe_in(result.stdout) == set()
        line = result.stdout.decode()
        assert "json\\u202eeman" in line and "next\\u0085line" in line
        assert "\\u2028" in line and "\\udb40\\udc01" in line  # U+E0001 as JSON writes it
        assert json.loads(line) == stored


def test_printable_escapes_exactly_the_unsafe_categories_across_all_of_unicode() -> None:
    """Every code point: escaped if it is Cc, Cf, Zl, Zp or a lone surrogate (which a
    UTF-8 terminal could not even be sent), left as it is otherwise."""
    from tracked._views import json_text, printable

    unsafe = {"Cc", "Cf", "Zl", "Zp", "Cs"}
    for code in range(0x110000):
        char = chr(code)
        shown = printable(char)
        if unicodedata.category(char) in unsafe:
            width = 2 if code <= 0xFF else 4 if code <= 0xFFFF else 8
            assert shown == f"\\{'x' if width == 2 else 'u' if width == 4 else 'U'}{code:0{width}x}"
            assert json.loads(json_text(char)) == char
            assert json_text(char).isascii(), hex(code)
        else:
            assert shown == char, hex(code)


def test_watch_rides_out_a_store_outage_and_follows_the_job_to_its_end(
    tmp_path: Path, start_job: Callable[..., Job]
) -> None:
    """The store's directory becomes unreadable mid-watch: one line on stderr, no
    exit; when it is back, the watch follows the job to ``finished``."""
    store = tmp_path / "store"
    job = start_job(str(store), "outage", gated=True)
    errors = tmp_path / "watch.err"
    with errors.open("w") as stderr:
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tracked",
                "watch",
                "outage",
                "--interval",
                "0.05",
                "--store",
                str(store),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith("outage: ")  # it is following
        aside = tmp_path / "store-aside"
        store.rename(aside)
        store.write_text("not a directory any more")
        deadline = time.monotonic() + 30
        while "retrying" not in errors.read_text():
            assert watcher.poll() is None, "watch exited during the outage"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        store.unlink()
        aside.rename(store)
        job.release()
        assert watcher.wait(timeout=60) == 0
    assert job.wait() == 0
    shown = [line for line in watcher.stdout.read().splitlines() if ": message: " not in line]
    assert shown[-1].startswith("outage: finished 20/20")
    lines = errors.read_text().splitlines()
    assert len(lines) == 2 and lines[1] == "tracked watch: the store answers again"


def test_list_reports_each_corrupt_record_in_one_line(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("fine", store=store):
        pass
    store.path_for("broken").write_text('{"version": 1, "owner": null, "state": {"count": "x"}}')
    for args in (("list",), ("list", "--json")):
        result = run_cli(*args, store=str(store.directory))
        assert result.returncode == 0, result.stderr
        assert "fine" in result.stdout and "broken" not in result.stdout
        [line] = result.stderr.splitlines()
        assert str(store.path_for("broken")) in line and "corrupt" in line


def test_list_prune_and_serve_skip_every_bad_entry_with_one_line_each(tmp_path: Path) -> None:
    from tests.test_file_store import plant_bad_entries

    store = tracked.FileStore(tmp_path / "store")
    bad = plant_bad_entries(store)
    listed = run_cli_bound_by_file_modes("list", "--all", "--store", str(store.directory))
    assert listed.returncode == 0, listed.stderr
    assert "whole" in listed.stdout and "bad" not in listed.stdout
    lines = listed.stderr.splitlines()
    assert len(lines) == len(bad), listed.stderr
    for path in bad.values():
        assert sum(str(path) in line for line in lines) == 1, (path, lines)
    pruned = run_cli_bound_by_file_modes("prune", "--older-than", "0s", "--store",
                                         str(store.directory))
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("deleted 1 ended progress")
    assert len(pruned.stderr.splitlines()) == len(bad), pruned.stderr
    with tracked.start("again", store=store):
        pass
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as errors:
        server = subprocess.Popen(
            [sys.executable, "-m", "tracked", "serve", "--port", str(port), "--store",
             str(store.directory)],
            stdout=subprocess.DEVNULL, stderr=errors, cwd=ROOT,
            preexec_fn=without_file_permission_override,
        )
    try:
        wait_for_port(port)
        for _ in range(2):  # polled again: each bad entry is still logged once
            status, _kind, body = fetch(f"http://127.0.0.1:{port}/progresses.json?all=1")
            assert status == 200, body
            assert [p["name"] for p in json.loads(body)["progresses"]] == ["again"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    skipped = [line for line in log.read_text().splitlines() if "skipped" in line]
    assert len(skipped) == len(bad), log.read_text()
    for path in bad.values():
        assert sum(str(path) in line for line in skipped) == 1, (path, skipped)


def test_show_children_json_names_a_child_by_name_and_progress_id(tmp_path: Path) -> None:
    """A child with a progress_id (every RQ job's) reads as the status route's page has
    it, never as the store's key with its NUL separator."""
    store = tracked.FileStore(tmp_path / "store")
    with tracked.group("files", store=store) as group:
        with tracked.start("load", progress_id="j1", store=store, group=group):
            pass
    shown = run_cli("show", "files", "--children", "--json", store=str(tmp_path / "store"))
    assert shown.returncode == 0, shown.stderr
    assert json_lines(shown.stdout) == [{"name": "load", "progress_id": "j1", "state": "finished"}]


def test_list_shows_a_group_with_its_counts_and_show_lists_its_children(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.group("batch", store=store) as group:
        with tracked.start("good", store=store, group=group):
            pass
        with tracked.start("bad", store=store, group=group) as bad:
            bad.fail("no email")
    where = str(tmp_path / "store")
    listed = run_cli("list", store=where)
    row = next(line for line in listed.stdout.splitlines() if line.startswith("batch"))
    assert "group of 2: 1 finished, 1 failed" in row and "2/2" in row
    shown = run_cli("show", "batch", "--children", store=where)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "group of 2: 1 finished, 1 failed", "finished (1):", "  good", "failed (1):", "  bad",
    ]
    as_json = json_lines(run_cli("show", "batch", "--children", "--json", store=where).stdout)
    assert as_json == [
        {"name": "good", "progress_id": None, "state": "finished"},
        {"name": "bad", "progress_id": None, "state": "failed"},
    ]
    assert_one_line_error(run_cli("show", "good", "--children", store=where), "not a group")
