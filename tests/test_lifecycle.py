"""Issue 17: honest ends (the matrix), ``cancel_requested``, queued submit runs and
their place in line, ``tracked.status_url``, and ``submit`` of async functions.

The matrix runs every kind of task twice on a real store (FileStore and a real
redis-server): once stopping at the request, once never passing a point where it
would be handed ``tracked.Cancelled``. A side-effect file proves which work ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracked
from tests.test_status_route import build as build  # the adapters' fixture

N = 12  # steps of work; the request arrives during step 3
WAIT = 20.0  # a guard against hanging, never a timed assertion
ROOT = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


class Work:
    """The task's side effects: one line per step done, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def do(self, step: int) -> None:
        with self.path.open("a") as file:
            file.write(f"{step}\n")

    def done(self) -> int:
        return len(self.path.read_text().split())

    def wait_seen_of(self, name: str) -> None:
        """``wait_seen`` from another thread: ask ``name`` to stop, wait for the record."""
        tracked.cancel(name)
        eventually(lambda: tracked.load(name).cancel_requested,  # type: ignore[union-attr]
                   "the request is in the record")

    def wait_seen(self) -> None:
        """At step 3: block (no delivery point) until the owner has seen the request."""
        progress = tracked.current()
        key = progress.key
        # Seen, and written: the flusher has also run the cancel hooks by then.
        eventually(lambda: progress.cancel_requested, "the owner sees the request")
        eventually(lambda: tracked.open_store(progress.store).load(key).cancel_requested,  # type: ignore[union-attr]
                   "the request is in the record")


def run_generator(name: str, work: Work, stops: bool) -> None:
    @tracked.tracked(name, total=N, min_interval=0.02)
    def job() -> Iterator[None]:
        for step in range(N):
            work.do(step)
            if step == 3:
                work.wait_seen()
                if not stops:  # the rest, without another yield
                    for rest in range(4, N):
                        work.do(rest)
                    return
            yield

    for _ in job():
        pass


def run_async_generator(name: str, work: Work, stops: bool) -> None:
    @tracked.tracked(name, total=N, min_interval=0.02)
    async def job() -> Any:
        for step in range(N):
            work.do(step)
            if step == 3:
                work.wait_seen()
                if not stops:
                    for rest in range(4, N):
                        work.do(rest)
                    return
            yield

    async def consume() -> None:
        async for _ in job():
            pass

    asyncio.run(consume())


def run_coroutine(name: str, work: Work, stops: bool) -> None:
    @tracked.tracked(name, total=N, min_interval=0.02)
    async def job() -> None:
        for step in range(N):
            work.do(step)
            if step == 3:
                work.wait_seen()  # blocks the loop: the task's cancel waits for an await
                if not stops:
                    for rest in range(4, N):
                        work.do(rest)
                    return
            await asyncio.sleep(0.001)

    asyncio.run(job())


def run_function(name: str, work: Work, stops: bool) -> None:
    @tracked.tracked(name, total=N, min_interval=0.02)
    def job() -> None:
        for step in range(N):
            work.do(step)
            if step == 3:
                work.wait_seen()
            if stops:
                tracked.current().check()

    job()


def run_handle(name: str, work: Work, stops: bool) -> None:
    with tracked.start(name, total=N, min_interval=0.02) as progress:
        for step in range(N):
            work.do(step)
            progress.increment()
            if step == 3:
                work.wait_seen()
            if stops:
                progress.check()


def run_track(name: str, work: Work, stops: bool) -> None:
    # Never checking: the request arrives during the loop's last item, which does the rest.
    for step in tracked.track(range(N if stops else 4), name, min_interval=0.02):
        work.do(step)
        if step == 3:
            work.wait_seen()
            if not stops:
                for rest in range(4, N):
                    work.do(rest)


def run_tqdm(name: str, work: Work, stops: bool) -> None:
    with open(os.devnull, "w") as devnull:
        for step in tracked.tqdm(range(N if stops else 4), name=name, file=devnull):
            work.do(step)
            if step == 3:
                work.wait_seen()
                if not stops:
                    for rest in range(4, N):
                        work.do(rest)


def run_submit(name: str, work: Work, stops: bool) -> None:
    tracked.submit(_submitted, name, work, stops).wait(WAIT)


@tracked.tracked(lambda name, work, stops: name, total=N, min_interval=0.02)
def _submitted(name: str, work: Work, stops: bool) -> None:
    run_function_body(work, stops)


def run_function_body(work: Work, stops: bool) -> None:
    for step in range(N):
        work.do(step)
        if step == 3:
            work.wait_seen()
        if stops:
            tracked.current().check()


KINDS: dict[str, Callable[[str, Work, bool], None]] = {
    "generator": run_generator,
    "async generator": run_async_generator,
    "coroutine": run_coroutine,
    "function with check()": run_function,
    "handle": run_handle,
    "track()": run_track,
    "tracked.tqdm": run_tqdm,
    "submit": run_submit,
}


@pytest.mark.parametrize("stops", [True, False], ids=["stops", "never-checks"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_run_ends_cancelled_only_if_it_stopped_on_the_request(
    shared_store_url: str, tmp_path: Path, kind: str, stops: bool
) -> None:
    name = f"matrix-{kind}-{stops}".replace(" ", "-")
    work = Work(tmp_path / "side-effects")
    raised: list[BaseException] = []

    def task() -> None:
        try:
            KINDS[kind](name, work, stops)
        except (tracked.Cancelled, asyncio.CancelledError) as exc:  # a task: its cancellation
            raised.append(exc)

    thread = threading.Thread(target=task)
    thread.start()
    eventually(lambda: work.done() >= 4, "step 3 runs")
    assert tracked.cancel(name) is True
    thread.join(WAIT)
    assert not thread.is_alive()
    state = tracked.load(name)
    assert state is not None and not state.in_progress
    assert state.cancel_requested is True
    if stops:
        assert (state.state, state.status, work.done()) == ("cancelled", "cancelled", 4)
        assert len(raised) == 1  # submit: wait() raises what the job raised
    else:
        assert (state.state, work.done(), raised) == ("finished", N, [])
        assert state.status != "cancelled"


def test_cancel_requested_is_written_at_once_though_the_task_never_updates(
    shared_store_url: str,
) -> None:
    """The flusher writes the request it sees: a reader can say "stopping…" even when
    the task is stuck between two updates."""
    with tracked.start("stuck", min_interval=0.05) as progress:
        assert tracked.load("stuck").cancel_requested is False  # type: ignore[union-attr]
        tracked.cancel("stuck")
        eventually(lambda: tracked.load("stuck").cancel_requested, "the record says it")  # type: ignore[union-attr]
        assert progress.in_progress
    assert tracked.load("stuck").cancel_requested is True  # type: ignore[union-attr]


def test_a_request_after_the_end_changes_nothing(shared_store_url: str) -> None:
    with tracked.start("over"):
        pass
    assert tracked.cancel("over") is False
    state = tracked.load("over")
    assert state is not None and (state.state, state.cancel_requested) == ("finished", False)


# ----------------------------------------------------------------------------- queued submit


@tracked.tracked("line-{n}", total=1, min_interval=0.02)
def waits(n: int, gate: threading.Event) -> int:
    gate.wait(WAIT)
    return n


@pytest.fixture
def one_worker() -> Iterator[None]:
    tracked.configure(max_workers=1)
    yield
    tracked.configure(max_workers=4)


READER = """
import json, sys, tracked
store = tracked.open_store(sys.argv[1])
rows = []
for n in range(int(sys.argv[2])):
    s = tracked.load(f"line-{n}", store=store)
    rows.append([s.state, s.position])
print(json.dumps(rows))
"""


def read_from_another_process(store_url: str, count: int) -> list[list[Any]]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", READER, store_url, str(count)],
        capture_output=True, text=True, check=True, timeout=WAIT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_queued_runs_show_their_place_in_line_as_the_pool_drains(
    shared_store_url: str, one_worker: None
) -> None:
    gates = [threading.Event() for _ in range(4)]
    runs = [tracked.submit(waits, n, gates[n]) for n in range(4)]

    def line() -> list[list[Any]]:
        return read_from_another_process(shared_store_url, 4)

    eventually(lambda: line() == [["running", None], ["queued", 1], ["queued", 2],
                                  ["queued", 3]], "the line is written")
    gates[0].set()
    runs[0].wait(WAIT)
    eventually(lambda: line() == [["finished", None], ["running", None], ["queued", 1],
                                  ["queued", 2]], "the line moves up")
    assert tracked.cancel("line-2") is True  # a queued run asked to stop never starts
    eventually(lambda: line() == [["finished", None], ["running", None], ["cancelled", None],
                                  ["queued", 1]], "the dropped run leaves the line")
    dropped = tracked.load("line-2")
    assert dropped is not None and (dropped.count, dropped.cancel_requested) == (0, True)
    for gate in gates:
        gate.set()
    assert runs[3].wait(WAIT) == 3
    assert [s for s, _ in line()] == ["finished", "finished", "cancelled", "finished"]


# ----------------------------------------------------------------------------- async submit


@tracked.tracked("co-{n}", total=2, min_interval=0.02)
async def doubled(n: int) -> int:
    for _ in range(2):
        await asyncio.sleep(0.001)
        tracked.current().increment()
    return 2 * n


@tracked.tracked("agen", total=2, min_interval=0.02)
async def counting() -> Any:
    for step in range(2):
        await asyncio.sleep(0.001)
        yield step


def test_submit_runs_a_coroutine_function_in_a_loop_of_its_own_off_a_loop(
    file_store: tracked.FileStore,
) -> None:
    assert tracked.submit(doubled, 4).wait(WAIT) == 8
    assert tracked.submit(counting).wait(WAIT) is None
    for name in ("co-4", "agen"):
        state = tracked.load(name)
        assert state is not None and (state.state, state.count) == ("finished", 2)


def test_submit_inside_a_loop_runs_the_coroutine_as_a_task_on_that_loop(
    file_store: tracked.FileStore,
) -> None:
    seen: list[Any] = []

    async def main() -> None:
        progress = tracked.submit(doubled, 5)
        assert progress.state == "running"  # no pool: it runs at once, on this loop
        with pytest.raises(RuntimeError, match="await the task"):
            progress.wait(0)
        while progress.in_progress:
            await asyncio.sleep(0.005)
        seen.append(await asyncio.to_thread(progress.wait, WAIT))
        tracked.submit(doubled, 6)  # still running when asyncio.run ends: cancelled

    asyncio.run(main())
    assert seen == [10]
    assert tracked.load("co-5").state == "finished"  # type: ignore[union-attr]
    assert tracked.load("co-6").state == "cancelled"  # type: ignore[union-attr]


def test_submit_errors_name_the_users_function() -> None:
    @tracked.tracked("x")
    async def mine() -> None:
        pass

    def plain() -> None:
        pass

    with pytest.raises(TypeError) as caught:
        tracked.submit(plain)
    assert "test_submit_errors_name_the_users_function.<locals>.plain" in str(caught.value)
    assert "FunctionWrapper" not in str(caught.value)


# ----------------------------------------------------------------------------- status_url

NAMES = [
    ("plain", None, "/_progress_status/plain"),
    ("with space", None, "/_progress_status/with%20space"),
    ("a/b", None, "/_progress_status/a/b"),
    ("100%", None, "/_progress_status/100%25"),
    (".", None, "/_progress_status/?name=."),
    ("..", None, "/_progress_status/?name=.."),
    ("a/../b", None, "/_progress_status/a%2F..%2Fb"),
    ("naïve ☃", None, "/_progress_status/na%C3%AFve%20%E2%98%83"),
    ("job", "tab-1", "/_progress_status/job?progress_id=tab-1"),
    (None, "only-id", "/_progress_status/only-id"),
]


@pytest.mark.parametrize(("name", "progress_id", "url"), NAMES)
def test_status_url_encodes_by_the_one_rule(
    name: str | None, progress_id: str | None, url: str
) -> None:
    assert tracked.status_url(name, progress_id) == url
    assert tracked.status_url(name, progress_id, prefix="/app/status/") == url.replace(
        "/_progress_status", "/app/status"
    )
    assert tracked.status_url(tracked.State(name=name, progress_id=progress_id)) == url


@pytest.mark.parametrize("name", ["/evil.com", "//evil.com/x", "/", "/a/../b", "/%2e%2e"])
def test_status_url_of_a_name_with_a_leading_slash_stays_on_the_site_and_reaches_it(
    build: Any, tmp_path: Path, name: str
) -> None:
    # It was `//evil.com` with prefix "" or "/": a Location on another host.
    for prefix in ("", "/", "/_progress_status"):
        url = tracked.status_url(name, prefix=prefix)
        assert url.startswith("/") and not url.startswith("//"), url
    store = tracked.FileStore(tmp_path / "store")
    with tracked.start(name, total=10, store=store) as progress:
        progress.increment(7)
    body = build(store).get(tracked.status_url(name), status=200).json
    assert (body["name"], body["count"]) == (name, 7)


def test_status_url_refuses_what_names_no_run() -> None:
    with pytest.raises(tracked.InvalidName):
        tracked.status_url(5)  # type: ignore[arg-type]  # was AttributeError
    with pytest.raises(tracked.InvalidName):
        tracked.status_url(b"job")  # type: ignore[arg-type]
    with pytest.raises(tracked.InvalidName):
        tracked.status_url("job", "bad id")
    with pytest.raises(tracked.InvalidName):
        tracked.status_url(None)
    with pytest.raises(tracked.InvalidValue):
        tracked.status_url(tracked.State(name="job"), "tab-1")


# ----------------------------------------------------------------------------- the CLI


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracked", *args], capture_output=True, text=True, timeout=WAIT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("stops", [True, False], ids=["stops", "never-checks"])
def test_cancel_wait_exits_1_and_says_how_it_ended_unless_it_ended_cancelled(
    file_store: tracked.FileStore, tmp_path: Path, stops: bool
) -> None:
    store = str(file_store.directory)
    work = Work(tmp_path / "side-effects")
    thread = threading.Thread(target=lambda: _quietly(run_handle, "cli-run", work, stops))
    thread.start()
    eventually(lambda: work.done() >= 4, "step 3 runs")
    done = cli("--store", store, "cancel", "cli-run", "--wait", "15")
    thread.join(WAIT)
    if stops:
        assert (done.returncode, done.stdout.splitlines()[-1]) == (
            0, "progress 'cli-run' ended cancelled"
        )
    else:
        assert done.returncode == 1
        assert done.stderr.strip() == (
            "tracked cancel: progress 'cli-run' finished: a stop was asked but the task did"
            " not stop"
        )
        shown = cli("--store", store, "show", "cli-run").stdout
        assert "finished (a stop was asked but the task did not stop)" in shown
        listed = cli("--store", store, "list").stdout
        assert "finished (a stop was asked but the task did not stop)" in listed


def test_show_and_list_say_stopping_and_place_in_line(
    file_store: tracked.FileStore, one_worker: None
) -> None:
    store = str(file_store.directory)
    gate = threading.Event()
    with tracked.start("asked", min_interval=0.02) as progress:
        tracked.cancel("asked")
        eventually(lambda: tracked.load("asked").cancel_requested, "written")  # type: ignore[union-attr]
        runs = [tracked.submit(waits, n, gate) for n in range(3)]
        eventually(lambda: [tracked.load(f"line-{n}").state for n in range(3)]  # type: ignore[union-attr]
                   == ["running", "queued", "queued"], "the line is written")
        assert "running, stopping…" in cli("--store", store, "show", "asked").stdout
        listed = cli("--store", store, "list").stdout
        assert "queued (1st in line)" in listed and "queued (2nd in line)" in listed
        assert progress.in_progress
    gate.set()
    for run in runs:
        run.wait(WAIT)


def test_the_cli_says_a_run_cancelled_in_line_never_started(
    file_store: tracked.FileStore, one_worker: None
) -> None:
    # Its times are those it waited in line: watch said "cancelled 0/? in 0.3s",
    # show "elapsed 0.3s" and list "started 0.3s ago" for a run that never ran.
    store = str(file_store.directory)
    gate = threading.Event()
    runs = [tracked.submit(waits, n, gate) for n in range(2)]
    eventually(lambda: tracked.load("line-1").state == "queued", "queued")  # type: ignore[union-attr]
    time.sleep(0.3)
    assert tracked.cancel("line-1")
    eventually(lambda: not tracked.load("line-1").in_progress, "dropped")  # type: ignore[union-attr]
    gate.set()
    runs[0].wait(WAIT)
    state = tracked.load("line-1")
    assert state is not None
    assert (state.state, state.count, state.status) == (
        "cancelled", 0, "cancelled before it started"
    )
    watched = cli("--store", store, "watch", "line-1")
    assert watched.returncode == 1
    assert watched.stdout.strip() == "line-1: cancelled before it started 0/1 (0.0%)"
    shown = cli("--store", store, "show", "line-1").stdout
    assert "state:        cancelled before it started" in shown
    assert "elapsed:      -" in shown and "started:      never (queued " in shown
    row = next(line for line in cli("--store", store, "list").stdout.splitlines()
               if line.startswith("line-1"))
    assert "cancelled before it started" in row and "never" in row and "ago" not in row


def _quietly(run: Callable[[str, Work, bool], None], name: str, work: Work, stops: bool) -> None:
    try:
        run(name, work, stops)
    except tracked.Cancelled:
        pass


@pytest.mark.parametrize(("name", "progress_id", "url"), NAMES)
def test_status_url_reaches_its_own_run_through_every_status_route(
    build: Callable[..., Any],
    tmp_path: Path, name: str | None, progress_id: str | None,
    url: str,
) -> None:
    """Each name's record holds a count of its own; the URL of each reaches that one,
    on the Bottle plugin, the WSGI app and the ASGI app alike."""
    store = tracked.FileStore(tmp_path / "routes")
    counts = {}
    for index, (other, other_id, _) in enumerate(NAMES, 1):
        with tracked.start(other, progress_id=other_id, store=store) as progress:
            progress.increment(index)
        counts[(other, other_id)] = index
    client = build(store)
    body = client.get(tracked.status_url(name, progress_id)).json
    assert (body["name"], body["progress_id"], body["count"]) == (
        name, progress_id, counts[(name, progress_id)]
    )


# ----------------------------------------------------------------------------- tqdm, and attacks


def test_a_tqdm_bar_stops_at_its_next_update_and_a_captured_bar_at_its_next_redraw(
    file_store: tracked.FileStore, tmp_path: Path
) -> None:
    import tqdm as tqdm_module

    with open(os.devnull, "w") as devnull:
        updates = 0
        with pytest.raises(tracked.Cancelled), tracked.tqdm(
            total=100, name="by-update", file=devnull
        ) as bar:
            for _ in range(100):
                bar.update(1)
                updates += 1
                if updates == 3:
                    tracked.cancel("by-update")
                    eventually(lambda: tracked.load("by-update").cancel_requested,  # type: ignore[union-attr]
                               "the request is written")
        state = tracked.load("by-update")
        assert state is not None and (state.state, state.count, updates) == ("cancelled", 4, 3)

        items = 0
        with pytest.raises(tracked.Cancelled), tracked.start(
            "captured", total=None, min_interval=0.02
        ), tracked.capture_tqdm():
            for _ in tqdm_module.tqdm(range(1000), file=devnull, mininterval=0.02):
                items += 1
                if items == 3:
                    tracked.cancel("captured")
                    eventually(lambda: tracked.load("captured").cancel_requested,  # type: ignore[union-attr]
                               "the request is written")
                time.sleep(0.002)
        assert items < 1000
        assert tracked.load("captured").state == "cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize("returns", [False, True], ids=["goes-on", "returns"])
def test_a_generator_that_catches_cancelled_and_goes_on_reads_its_own_end(
    file_store: tracked.FileStore, tmp_path: Path, returns: bool
) -> None:
    # It caught the Cancelled thrown in at a yield and yielded all its other items:
    # the record read "cancelled 10/10" for work that all ran. Caught and returned
    # at once, it stopped on request: cancelled.
    work = Work(tmp_path / "side-effects")

    @tracked.tracked("swallows", total=10, min_interval=0.02)
    def swallows() -> Iterator[int]:
        for step in range(10):
            work.do(step)
            if step == 3:
                tracked.cancel("swallows")
                work.wait_seen()
            try:
                yield step
            except tracked.Cancelled:
                if returns:
                    return
        work.do(99)

    list(swallows())
    state = tracked.load("swallows")
    assert state is not None and state.cancel_requested
    if returns:
        assert (state.state, work.done()) == ("cancelled", 4)
    else:
        assert (state.state, state.count, work.done()) == ("finished", 10, 11)


def test_an_async_generator_that_catches_cancelled_and_goes_on_reads_its_own_end(
    file_store: tracked.FileStore, tmp_path: Path
) -> None:
    work = Work(tmp_path / "side-effects")

    @tracked.tracked("aswallows", total=6, min_interval=0.02)
    async def aswallows() -> AsyncIterator[int]:
        for step in range(6):
            work.do(step)
            if step == 2:
                await asyncio.to_thread(work.wait_seen_of, "aswallows")
            try:
                yield step
            except tracked.Cancelled:
                pass

    async def consume() -> list[int]:
        return [item async for item in aswallows()]

    asyncio.run(consume())
    state = tracked.load("aswallows")
    assert state is not None
    assert (state.state, state.count, state.cancel_requested, work.done()) == (
        "finished", 6, True, 6
    )


def test_a_tqdm_bar_within_its_delay_stops_at_its_next_item(
    file_store: tracked.FileStore, tmp_path: Path
) -> None:
    # A bar not shown yet (tqdm's delay) never redrew, so it never looked at the
    # request: all 50 items ran on and the run read finished.
    work = Work(tmp_path / "side-effects")
    with open(os.devnull, "w") as devnull, pytest.raises(tracked.Cancelled):
        for step in tracked.tqdm(range(50), name="delayed", file=devnull, delay=60):
            work.do(step)
            if step == 3:
                tracked.cancel("delayed")
                eventually(lambda: tracked.load("delayed").cancel_requested,  # type: ignore[union-attr]
                           "the request is written")
    state = tracked.load("delayed")
    assert state is not None and (state.state, state.count) == ("cancelled", 4)
    assert work.done() == 4


@pytest.mark.parametrize("total", [True, False], ids=["sized", "unsized"])
def test_a_captured_bar_within_its_delay_or_interval_stops_at_its_next_item(
    file_store: tracked.FileStore, tmp_path: Path, total: bool
) -> None:
    # tqdm's own loop keeps delay and mininterval in locals: a captured bar not yet
    # shown (or not due to redraw) ran all its items with the request seen.
    import tqdm as tqdm_module

    work = Work(tmp_path / "side-effects")
    rows = range(50) if total else iter(range(50))
    with open(os.devnull, "w") as devnull, pytest.raises(tracked.Cancelled), tracked.start(
        "captured-delay", total=None, min_interval=0.02
    ), tracked.capture_tqdm():
        for step in tqdm_module.tqdm(rows, file=devnull, delay=60, mininterval=60):
            work.do(step)
            if step == 3:
                tracked.cancel("captured-delay")
                eventually(lambda: tracked.load("captured-delay").cancel_requested,  # type: ignore[union-attr]
                           "the request is written")
    state = tracked.load("captured-delay")
    assert state is not None and (state.state, state.count) == ("cancelled", 4)
    assert work.done() == 4


def test_a_captured_bar_whose_last_item_was_done_is_not_stopped(
    file_store: tracked.FileStore,
) -> None:
    import tqdm as tqdm_module

    with open(os.devnull, "w") as devnull, tracked.start(
        "captured-last", total=None, min_interval=0.02
    ) as run, tracked.capture_tqdm():
        for step in tqdm_module.tqdm(range(4), file=devnull, delay=60):
            if step == 3:
                tracked.cancel("captured-last")
                eventually(lambda: run.cancel_requested, "the request is seen")
    state = tracked.load("captured-last")
    assert state is not None and (state.state, state.count) == ("finished", 4)


def test_a_finished_bar_is_not_its_desc_and_an_unclosed_one_says_where_it_stopped(
    file_store: tracked.FileStore,
) -> None:
    import gc

    with open(os.devnull, "w") as devnull:
        for _ in tracked.tqdm(range(3), desc="Processing records", file=devnull):
            pass
        done = tracked.load("Processing records")
        assert done is not None and (done.state, done.status) == ("finished", "finished")

        def drop_unclosed(total: int, n: int) -> None:
            bar = tracked.tqdm(total=total, name=f"unclosed-{n}", file=devnull)
            bar.update(n)

        for n in (0, 1, 99, 100):  # boundaries: nothing done, one, total-1, the total
            drop_unclosed(100, n)
            gc.collect()
        for n in (0, 1, 99):
            state = tracked.load(f"unclosed-{n}")
            assert state is not None and (state.state, state.error) == (
                "failed", f"the tqdm bar was collected unclosed at {n}/100"
            )
        assert tracked.load("unclosed-100").state == "finished"  # type: ignore[union-attr]


def test_a_queued_run_cancelled_by_its_handle_never_runs(
    file_store: tracked.FileStore, one_worker: None, tmp_path: Path
) -> None:
    gate = threading.Event()
    work = Work(tmp_path / "side-effects")
    first = tracked.submit(waits, 0, gate)
    queued = tracked.submit(_submitted, "by-handle", work, False)
    assert queued.state == "queued"
    queued.cancel()
    gate.set()
    first.wait(WAIT)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.wait(WAIT)
    assert work.done() == 0
    state = tracked.load("by-handle")
    assert state is not None and (state.state, state.count) == ("cancelled", 0)


def test_a_request_racing_the_end_never_makes_a_record_lie(file_store: tracked.FileStore) -> None:
    """Requests land at every moment of short runs; a run reads cancelled exactly when
    the task got Cancelled, and says cancel_requested whenever it did."""
    outcomes = []
    for attempt in range(40):
        name = f"race-{attempt}"
        got: list[bool] = []
        started = threading.Event()

        def task(
            name: str = name, got: list[bool] = got, started: threading.Event = started,
            checks: int = attempt % 8,
        ) -> None:
            with tracked.start(name, min_interval=0.005) as progress:
                started.set()
                try:
                    for _ in range(checks):
                        time.sleep(0.003)
                        progress.check()
                except tracked.Cancelled:
                    got.append(True)

        thread = threading.Thread(target=task)
        thread.start()
        started.wait(WAIT)
        time.sleep((attempt % 5) * 0.004)
        tracked.cancel(name)
        thread.join(WAIT)
        state = tracked.load(name)
        assert state is not None and not state.in_progress
        assert (state.state == "cancelled") == bool(got), (attempt, state.state, got)
        if got:
            assert state.cancel_requested
        outcomes.append(state.state)
    assert {"cancelled", "finished"} <= set(outcomes)  # both ends happened


def test_a_loop_closed_with_a_submitted_coroutine_pending_ends_it_cancelled(
    file_store: tracked.FileStore,
) -> None:
    @tracked.tracked("orphan", total=None)
    async def forever() -> None:
        await asyncio.Event().wait()  # nothing else holds this task: only submit does

    async def start() -> tracked.Progress:
        return tracked.submit(forever)

    loop = asyncio.new_event_loop()
    progress = loop.run_until_complete(start())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task starts and waits
    loop.close()  # closed by hand, its task still pending (asyncio.run would cancel it)
    assert progress.in_progress
    assert tracked.submit(doubled, 7).wait(WAIT) == 14  # the next submit notices
    state = tracked.load("orphan")
    assert state is not None and state.state == "cancelled"


def test_a_loop_closed_with_a_submitted_coroutine_pending_is_noticed_without_another_submit(
    file_store: tracked.FileStore,
) -> None:
    # It read `running` for as long as the process lived unless something else was
    # submitted; and wait() then raised asyncio.InvalidStateError.
    @tracked.tracked("orphan-alone", total=None)
    async def forever() -> None:
        await asyncio.Event().wait()

    async def start() -> tracked.Progress:
        return tracked.submit(forever)

    loop = asyncio.new_event_loop()
    progress = loop.run_until_complete(start())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    with pytest.raises(asyncio.CancelledError, match="event loop closed"):
        progress.wait(WAIT)
    eventually(lambda: tracked.load("orphan-alone").state == "cancelled",  # type: ignore[union-attr]
               "the closed loop's run ends cancelled")
    eventually(lambda: not any(t.name == "tracked-loop-watch" for t in threading.enumerate()),
               "the watcher stops once nothing is held")


FORKING = r"""
import os, sys, threading, tracked
tracked.configure(store=sys.argv[1], max_workers=1)
gate = threading.Event()

@tracked.tracked("fork-{n}", total=1, min_interval=0.02)
def job(n):
    gate.wait(30)
    tracked.current().increment()
    return n

first, second = tracked.submit(job, 0), tracked.submit(job, 1)
pid = os.fork()
if pid == 0:  # the child: its own pool and loop tasks; it exits normally (atexit runs)
    gate.set()
    assert tracked.submit(job, 2).wait(30) == 2
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
assert (second.state, tracked.load("fork-1").state) == ("queued", "queued")
gate.set()
assert (first.wait(30), second.wait(30)) == (0, 1)
print("ok")
"""


def test_a_forked_child_leaves_its_parents_queue_alone(tmp_path: Path) -> None:
    store = tmp_path / "fork-store"
    done = subprocess.run(
        [sys.executable, "-c", FORKING, str(store)], capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    ends = {n: tracked.load(f"fork-{n}", store=str(store)) for n in range(3)}
    assert {n: (s.state, s.count) for n, s in ends.items() if s} == {
        0: ("finished", 1), 1: ("finished", 1), 2: ("finished", 1)
    }
