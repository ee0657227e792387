"""The tqdm bridge: ``tracked.tqdm`` bars record to a progress; ``capture_tqdm()`` makes
bars of code that cannot be edited report into the live progress."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest
from tqdm import tqdm as plain_tqdm

import tracked
from tests import tqdm_library
from tracked import AlreadyRunning


@pytest.fixture
def store() -> Iterator[tracked.Store]:
    opened = tracked.MemoryStore()
    tracked.configure(store=opened)
    yield opened
    tracked.configure(store=None)


@pytest.fixture
def devnull() -> Iterator[IO[str]]:
    with open(os.devnull, "w") as null:
        yield null


def load(name: str) -> tracked.State:
    state = tracked.load(name)
    assert state is not None, f"no record for {name!r}"
    return state


def eager(devnull: IO[str]) -> dict[str, Any]:
    """Bar options that redraw (and so report) on every item."""
    return {"file": devnull, "mininterval": 0, "miniters": 1}


# ------------------------------------------------------------------ tracked.tqdm


def test_a_bar_records_its_total_and_count(store: tracked.Store, devnull: IO[str]) -> None:
    counts = []
    for _ in tracked.tqdm(range(10), desc="Epoch", **eager(devnull)):
        counts.append(tracked.current().count)
    assert counts == list(range(10))
    state = load("Epoch")
    assert (state.total, state.count, state.state) == (10, 10, "finished")


def test_a_manual_bar_records_updates(store: tracked.Store, devnull: IO[str]) -> None:
    with tracked.tqdm(total=100, desc="manual", **eager(devnull)) as bar:
        bar.update(30)
        assert (tracked.current().count, tracked.current().total) == (30, 100)
        bar.update(70)
    state = load("manual")
    assert (state.count, state.total, state.state) == (100, 100, "finished")


def test_a_reset_bar_starts_its_count_again_with_its_new_total(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.tqdm(total=10, desc="reused", **eager(devnull)) as bar:
        bar.update(5)
        bar.reset(total=3)
        assert (tracked.current().count, tracked.current().total) == (0, 3)
        bar.update(3)
    assert (load("reused").count, load("reused").total) == (3, 3)


def test_an_unknown_total_stays_unknown(store: tracked.Store, devnull: IO[str]) -> None:
    for _ in tracked.tqdm(iter(range(7)), desc="unsized", file=devnull):
        pass
    assert (load("unsized").total, load("unsized").count) == (None, 7)


def test_the_name_is_the_given_name_then_desc_then_the_callers_qualified_name(
    store: tracked.Store, devnull: IO[str]
) -> None:
    def caller() -> None:
        list(tracked.tqdm(range(2), file=devnull))

    list(tracked.tqdm(range(2), desc="shown", name="given", file=devnull))
    list(tracked.tqdm(range(2), desc="Resizing images", file=devnull))
    caller()
    assert load("given").count == 2
    assert load("Resizing images").count == 2
    assert load(f"{__name__}.{caller.__qualname__}").count == 2


def test_desc_is_the_status(store: tracked.Store, devnull: IO[str]) -> None:
    with tracked.tqdm(total=2, desc="Phase 1", **eager(devnull)) as bar:
        assert tracked.current().status == "Phase 1"
        bar.set_description("Phase 2")  # tqdm stores "Phase 2: "
        assert tracked.current().status == "Phase 2"
        bar.update(2)


def test_postfix_and_write_texts_are_messages(store: tracked.Store, devnull: IO[str]) -> None:
    with tracked.tqdm(total=3, desc="talk", **eager(devnull)) as bar:
        bar.set_postfix_str("loss=0.9")
        bar.set_postfix_str("loss=0.9")  # unchanged: no second message
        bar.set_postfix(loss=0.5, acc=0.75)
        tracked.tqdm.write("checkpoint saved", file=devnull)
        bar.set_postfix_str("", refresh=True)  # empty: no message
    assert load("talk").messages == ("loss=0.9", "acc=0.75, loss=0.5", "checkpoint saved")


def test_a_postfix_set_without_refresh_is_sent_at_the_next_redraw(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.tqdm(total=3, desc="late", **eager(devnull)) as bar:
        bar.set_postfix_str("step 1", refresh=False)
        assert tracked.current().messages == ()
        bar.update(1)
        assert tracked.current().messages == ("step 1",)


def test_a_with_block_left_by_an_exception_fails_the_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with pytest.raises(ValueError, match="bad row"):
        with tracked.tqdm(total=10, desc="boom", **eager(devnull)) as bar:
            bar.update(3)
            raise ValueError("bad row")
    state = load("boom")
    assert (state.count, state.state, state.error) == (3, "failed", "ValueError: bad row")


def test_an_exception_in_a_loop_body_inside_a_with_block_fails_the_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with pytest.raises(KeyError):
        with tracked.tqdm(range(10), desc="with-loop", **eager(devnull)) as bar:
            for item in bar:
                if item == 4:
                    raise KeyError(item)
    assert (load("with-loop").count, load("with-loop").state) == (4, "failed")


def test_a_with_block_left_normally_after_a_break_finishes_the_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.tqdm(range(10), desc="found", file=devnull) as bar:
        for item in bar:
            if item == 3:
                break
    assert (load("found").count, load("found").state) == (3, "finished")


def test_an_exception_from_the_iterable_fails_the_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    def flaky() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        for _ in tracked.tqdm(flaky(), desc="flaky", file=devnull):
            pass
    state = load("flaky")
    assert (state.count, state.state, state.error) == (2, "failed", "OSError: disk gone")


def test_a_for_loop_left_early_cancels_the_progress(store: tracked.Store, devnull: IO[str]) -> None:
    for item in tracked.tqdm(range(10), desc="broken", file=devnull):
        if item == 6:
            break
    with pytest.raises(ZeroDivisionError):
        for item in tracked.tqdm(range(10), desc="body-error", file=devnull):
            if item == 2:
                1 / 0  # noqa: B018
    assert (load("broken").count, load("broken").state) == (6, "cancelled")
    assert (load("body-error").count, load("body-error").state) == (2, "cancelled")


def test_a_closed_bar_is_no_longer_current(store: tracked.Store, devnull: IO[str]) -> None:
    bar = tracked.tqdm(total=1, desc="current", file=devnull)
    assert tracked.current().name == "current"
    bar.update(1)
    bar.close()
    bar.close()  # twice is harmless
    with pytest.raises(tracked.NoActiveProgress):
        tracked.current()
    assert load("current").state == "finished"


def test_nested_bars_the_outer_counts_and_the_inner_is_the_status(
    store: tracked.Store, devnull: IO[str]
) -> None:
    seen = []
    outer = tracked.tqdm(range(3), desc="Epochs", **eager(devnull))
    for _ in outer:
        for _ in tracked.tqdm(range(4), desc="Batches", **eager(devnull)):
            progress = tracked.current()
            seen.append((progress.name, progress.count, progress.status))
        assert tracked.current().status == "Epochs"  # handed back at the inner's close
    assert seen[:5] == [
        ("Epochs", 0, "Batches: 0/4 it"),
        ("Epochs", 0, "Batches: 1/4 it"),
        ("Epochs", 0, "Batches: 2/4 it"),
        ("Epochs", 0, "Batches: 3/4 it"),
        ("Epochs", 1, "Batches: 0/4 it"),
    ]
    assert tracked.load("Batches") is None
    state = load("Epochs")
    # The desc was the status while it ran; the end is what the record says after.
    assert (state.count, state.total, state.status, state.state) == (3, 3, "finished", "finished")


def test_without_a_name_a_bar_counts_into_the_live_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.start("job", total=None) as job:
        job.increment(5)
        for _ in tracked.tqdm(range(10), desc="rows", **eager(devnull)):
            assert tracked.current() is job
        assert (job.count, job.total, job.in_progress) == (15, 15, True)
        assert job.status == "in progress"  # the bar's desc was handed back
    state = load("job")
    assert (state.state, state.status) == ("finished", "finished")


def test_a_named_bar_inside_a_live_progress_is_its_own_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.start("parent", total=None) as parent:
        for _ in tracked.tqdm(range(3), name="child", file=devnull):
            assert tracked.current().name == "child"
        assert tracked.current() is parent
        assert parent.count == 0
    assert (load("child").count, load("child").state) == (3, "finished")


def test_a_disabled_bar_records_nothing(store: tracked.Store) -> None:
    assert list(tracked.tqdm(range(3), desc="off", disable=True)) == [0, 1, 2]
    with tracked.tqdm(total=3, desc="off too", disable=True) as bar:
        bar.update(3)
    assert tracked.load("off") is None
    assert tracked.load("off too") is None


def test_a_name_held_by_a_live_owner_raises_and_leaves_no_bar(
    store: tracked.Store, devnull: IO[str]
) -> None:
    before = len(plain_tqdm._instances)  # type: ignore[attr-defined]
    with tracked.start("held"):
        with pytest.raises(AlreadyRunning):
            tracked.tqdm(range(3), name="held", file=devnull)
    assert len(plain_tqdm._instances) == before  # type: ignore[attr-defined]


def test_a_track_loop_inside_a_bar_does_not_count_into_it(
    store: tracked.Store, devnull: IO[str]
) -> None:
    for group in tracked.tqdm([range(2), range(3)], desc="groups", file=devnull):
        for _ in tracked.track(group):
            pass
    assert (load("groups").count, load("groups").total) == (2, 2)


# ------------------------------------------------------------------ capture_tqdm


def test_a_captured_bar_of_a_helper_module_drives_the_live_progress(
    store: tracked.Store,
) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        assert tqdm_library.crunch(range(100)) == sum(range(100))
        assert (job.count, job.total, job.in_progress) == (100, 100, True)
    assert (load("job").count, load("job").state) == (100, "finished")


def test_captured_postfix_and_write_lines_are_messages(store: tracked.Store) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        tqdm_library.chatty(3)
    assert job.messages == ("item=0", "wrote 0", "item=1", "wrote 1", "item=2", "wrote 2")
    assert job.count == 3


def test_a_tracked_bar_inside_a_capture_reports_once(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        with tracked.tqdm(total=4, **eager(devnull)) as bar:
            bar.update(4)
            bar.set_postfix_str("done")
            tracked.tqdm.write("written once", file=devnull)
        assert (job.count, job.total) == (4, 4)
    assert job.messages == ("done", "written once")


def test_captured_bars_inside_a_counting_loop_are_its_status(store: tracked.Store) -> None:
    statuses = []
    with tracked.start("files", total=None) as job, tracked.capture_tqdm():
        for _ in tracked.track(range(3)):
            tqdm_library.download(10_000_000, 3_200_000)
            statuses.append(job.status)
        assert (job.count, job.total) == (3, 3)
    assert statuses == ["in progress"] * 3  # each download handed the status back
    assert load("files").status == "finished"


def test_a_captured_nested_bar_shows_its_progress_as_status_while_open(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        with plain_tqdm(total=2, desc="outer", **eager(devnull)) as outer:
            with plain_tqdm(
                total=10_000_000, desc="Downloading", unit="B", unit_scale=True, **eager(devnull)
            ) as inner:
                inner.update(3_200_000)
                assert job.status == "Downloading: 3.20M/10.0M B"
            assert job.status == "outer"
            outer.update(2)
        assert (job.count, job.total) == (2, 2)


def test_bars_outside_a_capture_are_left_alone(store: tracked.Store) -> None:
    with tracked.start("job", total=None) as job:
        tqdm_library.crunch(range(10))
        with tracked.capture_tqdm():
            pass
        tqdm_library.crunch(range(10))  # after the capture, hooks installed but inert
    assert (job.count, job.total) == (0, None)


def test_a_capture_without_a_live_progress_records_nothing(store: tracked.Store) -> None:
    with tracked.capture_tqdm():
        assert tqdm_library.crunch(range(10)) == 45
        assert tqdm_library.download(100, 30) == 100
    assert tracked.load("Crunching") is None
    assert tracked.load("Downloading") is None


def test_a_disabled_bar_under_capture_records_nothing(store: tracked.Store) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        assert tqdm_library.quiet(5) == 5
    assert (job.count, job.total) == (0, None)


def test_a_captured_bar_in_another_thread_is_left_alone(store: tracked.Store) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        thread = threading.Thread(target=tqdm_library.crunch, args=(range(10),))
        thread.start()
        thread.join()
        assert (job.count, job.total) == (0, None)


def test_a_captured_bar_never_ends_the_live_progress(
    store: tracked.Store, devnull: IO[str]
) -> None:
    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        with pytest.raises(ZeroDivisionError):
            for _ in plain_tqdm(range(5), file=devnull):
                1 / 0  # noqa: B018
        assert job.in_progress
        tqdm_library.crunch(range(4))  # the failed bar released the count
        assert job.count == 4


def test_no_bar_keeps_a_claim_on_a_progress_after_it_closes(
    store: tracked.Store, devnull: IO[str]
) -> None:
    from tracked._adopt import _drivers

    with tracked.start("claims", total=None), tracked.capture_tqdm():
        for _ in tracked.tqdm(range(3), file=devnull):
            tqdm_library.crunch(range(3))
        with pytest.raises(ZeroDivisionError):
            for _ in plain_tqdm(range(3), file=devnull):
                1 / 0  # noqa: B018
    for item in tracked.tqdm(range(3), desc="own", file=devnull):
        if item == 1:
            break
    assert _drivers == {}


# ------------------------------------------------------------------ packaging and others


def test_tracked_imports_without_tqdm_and_names_the_extra_when_the_bridge_is_asked_for() -> None:
    script = (
        "import sys\n"
        "sys.modules['tqdm'] = None  # as if tqdm were not installed\n"
        "import tracked\n"
        "assert tracked.track and tracked.LogHandler\n"
        "for name in ('tqdm', 'capture_tqdm'):\n"
        "    try:\n"
        "        getattr(tracked, name)\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.count("pip install 'tracked[tqdm]'") == 2


def test_the_public_names_are_listed_in_order_and_all_resolve() -> None:
    assert tracked.__all__ == sorted(tracked.__all__)
    for name in ("track", "tqdm", "capture_tqdm", "LogHandler"):
        assert name in tracked.__all__
        assert getattr(tracked, name) is not None
    assert issubclass(tracked.tqdm, plain_tqdm)


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_a_captured_subclass_with_its_own_display_reports_too(store: tracked.Store) -> None:
    from tqdm.rich import tqdm as rich_tqdm

    with tracked.start("job", total=None) as job, tracked.capture_tqdm():
        for _ in rich_tqdm(range(50), desc="rich bar", mininterval=0):
            pass
        assert (job.count, job.total) == (50, 50)
