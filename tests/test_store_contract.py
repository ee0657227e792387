"""The Store contract, proven for every store: memory, file and Redis."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

import tracked
from tracked import AlreadyRunning, RunSuperseded, State, Store
from tracked._store import Owner


def running(name: str = "job", **changes: object) -> State:
    now = time.time()
    return dataclasses.replace(
        State(name=name, start_time=now, current_time=now),
        **changes,  # type: ignore[arg-type]
    )


def held_owner() -> Owner:
    """An owner that this process really holds, as ``Progress.claim`` makes one."""
    from tracked._store import register_live_run

    owner = Owner.for_this_process()
    register_live_run(owner.run)
    return owner


def test_a_claimed_state_loads_back_equal(store: Store) -> None:
    state = running(messages=("a", "b"), message_count=2, count=3)
    store.claim(state, held_owner())
    assert store.load("job") == state


def test_an_unknown_name_loads_as_none(store: Store) -> None:
    assert store.load("nothing here") is None


def test_claiming_a_live_running_name_raises_and_leaves_the_record(store: Store) -> None:
    first = running(total=200)
    store.claim(first, held_owner())
    with pytest.raises(AlreadyRunning, match="job"):
        store.claim(running(total=5), held_owner())
    assert store.load("job") == first


def test_an_ended_name_can_be_claimed_again(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    store.save(running().ended("finished", time.time()), owner)
    again = running(total=7)
    store.claim(again, held_owner())
    assert store.load("job") == again


def test_saved_snapshots_replace_the_previous_one(store: Store) -> None:
    owner = held_owner()
    store.claim(running(), owner)
    store.save(running(count=42, messages=("x",), message_count=1), owner)
    loaded = store.load("job")
    assert loaded is not None and loaded.count == 42 and loaded.messages == ("x",)


def test_names_with_progress_ids_are_separate_records(store: Store) -> None:
    store.claim(running("job", progress_id="a", count=1), held_owner())
    store.claim(running("job", progress_id="b", count=2), held_owner())
    store.claim(running(None, progress_id="c", count=3), held_owner())
    counts = {s.key: s.count for s in store.list()}
    assert counts == {"job\0a": 1, "job\0b": 2, "c": 3}


@pytest.mark.parametrize("name", ["../../../etc/passwd", "ünïcødé ✓ 日本", "x" * 512, "a/b\\c"])
def test_any_valid_name_round_trips(store: Store, name: str) -> None:
    store.claim(running(name), held_owner())
    loaded = store.load(name)
    assert loaded is not None and loaded.name == name


def test_list_puts_running_progresses_first(store: Store) -> None:
    owner = held_owner()
    store.claim(running("old"), owner)
    store.save(running("old").ended("finished", time.time()), owner)
    store.claim(running("live"), held_owner())
    assert [s.name for s in store.list()] == ["live", "old"]


def test_delete_removes_a_record(store: Store) -> None:
    store.claim(running(), held_owner())
    assert store.delete("job") is True
    assert store.load("job") is None
    assert store.delete("job") is False


def test_prune_deletes_old_ended_records_and_never_running_ones(store: Store) -> None:
    owner = held_owner()
    long_ago = time.time() - 3600
    store.claim(running("ended-long-ago"), owner)
    store.save(running("ended-long-ago").ended("finished", long_ago), owner)
    store.claim(running("ended-just-now"), owner)
    store.save(running("ended-just-now").ended("failed", time.time()), owner)
    store.claim(running("running", start_time=long_ago, current_time=long_ago), held_owner())
    assert store.prune(older_than=60) == 1
    assert sorted(s.name or "" for s in store.list()) == ["ended-just-now", "running"]


def test_a_progress_runs_end_to_end_through_the_public_api(store: Store) -> None:
    with tracked.start("api", total=3, store=store) as progress:
        progress.increment(1, "one")
        assert tracked.is_running("api", store=store)
    state = tracked.load("api", store=store)
    assert state is not None
    assert (state.count, state.messages, state.state, state.in_progress) == (
        1,
        ("one",),
        "finished",
        False,
    )
    assert not tracked.is_running("api", store=store)


# ------------------------------------------------------------------ kept messages

CAP = 10


@pytest.mark.parametrize("added", [0, 1, CAP // 2, CAP // 2 + 1, CAP - 1, CAP, CAP + 1, 10 * CAP])
def test_the_last_max_messages_are_kept_and_every_one_is_counted(store: Store, added: int) -> None:
    with tracked.start("kept", total=None, max_messages=CAP, store=store) as progress:
        for i in range(added):
            progress.add_message(f"m{i}")
        progress.flush()
        running_state = store.load("kept")
    final = store.load("kept")
    expected = tuple(f"m{i}" for i in range(max(0, added - CAP), added))
    for state in (running_state, final):
        assert state is not None
        assert (state.messages, state.message_count) == (expected, added)


# ------------------------------------------------------------------ one run per record


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_save_over_another_runs_record_raises_run_superseded_and_leaves_it(
    make_store_url: Callable[[str], str], kind: str
) -> None:
    store = tracked.open_store(make_store_url(kind))
    old, new = held_owner(), held_owner()
    store.claim(running(count=1), old)
    store.save(running(count=2).ended("finished", time.time()), old)
    store.claim(running(count=3), new)
    with pytest.raises(RunSuperseded, match="job"):
        store.save(running(count=4).ended("finished", time.time()), old)
    state = store.load("job")
    assert state is not None and (state.count, state.in_progress) == (3, True)
    store.save(running(count=5), new)
    state = store.load("job")
    assert state is not None and state.count == 5


def test_after_a_delete_and_a_new_claim_the_older_runs_write_is_refused(store: Store) -> None:
    """The older run is still live (its owner holds it) when its record is deleted and
    the name claimed anew: its next write raises ``RunSuperseded`` and leaves the newer
    record. (FileStore's race of the same steps, in real processes, is in
    tests/test_processes.py.)"""
    old, new = held_owner(), held_owner()
    store.claim(running(count=1), old)
    assert store.delete("job")
    store.claim(running(count=2, total=9), new)
    with pytest.raises(RunSuperseded, match="job"):
        store.save(running(count=3), old)
    state = store.load("job")
    assert state is not None and (state.count, state.total, state.in_progress) == (2, 9, True)
