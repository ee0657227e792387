"""``tracked.LogHandler``: log records emitted inside a live progress become its messages."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest

import tracked


@pytest.fixture
def handler() -> tracked.LogHandler:
    return tracked.LogHandler()


@pytest.fixture
def log(handler: tracked.LogHandler, request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of its own per test, at DEBUG, with only the handler under test."""
    logger = logging.getLogger(f"tests.loghandler.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


def test_a_record_inside_a_progress_becomes_a_message(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    with tracked.start("job") as p:
        log.info("loaded %d rows", 12)
        log.warning("slow disk")
    assert p.messages == ("loaded 12 rows", "slow disk")
    state = tracked.load("job")
    assert state is not None and state.messages == ("loaded 12 rows", "slow disk")


def test_records_outside_a_progress_are_ignored(
    memory_store: tracked.Store, handler: tracked.LogHandler, log: logging.Logger
) -> None:
    log.info("before")
    with tracked.start("job") as p:
        log.info("during")
    log.info("after")
    assert p.messages == ("during",)
    record = log.makeRecord(log.name, logging.INFO, __file__, 1, "nobody listens", (), None)
    assert handler.handle(record) is False


def test_records_below_the_handler_level_are_not_messages(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    with tracked.start("job") as p:
        log.debug("noise")
        log.info("signal")
    assert p.messages == ("signal",)


def test_the_formatter_shapes_the_message(
    memory_store: tracked.Store, handler: tracked.LogHandler, log: logging.Logger
) -> None:
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    with tracked.start("job") as p:
        log.error("bad row %s", 7)
    assert p.messages == ("ERROR bad row 7",)


def test_filters_apply(
    memory_store: tracked.Store, handler: tracked.LogHandler, log: logging.Logger
) -> None:
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    with tracked.start("job") as p:
        log.info("public")
        log.info("secret token")
    assert p.messages == ("public",)


def test_trackeds_own_loggers_are_skipped(
    memory_store: tracked.Store, handler: tracked.LogHandler
) -> None:
    own, child = logging.getLogger("tracked"), logging.getLogger("tracked.store")
    for logger in (own, child):
        logger.addHandler(handler)
    try:
        with tracked.start("job") as p:
            own.warning("cannot write")
            child.warning("cannot write either")
            logging.getLogger("trackedness").warning("someone else's")
    finally:
        for logger in (own, child):
            logger.removeHandler(handler)
    assert p.messages == ()


def test_a_record_that_cannot_be_formatted_never_raises(
    memory_store: tracked.Store,
    handler: tracked.LogHandler,
    log: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class PickyFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.args:
                raise ValueError("no arguments, please")
            return super().format(record)

    handler.setFormatter(PickyFormatter())
    with tracked.start("job") as p:
        log.info("%d rows", 3)
        log.info("next")
    assert p.messages == ("next",)
    assert "no arguments, please" in capsys.readouterr().err


def test_each_thread_reports_into_its_own_progress(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    started = threading.Barrier(2)
    handles: dict[str, tracked.Progress] = {}

    def work(name: str) -> None:
        with tracked.start(name, max_messages=5000) as p:
            handles[name] = p
            started.wait()
            for i in range(2000):
                log.info("%s %d", name, i)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, p in handles.items():
        assert p.messages == tuple(f"{name} {i}" for i in range(2000))


def test_each_asyncio_task_reports_into_its_own_progress(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    async def work(name: str) -> tuple[str, ...]:
        with tracked.start(name) as p:
            for i in range(50):
                log.info("%s %d", name, i)
                await asyncio.sleep(0)
            return p.messages

    async def main() -> list[tuple[str, ...]]:
        return list(await asyncio.gather(work("a"), work("b")))

    a, b = asyncio.run(main())
    assert a == tuple(f"a {i}" for i in range(50))
    assert b == tuple(f"b {i}" for i in range(50))


def test_the_innermost_progress_gets_the_record(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    with tracked.start("outer") as outer:
        log.info("outer 1")
        with tracked.start("inner") as inner:
            log.info("inner")
        log.info("outer 2")
    assert outer.messages == ("outer 1", "outer 2")
    assert inner.messages == ("inner",)


def test_a_tracked_generator_gets_the_records_of_its_body(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    @tracked.tracked(name="gen", total=3)
    def rows() -> Iterator[int]:
        for i in range(3):
            log.info("row %d", i)
            yield i

    assert list(rows()) == [0, 1, 2]
    state = tracked.load("gen")
    assert state is not None and state.messages == ("row 0", "row 1", "row 2")


@pytest.mark.parametrize("records", [0, 1, 499, 500, 1000, 1001, 100_000])
def test_a_burst_keeps_the_last_max_messages_and_counts_every_record(
    memory_store: tracked.Store, log: logging.Logger, records: int
) -> None:
    with tracked.start("burst", max_messages=1000) as p:
        for i in range(records):
            log.info("line %d", i)
    state = tracked.load("burst")
    assert state is not None
    kept = min(records, 1000)
    assert state.message_count == records
    assert state.messages == tuple(f"line {i}" for i in range(records - kept, records))
    assert p.message_count == records


@pytest.fixture
def memory_store() -> Iterator[tracked.Store]:
    opened = tracked.MemoryStore()
    tracked.configure(store=opened)
    yield opened
    tracked.configure(store=None)


def test_records_in_a_track_loop_go_to_the_loops_progress(
    memory_store: tracked.Store, log: logging.Logger
) -> None:
    for path in tracked.track(["a.csv", "b.csv"], name="files"):
        log.info("loading %s", path)
    log.info("after the loop")
    state = tracked.load("files")
    assert state is not None and state.messages == ("loading a.csv", "loading b.csv")
