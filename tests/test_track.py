"""``tracked.track()``: any iterable counted, alone or inside a live progress."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracked
from tracked import AlreadyRunning, InvalidName, InvalidValue, NoActiveProgress
from tracked._scope import RequestScope, request_scope

STORE_KINDS = ["memory", "file"]


@pytest.fixture(params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[tracked.Store]:
    opened = tracked.open_store(make_store_url(request.param))
    tracked.configure(store=opened)
    yield opened
    tracked.configure(store=None)
    opened.close()


def load(name: str) -> tracked.State:
    state = tracked.load(name)
    assert state is not None, f"no record for {name!r}"
    return state


def soon(holds: Callable[[], bool]) -> bool:
    """Whether ``holds()`` turns true within 30 seconds."""
    deadline = time.monotonic() + 30
    while not holds():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


# ------------------------------------------------------------------ on its own


def test_a_list_yields_its_items_and_its_length_is_the_total(store: tracked.Store) -> None:
    seen = []
    for item in tracked.track([10, 20, 30], name="list"):
        seen.append((item, tracked.current().count, tracked.current().total))
    assert seen == [(10, 0, 3), (20, 1, 3), (30, 2, 3)]
    state = load("list")
    assert (state.count, state.total, state.state) == (3, 3, "finished")


def test_a_generator_has_an_unknown_total_and_an_exact_count(store: tracked.Store) -> None:
    assert list(tracked.track(numbers(1000), name="gen")) == list(range(1000))
    state = load("gen")
    assert (state.count, state.total, state.state) == (1000, None, "finished")


def test_an_explicit_total_wins_over_the_length(store: tracked.Store) -> None:
    for _ in tracked.track(numbers(4), name="given", total=8):
        assert tracked.current().total == 8
    assert (load("given").count, load("given").total) == (4, 8)


@pytest.mark.parametrize("view", ["keys", "values", "items"])
def test_dict_views_count_with_their_length_as_total(store: tracked.Store, view: str) -> None:
    data = {"a": 1, "b": 2, "c": 3, "d": 4}
    items = list(tracked.track(getattr(data, view)(), name=f"dict-{view}"))
    assert items == list(getattr(data, view)())
    state = load(f"dict-{view}")
    assert (state.count, state.total, state.state) == (4, 4, "finished")


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1001])
def test_ranges_count_to_their_length(store: tracked.Store, n: int) -> None:
    assert sum(1 for _ in tracked.track(range(n), name=f"range-{n}")) == n
    state = load(f"range-{n}")
    assert (state.count, state.total, state.state) == (n, n, "finished")


# Stable ids (repr of an iterator holds its address): xdist's workers must collect the same.
@pytest.mark.parametrize(
    "empty", [[], (), {}, "", iter([])], ids=["list", "tuple", "dict", "str", "iterator"]
)
def test_an_empty_iterable_finishes_at_zero(store: tracked.Store, empty: object) -> None:
    assert list(tracked.track(empty, name="empty")) == []  # type: ignore[call-overload]
    state = load("empty")
    assert (state.count, state.state) == (0, "finished")
    assert state.total == (None if isinstance(empty, Iterator) else 0)


def test_str_items_are_messages_only_when_asked(store: tracked.Store) -> None:
    list(tracked.track(["a.csv", "b.csv"], name="quiet"))
    list(tracked.track(["a.csv", 2, "b.csv"], name="loud", messages=True))
    assert load("quiet").messages == ()
    assert load("loud").messages == ("a.csv", "b.csv")
    assert load("loud").count == 3


def test_description_becomes_the_status(store: tracked.Store) -> None:
    for _ in tracked.track(range(2), name="described", description="Importing rows"):
        assert tracked.current().status == "Importing rows"


def test_the_name_defaults_to_the_callers_qualified_name(store: tracked.Store) -> None:
    def import_rows() -> None:
        for _ in tracked.track(range(3)):
            pass

    import_rows()
    qualname = f"{__name__}.{import_rows.__qualname__}"
    assert load(qualname).count == 3


def test_in_a_web_request_the_progress_id_alone_is_the_key(store: tracked.Store) -> None:
    token = request_scope.set(RequestScope(progress_id="client-7"))
    try:
        rows = tracked.track(range(3))
    finally:
        request_scope.reset(token)
    assert list(rows) == [0, 1, 2]  # iterated after the request: the key was fixed at the call
    state = tracked.load(None, progress_id="client-7")
    assert state is not None and state.count == 3


def test_the_progress_is_current_in_the_loop_body_only(store: tracked.Store) -> None:
    for _ in tracked.track(range(1), name="body"):
        assert tracked.current().name == "body"
    with pytest.raises(NoActiveProgress):
        tracked.current()


def test_nothing_is_claimed_until_the_first_item_is_asked_for(store: tracked.Store) -> None:
    rows = tracked.track(range(3), name="lazy")
    assert tracked.load("lazy") is None
    next(rows)
    assert load("lazy").in_progress
    rows.close()


def test_a_name_held_by_a_live_owner_raises_at_the_first_item(store: tracked.Store) -> None:
    with tracked.start("held"):
        rows = tracked.track(range(3), name="held")
        with pytest.raises(AlreadyRunning):
            next(rows)


def test_bad_names_and_totals_raise_at_the_call(store: tracked.Store) -> None:
    with pytest.raises(InvalidName):
        tracked.track(range(3), name="")
    with pytest.raises(InvalidValue):
        tracked.track(range(3), name="x", total=-1)


def test_a_break_ends_it_cancelled_with_the_items_done(store: tracked.Store) -> None:
    for item in tracked.track(range(10), name="broken"):
        if item == 4:
            break
    state = load("broken")
    assert (state.count, state.total, state.state) == (4, 10, "cancelled")


def test_an_exception_in_the_loop_body_ends_it_cancelled(store: tracked.Store) -> None:
    with pytest.raises(ZeroDivisionError):
        for item in tracked.track(range(10), name="body-error"):
            if item == 2:
                1 / 0  # noqa: B018
    state = load("body-error")
    assert (state.count, state.state) == (2, "cancelled")


def test_an_exception_from_the_iterable_fails_it(store: tracked.Store) -> None:
    def flaky() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(tracked.track(flaky(), name="flaky"))
    state = load("flaky")
    assert (state.count, state.state, state.error) == (1, "failed", "OSError: disk gone")


def test_another_process_reads_the_count_while_the_loop_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    reader = (
        "import sys, tracked; s = tracked.load('shared', store=sys.argv[1]);"
        "print(s.count, s.total, s.in_progress)"
    )
    seen = []
    for item in tracked.track(range(5), name="shared", store=store, min_interval=0):
        if item == 3:
            result = subprocess.run(
                [sys.executable, "-c", reader, store], capture_output=True, text=True, check=True
            )
            seen.append(result.stdout.split())
    assert seen == [["3", "5", "True"]]
    result = subprocess.run(
        [sys.executable, "-c", reader, store], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["5", "5", "False"]


# ------------------------------------------------------------------ inside a live progress


def test_without_a_name_it_drives_the_live_progress(store: tracked.Store) -> None:
    with tracked.start("job", total=None) as job:
        for _ in tracked.track(range(5), description="rows"):
            assert tracked.current() is job
        assert (job.count, job.total, job.status, job.in_progress) == (5, 5, "rows", True)
    assert load("job").state == "finished"


def test_inside_a_tracked_function_the_loop_length_replaces_the_default_total(
    store: tracked.Store,
) -> None:
    @tracked.tracked(name="decorated")
    def job(rows: list[int]) -> int:
        return sum(tracked.track(rows))

    assert job(list(range(250))) == sum(range(250))
    state = load("decorated")
    assert (state.count, state.total, state.state) == (250, 250, "finished")


def test_consecutive_loops_each_extend_the_total_from_the_count_so_far(
    store: tracked.Store,
) -> None:
    with tracked.start("phases") as job:
        for _ in tracked.track(range(3)):
            pass
        assert (job.count, job.total) == (3, 3)
        for _ in tracked.track(range(4)):
            assert job.total == 7
        assert (job.count, job.total) == (7, 7)


def test_an_unsized_loop_keeps_the_live_total(store: tracked.Store) -> None:
    with tracked.start("unsized", total=40) as job:
        for _ in tracked.track(numbers(30)):
            pass
        assert (job.count, job.total) == (30, 40)


def test_a_nested_loop_does_not_count_into_the_same_progress(store: tracked.Store) -> None:
    with tracked.start("nested", total=None) as job:
        for group in tracked.track([["a", "b"], ["c"], ["d", "e", "f"]]):
            for _ in tracked.track(group, messages=True):
                pass
        assert (job.count, job.total) == (3, 3)
        assert job.messages == ("a", "b", "c", "d", "e", "f")


def test_a_nested_standalone_loop_does_not_count_into_its_parent_loop(
    store: tracked.Store,
) -> None:
    for group in tracked.track([range(2), range(3)], name="outer-loop"):
        for _ in tracked.track(group):
            pass
    assert (load("outer-loop").count, load("outer-loop").total) == (2, 2)


def test_a_named_loop_inside_a_live_progress_is_its_own_progress(store: tracked.Store) -> None:
    with tracked.start("parent", total=None) as parent:
        for _ in tracked.track(range(3), name="child"):
            assert tracked.current().name == "child"
        assert tracked.current() is parent
        assert parent.count == 0
    assert (load("child").count, load("child").state) == (3, "finished")


def test_a_break_out_of_a_driving_loop_leaves_the_live_progress_running(
    store: tracked.Store,
) -> None:
    with tracked.start("keeps-running", total=None) as job:
        for item in tracked.track(range(10)):
            if item == 5:
                break
        assert (job.count, job.in_progress) == (5, True)
        for _ in tracked.track(range(2)):  # the driver was released: this one counts
            pass
        assert (job.count, job.total) == (7, 7)


def test_no_loop_keeps_a_claim_on_a_progress_after_it_ends(store: tracked.Store) -> None:
    from tracked._adopt import _drivers

    with tracked.start("claims", total=None):
        for item in tracked.track(range(5)):
            if item == 2:
                break
        with pytest.raises(KeyError):
            for _ in tracked.track(range(5)):
                raise KeyError("x")
        list(tracked.track(range(3)))
    list(tracked.track(range(3), name="own"))
    assert _drivers == {}


@pytest.mark.parametrize("drives", [False, True], ids=["own-run", "live-run"])
def test_a_cancel_stops_the_loop_before_the_generator_makes_the_next_item(
    store: tracked.Store, drives: bool
) -> None:
    # The request is checked before the iterable is asked for its next item: a
    # generator's work for the item after the request never runs.
    made: list[int] = []

    def rows() -> Iterator[int]:
        for n in range(100):
            made.append(n)
            yield n

    def loop() -> None:
        for row in tracked.track(rows(), None if drives else "gen-stop", min_interval=0.02):
            if row == 3:
                assert tracked.cancel("gen-stop")
                # the owner saw it and wrote it
                assert soon(lambda: load("gen-stop").cancel_requested)

    with pytest.raises(tracked.Cancelled):
        if drives:
            with tracked.start("gen-stop", min_interval=0.02):
                loop()
        else:
            loop()
    assert made == [0, 1, 2, 3]
    assert (load("gen-stop").state, load("gen-stop").count) == ("cancelled", 4)


def test_a_cancel_seen_before_the_first_item_makes_none(store: tracked.Store) -> None:
    made: list[int] = []

    def rows() -> Iterator[int]:
        for n in range(3):
            made.append(n)
            yield n

    with tracked.start("early-stop", min_interval=0.02) as run:
        assert tracked.cancel("early-stop")
        assert soon(lambda: run.cancel_requested)
        with pytest.raises(tracked.Cancelled):
            for _ in tracked.track(rows()):
                pass
    assert made == []
