"""One progress across processes: ``Progress.share()`` and ``tracked.join()``.

Real worker processes (``ProcessPoolExecutor``, ``multiprocessing``) add to a run
that the test process owns, through a real FileStore and a real redis-server.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import webtest
from redis.cluster import RedisCluster, key_slot

import tracked
from tests.conftest import SHARED_STORE_KINDS
from tracked._share import JoinedProgress
from tracked._store import SharedPart, merge_parts
from tracked.redis import RedisStore
from tracked.wsgi import status_app

WORKERS = 8
PER_WORKER = 10_000
FORK = multiprocessing.get_context("fork")
#: The stores whose runs other processes can join: conftest's shared kinds, and a
#: real 3-master Redis Cluster (a run's parts live in its record's slot).
SHARED_KINDS = [*SHARED_STORE_KINDS, "redis-cluster"]


@pytest.fixture(params=SHARED_KINDS)
def shared_store_url(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[str]:
    """The URL of an empty store that several processes share, of each shared kind
    (this module's: the cluster too)."""
    url = make_store_url(request.param)
    tracked.configure(store=url)
    yield url
    tracked.configure(store=None)


def add(token: tracked.ShareToken, n: int, message: str | None = None) -> int:
    """A pool task: join the shared run, count ``n`` items one by one, say so."""
    with tracked.join(token) as part:
        for _ in range(n):
            part += 1
        if message is not None:
            part.add_message(message)
    return n


def add_then_die(token: tracked.ShareToken, flushed: int, unflushed: int) -> None:
    """Count ``flushed`` items and write them, then ``unflushed`` more, then SIGKILL
    ourselves: no block exit, no atexit, no flusher write in between (the run's
    ``min_interval`` is long)."""
    part = tracked.join(token)
    part.flush()  # written once, so the next wake is due min_interval from now
    for _ in range(flushed):
        part += 1
    assert part.flush()
    for _ in range(unflushed):
        part += 1
    os.kill(os.getpid(), signal.SIGKILL)


def test_eight_worker_processes_add_exactly_to_one_progress(shared_store_url: str) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("shared-count", total=WORKERS * PER_WORKER + 3, store=store) as run:
        token = run.share()
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=FORK) as pool:
            tasks = [
                pool.submit(add, token, PER_WORKER, f"worker {i} done") for i in range(WORKERS)
            ]
            assert sum(task.result() for task in tasks) == WORKERS * PER_WORKER
        run += 3
        run.flush()
        running = tracked.load("shared-count", store=store)
        assert running is not None and running.in_progress
        assert running.count == WORKERS * PER_WORKER + 3  # readers add the parts
        assert running.message_count == WORKERS
    final = tracked.load("shared-count", store=store)
    assert final is not None and final.state == "finished"
    assert final.count == WORKERS * PER_WORKER + 3
    assert final.message_count == WORKERS
    assert sorted(final.messages) == sorted(f"worker {i} done" for i in range(WORKERS))
    assert run.count == final.count  # the owner's handle holds the folded final snapshot
    store.close()


def test_a_multiprocessing_pool_adds_to_the_progress_a_reader_lists(
    shared_store_url: str,
) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("pool-count", total=None, store=store) as run:
        token = run.share()
        with FORK.Pool(4) as pool:
            assert pool.starmap(add, [(token, 250)] * 4) == [250] * 4
        [listed] = [s for s in store.list() if s.name == "pool-count"]
        assert listed.in_progress and listed.count == 1000
    store.close()


def test_a_sigkilled_worker_loses_only_its_unflushed_part(shared_store_url: str) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("killed-worker", total=None, store=store, min_interval=60) as run:
        token = run.share()
        workers = [FORK.Process(target=add, args=(token, PER_WORKER)) for _ in range(WORKERS - 1)]
        killed = FORK.Process(target=add_then_die, args=(token, 5_000, 1_000))
        for process in [*workers, killed]:
            process.start()
        for process in [*workers, killed]:
            process.join(60)
        assert [p.exitcode for p in workers] == [0] * (WORKERS - 1)
        assert killed.exitcode == -signal.SIGKILL
        running = tracked.load("killed-worker", store=store)
        assert running is not None and running.count == (WORKERS - 1) * PER_WORKER + 5_000
    final = tracked.load("killed-worker", store=store)
    assert final is not None and final.count == (WORKERS - 1) * PER_WORKER + 5_000
    store.close()


def test_the_owners_end_ends_the_run_and_later_parts_are_dropped(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("ends-here", total=10, store=store) as run:
        token = run.share()
        part = tracked.join(token)
        part += 4
        assert part.flush()
    assert tracked.load("ends-here", store=store).count == 4  # type: ignore[union-attr]
    assert not store.parts_dir(run.key).exists()  # folded into the final record
    part += 100  # after the owner's end
    assert not part.flush()
    assert not part.in_progress
    assert part.state == "finished"
    final = tracked.load("ends-here", store=store)
    assert final is not None and final.count == 4 and final.state == "finished"
    assert not store.parts_dir(run.key).exists()


def test_joining_an_ended_progress_gives_an_inert_handle(shared_store_url: str) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("already-over", store=store) as run:
        token = run.share()
        run.cancel()
    with tracked.join(token) as late:
        assert not late.in_progress
        assert late.state == "cancelled"
        late += 7
        late.add_message("too late")
        assert not late.flush()
    final = tracked.load("already-over", store=store)
    assert final is not None and final.count == 0 and final.messages == ()
    store.close()


def test_a_later_run_of_the_same_name_never_receives_an_older_runs_parts(
    tmp_path: Path,
) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("again", store=store) as first:
        token = first.share()
    with tracked.start("again", store=store):
        stale = tracked.join(token)
        assert not stale.in_progress
        stale += 5
        assert not stale.flush()
        assert tracked.load("again", store=store).count == 0  # type: ignore[union-attr]


def _join_in_a_new_process(token: str, env: dict[str, str], *args: str, check: bool = True) -> str:
    """Join in a fresh interpreter (no fork: nothing inherited) whose store comes from
    its own configuration; print the handle's state after adding 2 and 7 messages."""
    code = (
        "import sys, tracked\n"
        "store = sys.argv[2] if len(sys.argv) > 2 else None\n"
        "with tracked.join(sys.argv[1], store=store) as part:\n"
        "    part.add_message(*[f'm{i}' for i in range(7)])\n"
        "    part += 2\n"
        "print(part.state)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, token, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()
    assert done.returncode != 0
    return done.stderr.strip().splitlines()[-1]


def test_a_share_token_is_a_short_str_and_a_worker_opens_its_own_store(
    shared_store_url: str,
) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("by-token", store=store, progress_id="job-7", max_messages=5) as run:
        token = run.share()
        assert isinstance(token, str) and len(token) < 256
        assert re.fullmatch(r"[A-Za-z0-9._-]+", token)  # safe in a URL, a header, JSON
        plain = json.loads(json.dumps({"token": token}))["token"]
        assert type(pickle.loads(pickle.dumps(token))) is str
        assert (tracked.ShareToken(plain).key, tracked.ShareToken(plain).run) == (
            run.key,
            run._owner.run,  # type: ignore[union-attr]
        )
        assert tracked.ShareToken(plain).max_messages == 5
        # no address in it: the worker's store comes from $TRACKED_STORE ...
        assert _join_in_a_new_process(plain, {"TRACKED_STORE": shared_store_url}) == "finished"
        # ... or from join(token, store=...)
        assert _join_in_a_new_process(plain, {"TRACKED_STORE": ""}, shared_store_url) == (
            "finished"
        )
        state = tracked.load("by-token", store=store, progress_id="job-7")
        assert state is not None
        assert state.count == 4 and state.message_count == 14
        assert state.messages == ("m2", "m3", "m4", "m5", "m6")  # the run's max_messages
    store.close()


def test_a_token_holds_no_address_and_no_password(redis_server: object, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.execute_command("ACL", "SETUSER", "sharer", "on", ">s3cret-pw", "~*", "&*", "+@all")
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    url = f"redis://sharer:s3cret-pw@{host_port}/0"
    store = RedisStore(url)
    with tracked.start("secret", store=store) as run:
        token = run.share()
        payload = base64.urlsafe_b64decode(token.split(".", 1)[1] + "==")
        for secret in (b"s3cret-pw", b"sharer", host_port.encode(), b"redis"):
            assert secret not in token.encode() and secret not in payload
        # a worker with the URL (and its password) from its own configuration joins
        assert _join_in_a_new_process(token, {"TRACKED_STORE": url}) == "finished"
        assert tracked.load("secret", store=store).count == 2  # type: ignore[union-attr]
    store.close()
    client.execute_command("ACL", "DELUSER", "sharer")
    client.close()


def test_a_worker_whose_store_is_not_the_tokens_is_told_how_to_give_it_one(
    tmp_path: Path,
) -> None:
    store = tracked.FileStore(tmp_path / "owner")
    with tracked.start("elsewhere", store=store) as run:
        token = run.share()
        with pytest.raises(tracked.StoreError, match=r"TRACKED_STORE|store=") as raised:
            tracked.join(str(token), store=tmp_path / "other")
        assert "elsewhere" in str(raised.value)
        env = {"TRACKED_STORE": str(tmp_path / "other")}
        said = _join_in_a_new_process(token, env, check=False)
    assert said.startswith("tracked.errors.StoreError: cannot join progress 'elsewhere'")
    assert "is not the store it was shared from" in said
    assert tracked.load("elsewhere", store=store).count == 0  # type: ignore[union-attr]


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, ("touch /tmp/tracked-share-pwned",))


@pytest.mark.parametrize(
    "crafted",
    [
        base64.b64encode(pickle.dumps(_Evil())).decode(),
        "tracked-share-1." + base64.urlsafe_b64encode(pickle.dumps(_Evil())).decode(),
        "",
        "tracked-share-1.",
        "tracked-share-1.!!!",
        "tracked-share-1." + "A" * 5000,
        "tracked-share-2.e30",
        "tracked-share-1." + base64.urlsafe_b64encode(b"[1, 2]").decode(),
        "tracked-share-1." + base64.urlsafe_b64encode(b'{"s": 1}').decode(),
        "tracked-share-1." + base64.urlsafe_b64encode(b"[" * 3000).decode(),  # nesting
    ],
)
def test_a_crafted_token_is_refused_and_runs_nothing(crafted: str, tmp_path: Path) -> None:
    with pytest.raises(tracked.InvalidValue, match="share token"):
        tracked.join(crafted, store=tmp_path)
    assert not os.path.exists("/tmp/tracked-share-pwned")


def _token_with(**changes: object) -> str:
    fields: dict[str, object] = {
        "s": "0" * 16,
        "r": "a" * 32,
        "n": "x",
        "p": None,
        "i": 0.1,
        "m": 10,
    }
    fields.update(changes)
    raw = json.dumps(fields).encode()
    return "tracked-share-1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "changes",
    [
        {"n": None, "p": None},  # neither name nor progress_id
        {"n": ""},
        {"n": "x" * 513},
        {"n": "a\x00b"},
        {"n": "\ud800"},
        {"p": "has space"},
        {"r": "../../etc"},
        {"s": "zz"},
        {"i": -1},
        {"i": float("nan")},
        {"i": True},
        {"m": -1},
        {"m": 1.5},
        {"m": 1 << 40},
        {"extra": 1},
    ],
)
def test_every_field_of_a_token_is_checked(changes: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(tracked.InvalidValue, match="share token"):
        tracked.join(_token_with(**changes), store=tmp_path)


def test_join_refuses_what_is_not_a_str(tmp_path: Path) -> None:
    for wrong in (None, b"tracked-share-1.e30", 3, {"token": "x"}):
        with pytest.raises(tracked.InvalidValue, match="share token"):
            tracked.join(wrong, store=tmp_path)  # type: ignore[arg-type]


def test_a_memory_store_is_joined_by_threads_and_refused_to_other_processes() -> None:
    store = tracked.MemoryStore()
    with tracked.start("in-memory", total=None, store=store) as run:
        token = run.share()

        def count() -> None:
            with tracked.join(token) as part:
                for _ in range(1000):
                    part += 1

        threads = [threading.Thread(target=count) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert tracked.load("in-memory", store=store).count == 4000  # type: ignore[union-attr]
        said = FORK.SimpleQueue()  # a forked child inherits the token without pickling
        child = FORK.Process(target=lambda: said.put(_join_inherited(token)))
        child.start()
        child.join(30)
        assert "can be joined only in that process" in said.get()
    assert run.count == 4000


def _join_inherited(token: tracked.ShareToken) -> str:
    try:
        tracked.join(token)
    except tracked.StoreError as exc:
        return str(exc)
    return "joined"


def test_a_forked_child_cannot_share_the_parents_run(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("not-yours", store=store) as run:
        said = FORK.SimpleQueue()
        child = FORK.Process(target=lambda: said.put(_share_inherited(run)))
        child.start()
        child.join(30)
        assert "only by the process that started it" in said.get()


def _share_inherited(run: tracked.Progress) -> str:
    try:
        run.share()
    except tracked.TrackedError as exc:
        return str(exc)
    return "shared"


def test_a_joined_handle_is_current_inside_its_block_and_leaves_the_run_running(
    tmp_path: Path,
) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("current", store=store) as run:
        with tracked.join(run.share()) as part:
            assert isinstance(part, JoinedProgress)
            assert tracked.current() is part
            tracked.current().increment(3, "from the worker")
        assert run.in_progress
        state = tracked.load("current", store=store)
        assert state is not None and state.in_progress
        assert state.count == 3 and state.messages == ("from the worker",)


def test_the_status_route_and_the_cli_show_the_workers_count_while_it_runs(
    shared_store_url: str,
) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("watched", total=2000, store=store) as run:
        token = run.share()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            assert list(pool.map(add, [token, token], [1000, 1000], ["a", "b"])) == [1000] * 2
        client = webtest.TestApp(status_app(store))
        wire = client.get("/watched").json
        assert (wire["count"], wire["in_progress"], wire["message_count"]) == (2000, True, 2)
        command = ["show", "watched", "--json", "--store", shared_store_url]
        shown = subprocess.run(
            [sys.executable, "-m", "tracked", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["count"] == 2000
    store.close()


def test_a_redis_store_made_from_a_client_is_found_by_forked_workers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix="from-client:")
    with tracked.start("client-made", total=None, store=store) as run:
        token = run.share()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            assert list(pool.map(add, [token, token], [300, 300])) == [300, 300]
        assert tracked.load("client-made", store=store).count == 600  # type: ignore[union-attr]
    client.close()


def _part(run: str, worker: str, count: int, *messages: str) -> SharedPart:
    return SharedPart(worker, run, count, len(messages), messages, 1000, 1.0)


def test_every_store_keeps_parts_per_run_and_refuses_them_once_the_run_ended(
    store: tracked.Store,
) -> None:
    with tracked.start("parts", store=store) as run:
        assert run._owner is not None
        mine = run._owner.run
        assert store.write_part(run.key, _part(mine, "w1", 5, "a"))
        assert store.write_part(run.key, _part(mine, "w1", 7, "a", "b"))  # replaces w1's
        assert store.write_part(run.key, _part(mine, "w2", 1))
        assert not store.write_part(run.key, _part("another-run", "w3", 100))
        assert sorted(p.count for p in store.read_parts(run.key, mine)) == [1, 7]
        assert store.read_parts(run.key, "another-run") == []
        state = store.load(run.key)
        assert state is not None and (state.count, state.message_count) == (8, 2)
        run.share()  # so its end folds the parts in
    assert not store.write_part(run.key, _part(mine, "w1", 9))
    assert store.read_parts(run.key, mine) == []
    final = store.load(run.key)
    assert final is not None and (final.count, final.messages) == (8, ("a", "b"))
    assert not store.write_part("never-started", _part(mine, "w1", 1))


def test_a_file_stores_prune_and_delete_remove_leftover_parts(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("left", store=store) as run:
        assert run._owner is not None
        assert store.write_part(run.key, _part(run._owner.run, "w1", 3))
    # not shared through share(), so its end left the part behind
    assert store.parts_dir(run.key).is_dir()
    assert store.load("left").count == 0  # type: ignore[union-attr]  # ended: parts not added
    store.prune(older_than=3600)
    assert not store.parts_dir(run.key).exists()
    with tracked.start("deleted", store=store) as other:
        assert other._owner is not None
        assert store.write_part(other.key, _part(other._owner.run, "w1", 3))
        assert store.delete(other.key)
        assert not store.parts_dir(other.key).exists()


def add_without_a_block(token: tracked.ShareToken, n: int) -> int:
    """A task that joins but never ends its handle: dropping it writes its part."""
    part = tracked.join(token)
    for _ in range(n):
        part.increment()
    return n


def test_a_joined_handle_dropped_without_its_block_still_writes_its_part(
    shared_store_url: str,
) -> None:
    store = tracked.open_store(shared_store_url)
    with tracked.start("no-block", total=None, store=store, min_interval=60) as run:
        token = run.share()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            assert sum(pool.map(add_without_a_block, [token] * 4, [250] * 4)) == 1000
        assert tracked.load("no-block", store=store).count == 1000  # type: ignore[union-attr]
    store.close()


class SlowPartStore(tracked.FileStore):
    """A FileStore whose part writes on the flusher thread take a while (a slow disk):
    the flusher then holds the last reference to a joined handle the task dropped."""

    writing = threading.Event()

    def write_part(self, key: str, part: SharedPart) -> bool:
        if threading.current_thread().name == "tracked-flusher":
            SlowPartStore.writing.set()
            time.sleep(0.5)
        return super().write_part(key, part)


def _drop_while_the_flusher_writes(token: str, directory: str) -> None:
    """A multiprocessing worker: counts 10 on a joined handle it never ends, and returns
    while the flusher still writes the first part (so the handle is collected there)."""
    part = tracked.join(token, store=SlowPartStore(directory))
    part += 1  # wakes the flusher: it writes this part, slowly
    assert SlowPartStore.writing.wait(10)
    part += 9
    del part  # the flusher's reference is the last: it ends the handle after its write


def test_a_joined_handle_collected_on_the_flusher_thread_writes_its_part_before_exit(
    tmp_path: Path,
) -> None:
    """A multiprocessing worker exits with ``os._exit``, which runs no atexit hook: the
    flusher's exit flush now runs there too, so a part the flusher thread was still
    writing (for a handle it held last) lands. (The worker was killed mid-write and
    the run read 1 of 10, about one run in 40 with 4 pool tasks of 250.)"""
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("dropped", total=None, store=store, min_interval=60) as run:
        token = str(run.share())
        worker = FORK.Process(
            target=_drop_while_the_flusher_writes, args=(token, str(store.directory))
        )
        worker.start()
        worker.join(30)
        assert worker.exitcode == 0
        assert tracked.load("dropped", store=store).count == 10  # type: ignore[union-attr]


def test_the_workers_flusher_writes_its_part_within_min_interval(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("periodic", total=None, store=store, min_interval=0.05) as run:
        with tracked.join(run.share()) as part:
            part += 10
            deadline = time.monotonic() + 5
            while tracked.load("periodic", store=store).count != 10:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the part was not written"
                time.sleep(0.01)
            assert part.in_progress  # written by the flusher, the block still open


def test_open_workers_rates_add_up_so_a_shared_run_has_an_eta(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start("eta", total=1000, store=store, min_interval=60) as run:
        with tracked.join(run.share()) as part:
            part.flush()
            for _ in range(5):
                part += 20
                time.sleep(0.06)
                part.flush()
            state = tracked.load("eta", store=store)
            assert state is not None and state.count == 100
            assert state.rate is not None and state.rate > 0 and state.eta is not None
        state = tracked.load("eta", store=store)
        assert state is not None and state.count == 100
        assert state.rate is None  # the worker's handle ended: its rate no longer adds


def test_a_stale_or_ended_parts_rate_does_not_add() -> None:
    owner = tracked.State(name="r", count=10, rate=2.0, current_time=100.0)
    fresh = SharedPart("a", "run", 5, 0, (), 10, 99.0, rate=3.0)
    stale = SharedPart("b", "run", 5, 0, (), 10, 90.0, rate=50.0)
    ended = SharedPart("c", "run", 5, 0, (), 10, 99.5, rate=70.0, ended=True)
    merged = merge_parts(owner, [fresh, stale, ended], now=100.0)
    assert (merged.count, merged.rate) == (25, 5.0)


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_redis_stores_parts_share_the_records_slot_and_go_with_delete_and_prune(
    kind: str, make_store_url: Callable[[str], str]
) -> None:
    store = RedisStore(make_store_url(kind), prefix="parts-test:")
    client = store.client
    with tracked.start("batch/{1}", store=store) as run:
        assert run._owner is not None
        mine = run._owner.run
        assert store.write_part(run.key, _part(mine, "w1", 3, "x"))
        assert client.exists(store.parts_key(run.key)) == 1
        parts, record = store.parts_key(run.key), store.record_key(run.key)
        assert key_slot(parts.encode()) == key_slot(record.encode())
        assert store.load(run.key).count == 3  # type: ignore[union-attr]  # one read merges
        version = store.version(run.key)
        assert store.write_part(run.key, _part(mine, "w1", 4, "x"))
        assert store.version(run.key) != version  # a new part changes what readers see
        assert [p.count for p in store.read_parts(run.key, mine)] == [4]
        store.delete_parts(run.key, "another-run")
        assert [p.count for p in store.read_parts(run.key, mine)] == [4]
    # not shared through share(): the part is left over, and ended records ignore it
    assert store.load(run.key).count == 0  # type: ignore[union-attr]
    assert client.exists(store.parts_key(run.key)) == 1
    assert store.prune(older_than=0) == 1
    assert client.exists(store.parts_key(run.key)) == 0
    with tracked.start("deleted", store=store) as other:
        assert other._owner is not None
        assert store.write_part(other.key, _part(other._owner.run, "w1", 3))
        assert store.delete(other.key)
        assert client.exists(store.parts_key(other.key)) == 0
        assert not store.write_part(other.key, _part(other._owner.run, "w1", 4))
    store.close()


def test_a_run_in_a_store_made_from_a_cluster_client_is_joined_by_url(
    redis_cluster_url: str,
) -> None:
    client = RedisCluster.from_url(redis_cluster_url.replace("+cluster", ""))
    store = RedisStore(client)  # the default prefix, as the worker's URL gives
    with tracked.start("by-client", store=store) as run:
        token = run.share()
        with tracked.join(token) as part:  # this process knows the store
            part += 2
        env = {"TRACKED_STORE": ""}
        assert _join_in_a_new_process(token, env, redis_cluster_url) == "finished"
        by_url = RedisStore(redis_cluster_url)
        assert tracked.join(token, store=by_url).in_progress  # another client, same run
        assert tracked.load("by-client", store=store).count == 4  # type: ignore[union-attr]
    by_url.close()
    client.close()


def _owner_until_killed(url: str, said: Any) -> None:
    """A shared run's owner that shares it, then waits to be SIGKILLed (a short lease
    on Redis, so its death is judged within a second)."""
    store = RedisStore(url, lease=1.0) if "://" in url else tracked.FileStore(url)
    run = tracked.start("owner-killed", total=None, store=store, min_interval=0.05)
    said.put(str(run.share()))
    time.sleep(600)


def _count_until_refused(token: str, url: str, said: Any) -> None:
    """A joined worker that counts until its part is refused (or 30 s pass); says how
    its handle ended and after how many seconds since the owner was killed."""
    with tracked.join(token, store=url) as part:
        deadline = time.monotonic() + 30
        while part.in_progress and time.monotonic() < deadline:
            part += 1
            time.sleep(0.0005)
        said.put(part.state)


def _readers_agree(url: str, *, stream: bool = True) -> set[tuple[str, int]]:
    """(state, count) as ``load()``, the status route (twice: the second from its
    cache), its event stream (an ended run's ends at once) and the CLI read the run."""
    store = tracked.open_store(url)
    seen = set()
    loaded = tracked.load("owner-killed", store=store)
    assert loaded is not None
    seen.add((loaded.state, loaded.count))
    client = webtest.TestApp(status_app(store))
    for _ in range(2):
        wire = client.get("/owner-killed").json
        seen.add((wire["state"], wire["count"]))
    if stream:
        events = client.get("/owner-killed", headers={"Accept": "text/event-stream"}).text
        first = json.loads(events.split("data: ", 1)[1].split("\n", 1)[0])
        seen.add((first["state"], first["count"]))
    command = [sys.executable, "-m", "tracked", "show", "owner-killed", "--json", "--store", url]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    cli = json.loads(shown.stdout)
    seen.add((cli["state"], cli["count"]))
    store.close()
    return seen


def test_a_shared_run_whose_owner_is_killed_stops_counting_and_every_reader_agrees(
    shared_store_url: str,
) -> None:
    said = FORK.SimpleQueue()
    owner = FORK.Process(target=_owner_until_killed, args=(shared_store_url, said))
    owner.start()
    token = said.get()
    workers = [
        FORK.Process(target=_count_until_refused, args=(token, shared_store_url, said))
        for _ in range(WORKERS)
    ]
    for process in workers:
        process.start()
    store = tracked.open_store(shared_store_url)
    deadline = time.monotonic() + 30
    while tracked.load("owner-killed", store=store).count < 2000:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the workers' parts never showed"
        time.sleep(0.05)
    running = _readers_agree(shared_store_url, stream=False)  # the route caches a body
    assert {state for state, _ in running} == {"running"}
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(10)
    for process in workers:  # each stops once its part is refused
        process.join(20)
    assert [p.exitcode for p in workers] == [0] * WORKERS
    assert [said.get() for _ in workers] == ["abandoned"] * WORKERS
    first = _readers_agree(shared_store_url)
    time.sleep(1.0)
    again = _readers_agree(shared_store_url)
    assert len(first) == 1 and first == again, (first, again)
    [(state, count)] = first
    assert state == "abandoned" and count >= 2000
    store.prune(older_than=3600)  # keeps the recent abandoned record, and its parts
    assert _readers_agree(shared_store_url, stream=False) == first
    store.close()


def test_the_status_routes_cached_body_follows_every_part(tmp_path: Path) -> None:
    store = tracked.FileStore(tmp_path / "store")
    client = webtest.TestApp(status_app(store))
    with tracked.start("cached", total=None, store=store, min_interval=60) as run:
        assert run._owner is not None
        time.sleep(0.06)  # settled: the route caches the running body for a second
        assert client.get("/cached").json["count"] == 0
        for count in (1, 2, 3):  # each part within a tick of the file system's clock
            assert store.write_part(run.key, _part(run._owner.run, "w1", count))
            assert client.get("/cached").json["count"] == count
            assert tracked.load("cached", store=store).count == count  # type: ignore[union-attr]


def _work_until_cancelled(token: str, url: str, checks: bool, said: Any) -> None:
    """A joined worker yielding every 10 ms: with ``checks`` it calls ``check()``
    (and lets ``Cancelled`` out of its block); without, it only watches the flag and
    runs on to its end. Says how its handle ended and when it saw the request."""
    with contextlib.suppress(tracked.Cancelled):
        with tracked.join(token, store=url) as part:
            said.put("joined")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                part += 1
                if checks:
                    part.check()
                elif part.cancel_requested:
                    break
                time.sleep(0.01)
    said.put((part.state, part.cancel_requested, time.time()))


def test_joined_workers_see_a_cancel_and_end_honestly(shared_store_url: str) -> None:
    store = tracked.open_store(shared_store_url)
    said = FORK.SimpleQueue()
    with tracked.start("stop-all", total=None, store=store, min_interval=0.1) as run:
        token = run.share()
        workers = [
            FORK.Process(target=_work_until_cancelled, args=(token, shared_store_url, c, said))
            for c in (True, True, True, False)
        ]
        for process in workers:
            process.start()
        assert [said.get() for _ in workers] == ["joined"] * len(workers)
        assert tracked.cancel("stop-all", store=store)
        asked = time.time()
        for process in workers:
            process.join(30)
        ends = sorted(said.get() for _ in workers)
        assert [p.exitcode for p in workers] == [0] * len(workers)
        # Cancelled reached three blocks; the fourth ran on to its end with the flag set.
        assert [(state, flag) for state, flag, _ in ends] == [
            ("cancelled", True),
            ("cancelled", True),
            ("cancelled", True),
            ("finished", True),
        ]
        # within min_interval + 50 ms on a quiet machine (bench/bench_cancel.py --joined
        # measures it); here only that it came, well within a generous bound
        assert max(seen for _, _, seen in ends) - asked < 5.0
        assert run.cancel_requested


def _pool_work(token: str, url: str, checks: bool) -> str:
    """A pool task on a shared run: counts every 10 ms; with ``checks`` it calls
    ``check()`` and lets ``Cancelled`` out (the pool re-raises it in the owner),
    without it only watches the flag and returns."""
    with tracked.join(token, store=url) as part:
        part.add_message("joined")
        part.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            part += 1
            if checks:
                part.check()
            elif part.cancel_requested:
                return "ran on"
            time.sleep(0.01)
    return "never asked"


@pytest.mark.parametrize("checks", [True, False], ids=["worker-stops", "worker-runs-on"])
def test_a_cancel_delivered_in_a_joined_worker_ends_the_owner_cancelled(
    shared_store_url: str, checks: bool
) -> None:
    # Rule 1: Cancelled delivered in a joined worker stopped the work, even when the
    # owner catches what the pool re-raises and ends its block normally.
    store = tracked.open_store(shared_store_url)
    with tracked.start("pool-stop", total=None, store=store, min_interval=0.05) as run:
        token = run.share()
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            futures = [pool.submit(_pool_work, token, shared_store_url, checks) for _ in "ab"]
            deadline = time.monotonic() + 30
            while tracked.load("pool-stop", store=store).message_count < 2:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the workers never joined"
                time.sleep(0.01)
            assert tracked.cancel("pool-stop", store=store)
            try:
                outcomes = [future.result(30) for future in futures]
            except tracked.Cancelled:
                outcomes = ["stopped"]  # caught: the owner's block returns normally
    state = tracked.load("pool-stop", store=store)
    assert state is not None and state.cancel_requested
    if checks:
        assert outcomes == ["stopped"]
        assert (state.state, state.status, run.state) == ("cancelled", "cancelled", "cancelled")
    else:
        assert outcomes == ["ran on", "ran on"]
        assert (state.state, run.state) == ("finished", "finished")


def test_a_cancel_delivered_in_a_joined_thread_ends_a_memory_store_run_cancelled() -> None:
    # MemoryStore keeps the part itself: the same fold, within one process.
    store = tracked.MemoryStore()
    stopped = threading.Event()

    def work(token: str) -> None:
        with contextlib.suppress(tracked.Cancelled), tracked.join(token, store=store) as part:
            while True:
                part.check()
                time.sleep(0.01)
        stopped.set()

    with tracked.start("thread-stop", total=None, store=store, min_interval=0.05) as run:
        worker = threading.Thread(target=work, args=(run.share(),))
        worker.start()
        assert tracked.cancel("thread-stop", store=store)
        assert stopped.wait(30)
        worker.join(30)
    state = tracked.load("thread-stop", store=store)
    assert state is not None
    assert (state.state, state.cancel_requested) == ("cancelled", True)
