"""Queued runs (``tracked._queued``), on every store: a record owned by no process,
claimed like a running one, taken over by its worker, cancelled before it starts, put
back in line by a retry; the integrations' contract, exercised in this process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import tracked
from tests.test_status_route import PREFIX, build  # noqa: F401 - fixtures
from tracked._decorator import describe_call
from tracked._queued import TakeOver, Ticket, cancel, publish, takeover_scope
from tracked._store import QUEUE_HOST

ran: list[str] = []


@tracked.tracked("job", total=lambda n, **_: n)
def job(n: int, fail_first: bool = False) -> int:
    """Counts to ``n``; with ``fail_first`` its first attempt raises after one step."""
    progress = tracked.current()
    ran.append(progress.progress_id or "")
    progress.add_message(f"attempt {progress.snapshot().attempt}")
    for _ in range(n):
        progress.increment()
        if fail_first and progress.snapshot().attempt == 1:
            raise ValueError("first attempt fails")
    return n


def queue_job(store: tracked.Store, job_id: str, n: int = 3, **kwargs: Any) -> Ticket:
    plan = describe_call(job, (n,), kwargs)
    return publish(plan.name, job_id, plan.function, total=plan.total, store=store, position=1)


def run_as_worker(ticket: Ticket, n: int = 3, retries: bool = False, **kwargs: Any) -> Any:
    """What an integration does around the job's call: set the take-over scope."""
    scope = TakeOver(
        ticket,
        retries=lambda exc: retries and isinstance(exc, ValueError),
        skipped=lambda state: f"skipped {state.state}",
    )
    token = takeover_scope.set(scope)
    try:
        return job(n, **kwargs)
    finally:
        takeover_scope.reset(token)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ran.clear()
    yield


def test_a_queued_record_is_readable_at_once_and_blocks_a_plain_claim(store: tracked.Store) -> None:
    ticket = queue_job(store, "j1")
    state = tracked.load("job", progress_id="j1", store=store)
    assert state is not None
    assert (state.state, state.in_progress, state.position, state.count, state.attempt) == (
        "queued",
        True,
        1,
        0,
        1,
    )
    assert state.total == 3
    record = store.read(ticket.key)
    assert record is not None and record.owner is not None and record.owner.host == QUEUE_HOST
    # No process owns it, so the pid rule cannot make it abandoned; a plain claim (not
    # the worker holding its job) is refused, and so is a second publish of the key.
    with pytest.raises(tracked.AlreadyRunning):
        tracked.start("job", progress_id="j1", store=store)
    with pytest.raises(tracked.AlreadyRunning):
        queue_job(store, "j1")
    after = store.read(ticket.key)  # untouched (a Redis lease is re-read from the server)
    assert after is not None and (after.state, after.owner.run) == (record.state, ticket.run)  # type: ignore[union-attr]


def test_the_worker_takes_over_keeping_run_and_record(store: tracked.Store) -> None:
    ticket = queue_job(store, "j2")
    assert run_as_worker(ticket) == 3
    state = tracked.load("job", progress_id="j2", store=store)
    assert state is not None
    assert (state.state, state.count, state.result, state.position) == ("finished", 3, 3, None)
    assert state.messages == ("attempt 1",)
    record = store.read(ticket.key)
    assert record is not None and record.owner is not None and record.owner.run == ticket.run
    assert ran == ["j2"]


def test_a_queued_timeout_that_lapses_reads_abandoned_and_frees_the_key(
    store: tracked.Store,
) -> None:
    plan = describe_call(job, (3,), {})
    ticket = publish(plan.name, "j3", plan.function, total=3, store=store, timeout=0.2)
    assert tracked.load("job", progress_id="j3", store=store).state == "queued"  # type: ignore[union-attr]
    time.sleep(0.3)
    assert tracked.load("job", progress_id="j3", store=store).state == "abandoned"  # type: ignore[union-attr]
    # A worker that starts the job late still takes the run over.
    assert run_as_worker(ticket) == 3
    assert tracked.load("job", progress_id="j3", store=store).state == "finished"  # type: ignore[union-attr]


def test_cancel_of_a_queued_run_ends_it_at_once_and_its_worker_skips_the_body(
    store: tracked.Store,
) -> None:
    ticket = queue_job(store, "j4")
    assert tracked.cancel("job", progress_id="j4", store=store) is True
    state = tracked.load("job", progress_id="j4", store=store)
    assert state is not None
    assert (state.state, state.count, state.in_progress, state.cancel_requested) == (
        "cancelled",
        0,
        False,
        True,
    )
    assert tracked.cancel("job", progress_id="j4", store=store) is False  # ended: once only
    assert run_as_worker(ticket) == "skipped cancelled"
    assert ran == []
    assert tracked.load("job", progress_id="j4", store=store) == state


def test_a_retry_goes_back_in_line_and_stays_one_run(store: tracked.Store) -> None:
    ticket = queue_job(store, "j5", fail_first=True)
    with pytest.raises(ValueError, match="first attempt"):
        run_as_worker(ticket, retries=True, fail_first=True)
    waiting = tracked.load("job", progress_id="j5", store=store)
    assert waiting is not None
    assert (waiting.state, waiting.in_progress, waiting.attempt, waiting.count) == (
        "queued",
        True,
        2,
        1,
    )
    assert "retrying" in waiting.status and waiting.messages == ("attempt 1",)
    assert run_as_worker(ticket, fail_first=True) == 3
    done = tracked.load("job", progress_id="j5", store=store)
    assert done is not None
    assert (done.state, done.attempt, done.count) == ("finished", 2, 4)
    assert done.messages == ("attempt 1", "attempt 2")


def test_an_error_the_queue_does_not_retry_ends_the_run_failed(store: tracked.Store) -> None:
    ticket = queue_job(store, "j6", fail_first=True)
    with pytest.raises(ValueError, match="first attempt"):
        run_as_worker(ticket, retries=False, fail_first=True)
    state = tracked.load("job", progress_id="j6", store=store)
    assert state is not None and (state.state, state.attempt) == ("failed", 1)


@pytest.mark.parametrize("rounds", [20])
def test_a_cancel_racing_the_take_over_has_one_outcome(store: tracked.Store, rounds: int) -> None:
    for i in range(rounds):
        ticket = queue_job(store, f"race{i}")
        results: list[Any] = []
        worker = threading.Thread(target=lambda t=ticket, out=results: out.append(run_as_worker(t)))
        worker.start()
        asked = cancel(store, ticket.key)
        worker.join(10)
        state = tracked.load("job", progress_id=f"race{i}", store=store)
        assert state is not None and not state.in_progress
        if results == ["skipped cancelled"]:  # the cancel won: the body never ran
            assert (state.state, state.count, asked) == ("cancelled", 0, True)
            assert f"race{i}" not in ran
        else:  # the worker won: the body ran (asked while it ran, or after it ended)
            assert results == [3] and f"race{i}" in ran and state.count == 3


def test_tickets_from_other_versions_are_ignored_or_read_alike() -> None:
    ticket = Ticket("job", "j7", "abc", "tests.test_queued.job")
    assert Ticket.from_dict({**ticket.to_dict(), "group": "g1"}) == ticket  # a newer one
    for broken in (
        None,
        {},
        {"name": "job"},
        {**ticket.to_dict(), "progress_id": "a/b"},
        {**ticket.to_dict(), "run": ""},
        "text",
    ):
        assert Ticket.from_dict(broken) is None


def test_a_plain_call_outside_a_worker_is_a_plain_run(store: tracked.Store) -> None:
    queue_job(store, "j8")
    assert job(2) == 2  # no take-over scope: its own key ("job"), not the queued one
    assert tracked.load("job", store=store).state == "finished"  # type: ignore[union-attr]
    assert tracked.load("job", progress_id="j8", store=store).state == "queued"  # type: ignore[union-attr]


def test_describe_call_refuses_a_function_that_is_not_tracked() -> None:
    with pytest.raises(TypeError, match="not a @tracked function"):
        describe_call(len, ((),), {})


def test_delete_on_the_status_route_cancels_a_queued_run(build: Any, store: tracked.Store) -> None:  # noqa: F811
    client = build(store, cancel=True)
    queue_job(store, "j9")
    response = client.delete(f"{PREFIX}/job?progress_id=j9", status=202)
    assert (response.json["state"], response.json["count"]) == ("cancelled", 0)
    client.delete(f"{PREFIX}/job?progress_id=j9", status=409)


def test_a_queued_run_a_process_owns_is_asked_not_ended(store: tracked.Store) -> None:
    """A run queued in a process (``tracked.submit``'s pool) is that process's to drop:
    a cancel leaves it a request (ending it in the store would let its owner's next
    write, or its start, overwrite the end)."""
    from tracked._store import Owner, register_live_run, unregister_live_run

    owner = Owner.for_this_process()
    register_live_run(owner.run)
    try:
        store.claim(tracked.State("pool", state="queued", position=1), owner)
        assert tracked.cancel("pool", store=store) is True
        state = tracked.load("pool", store=store)
        assert state is not None and (state.state, state.in_progress) == ("queued", True)
        assert store.cancels_requested([("pool", owner)]) == [True]
    finally:
        unregister_live_run(owner.run)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e308, True, "60"])
def test_a_queued_timeout_no_lease_can_hold_is_invalid_value(bad: object) -> None:
    # inf once wrote `Infinity` (not JSON) into a FileStore record and overflowed
    # Redis's PX; 1e308 did the latter. Refused before anything is stored.
    with pytest.raises(tracked.InvalidValue):
        tracked.configure(queued_timeout=bad)  # type: ignore[arg-type]
    assert tracked._scope.queued_timeout() == 86400.0
    if bad in (float("inf"), 1e308):
        return  # a queue's expiry that long is clamped (next test)
    plan = describe_call(job, (3,), {})
    with pytest.raises(tracked.InvalidValue):
        publish(plan.name, "jbad", plan.function, total=3, store=tracked.MemoryStore(),
                timeout=bad)  # type: ignore[arg-type]


def test_the_longest_queued_timeout_is_stored_and_a_longer_queue_expiry_is_clamped(
    store: tracked.Store,
) -> None:
    from tracked._queued import prepare
    from tracked._scope import MAX_QUEUED_TIMEOUT

    plan = describe_call(job, (3,), {})
    tracked.configure(queued_timeout=MAX_QUEUED_TIMEOUT)
    try:
        publish(plan.name, "jmax", plan.function, total=3, store=store)
    finally:
        tracked.configure(queued_timeout=86400)
    assert tracked.load("job", progress_id="jmax", store=store).state == "queued"  # type: ignore[union-attr]
    # A queue's own expiry (RQ ttl + 60 s) longer than that: the lease is the cap.
    _, owner, _ = prepare(plan.name, "jlong", plan.function, total=3, timeout=1e300)
    assert owner.lease_expires is not None
    assert owner.lease_expires - time.time() <= MAX_QUEUED_TIMEOUT
    publish(plan.name, "jlong", plan.function, total=3, store=store, timeout=1e300)
    assert tracked.load("job", progress_id="jlong", store=store).state == "queued"  # type: ignore[union-attr]
