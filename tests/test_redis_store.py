"""RedisStore against a real redis-server: machines, leases, faults, races, events, TTLs.

The behaviour every store shares is proven in test_store_contract.py; this file
covers what only a store shared across machines has.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import tracked
from tracked import State, StoreError
from tracked._store import Owner
from tracked.redis import RedisStore

from .conftest import ROOT, RedisServer, free_port

WORKERS = str(ROOT / "tests" / "redis_workers.py")


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    opened = RedisStore(redis_url)
    yield opened
    opened.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:  # type: ignore[type-arg]
    raw = redis.Redis.from_url(redis_url)
    yield raw
    raw.close()


def machine(host: str, *args: str) -> subprocess.Popen[str]:
    """A worker process that identifies as host ``host``."""
    return subprocess.Popen(
        [sys.executable, WORKERS, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TRACKED_HOST_ID": host},
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"worker exited early: {process.wait()} {process.stderr.read()}")
    return line.strip()


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def running(name: str = "job", **changes: Any) -> State:
    now = time.time()
    return dataclasses.replace(State(name=name, start_time=now, current_time=now), **changes)


# ----------------------------------------------------------------------------- machines


def test_killed_owner_on_another_machine_reads_as_abandoned_within_lease(
    redis_url: str,
) -> None:
    lease = 1.0
    owner = machine("machine-a", "hold", redis_url, "job", str(lease))
    watcher = None
    try:
        assert read_line(owner) == "claimed"
        watcher = machine("machine-b", "watch", redis_url, "job", str(lease))
        assert read_line(watcher) == "sees running"
        # Idle for well over two leases: the owner's flusher keeps renewing it.
        reader = RedisStore(redis_url, lease=lease)
        deadline = time.monotonic() + 2.5 * lease
        while time.monotonic() < deadline:
            state = reader.load("job")
            assert state is not None and state.state == "running"
            time.sleep(0.05)
        record = reader.read("job")
        assert record is not None and record.owner is not None
        assert record.owner.host == "machine-a"
        killed_at = time.time()
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert watcher.stdin is not None
        watcher.stdin.write("go\n")
        watcher.stdin.flush()
        word, seen_at = read_line(watcher).split()
        assert word == "abandoned"
        assert float(seen_at) - killed_at <= lease + 1.0
        assert read_line(watcher) == "restarted"
        assert watcher.wait(timeout=10) == 0
        record = reader.read("job")
        assert record is not None and record.owner is not None
        assert (record.state.state, record.state.count, record.owner.host) == (
            "finished",
            1,
            "machine-b",
        )
        reader.close()
    finally:
        for process in (owner, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_racing_starters_on_eight_machines_have_exactly_one_winner_each_round(
    redis_url: str, store: RedisStore
) -> None:
    parties, rounds = 8, 30
    racers = [
        machine(f"racer-{i}", "race", redis_url, "race", str(rounds), str(parties))
        for i in range(parties)
    ]
    try:
        outcomes = []
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            assert racer.returncode == 0, err
            outcomes.append(json.loads(out))
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [o["errors"] for o in outcomes] == [[]] * parties
    for round_ in range(rounds):
        winners = [i for i, o in enumerate(outcomes) if round_ in o["won"]]
        losers = [i for i, o in enumerate(outcomes) if round_ in o["lost"]]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert len(losers) == parties - 1
        record = store.read(f"race-{round_}")
        assert record is not None and record.owner is not None
        assert record.owner.host == f"racer-{winners[0]}"


def test_a_stalled_owner_that_lost_its_lease_cannot_overwrite_the_new_owner(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url, lease=0.3)
    stalled, fresh = Owner.for_this_process(), Owner.for_this_process()
    store.claim(running(count=1), stalled)
    wait_until(lambda: store.load("job").state == "abandoned")  # type: ignore[union-attr]
    newer = running(count=2, total=9)
    store.claim(newer, fresh)
    with pytest.raises(StoreError, match="started again"):
        store.save(running(count=99), stalled)
    assert store.load("job") == newer
    store.close()


def test_an_owner_whose_lease_lapsed_resumes_when_nobody_claimed_the_name(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url, lease=0.3)
    owner = Owner.for_this_process()
    store.claim(running(count=1), owner)
    wait_until(lambda: store.load("job").state == "abandoned")  # type: ignore[union-attr]
    resumed = running(count=2)
    store.save(resumed, owner)
    assert store.load("job") == resumed
    store.close()


# ----------------------------------------------------------------------------- faults


def test_a_run_survives_redis_restarting_and_its_final_state_is_in_redis(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_url)
    caplog.set_level(logging.WARNING, logger="tracked")
    try:
        with tracked.start("fault", total=15, store=store, min_interval=0) as progress:
            for i in range(5):
                progress.increment(1, f"m{i}")
            redis_server.stop()
            for i in range(5, 10):
                progress.increment(1, f"m{i}")
            redis_server.start()
            for i in range(10, 15):
                progress.increment(1, f"m{i}")
    finally:
        if redis_server.process is None:
            redis_server.start()
    reader = RedisStore(redis_url)
    state = reader.load("fault")
    assert state is not None
    assert (state.state, state.count) == ("finished", 15)
    assert state.messages == tuple(f"m{i}" for i in range(15))
    failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
    resumed = [r for r in caplog.records if "resumed" in r.getMessage()]
    assert (len(failures), len(resumed)) == (1, 1)
    assert redis_url.split("//")[1].split("/")[0] in failures[0].getMessage()
    reader.close()
    store.close()


def test_a_final_write_made_while_redis_is_down_lands_once_it_is_back(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    progress = tracked.start("late", total=2, store=store)
    progress.increment(2)
    try:
        redis_server.stop()
        progress.finish()
    finally:
        redis_server.start()
    state = wait_until(lambda: store.load("late"))
    assert (state.state, state.count) == ("finished", 2)
    store.close()


def test_an_unreachable_redis_raises_store_error_naming_the_address() -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        tracked.start("nowhere", store=store)
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        store.load("nowhere")


def test_an_unreachable_unix_socket_raises_store_error_naming_the_path(tmp_path: Any) -> None:
    path = tmp_path / "no-redis.sock"
    store = RedisStore(f"unix://{path}")
    with pytest.raises(StoreError, match=str(path)):
        tracked.start("nowhere", store=store)


@pytest.mark.parametrize(
    "template",
    ["redis://user:s3cret@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=s3cret"],
)
def test_error_messages_never_show_the_password(template: str) -> None:
    port = free_port()
    store = RedisStore(template.format(port=port))
    with pytest.raises(StoreError) as caught:
        store.load("x")
    assert "s3cret" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in repr(store)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "http://127.0.0.1:6379/0"])
def test_a_malformed_url_raises_store_error_at_once(url: str) -> None:
    with pytest.raises(StoreError, match="Redis store"):
        RedisStore(url)


# ----------------------------------------------------------------------------- wire


def test_every_write_publishes_the_new_state_on_the_events_channel(
    store: RedisStore,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    assert store.channel("events") == "tracked:events:events"
    pubsub = client.pubsub()
    pubsub.subscribe(store.channel("events"))
    wait_until(lambda: pubsub.get_message(timeout=0.1))  # the subscribe confirmation
    with tracked.start("events", total=3, store=store, min_interval=0) as progress:
        progress.increment(1, "a")
        progress.increment(1, "b", "c")
        progress.increment(1)
    events: list[dict[str, Any]] = []
    while not events or events[-1]["in_progress"]:
        message = wait_until(lambda: pubsub.get_message(timeout=0.1))
        events.append(json.loads(message["data"]))
    pubsub.close()
    assert [e["count"] for e in events] == [0, 1, 2, 3, 3]
    assert [e["messages"] for e in events] == [[], ["a"], ["b", "c"], [], []]
    final = tracked.load("events", store=store)
    assert final is not None
    assert events[-1] == {**final.to_dict(), "messages": []}


def test_messages_are_appended_and_capped_in_a_redis_list(
    store: RedisStore,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    with tracked.start("msgs", store=store, min_interval=0, max_messages=5) as progress:
        for i in range(12):
            progress.add_message(f"m{i}")
        state = store.load("msgs")
        assert state is not None
        assert (state.messages, state.message_count) == (progress.messages, 12)
        assert client.llen(store.messages_key("msgs")) == 5
    final = store.load("msgs")
    assert final is not None and final.messages == tuple(f"m{i}" for i in range(7, 12))


def test_snapshots_that_rewrite_earlier_messages_are_stored_as_given(store: RedisStore) -> None:
    owner = Owner.for_this_process()
    store.claim(running(messages=("a",), message_count=1), owner)
    for messages, count in [(("b",), 1), (("b", "c", "d"), 3), (("c", "d", "e"), 4), ((), 4)]:
        snapshot = running(messages=messages, message_count=count)
        store.save(snapshot, owner)
        assert store.load("job") == snapshot


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: round trips and bytes."""

    sends = 0
    sent_bytes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (bytes, str)) else command
        CountingConnection.sends += 1
        CountingConnection.sent_bytes += sum(len(c) for c in chunks)
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted_store(redis_server: RedisServer, redis_url: str) -> Iterator[RedisStore]:
    """A RedisStore whose connections count their sends, warmed up on one record."""
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, connection_class=CountingConnection
    )
    store = RedisStore(redis.Redis(connection_pool=pool))
    store.claim(running("warm-up"), Owner.for_this_process())
    store.load("warm-up")  # the scripts are loaded and a connection is open
    yield store
    pool.disconnect()


def test_a_write_and_a_read_take_one_round_trip_each(counted_store: RedisStore) -> None:
    owner = Owner.for_this_process()
    counted_store.claim(running(messages=("a",), message_count=1), owner)
    before = CountingConnection.sends
    counted_store.save(running(count=5, messages=("a", "b"), message_count=2), owner)
    assert CountingConnection.sends - before == 1
    before = CountingConnection.sends
    assert counted_store.load("job") is not None
    assert CountingConnection.sends - before == 1


def test_a_write_sends_only_the_messages_added_since_the_previous_one(
    counted_store: RedisStore,
) -> None:
    owner = Owner.for_this_process()
    kept = tuple(f"message {i:03d} " + "x" * 90 for i in range(500))  # about 50 kB
    counted_store.claim(running(messages=kept, message_count=500), owner)
    before = CountingConnection.sent_bytes
    one_more = running(messages=(*kept[1:], "the new one"), message_count=501)
    counted_store.save(one_more, owner)
    assert CountingConnection.sent_bytes - before < 2_000
    assert counted_store.load("job") == one_more


# ----------------------------------------------------------------------------- expiry


def test_finished_records_expire_after_finished_ttl(
    redis_url: str,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    store = RedisStore(redis_url, finished_ttl=60, lease=2)
    progress = tracked.start("ttl", store=store)
    progress.add_message("hello")
    progress.flush()
    assert 60_000 < client.pttl(store.record_key("ttl")) <= 62_000
    assert 0 < client.pttl(store.lease_key("ttl")) <= 2_000
    progress.finish()
    assert 0 < client.pttl(store.record_key("ttl")) <= 60_000
    assert 0 < client.pttl(store.messages_key("ttl")) <= 60_000
    assert client.exists(store.lease_key("ttl")) == 0
    short = RedisStore(redis_url, finished_ttl=0.3)
    with tracked.start("short", store=short):
        pass
    wait_until(lambda: short.load("short") is None)
    store.close()
    short.close()


def test_a_running_record_does_not_expire_while_its_lease_is_renewed(redis_url: str) -> None:
    store = RedisStore(redis_url, finished_ttl=0.5, lease=1.0)
    with tracked.start("kept", store=store):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            state = store.load("kept")
            assert state is not None and state.state == "running"
            time.sleep(0.05)
    store.close()


def test_prune_removes_abandoned_records_once_old_enough(redis_url: str) -> None:
    store = RedisStore(redis_url, lease=0.2)
    long_ago = time.time() - 3600
    store.claim(
        running("gone", start_time=long_ago, current_time=long_ago), Owner.for_this_process()
    )
    wait_until(lambda: store.load("gone").state == "abandoned")  # type: ignore[union-attr]
    assert store.prune(older_than=60) == 1
    assert store.load("gone") is None
    store.close()


def test_records_ignore_other_prefixes_and_foreign_keys(
    redis_url: str,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    mine = RedisStore(redis_url, prefix="app1:")
    theirs = RedisStore(redis_url, prefix="app2:")
    mine.claim(running("a"), Owner.for_this_process())
    theirs.claim(running("b"), Owner.for_this_process())
    client.set("app1:rec:junk", "not a record")
    assert [s.name for s in mine.list()] == ["a"]
    assert [s.name for s in theirs.list()] == ["b"]
    mine.close()
    theirs.close()


# ----------------------------------------------------------------------------- selection


def test_tracked_store_environment_variable_selects_redis(
    redis_url: str,
    client: redis.Redis,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACKED_STORE", redis_url)
    tracked.configure(store=None)
    chosen = tracked.default_store()
    assert isinstance(chosen, RedisStore)
    with tracked.start("from-env"):
        pass
    assert client.exists("tracked:rec:from-env") == 1
    tracked.configure(store=None)
    chosen.close()


def test_configure_with_a_redis_url_selects_redis(
    redis_url: str,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    tracked.configure(store=redis_url)
    chosen = tracked.default_store()
    assert isinstance(chosen, RedisStore) and chosen.address == redis_url
    with tracked.start("from-configure"):
        pass
    assert client.exists("tracked:rec:from-configure") == 1
    assert tracked.RedisStore is RedisStore
    tracked.configure(store=None)
    chosen.close()


def test_an_existing_client_is_used_and_left_open(
    redis_url: str,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    store = RedisStore(client, prefix="mine:")
    store.claim(running("c"), Owner.for_this_process())
    store.close()
    assert client.exists("mine:rec:c") == 1


def test_a_foreign_value_under_a_record_key_reads_as_corrupt_and_is_replaced_by_a_claim(
    store: RedisStore,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    client.set(store.record_key("job"), "not a record")
    with pytest.raises(StoreError, match="corrupt"):
        store.read("job")
    fresh = running(count=3)
    store.claim(fresh, Owner.for_this_process())
    assert store.load("job") == fresh


def test_messages_of_any_text_round_trip_through_the_server_side_json(store: RedisStore) -> None:
    odd = ("ünïcødé ✓ 日本", 'a "quote" and a \\', "new\nline\ttab\x01\x7f", "</script>/", "😀", "")
    state = running(messages=odd, message_count=len(odd))
    store.claim(state, Owner.for_this_process())
    assert store.load("job") == state
    assert store.list() == [state]


def test_list_reads_every_record_beyond_one_scan_batch(store: RedisStore) -> None:
    owner = Owner.for_this_process()
    names = {f"n{i}" for i in range(450)}
    for name in names:
        store.claim(running(name), owner)
    assert {s.name for s in store.list()} == names
