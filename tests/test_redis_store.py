"""RedisStore against a real redis-server: machines, leases, faults, races, events, TTLs.

The behaviour every store shares is proven in test_store_contract.py; this file
covers what only a store shared across machines has.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
import redis
import redis.cluster

import tracked
from tracked import InvalidValue, State, StoreError
from tracked._store import Owner
from tracked.errors import RunSuperseded
from tracked.redis import RedisStore

from .conftest import ROOT, RedisCluster, RedisServer, free_port

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


def stored_state(store: RedisStore, key: str) -> State | None:
    """The state as written, before liveness is judged: with leases of a fraction of a
    second, a stall of the loaded machine could make ``load()`` read it abandoned."""
    record = store.read(key)
    return None if record is None else record.state


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


def race(url: str, parties: int, rounds: int) -> None:
    """``parties`` machines start ``race-<round>`` together, ``rounds`` times: each
    round has exactly one winner, whose record the store holds."""
    racers = [
        machine(f"racer-{i}", "race", url, "race", str(rounds), str(parties))
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
    store = RedisStore(url)
    for round_ in range(rounds):
        winners = [i for i, o in enumerate(outcomes) if round_ in o["won"]]
        losers = [i for i, o in enumerate(outcomes) if round_ in o["lost"]]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        assert len(losers) == parties - 1
        record = store.read(f"race-{round_}")
        assert record is not None and record.owner is not None
        assert record.owner.host == f"racer-{winners[0]}"
    store.close()


def test_racing_starters_on_eight_machines_have_exactly_one_winner_each_round(
    redis_url: str,
) -> None:
    race(redis_url, parties=8, rounds=30)


def test_racing_starters_on_a_cluster_have_exactly_one_winner_each_round(
    redis_cluster_url: str,
) -> None:
    race(redis_cluster_url, parties=4, rounds=15)


def test_a_stalled_owner_that_lost_its_lease_cannot_overwrite_the_new_owner(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url, lease=0.3)
    stalled, fresh = Owner.for_this_process(), Owner.for_this_process()
    store.claim(running(count=1), stalled)
    wait_until(lambda: store.load("job").state == "abandoned")  # type: ignore[union-attr]
    newer = running(count=2, total=9)
    store.claim(newer, fresh)
    with pytest.raises(RunSuperseded, match="started again"):
        store.save(running(count=99), stalled)
    assert stored_state(store, "job") == newer
    [refused] = store.save_many([(running(count=98), stalled)])
    assert isinstance(refused, RunSuperseded)
    assert stored_state(store, "job") == newer
    store.close()


def test_a_running_snapshot_arriving_after_the_final_one_is_refused(redis_url: str) -> None:
    """A late write of the same run (a flush racing the end) cannot bring an ended
    record back to running, where it would read as abandoned once the lease ran out."""
    store = RedisStore(redis_url)
    owner = Owner.for_this_process()
    store.claim(running(count=1), owner)
    final = running(count=3).ended("finished", time.time())
    store.save(final, owner)
    with pytest.raises(RunSuperseded, match="already ended"):
        store.save(running(count=2), owner)
    [late] = store.save_many([(running(count=2), owner)])
    assert isinstance(late, RunSuperseded)
    store.save(final, owner)  # rewriting the final state (a retried final write) is fine
    assert store.load("job") == final
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
    assert stored_state(store, "job") == resumed
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


def test_a_redis_url_without_redis_py_names_the_extra_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['redis'] = None  # as if redis-py were not installed\n"
        "import tracked\n"
        "for attempt in (lambda: tracked.RedisStore, lambda: tracked.open_store('redis://h/0')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.count("pip install 'tracked[redis]'") == 2
    cli = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from tracked.cli import main\n"
        "sys.exit(main(['--store', 'redis://h/0', 'list']))\n"
    )
    result = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'tracked[redis]'" in result.stderr


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


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("redis://127.0.0.1:notaport/0", "address is malformed"),
        ("redis://127.0.0.1:99999/0", "address is malformed"),
        ("redis://127.0.0.1:0/0", "port 0"),
        ("http://127.0.0.1:6379/0", "unknown scheme 'http'"),
        ("redis+unix:///tmp/r.sock", "unknown scheme 'redis+unix'"),
        ("redis:127.0.0.1", "no scheme://"),
        ("redis://127.0.0.1:6379/abc", "database 'abc' is not an integer"),
        ("redis://127.0.0.1:6379/-1", "database '-1' is not an integer"),
        ("redis://127.0.0.1:6379/1.5", "database '1.5' is not an integer"),
        ("redis://127.0.0.1:6379/0/extra", "database '0/extra'"),
        ("redis://127.0.0.1:6379/1?db=2", "database is given twice"),
        ("redis://127.0.0.1:6379/0?junk=1", "unknown option 'junk'"),
        ("redis://127.0.0.1:6379/0?junk", "not name=value pairs"),
        ("redis://127.0.0.1:6379/0?db=1&db=1", "option 'db' is given twice"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "'socket_timeout' has a value"),
        ("redis://127.0.0.1:6379/0?socket_timeout=", "'socket_timeout' has no value"),
        ("redis://127.0.0.1:6379/0?max_connections=0", "'max_connections' must be"),
        ("redis://127.0.0.1:6379/0?decode_responses=yes", "unknown option 'decode_responses'"),
        ("redis://127.0.0.1:6379/0?ssl_cert_reqs=none", "'ssl_cert_reqs' on a non-TLS URL"),
        ("redis://127.0.0.1:6379/0#frag", "fragment"),
        ("unix://", "socket path is missing"),
        ("unix:///tmp/r.sock?db=abc", "'db' has a value"),
        ("unix:///tmp/r.sock?db=-1", "'db' must be an integer >= 0"),
    ],
)
def test_a_url_tracked_cannot_read_fully_is_invalid_value_naming_the_part(
    url: str, part: str
) -> None:
    with pytest.raises(InvalidValue, match="Redis store") as caught:
        RedisStore(url)
    assert part in str(caught.value)
    if url.partition("://")[0] in ("redis", "unix"):  # open_store sends others elsewhere
        with pytest.raises(InvalidValue, match="Redis store"):  # TRACKED_STORE, --store
            tracked.open_store(url)


def test_a_database_path_that_is_not_a_number_never_writes_to_database_0(
    redis_url: str, client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    with pytest.raises(InvalidValue, match="'abc'"):
        tracked.start("job", store=redis_url.rsplit("/", 1)[0] + "/abc")
    assert client.keys("*") == []


class PrivateRedis:
    """A redis-server of this module's own: a password, an ACL user and a unix socket."""

    def __init__(self, directory: Any) -> None:
        self.port = free_port()
        self.socket = os.path.join(directory, "r.sock")
        self.process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(directory),
                "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--requirepass", "p@ss w",
                "--user", "worker", "on", ">s3cret", "~*", "&*", "+@all",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not os.path.exists(self.socket):
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis-private"))
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.mark.parametrize(
    "template",
    [
        "redis://:p%40ss%20w@127.0.0.1:{port}/3",
        "redis://worker:s3cret@127.0.0.1:{port}/4",
        "redis://127.0.0.1:{port}?db=5&password=p%40ss%20w&socket_timeout=2.5&timeout=3",
        "redis://worker:s3cret@127.0.0.1:{port}/",
        "unix://:p%40ss%20w@{socket}?db=6",
        "unix://worker:s3cret@{socket}",
    ],
)
def test_good_urls_with_a_password_a_user_a_database_or_a_unix_socket_work(
    private_redis: PrivateRedis, template: str
) -> None:
    url = template.format(port=private_redis.port, socket=private_redis.socket)
    with tracked.start("url-job", store=url) as progress:
        progress.total = 3
        progress.count = 2
    store = tracked.open_store(url)
    state = store.load("url-job")
    assert state is not None and state.state == "finished" and state.count == 2
    assert store.delete("url-job")
    assert "s3cret" not in repr(store) and "p@ss" not in repr(store)


def test_a_tls_url_keeps_its_tls_options() -> None:
    store = RedisStore("rediss://user:pw@127.0.0.1:6380/2?ssl_cert_reqs=none&ssl_check_hostname=false")
    client = store.client
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert pool.connection_kwargs["ssl_check_hostname"] is False


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
        event = json.loads(message["data"])
        if events and event["in_progress"] and not event["messages"]:
            if event["count"] == events[-1]["count"]:
                continue  # the flusher rewrote an unchanged running state (a lease renewal)
        events.append(event)
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
    """A real connection that counts what it sends: round trips and bytes, in all and
    by thread (a running handle's flusher thread writes on the same store)."""

    sends = 0
    sent_bytes = 0
    received_bytes = 0
    thread_sends: ClassVar[Counter[int]] = Counter()
    thread_received_bytes: ClassVar[Counter[int]] = Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks = [command] if isinstance(command, (bytes, str)) else command
        CountingConnection.sends += 1
        CountingConnection.thread_sends[threading.get_ident()] += 1
        CountingConnection.sent_bytes += sum(len(c) for c in chunks)
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().read_response(*args, **kwargs)
        size = len(repr(reply))  # about the bytes received
        CountingConnection.received_bytes += size
        CountingConnection.thread_received_bytes[threading.get_ident()] += size
        return reply


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
    client.set("app1:rec:{junk}", "not a record")
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
    assert client.exists("tracked:rec:{from-env}") == 1
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
    assert client.exists("tracked:rec:{from-configure}") == 1
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
    assert client.exists("mine:rec:{c}") == 1


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


def test_text_like_the_encoders_placeholder_for_messages_round_trips(store: RedisStore) -> None:
    odd = '"messages":"\x00messages\x00"'
    owner = Owner.for_this_process()
    store.claim(running(status=odd, messages=(odd,), message_count=1), owner)
    later = running(status=odd, error=odd, messages=(odd, odd), message_count=2)
    store.save(later, owner)
    assert store.load("job") == later


def test_list_reads_every_record_beyond_one_scan_batch(store: RedisStore) -> None:
    owner = Owner.for_this_process()
    names = {f"n{i}" for i in range(450)}
    for name in names:
        store.claim(running(name), owner)
    assert {s.name for s in store.list()} == names


# ----------------------------------------------------------------------------- odd text


def test_text_with_lone_surrogates_is_written_with_replacement_characters(
    store: RedisStore,
) -> None:
    """What ``os.listdir()`` returns for a file name that is not UTF-8 never fails a write."""
    odd = "caf\udce9.txt"
    owner = dataclasses.replace(Owner.for_this_process(), host="host-\udcff")
    store.claim(running(messages=(odd,), message_count=1), owner)
    store.save(running(status=odd, messages=(odd, "plain"), message_count=2), owner)
    ended = running(messages=(odd,), message_count=3).ended("failed", time.time(), error=odd)
    assert store.save_many([(ended, owner)]) == [None]
    record = store.read("job")
    assert record is not None and record.owner is not None
    assert record.state.messages == ("caf\ufffd.txt",)
    assert (record.state.error, record.owner.host) == ("caf\ufffd.txt", "host-\ufffd")


# ----------------------------------------------------------------------------- batches


def claimed(store: RedisStore, count: int) -> list[tuple[State, Owner]]:
    """``count`` running records claimed in ``store``, and a later snapshot of each."""
    writes = []
    for i in range(count):
        owner = Owner.for_this_process()
        store.claim(running(f"batch-{i}", messages=("first",), message_count=1), owner)
        later = running(f"batch-{i}", count=i, messages=("first", f"m{i}"), message_count=2)
        writes.append((later, owner))
    return writes


def test_save_many_sends_a_whole_batch_in_one_round_trip(counted_store: RedisStore) -> None:
    writes = claimed(counted_store, 1000)
    before = CountingConnection.sends
    assert counted_store.save_many(writes) == [None] * 1000
    assert CountingConnection.sends - before == 1
    for state, _ in writes[::111]:
        assert counted_store.load(state.key) == state


def test_save_many_of_nothing_sends_nothing(counted_store: RedisStore) -> None:
    before = CountingConnection.sends
    assert counted_store.save_many([]) == []
    assert CountingConnection.sends == before


def test_save_many_uses_one_connection_from_a_pool_of_one(redis_server: RedisServer) -> None:
    """A batch holds one pooled connection however large it is, so it cannot exhaust
    the pool (redis-py raises MaxConnectionsError past ``max_connections``)."""
    pool = redis.ConnectionPool(host="127.0.0.1", port=redis_server.port, max_connections=1)
    store = RedisStore(redis.Redis(connection_pool=pool))
    writes = claimed(store, 300)
    assert store.save_many(writes) == [None] * 300
    pool.disconnect()


def test_save_many_reports_each_write_on_its_own(redis_url: str) -> None:
    store = RedisStore(redis_url, lease=0.3)
    writes = claimed(store, 3)
    stalled = writes[1][1]
    wait_until(lambda: store.load("batch-1").state == "abandoned")  # type: ignore[union-attr]
    newer = running("batch-1", total=7)
    store.claim(newer, Owner.for_this_process())
    results = store.save_many(writes)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RunSuperseded) and "batch-1" in str(results[1])
    assert stored_state(store, "batch-1") == newer
    assert stalled.run != store.read("batch-1").owner.run  # type: ignore[union-attr]
    store.close()


def test_a_snapshot_that_cannot_be_written_fails_alone_in_its_batch(store: RedisStore) -> None:
    writes = claimed(store, 2)
    unnamed = (running(name=""), Owner.for_this_process())  # no key: InvalidName
    results = store.save_many([writes[0], unnamed, writes[1]])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], tracked.InvalidName)
    assert store.load("batch-1") == writes[1][0]


def test_save_many_resends_every_message_when_the_stored_list_is_not_its_own(
    redis_url: str,
) -> None:
    """Another writer (a second store object of the same owner) replaced the messages:
    the delta would be wrong, so the script refuses it and the write goes out whole."""
    mine, other = RedisStore(redis_url), RedisStore(redis_url)
    owner = Owner.for_this_process()
    mine.claim(running(messages=("a",), message_count=1), owner)
    other.save(running(messages=("x", "y"), message_count=2), owner)
    snapshot = running(count=3, messages=("a", "b", "c"), message_count=3)
    assert mine.save_many([(snapshot, owner)]) == [None]
    assert mine.load("job") == snapshot
    mine.close()
    other.close()


def test_save_many_against_an_unreachable_redis_reports_every_write_failed() -> None:
    port = free_port()
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    owner = Owner.for_this_process()
    results = store.save_many([(running("a"), owner), (running("b"), owner)])
    assert len(results) == 2
    for result in results:
        assert isinstance(result, StoreError) and not isinstance(result, RunSuperseded)
        assert f"127.0.0.1:{port}" in str(result)


def test_scripts_are_loaded_again_after_the_server_forgot_them(
    store: RedisStore,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    writes = claimed(store, 5)
    client.script_flush()
    assert store.save_many(writes) == [None] * 5
    client.script_flush()
    assert {s.name for s in store.list()} == {f"batch-{i}" for i in range(5)}
    client.script_flush()
    assert store.load("batch-0") == writes[0][0]


# ----------------------------------------------------------------------------- cluster


@pytest.fixture
def cluster_store(redis_cluster_url: str) -> Iterator[RedisStore]:
    opened = RedisStore(redis_cluster_url)
    yield opened
    opened.close()


def node_clients(cluster: RedisCluster) -> list[redis.Redis]:  # type: ignore[type-arg]
    return [redis.Redis(host="127.0.0.1", port=port) for port in cluster.ports]


BRACED_NAMES = ["}leading", "a{b}c", "{x}", "%7D", "}", "{", "a}b{c}", "100%"]


@pytest.mark.parametrize("name", BRACED_NAMES)
def test_names_with_braces_and_percents_work_on_a_cluster(
    cluster_store: RedisStore, name: str
) -> None:
    owner = Owner.for_this_process()
    state = running(name, messages=("a",), message_count=1)
    cluster_store.claim(state, owner)
    later = running(name, count=2, messages=("a", "b"), message_count=2)
    cluster_store.save(later, owner)
    assert cluster_store.load(name) == later
    assert [s.name for s in cluster_store.list()] == [name]
    assert cluster_store.delete(name) is True
    assert cluster_store.load(name) is None


def test_distinct_names_never_share_keys(cluster_store: RedisStore) -> None:
    names = [*BRACED_NAMES, "%257D", "}%7D", "job"]
    keys = {cluster_store.record_key(name) for name in names}
    assert len(keys) == len(names)
    assert cluster_store.record_key("deploy") == "tracked:rec:{deploy}"


def test_list_and_prune_reach_every_master(
    redis_cluster: RedisCluster, cluster_store: RedisStore
) -> None:
    owner = Owner.for_this_process()
    long_ago = time.time() - 3600
    for i in range(60):
        cluster_store.claim(running(f"old-{i}"), owner)
        cluster_store.save(running(f"old-{i}").ended("finished", long_ago), owner)
        cluster_store.claim(running(f"live-{i}"), owner)
    clients = node_clients(redis_cluster)
    assert all(c.dbsize() > 0 for c in clients)  # the records are spread over 3 masters
    assert len(cluster_store.list()) == 120
    assert cluster_store.prune(older_than=60) == 60
    assert sorted(s.name or "" for s in cluster_store.list()) == sorted(
        f"live-{i}" for i in range(60)
    )
    for c in clients:
        c.close()


def test_save_many_on_a_cluster_sends_one_batch_per_master(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    from redis.cluster import RedisCluster as ClusterClient

    client = ClusterClient(host="127.0.0.1", port=redis_cluster.ports[0])
    store = RedisStore(client)
    writes = claimed(store, 300)
    assert len(client.get_primaries()) == len(redis_cluster.ports)
    for node in client.get_primaries():  # each master's pool now makes counting connections
        pool = client.get_redis_connection(node).connection_pool
        pool.connection_class = CountingConnection
        pool.disconnect()
        pool.reset()  # drop the pooled connections: the next ones count
        client.get_redis_connection(node).ping()  # connected (and counted) before the batch
    before = CountingConnection.sends
    assert store.save_many(writes) == [None] * 300
    assert CountingConnection.sends - before == len(redis_cluster.ports)
    for state, _ in writes[::37]:
        assert store.load(state.key) == state
    store.close()
    client.ping()  # a client given to the store is left open
    client.close()


def test_a_cluster_reloads_its_scripts_after_a_master_forgot_them(
    redis_cluster: RedisCluster, cluster_store: RedisStore
) -> None:
    writes = claimed(cluster_store, 30)
    for c in node_clients(redis_cluster):
        c.script_flush()
        c.close()
    assert cluster_store.save_many(writes) == [None] * 30
    assert cluster_store.load("batch-3") == writes[3][0]


def test_a_superseded_write_on_a_cluster_raises_run_superseded(redis_cluster_url: str) -> None:
    store = RedisStore(redis_cluster_url, lease=0.3)
    stalled = Owner.for_this_process()
    store.claim(running(count=1), stalled)
    wait_until(lambda: store.load("job").state == "abandoned")  # type: ignore[union-attr]
    newer = running(count=2)
    store.claim(newer, Owner.for_this_process())
    with pytest.raises(RunSuperseded):
        store.save(running(count=99), stalled)
    assert stored_state(store, "job") == newer
    store.close()


def test_writes_on_a_cluster_are_sharded_events_in_the_records_slot(
    redis_cluster: RedisCluster, cluster_store: RedisStore
) -> None:
    assert cluster_store.sharded_pubsub  # redis-server >= 7.0 here
    subscriber = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[-1])
    pubsub = subscriber.pubsub()
    channels = [cluster_store.channel(f"n{i}") for i in range(10)]
    for i, channel in enumerate(channels):  # each in its record's slot
        assert subscriber.keyslot(channel) == subscriber.keyslot(cluster_store.record_key(f"n{i}"))
        pubsub.ssubscribe(channel)
    for i in range(10):  # ten names: some live on masters other than the subscriber's
        cluster_store.claim(running(f"n{i}", count=i), Owner.for_this_process())
    counts = set()
    while len(counts) < 10:
        message = wait_until(lambda: pubsub.get_sharded_message(timeout=0.1))
        if message["type"] == "smessage":
            counts.add(json.loads(message["data"])["count"])
    pubsub.close()
    subscriber.close()


def publish_counters(cluster: RedisCluster) -> list[int]:
    """Each master's count of pub/sub messages the cluster bus brought it."""
    counters = []
    for port in cluster.ports:
        node = redis.Redis(host="127.0.0.1", port=port)
        info = node.cluster("info")  # a counter appears once it is not 0
        counters.append(int(info.get("cluster_stats_messages_publish_received", 0)))
        node.close()
    return counters


def test_a_write_on_a_cluster_costs_the_other_masters_no_published_message(
    redis_cluster: RedisCluster, cluster_store: RedisStore
) -> None:
    owner = Owner.for_this_process()
    states = [running(f"spread-{i}") for i in range(60)]  # on every master
    before = publish_counters(redis_cluster)
    for state in states:
        cluster_store.claim(state, owner)
    for state in states:
        cluster_store.save(dataclasses.replace(state, count=1), owner)
    assert cluster_store.save_many(
        [(dataclasses.replace(state, count=2), owner) for state in states]
    ) == [None] * len(states)
    assert publish_counters(redis_cluster) == before


def test_a_status_stream_on_a_cluster_hears_sharded_writes(cluster_store: RedisStore) -> None:
    from tracked import _watch

    owner = Owner.for_this_process()
    cluster_store.claim(running("heard"), owner)
    subscription = _watch.subscribe(cluster_store, "heard")
    try:
        for count in range(1, 4):
            cluster_store.save(running("heard", count=count), owner)
            changed, state = subscription.wait(10)
            while changed and (state is None or state.count < count):
                if state is None:  # two wake-ups at once: read the store
                    state = cluster_store.load("heard")
                    if state is not None and state.count == count:
                        break
                changed, state = subscription.wait(10)
            assert changed and state is not None and state.count == count
    finally:
        subscription.close()


def test_tracked_store_environment_variable_selects_a_cluster(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.cluster import RedisCluster as ClusterClient

    monkeypatch.setenv("TRACKED_STORE", redis_cluster_url)
    tracked.configure(store=None)
    chosen = tracked.default_store()
    assert isinstance(chosen, RedisStore) and chosen.address == redis_cluster_url
    with tracked.start("from-env", total=2) as progress:
        progress.increment(2, "done")
    assert isinstance(chosen.client, ClusterClient)
    state = tracked.load("from-env")
    assert state is not None and (state.state, state.messages) == ("finished", ("done",))
    tracked.configure(store=None)
    chosen.close()


def test_an_unreachable_cluster_raises_store_error_naming_the_address() -> None:
    port = free_port()
    store = RedisStore(f"redis+cluster://user:s3cret@127.0.0.1:{port}")  # lazy: no error yet
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}") as caught:
        tracked.start("nowhere", store=store)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        store.load("nowhere")


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:notaport",
        "redis+cluster://user:s3cret@127.0.0.1:7000/1",
        "redis+cluster:///tmp/redis.sock",
        "rediss+cluster://:s3cret@",
        "redis+cluster://127.0.0.1:7000?socket_timeout=s3cret",
    ],
)
def test_a_malformed_cluster_url_raises_invalid_value_at_once(url: str) -> None:
    with pytest.raises(InvalidValue, match="Redis store") as caught:
        RedisStore(url)
    assert "s3cret" not in str(caught.value)


def test_a_cluster_node_given_as_a_plain_url_says_to_use_a_cluster_url(
    redis_cluster: RedisCluster,
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{redis_cluster.ports[0]}/0")
    owner = Owner.for_this_process()
    with pytest.raises(StoreError, match=r"redis\+cluster://"):
        for i in range(30):  # some of these names live on another master: MOVED
            store.claim(running(f"moved-{i}"), owner)
    store.close()


@pytest.mark.parametrize("prefix", ["a{", "a{}", "{", "x{}y{z}"])
def test_a_prefix_that_would_split_a_records_keys_across_slots_is_refused(
    redis_cluster_url: str, prefix: str
) -> None:
    with pytest.raises(InvalidValue, match="hash tag"):
        RedisStore(redis_cluster_url, prefix=prefix)


def test_a_prefix_with_its_own_hash_tag_keeps_every_record_in_one_slot(
    redis_cluster_url: str,
) -> None:
    store = RedisStore(redis_cluster_url, prefix="app{1}:")
    for name in ("a", "b", "}c"):
        store.claim(running(name), Owner.for_this_process())
    assert sorted(s.name or "" for s in store.list()) == ["a", "b", "}c"]
    store.close()


# ----------------------------------------------------------------------------- version


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_the_version_token_changes_exactly_when_the_loaded_state_may_change(
    make_store_url: Callable[[str], str], kind: str
) -> None:
    store = RedisStore(make_store_url(kind), lease=1.0)
    assert store.version("job") is None
    owner = Owner.for_this_process()
    store.claim(running(count=1), owner)
    first = store.version("job")
    assert first is not None and first == store.version("job")  # reading changes nothing
    store.save(running(count=2), owner)
    second = store.version("job")
    assert second not in (None, first)
    wait_until(lambda: store.load("job").state == "abandoned")  # type: ignore[union-attr]
    lapsed = store.version("job")  # no write: the owner's lease ran out
    assert lapsed not in (None, second)
    again = Owner.for_this_process()
    store.claim(running(count=1), again)  # a new run's first write
    third = store.version("job")
    assert third not in (None, first, second, lapsed)
    store.save(running().ended("finished", time.time()), again)
    assert store.version("job") not in (None, third)
    store.delete("job")
    assert store.version("job") is None
    store.close()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_record_deleted_and_written_again_by_the_same_run_never_repeats_a_token(
    make_store_url: Callable[[str], str], kind: str
) -> None:
    """A run's record deleted (``tracked delete``) and written again by the same run (its
    next save makes it anew; a queued run taken over after its record went claims it
    afresh under the same run id) starts the write counter again: the token must
    still differ from every earlier one, or a status route would answer with the
    body it rendered for another state. (Both read ``<run>:1:live``.)"""
    store = RedisStore(make_store_url(kind))
    owner = Owner.for_this_process()
    seen = {}
    store.claim(running(count=1), owner)
    seen[store.version("job")] = 1
    for count in (2, 3):
        store.delete("job")
        store.save(running(count=count), owner)
        token = store.version("job")
        assert token not in seen, (token, seen)
        seen[token] = count
    store.delete("job")
    store.claim(running(count=4), owner)
    assert store.version("job") not in seen
    store.close()


def test_a_foreign_value_under_a_record_key_makes_version_raise_corrupt(
    store: RedisStore,
    client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    client.set(store.record_key("job"), "not a record")
    with pytest.raises(StoreError, match="corrupt"):
        store.version("job")


def test_a_run_on_a_cluster_survives_the_cluster_restarting(
    redis_cluster: RedisCluster, redis_cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_cluster_url)
    caplog.set_level(logging.WARNING, logger="tracked")
    try:
        with tracked.start("fault", total=12, store=store, min_interval=0) as progress:
            for i in range(4):
                progress.increment(1, f"m{i}")
            redis_cluster.stop()
            for i in range(4, 8):
                progress.increment(1, f"m{i}")
            redis_cluster.restart()  # every master is back, empty
            for i in range(8, 12):
                progress.increment(1, f"m{i}")
    finally:
        if not redis_cluster.processes:
            redis_cluster.restart()
    state = RedisStore(redis_cluster_url).load("fault")
    assert state is not None
    assert (state.state, state.count) == ("finished", 12)
    assert state.messages == tuple(f"m{i}" for i in range(12))
    failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(failures) == 1 and redis_cluster_url in failures[0].getMessage()
    store.close()


def test_save_many_follows_a_record_whose_slot_moved_to_another_master(
    redis_cluster: RedisCluster, cluster_store: RedisStore
) -> None:
    """The store's slot table is stale after a resharding: the batch's write for the
    moved record gets MOVED from its old master and lands on the new one."""
    from redis.crc import key_slot

    writes = claimed(cluster_store, 20)
    moved = writes[7][0].key
    keys = [k(moved) for k in (cluster_store.record_key, cluster_store.messages_key)]
    keys.append(cluster_store.lease_key(moved))
    slot = key_slot(keys[0].encode())
    nodes = node_clients(redis_cluster)
    [source] = [c for c in nodes if c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0]
    target = next(c for c in nodes if c is not source)
    source_id, target_id = (_text(c.execute_command("CLUSTER", "MYID")) for c in (source, target))
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    port = target.connection_pool.connection_kwargs["port"]
    source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
    for c in nodes:
        c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    stale = cluster_store.client.get_node_from_key(keys[0])
    assert stale.port == source.connection_pool.connection_kwargs["port"]  # not told yet
    assert cluster_store.save_many(writes) == [None] * 20
    counts = [c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) for c in (source, target)]
    assert counts == [0, 3]
    for state, _ in writes:
        assert cluster_store.load(state.key) == state
    for c in nodes:
        c.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ----------------------------------------------------------------------------- bursts


class Collected(logging.Handler):
    """Every record the ``tracked`` logger emits (at WARNING or above) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def pause_writes(store: RedisStore, milliseconds: int) -> None:
    """Hold every write on the store's server(s) for a moment, as a busy or failing-over
    Redis does: the burst's threads all wait inside a command at once."""
    client: Any = store.client
    if isinstance(client, redis.cluster.RedisCluster):
        primaries = redis.cluster.RedisCluster.PRIMARIES
        client.execute_command("CLIENT", "PAUSE", milliseconds, "WRITE", target_nodes=primaries)
    else:
        client.execute_command("CLIENT", "PAUSE", milliseconds, "WRITE")


def burst(url: str, jobs: int, *, prefix: str = "burst") -> tuple[list[str], RedisStore]:
    """``jobs`` threads of one process start at once, then all end at once, each burst
    meeting a server that holds writes for a second; the warnings logged meanwhile, and
    the store they used."""
    store = RedisStore(url)
    store.load("warm-up")  # connected (a cluster client maps its slots)

    def pause() -> None:
        pause_writes(store, 1000)

    started = threading.Barrier(jobs, action=pause)
    ended = threading.Barrier(jobs, action=pause)
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            started.wait(60)
            progress = tracked.start(f"{prefix}-{i}", store=store, total=1)
            ended.wait(60)
            progress.count = 1
            progress.finish()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    handler = Collected()
    logging.getLogger("tracked").addHandler(handler)
    old_size = threading.stack_size(256 * 1024)
    try:
        threads = [threading.Thread(target=job, args=(i,)) for i in range(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        threading.stack_size(old_size)
        logging.getLogger("tracked").removeHandler(handler)
    assert errors == [], errors[:3]
    return handler.messages, store


#: Runs ``burst`` in a process of its own (its flusher and pool are its own, whatever
#: earlier tests left), and prints its warnings and errors as JSON.
BURST = """
import json, sys
from tests.test_redis_store import burst
try:
    warnings, store = burst(sys.argv[1], int(sys.argv[2]))
    errors = []
except AssertionError as exc:
    warnings, errors = [], [str(exc)[:500]]
print(json.dumps({"warnings": warnings[:20], "count": len(warnings), "errors": errors}))
"""


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_3000_simultaneous_starts_and_ends_in_one_process_never_run_the_pool_dry(
    make_store_url: Callable[[str], str], kind: str
) -> None:
    jobs, url = 3000, make_store_url(kind)
    result = subprocess.run(
        [sys.executable, "-c", BURST, url, str(jobs)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == [] and report["count"] == 0, report
    store = RedisStore(url)
    states = {record.state.key: record.state for record in store.records()}
    assert len(states) == jobs
    assert all(s.state == "finished" and s.count == 1 for s in states.values())
    store.close()


# ----------------------------------------------------------------------------- read cache

#: A writer in another process: each line on stdin is a round; it writes that count (and
#: every 7th round a message), then prints the round once the write has returned.
FRESH_WRITER = """
import sys, tracked
progress = tracked.start("fresh", store=sys.argv[1], min_interval=0, max_messages=5)
print("ready", flush=True)
for line in sys.stdin:
    i = int(line)
    if i < 0:
        break
    if i % 7 == 0:
        progress.increment(1, f"message {i}")
    else:
        progress.count += 1
    print(i, flush=True)
progress.finish()
print("done", flush=True)
"""


def wsgi_get(app: Any, path: str, query: str = "") -> tuple[str, dict[str, Any]]:
    """GET ``path`` from a WSGI app in this process: (status, JSON body)."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "",
               "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.input": io.BytesIO()}
    answer: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: answer.append(status))
    data = b"".join(body)
    return answer[0], json.loads(data)


def test_the_status_route_never_serves_a_state_older_than_a_write_another_process_made(
    redis_url: str,
) -> None:
    from tracked.wsgi import status_app

    app = status_app(RedisStore(redis_url))
    writer = subprocess.Popen(
        [sys.executable, "-c", FRESH_WRITER, redis_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    rounds, messages = 10_000, 0
    try:
        for i in range(1, rounds + 1):
            writer.stdin.write(f"{i}\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == f"{i}\n"
            messages += i % 7 == 0
            for _ in range(2):  # a read that renders, then one the cache may answer
                status, state = wsgi_get(app, "/fresh")
                assert status.startswith("200") and state["count"] == i, (i, state)
                assert state["message_count"] == messages
            if i % 50 == 0:  # a cursor past some messages: its own cache entry
                _, tail = wsgi_get(app, "/fresh", f"since={max(0, messages - 2)}")
                assert tail["count"] == i and tail["message_count"] == messages
        writer.stdin.write("-1\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "done\n"
        status, state = wsgi_get(app, "/fresh")
        assert state["state"] == "finished" and state["count"] == rounds
    finally:
        writer.kill()
        writer.wait()


def test_a_cached_status_read_moves_no_messages_however_many_are_kept(
    counted_store: RedisStore,
) -> None:
    from tracked.wsgi import status_app

    app = status_app(counted_store)
    with tracked.start("long", store=counted_store, max_messages=1000) as progress:
        for i in range(1000):
            progress.increment(1, f"step {i} done, with some text a real job writes")
        progress.flush()
        _, state = wsgi_get(app, "/long")
        assert len(state["messages"]) == 1000
        # This thread's reads only: the handle's flusher thread may renew its lease
        # meanwhile (it did once, under load, making 11 sends).
        here = threading.get_ident()
        received = CountingConnection.thread_received_bytes[here]
        before = CountingConnection.thread_sends[here]
        for _ in range(10):
            _, again = wsgi_get(app, "/long")
            assert again == state
        assert CountingConnection.thread_sends[here] - before == 10  # one round trip per read
        # a token, no messages:
        assert CountingConnection.thread_received_bytes[here] - received < 10 * 200


# ----------------------------------------------------------------------------- cancel polls


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_the_cancel_poll_of_many_runs_is_exact_across_mget_chunks(
    make_store_url: Callable[[str], str], kind: str
) -> None:
    from tracked.redis import CANCEL_CHUNK

    store = RedisStore(make_store_url(kind))
    owner = Owner.for_this_process()
    runs = []
    for i in range(CANCEL_CHUNK + 1):  # one more than a chunk: the boundary
        state = running(f"poll-{i}")
        store.claim(state, owner)
        runs.append((state.key, owner))
    asked = {0, CANCEL_CHUNK - 1, CANCEL_CHUNK}
    for i in asked:
        assert store.request_cancel(f"poll-{i}")
    other = Owner.for_this_process()  # another run of the same name asks nothing of this one
    assert store.cancels_requested(runs) == [i in asked for i in range(CANCEL_CHUNK + 1)]
    assert store.cancels_requested([(runs[0][0], other)]) == [False]
    assert store.cancels_requested([]) == []
    store.close()


def test_the_cancel_poll_of_a_single_redis_sends_one_command_per_chunk(
    redis_url: str, client: redis.Redis,  # type: ignore[type-arg]
) -> None:
    from tracked.redis import CANCEL_CHUNK

    store = RedisStore(redis_url)
    owner = Owner.for_this_process()
    runs = [(f"poll-{i}", owner) for i in range(CANCEL_CHUNK + 1)]
    client.config_resetstat()
    assert store.cancels_requested(runs) == [False] * len(runs)
    stats = client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 2 and "cmdstat_get" not in stats
    store.close()


def test_a_stream_on_a_cluster_hears_sharded_writes_again_after_the_cluster_restarts(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    from tracked import _watch

    store = RedisStore(redis_cluster_url)
    owner = Owner.for_this_process()
    names = [f"again-{i}" for i in range(6)]  # on every master
    subscriptions = {name: _watch.subscribe(store, name) for name in names}

    def heard(count: int) -> None:
        for name, subscription in subscriptions.items():
            store.save(running(name, count=count), owner)
            deadline = time.monotonic() + 15
            while True:
                assert time.monotonic() < deadline, f"{name} never heard count {count}"
                changed, state = subscription.wait(1.0)
                if changed and state is None:  # two wake-ups at once: read the store
                    state = store.load(name)
                if changed and state is not None and state.count == count:
                    break

    try:
        for name in names:
            store.claim(running(name), owner)
        heard(1)
        redis_cluster.restart()  # every master is back, its slots maybe elsewhere
        deadline = time.monotonic() + 20
        while True:  # the client finds the cluster again
            try:
                store.save(running(names[0]), owner)
                break
            except StoreError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        heard(2)
        time.sleep(1.0)
        for name, subscription in subscriptions.items():  # the wake-ups of the restart
            subscription.take()
            store.save(running(name, count=3), owner)  # heard as the published state
            changed, state = subscription.wait(5.0)
            assert changed and state is not None and state.count == 3, name
    finally:
        for subscription in subscriptions.values():
            subscription.close()
        if not redis_cluster.processes:
            redis_cluster.restart()
        store.close()
