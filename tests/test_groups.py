"""Groups (``tracked.group``): one progress over many runs, counted exactly by real
threads and processes on every store, read in constant time."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracked
from tests.conftest import ROOT, until_state

WORKERS = str(ROOT / "tests" / "group_workers.py")
ENDED = ("finished", "failed", "cancelled", "abandoned")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKERS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **(env or {})},
    )


def ended(name: str, store: tracked.Store, within: float = 60.0) -> tracked.State:
    return until_state(lambda: store.load(name), lambda s: not s.in_progress, within)


@pytest.fixture(params=["file", "redis", "redis-cluster"])
def shared(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
           ) -> Iterator[tuple[str, tracked.Store]]:
    """A store other processes share, of each kind, with its URL."""
    url = make_store_url(request.param)
    store = tracked.open_store(url)
    yield url, store
    store.close()


@tracked.tracked("child-{i}", total=4)
def child(i: int) -> int:
    progress = tracked.current()
    for _ in range(4):
        progress += 1
    if i == 500:
        raise ValueError("row 500 is bad")
    return i


def test_children_of_submit_and_eight_processes_are_counted_exactly(
    shared: tuple[str, tracked.Store],
) -> None:
    url, store = shared
    tracked.configure(store=store)
    with tracked.group("batch", store=store, description="import") as group:
        handles = [group.submit(child, i) for i in range(1000)]
        joiners = [spawn("join", url, group.token, "10") for _ in range(8)]
        for joiner in joiners:
            _, err = joiner.communicate(timeout=120)
            assert joiner.returncode == 0, err
    for handle in handles:
        try:
            handle.wait(60)
        except ValueError:
            pass
    state = ended("batch", store)
    assert state.children == {
        "total": 1080, "queued": 0, "running": 0, "finished": 1079, "failed": 1,
        "cancelled": 0, "abandoned": 0,
    }
    assert (state.state, state.count, state.total, state.percent) == ("failed", 1080, 1080, 100.0)
    assert state.error == (
        "1 of 1080 children failed: first error: child-500 failed: ValueError: row 500 is bad"
    )
    assert state.messages == ("child-500 failed: ValueError: row 500 is bad",)


def test_a_group_closed_with_no_children_finishes(store: tracked.Store) -> None:
    with tracked.group("empty", store=store) as group:
        assert store.load("empty").in_progress  # type: ignore[union-attr]
        group.add_message("nothing to do")
    state = store.load("empty")
    assert state is not None
    assert (state.state, state.in_progress, state.count, state.total) == ("finished", False, 0, 0)
    assert state.children == dict.fromkeys(["total", "queued", "running", *ENDED], 0)
    assert state.messages == ("nothing to do",)
    assert state.to_dict()["children"]["total"] == 0
    with pytest.raises(tracked.AlreadyRunning):  # the name is free again only once ended
        with tracked.group("busy", store=store):
            tracked.group("busy", store=store)
    with tracked.group("empty", store=store):  # an ended group's name can be claimed again
        pass


def test_a_closed_group_refuses_new_children_and_bad_tokens_are_refused(
    store: tracked.Store,
) -> None:
    with tracked.group("shut", store=store) as group:
        with tracked.start("one", store=store, group=group):
            pass
    with pytest.raises(tracked.InvalidValue, match="closed"):
        tracked.start("late", store=store, group=group.token)
    late = store.load("late")
    assert late is not None and late.state == "failed"  # a record never left running
    assert store.load("shut").children["total"] == 1  # type: ignore[union-attr]
    for bad in ("", "no-dot", "a.b.c", "!!!.abc", 7):
        with pytest.raises(tracked.InvalidValue):
            tracked.start("x", store=store, group=bad)


def test_a_child_that_raises_fails_the_group_with_its_error_and_progress_is_smooth(
    store: tracked.Store,
) -> None:
    go = threading.Event()
    with tracked.group("smooth", store=store) as group:
        with tracked.start("a", total=10, store=store, group=group, min_interval=0.05) as a:
            a += 5
            a.flush()  # written: the group now counts half of this child done
            b = tracked.start("b", total=None, store=store, group=group)
            state = store.load("smooth")
            assert state is not None
            assert state.children["running"] == 2  # type: ignore[index]
            assert (state.count, state.total) == (0, 2)  # 0.5 + 0 children's worth
            a += 5
        go.set()
        b.fail(RuntimeError("disk full"))
    state = store.load("smooth")
    assert state is not None and state.state == "failed"
    assert state.error == "1 of 2 children failed: first error: b failed: RuntimeError: disk full"
    assert (state.count, state.percent) == (2, 100.0)


def test_a_failed_child_with_a_progress_id_is_named_as_the_cli_names_it(
    store: tracked.Store,
) -> None:
    """An RQ job's child has a progress_id: the group's error and lines name it
    ``name?progress_id=ID``, the form ``tracked show`` takes, not ``name/ID``."""
    with tracked.group("files", store=store) as group:
        with tracked.start("load", progress_id="j1", store=store, group=group) as load:
            load.fail("bad header")
    state = store.load("files")
    assert state is not None and state.state == "failed"
    line = "load?progress_id=j1 failed: bad header"
    assert state.error == f"1 of 1 children failed: first error: {line}"
    assert state.messages == (line,)


def test_a_killed_child_is_counted_abandoned_within_the_liveness_window(
    shared: tuple[str, tracked.Store], tmp_path: Path,
) -> None:
    url, store = shared
    if url.startswith("redis"):
        store = tracked.RedisStore(url, lease=1.0)  # the sweep's window is the lease
    ready = tmp_path / "ready"
    with tracked.group("crash", store=store) as group:
        hung = spawn("hang", url, group.token, str(ready), env={"TRACKED_TEST_LEASE": "1.0"})
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, hung.stderr.read() if hung.stderr else ""
            time.sleep(0.01)
        with tracked.start("fine", store=store, group=group):
            pass
    assert store.load("crash").children["running"] == 1  # type: ignore[union-attr]
    os.kill(hung.pid, signal.SIGKILL)
    hung.wait(10)
    state = ended("crash", store, within=30)
    assert state.children["abandoned"] == 1 and state.children["finished"] == 1  # type: ignore[index]
    assert state.state == "failed"
    assert state.error is not None and state.error.startswith("1 of 2 children failed")
    assert "abandoned" in state.messages[0]


@tracked.tracked("slow-{i}", total=None)
def slow(i: int, ran: list[int]) -> None:
    ran.append(i)
    while True:
        tracked.current().check()
        time.sleep(0.005)


def test_cancel_stops_queued_children_before_they_start_and_running_ones(
    store: tracked.Store,
) -> None:
    tracked.configure(store=store, max_workers=2)
    ran: list[int] = []
    try:
        with tracked.group("stop", store=store) as group:
            handles = [group.submit(slow, i, ran) for i in range(5)]
        until_state(lambda: store.load("stop"), lambda s: s.children["running"] == 2)  # type: ignore[index]
        assert store.load("stop").children["queued"] == 3  # type: ignore[union-attr]
        assert tracked.cancel("stop", store=store) is True
        for i, handle in enumerate(handles):  # running ones stop, queued ones never start
            with pytest.raises(tracked.Cancelled if i < 2 else concurrent.futures.CancelledError):
                handle.wait(30)
        state = ended("stop", store)
    finally:
        tracked.configure(max_workers=4)
    assert sorted(ran) == [0, 1]  # the queued ones never started
    assert state.state == "cancelled" and state.cancel_requested
    assert state.children["cancelled"] == 5  # type: ignore[index]
    assert tracked.cancel("stop", store=store) is False  # ended: nothing to stop


def test_a_group_nests_one_level(store: tracked.Store) -> None:
    with tracked.group("outer", store=store) as outer:
        with tracked.group("inner", store=store, group=outer) as inner:
            with tracked.start("leaf", store=store, group=inner):
                pass
        with tracked.start("sibling", store=store, group=outer):
            pass
    state = ended("outer", store, within=10)
    assert state.state == "finished"
    assert state.children["finished"] == 2 and state.children["total"] == 2  # type: ignore[index]
    inner_state = store.load("inner")
    assert inner_state is not None and inner_state.children["total"] == 1  # type: ignore[index]


def test_a_reader_process_sees_counts_that_never_go_back_and_add_up(
    shared: tuple[str, tracked.Store], tmp_path: Path,
) -> None:
    url, store = shared
    out = tmp_path / "seen.jsonl"
    with tracked.group("watched", store=store) as group:
        reader = spawn("read", url, "watched", str(out))
        time.sleep(0.2)
        joiners = [spawn("join", url, group.token, "15") for _ in range(4)]
        for joiner in joiners:
            assert joiner.wait(60) == 0
    reader.communicate(timeout=60)
    assert reader.returncode == 0
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(seen) > 3
    previous = None
    for children, count, total in seen:
        assert sum(children[s] for s in ("queued", "running", *ENDED)) == children["total"]
        assert total == children["total"] and 0 <= count <= total
        if previous is not None:
            assert children["total"] >= previous[0]["total"] and count >= previous[1]
            for s in ENDED:
                assert children[s] >= previous[0][s]
        previous = (children, count)
    assert seen[-1][0]["finished"] == 60


def test_a_refused_start_is_not_counted(store: tracked.Store) -> None:
    """Redis sends a child's claim and its count together: a claim refused by a live
    run of the name takes its count back (the second run never existed)."""
    with tracked.group("dups", store=store) as group:
        first = tracked.start("dup", store=store, group=group)
        with pytest.raises(tracked.AlreadyRunning):
            tracked.start("dup", store=store, group=group)
        assert store.load("dups").children == {  # type: ignore[union-attr]
            "total": 1, "queued": 0, "running": 1, "finished": 0, "failed": 0,
            "cancelled": 0, "abandoned": 0,
        }
        first.finish()
    assert store.load("dups").state == "finished"  # type: ignore[union-attr]


def test_pruning_an_ended_group_removes_its_ledger(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.group("old", store=store) as group:
        with tracked.start("kid", store=store, group=group):
            pass
    assert sorted(p.suffix for p in (tmp_path / "store").iterdir()) == [
        ".children", ".json", ".json",
    ]
    time.sleep(0.05)
    assert store.prune(0.01) == 2
    assert list((tmp_path / "store").iterdir()) == []


def until_cancelled(progress: tracked.Progress, within: float = 30.0) -> None:
    """Call ``check()`` until the cancel request reaches the handle (its flusher polls)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        progress.check()
        time.sleep(0.005)
    raise AssertionError("the cancel request never reached the handle")


def test_a_group_whose_child_was_cancelled_on_its_own_does_not_read_finished(
    store: tracked.Store,
) -> None:
    """Honest ends: ``finished`` only if every child finished. A child cancelled by
    itself (the group never was) stopped on request: the group reads ``cancelled``."""
    with tracked.group("partly", store=store) as group:
        stopper = tracked.start("stopped", store=store, group=group)
        assert tracked.cancel("stopped", store=store)
        with pytest.raises(tracked.Cancelled), stopper:
            until_cancelled(stopper)
        with tracked.start("done", store=store, group=group):
            pass
    state = ended("partly", store, within=10)
    assert state.children["cancelled"] == 1 and state.children["finished"] == 1  # type: ignore[index]
    assert (state.state, state.cancel_requested) == ("cancelled", False)


def test_a_cancelled_group_takes_no_new_child_and_an_ended_child_no_new_run(
    store: tracked.Store,
) -> None:
    """A child joining after the cancel would run to its end under a cancelled group;
    a new run of an ended child's name would run uncounted, the group ending (and
    reading ended) under it. Both are refused; their records end failed."""
    with tracked.group("rerun", store=store) as group:
        with tracked.start("once", store=store, group=group):
            pass
        with pytest.raises(tracked.InvalidValue, match="already ended in its group"):
            tracked.start("once", store=store, group=group)
        assert store.load("once").state == "failed"  # type: ignore[union-attr]
        assert store.load("rerun").children["total"] == 1  # type: ignore[union-attr]
        open_child = tracked.start("open", store=store, group=group)
    open_child.finish()
    assert ended("rerun", store, within=10).state == "finished"
    with tracked.group("halted", store=store) as group:
        assert tracked.cancel("halted", store=store)
        with pytest.raises(tracked.InvalidValue, match="cancelled"):
            tracked.start("late", store=store, group=group)
        with pytest.raises(tracked.InvalidValue, match="cancelled"):
            group.submit(child, 1).wait(10)
    assert store.load("late").state == "failed"  # type: ignore[union-attr]
    state = ended("halted", store, within=10)
    assert (state.children["total"], state.state, state.cancel_requested) == (0, "finished", True)


def test_a_full_disk_never_leaves_counts_the_sweep_cannot_mend(tmp_path: Path) -> None:
    """A FileStore child's count wrote its bucket, then the ledger's write failed (disk
    full): the bucket said failed, the ledger running, and the sweep (which trusts the
    bucket) never mended it: the group ran for ever. The bucket is now put back, the
    block's exit does not raise, a reader of the group is not failed by its sweep."""
    store = tracked.FileStore(tmp_path / "store")
    worker = spawn("full", str(tmp_path / "store"), "40")
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0 and out == "closed\n", err
    state = ended("full", store, within=30)
    assert state.children["failed"] == 40 and state.children["total"] == 40  # type: ignore[index]
    assert sorted(counted for _, counted in store.group_children("full")) == ["failed"] * 40


def test_a_forked_child_leaving_the_block_does_not_close_the_group(
    shared: tuple[str, tracked.Store],
) -> None:
    """A process forked inside the ``with`` block that runs out of it (a pre-forking
    server, a script) closed the group on its parent, whose next children were then
    refused. Only the process that made the group closes it."""
    _, store = shared
    with tracked.group("forked", store=store) as group:
        pid = os.fork()
        if pid == 0:  # the child leaves the block like the parent will, then exits
            try:
                with tracked.start("from-fork", store=store, group=group):
                    pass
                group.__exit__(None, None, None)
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        with tracked.start("after-fork", store=store, group=group):
            pass
        assert store.load("forked").in_progress  # type: ignore[union-attr]
    state = ended("forked", store, within=10)
    assert (state.state, state.children["finished"]) == ("finished", 2)  # type: ignore[index]


def test_cancelling_an_ended_group_changes_nothing_it_reads(store: tracked.Store) -> None:
    """The ledger took the cancel mark after the end, and readers judge the end from
    the ledger: a ``failed`` group turned ``cancelled`` (and ``cancel_requested``)
    after the fact. A cancel of an ended group now changes nothing."""
    with tracked.group("over", store=store) as group:
        own = tracked.start("own", store=store, group=group)
        with pytest.raises(tracked.Cancelled), own:
            assert tracked.cancel("own", store=store)
            until_cancelled(own)
        tracked.start("bad", store=store, group=group).fail("broken")
    before = ended("over", store, within=10)
    assert (before.state, before.cancel_requested) == ("failed", False)
    assert tracked.cancel("over", store=store) is False
    after = store.load("over")
    assert after is not None
    assert (after.state, after.cancel_requested, after.error) == ("failed", False, before.error)


def test_a_child_whose_record_is_gone_or_taken_is_counted_abandoned(
    store: tracked.Store,
) -> None:
    """A running child whose record was deleted (or lost by a Redis restart) never
    reports its end, and one whose name a run outside the group took over reports
    another run's: the group waited for them for ever (a week). The sweep counts
    both abandoned."""
    store.group_sweep_window = 0.05  # type: ignore[misc]
    with tracked.group("lost", store=store) as group:
        gone = tracked.start("gone", store=store, group=group)
        taken = tracked.start("taken", store=store, group=group)
        assert store.delete("gone") and store.delete("taken")
        stranger = tracked.start("taken", store=store)  # no group
    state = ended("lost", store, within=10)
    assert state.children["abandoned"] == 2 and state.state == "failed"  # type: ignore[index]
    assert sorted(state.messages) == [
        "gone abandoned: its record is gone", "taken abandoned: its name holds another run",
    ]
    gone.finish()
    taken.finish()
    stranger.finish()
    assert store.load("lost").children["abandoned"] == 2  # type: ignore[union-attr]


_OPENS: list[str] = []
_COUNTING: list[int] = []  # the thread whose opens are counted (none: not counting)


def _count_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _COUNTING and threading.get_ident() == _COUNTING[0]:
        _OPENS.append(str(args[0]))


sys.addaudithook(_count_opens)


def _operations(store: tracked.Store, url: str, name: str) -> int:
    """What one ``load(name)`` costs: files opened (FileStore), or script calls the
    real redis-server ran (fewest of five tries: other threads only add)."""
    if not url.startswith("redis"):
        _OPENS.clear()
        _COUNTING.append(threading.get_ident())
        try:
            assert store.load(name) is not None
        finally:
            _COUNTING.clear()
        return len(_OPENS)
    import redis

    server = redis.Redis.from_url(url)

    def calls() -> int:  # script calls: a store's every read is one
        stats = server.info("commandstats")
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    tries = []
    for _ in range(5):
        before = calls()
        assert store.load(name) is not None
        tries.append(calls() - before)
    server.close()
    return min(tries)


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_reading_a_group_is_one_store_operation_whatever_its_children(
    kind: str, make_store_url: Callable[[str], str],
) -> None:
    """Issue 21: FileStore one file read, Redis one round trip, with 0, 1 and 30
    children running or ended (fails on the first implementation: two each)."""
    url = make_store_url(kind)
    store = tracked.open_store(url)
    with tracked.start("plain", store=store):
        plain = _operations(store, url, "plain")
    assert plain == 1
    with tracked.group("few", store=store) as group:
        store.load("few")  # its first sweep, and Redis loads the script
        assert _operations(store, url, "few") == 1  # no child
        running = [tracked.start(f"kid-{i}", store=store, group=group) for i in range(30)]
        assert _operations(store, url, "few") == 1
        for handle in running[:20]:
            handle.finish()
        state = store.load("few")
        assert state is not None and state.children["running"] == 10  # type: ignore[index]
        assert _operations(store, url, "few") == 1
        for handle in running[20:]:
            handle.finish()
    ended("few", store, within=10)
    assert _operations(store, url, "few") == 1
    store.close()
