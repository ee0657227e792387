"""Real OS processes sharing a file store: racing starts, torn reads, crashes, freshness."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import tracked
from tests.conftest import python_process

ROUNDS = 30
RACERS = 8


def wait_for_files(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"missing: {[p for p in paths if not p.exists()]}"
        time.sleep(0.001)


def test_racing_processes_produce_exactly_one_winner_each_round(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    sync = tmp_path / "sync"
    sync.mkdir()
    racers = [
        python_process("race", store, "contested", str(ROUNDS), str(sync), str(i))
        for i in range(RACERS)
    ]
    try:
        for r in range(ROUNDS):
            (sync / f"go-{r}").touch()
            results = [sync / f"result-{r}-{i}" for i in range(RACERS)]
            wait_for_files(results)
            outcomes = sorted(p.read_text() for p in results)
            assert outcomes == ["lose"] * (RACERS - 1) + ["win"], f"round {r}: {outcomes}"
            (sync / f"end-{r}").touch()
            wait_for_files([sync / f"done-{r}-{i}" for i in range(RACERS)])
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()


def test_readers_never_see_a_torn_or_invalid_record(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    writer = python_process("writer", store, "torn", "20000")
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "started"
    readers = [python_process("reader", store, "torn") for _ in range(2)]
    _, writer_err = writer.communicate(timeout=120)
    assert writer.returncode == 0, writer_err
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        last = out.strip().splitlines()[-1].split()
        assert last[0] == "reads" and int(last[1]) > 100 and last[2] == "0", out[-2000:]
    state = tracked.load("torn", store=store)
    assert state is not None and state.count == 20000 and state.state == "finished"


def test_killed_owner_reads_as_abandoned_and_the_name_restarts_at_once(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    owner = python_process("hold", store, "crashy")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "started"
    assert tracked.is_running("crashy", store=store)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    state = tracked.load("crashy", store=store)
    assert state is not None
    assert (state.state, state.in_progress, state.status) == ("abandoned", False, "abandoned")
    assert not tracked.is_running("crashy", store=store)
    with tracked.start("crashy", store=store, total=3):
        assert tracked.is_running("crashy", store=store)


def test_a_killed_zombie_owner_reads_as_abandoned_before_it_is_reaped(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    owner = python_process("hold", store, "zombie")
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "started"
    os.kill(owner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{owner.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    state = tracked.load("zombie", store=store)
    assert state is not None and state.state == "abandoned"
    owner.wait()


def test_a_live_owner_in_another_process_blocks_a_start(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    owner = python_process("hold", store, "held")
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "started"
        before = tracked.load("held", store=store)
        try:
            tracked.start("held", store=store, total=999)
        except tracked.AlreadyRunning:
            pass
        else:
            raise AssertionError("a second owner started a held name")
        assert tracked.load("held", store=store) == before
    finally:
        owner.kill()
        owner.wait()


def test_a_message_is_visible_to_another_process_within_min_interval(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    min_interval = 0.2
    writer = python_process("message_then_sleep", store, "fresh", str(min_interval))
    assert writer.stdout is not None
    line = writer.stdout.readline().split()
    assert line[0] == "added"
    added_at = float(line[1])
    opened = tracked.open_store(store)
    deadline = time.monotonic() + 2
    while True:
        state = opened.load("fresh")
        if state is not None and state.messages == ("a",):
            seen_at = time.time()
            break
        assert time.monotonic() < deadline, "the message never arrived"
        time.sleep(0.002)
    writer.wait(timeout=10)
    assert seen_at - added_at <= min_interval + 0.05
    assert state.in_progress  # written by the flusher, not by the end of the task


def test_a_generator_batch_job_in_another_process_is_observed_to_the_end(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    job = python_process("generator_job", store, "batch", "50")
    counts = []
    deadline = time.monotonic() + 30
    while True:
        state = tracked.load("batch", store=store)
        if state is not None:
            counts.append(state.count)
            if not state.in_progress:
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert job.wait(timeout=10) == 0
    assert counts == sorted(counts) and counts[-1] == 50
    assert state.state == "finished" and state.messages[-1] == "step 49"
