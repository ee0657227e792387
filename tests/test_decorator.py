"""``@tracked`` on functions, generator functions and methods."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import AsyncIterator, Iterator

import pytest

import tracked
from tracked import AlreadyRunning, FileStore, InvalidName, InvalidValue
from tracked._scope import RequestScope, request_scope


def load(name: str) -> tracked.State:
    state = tracked.load(name)
    assert state is not None, f"no record for {name!r}"
    return state


# ------------------------------------------------------------------ generators


def test_a_generator_yields_exactly_what_the_original_yields(file_store: FileStore) -> None:
    @tracked.tracked(name="gen")
    def numbers() -> Iterator[object]:
        yield 1
        yield None
        yield "text"
        yield [1, 2]

    assert list(numbers()) == [1, None, "text", [1, 2]]


def test_each_yield_adds_one_and_strings_become_messages(file_store: FileStore) -> None:
    @tracked.tracked(name="count", total=4)
    def job() -> Iterator[object]:
        yield "first"
        yield 2
        yield "third"
        yield None

    for _ in job():
        pass
    state = load("count")
    assert (state.count, state.messages, state.state, state.in_progress) == (
        4,
        ("first", "third"),
        "finished",
        False,
    )
    assert state.percent == 100.0


def test_the_generator_is_running_while_iterated_and_current_reaches_it(
    file_store: FileStore,
) -> None:
    seen = []

    @tracked.tracked(name="live")
    def job() -> Iterator[int]:
        progress = tracked.current()
        progress.status = "working"
        seen.append(tracked.is_running("live"))
        yield 1
        progress.increment(10)
        yield 2

    assert list(job()) == [1, 2]
    assert seen == [True]
    assert load("live").count == 12


def test_calling_the_generator_function_claims_so_a_conflict_raises_at_the_call(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="claim-at-call")
    def job() -> Iterator[int]:
        yield 1

    first = job()
    assert tracked.is_running("claim-at-call")
    with pytest.raises(AlreadyRunning):
        job()
    assert list(first) == [1]


def test_send_throw_and_the_return_value_pass_through(file_store: FileStore) -> None:
    @tracked.tracked(name="protocol")
    def echo() -> Iterator[object]:
        received = yield "ready"
        try:
            yield f"got {received}"
        except KeyError:
            yield "caught"
        return "returned"

    gen = echo()
    assert next(gen) == "ready"
    assert gen.send(7) == "got 7"
    assert gen.throw(KeyError("k")) == "caught"
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "returned"
    assert load("protocol").state == "finished"


def test_an_exception_in_the_generator_marks_it_failed(file_store: FileStore) -> None:
    @tracked.tracked(name="gen-fails")
    def job() -> Iterator[int]:
        yield 1
        raise ValueError("bad row")

    with pytest.raises(ValueError):
        list(job())
    state = load("gen-fails")
    assert (state.state, state.error, state.count) == ("failed", "ValueError: bad row", 1)


def test_closing_a_generator_early_marks_it_cancelled(file_store: FileStore) -> None:
    cleaned = []

    @tracked.tracked(name="gen-closed")
    def job() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleaned.append(True)

    gen = job()
    next(gen)
    gen.close()
    assert cleaned == [True]
    state = load("gen-closed")
    assert (state.state, state.in_progress, state.count) == ("cancelled", False, 1)


def test_a_generator_never_iterated_ends_when_dropped(file_store: FileStore) -> None:
    @tracked.tracked(name="never")
    def job() -> Iterator[int]:
        yield 1

    gen = job()
    assert tracked.is_running("never")
    del gen
    gc.collect()
    assert load("never").state == "cancelled"


def test_yielding_with_min_interval_zero_writes_every_step(file_store: FileStore) -> None:
    counts = []

    @tracked.tracked(name="eager-gen", min_interval=0)
    def job() -> Iterator[int]:
        for i in range(5):
            yield i
            counts.append(file_store.load("eager-gen").count)  # type: ignore[union-attr]

    list(job())
    assert counts == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ plain functions


def test_a_function_is_running_during_the_call_and_finished_after(file_store: FileStore) -> None:
    @tracked.tracked(name="plain", total=3)
    def work(x: int) -> int:
        assert tracked.is_running("plain")
        tracked.current().increment(3, "done")
        return x * 2

    assert work(21) == 42
    state = load("plain")
    assert (state.count, state.messages, state.state) == (3, ("done",), "finished")


def test_an_exception_in_a_function_marks_it_failed_and_propagates(file_store: FileStore) -> None:
    @tracked.tracked(name="plain-fails")
    def work() -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        work()
    assert load("plain-fails").error == "RuntimeError: disk on fire"


# ------------------------------------------------------------------ names and totals


def test_a_name_template_is_filled_from_the_bound_arguments(file_store: FileStore) -> None:
    @tracked.tracked(name="import-{user_id}-{kind}")
    def do_import(user_id: int, kind: str = "csv") -> None:
        pass

    do_import(7)
    do_import(user_id=8, kind="xml")
    assert load("import-7-csv").state == "finished"
    assert load("import-8-xml").state == "finished"


def test_name_and_total_may_be_callables_of_the_arguments(file_store: FileStore) -> None:
    @tracked.tracked(name=lambda rows: f"rows-{len(rows)}", total=lambda rows: len(rows))
    def handle(rows: list[int]) -> Iterator[int]:
        yield from rows

    list(handle([1, 2, 3]))
    state = load("rows-3")
    assert (state.total, state.count) == (3, 3)


def test_without_a_name_the_qualified_function_name_is_used(file_store: FileStore) -> None:
    @tracked.tracked()
    def nameless() -> None:
        pass

    nameless()
    qualname = f"{__name__}.{nameless.__qualname__}"
    assert load(qualname).state == "finished"


def test_a_request_progress_id_is_combined_with_the_name(file_store: FileStore) -> None:
    @tracked.tracked(name="upload")
    def upload() -> None:
        pass

    @tracked.tracked()
    def anonymous() -> None:
        pass

    token = request_scope.set(RequestScope(progress_id="abc123"))
    try:
        upload()
        anonymous()
    finally:
        request_scope.reset(token)
    state = tracked.load("upload", progress_id="abc123")
    assert state is not None and (state.name, state.progress_id) == ("upload", "abc123")
    nameless = tracked.load(None, progress_id="abc123")
    assert nameless is not None and (nameless.name, nameless.progress_id) == (None, "abc123")


def test_a_template_naming_an_unknown_argument_fails_at_decoration() -> None:
    with pytest.raises(InvalidName, match="user_id"):

        @tracked.tracked(name="import-{user_id}")
        def do_import(account: int) -> None:
            pass


@pytest.mark.parametrize("name", ["", "x" * 600, "a\0b", "{0}", "{", 5])
def test_bad_names_fail_at_decoration(name: object) -> None:
    with pytest.raises(InvalidName):
        tracked.tracked(name=name)  # type: ignore[arg-type]


def test_a_bad_total_fails_at_decoration() -> None:
    with pytest.raises(InvalidValue):
        tracked.tracked(name="x", total=-5)


def test_a_callable_returning_a_bad_name_fails_at_the_call(file_store: FileStore) -> None:
    @tracked.tracked(name=lambda: "")
    def work() -> None:
        raise AssertionError("must not run")

    with pytest.raises(InvalidName):
        work()


# ------------------------------------------------------------------ introspection and methods


def test_the_decorated_function_keeps_its_identity() -> None:
    @tracked.tracked(name="intro")
    def documented(a: int, b: str = "x") -> Iterator[int]:
        """Docs."""
        yield a

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docs."
    assert str(inspect.signature(documented)) == "(a: 'int', b: 'str' = 'x') -> 'Iterator[int]'"
    assert inspect.isgeneratorfunction(documented)


class Importer:
    def __init__(self, ident: int) -> None:
        self.ident = ident

    @tracked.tracked(name="method-{self.ident}-{n}", total=lambda n: n)
    def run(self, n: int) -> Iterator[int]:
        yield from range(n)

    @classmethod
    @tracked.tracked(name="classmethod-{cls.__name__}")
    def run_class(cls) -> str:
        return cls.__name__

    @staticmethod
    @tracked.tracked(name="static-{x}")
    def run_static(x: int) -> int:
        return x + 1


def test_instance_class_and_static_methods_are_tracked(file_store: FileStore) -> None:
    assert list(Importer(5).run(3)) == [0, 1, 2]
    assert Importer.run_class() == "Importer"
    assert Importer.run_static(1) == 2
    assert Importer(6).run_static(2) == 3
    assert load("method-5-3").count == 3
    assert load("classmethod-Importer").state == "finished"
    assert load("static-1").state == "finished" and load("static-2").state == "finished"


def test_a_generator_body_sees_the_callers_context_even_when_iterated_later(
    file_store: FileStore,
) -> None:
    """A web server iterates a generator route after the request scope is reset."""
    seen = []

    @tracked.tracked(name="late")
    def job() -> Iterator[int]:
        scope = request_scope.get()
        seen.append(None if scope is None else scope.progress_id)
        yield 1

    token = request_scope.set(RequestScope(progress_id="p1"))
    gen = job()
    request_scope.reset(token)
    assert list(gen) == [1]
    assert seen == ["p1"]


# ------------------------------------------------------------------ async


def test_a_coroutine_function_is_running_while_awaited_and_finished_after(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="async-{n}", total=lambda n: n)
    async def work(n: int) -> str:
        for _ in range(n):
            await asyncio.sleep(0)
            tracked.current().increment()
        assert tracked.is_running(f"async-{n}")
        return "done"

    assert inspect.iscoroutinefunction(work)
    assert asyncio.run(work(3)) == "done"
    state = load("async-3")
    assert (state.count, state.state) == (3, "finished")


def test_calling_a_coroutine_function_claims_so_a_conflict_raises_at_the_call(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="async-claim")
    async def work() -> None:
        pass

    first = work()
    with pytest.raises(AlreadyRunning):
        work()
    asyncio.run(first)
    assert load("async-claim").state == "finished"


def test_a_cancelled_task_ends_cancelled_and_a_failing_one_failed(file_store: FileStore) -> None:
    @tracked.tracked(name="async-{what}")
    async def work(what: str) -> None:
        if what == "fails":
            raise ValueError("no")
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(work("hangs"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ValueError):
            await work("fails")

    asyncio.run(main())
    assert load("async-hangs").state == "cancelled"
    assert (load("async-fails").state, load("async-fails").error) == ("failed", "ValueError: no")


def test_an_async_generator_counts_each_yield_and_strings_become_messages(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="agen", total=3)
    async def rows() -> AsyncIterator[object]:
        assert tracked.current().name == "agen"
        yield "one"
        await asyncio.sleep(0)
        yield 2
        yield "three"

    async def main() -> list[object]:
        return [item async for item in rows()]

    assert inspect.isasyncgenfunction(rows)
    assert asyncio.run(main()) == ["one", 2, "three"]
    state = load("agen")
    assert (state.count, state.messages, state.state) == (3, ("one", "three"), "finished")


def test_an_async_generator_closed_early_ends_cancelled(file_store: FileStore) -> None:
    @tracked.tracked(name="agen-closed")
    async def rows() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def main() -> None:
        generator = rows()
        assert await generator.__anext__() == 1
        await generator.aclose()

    asyncio.run(main())
    state = load("agen-closed")
    assert (state.state, state.count) == ("cancelled", 1)


# ------------------------------------------------------------------ what a generator yields


def test_only_non_empty_strings_become_messages_without_their_line_break(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="items", total=None)
    def job() -> Iterator[object]:
        yield ""
        yield "line\n"
        yield "windows\r\n"
        yield "\n"
        yield None
        yield 5
        yield b"bytes\n"
        yield "keeps inner\nbreaks"

    assert list(job())[:2] == ["", "line\n"]  # what is yielded passes unchanged
    state = load("items")
    assert state.count == 8
    assert state.messages == ("line", "windows", "keeps inner\nbreaks")
    assert state.message_count == 3


class _Hostile(str):
    """A str subclass whose comparisons raise: it must be stored as plain text."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("compared")

    __hash__ = str.__hash__


@pytest.mark.parametrize("blank", ["", "\n", "\r\n", None])
def test_texts_sorting_below_a_line_break_are_counted_exactly(
    file_store: FileStore, blank: str | None
) -> None:
    low = ["\tindented", "\x01control", "\r", " space"]  # all sort at or near the blanks

    @tracked.tracked(name="low-texts", total=None)
    def job() -> Iterator[object]:
        yield from low
        if blank is not None:
            yield blank
        yield "last"

    list(job())
    state = load("low-texts")
    assert state.messages == ("\tindented", "\x01control", "\r", " space", "last")
    assert state.message_count == 5


def test_str_subclasses_are_stored_as_plain_text_whatever_they_override(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="subclass-texts", total=None)
    def job() -> Iterator[object]:
        yield _Hostile("yielded")
        tracked.current().add_message(_Hostile("added"), _Hostile("\n"))

    assert [type(item) for item in job()] == [_Hostile]
    state = load("subclass-texts")
    assert state.state == "finished"
    assert state.messages == ("yielded", "added")
    assert state.message_count == 2


def test_any_exception_while_iterating_ends_the_run_failed_with_its_error(
    file_store: FileStore,
) -> None:
    @tracked.tracked(name="broken-items", total=None)
    def job() -> Iterator[object]:
        yield None
        yield 1
        raise LookupError("item 3 is missing")

    with pytest.raises(LookupError):
        list(job())
    state = load("broken-items")
    assert (state.count, state.state, state.error) == (
        2,
        "failed",
        "LookupError: item 3 is missing",
    )
