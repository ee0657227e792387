"""A ``@tracked`` generator function with a known total returns an iterator that
reports the items still to come, so ``tqdm(gen())`` and ``list(gen())`` see it."""

from __future__ import annotations

import inspect
import operator
import os
from collections.abc import Iterator

import pytest
from tqdm import tqdm

import tracked


@tracked.tracked("rows", total=5)
def rows() -> Iterator[int]:
    yield from range(5)


@tracked.tracked("sized-by-argument", total=lambda n: n)
def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def test_len_is_the_total_less_the_items_yielded_and_zero_once_ended(file_store: object) -> None:
    gen = rows()
    assert len(gen) == 5 and operator.length_hint(gen) == 5
    assert next(gen) == 0
    assert len(gen) == 4
    assert list(gen) == [1, 2, 3, 4]
    assert len(gen) == 0
    assert bool(gen)  # always true, as a generator is


def test_tqdm_of_a_tracked_generator_shows_its_total(file_store: object) -> None:
    with open(os.devnull, "w") as devnull:
        bar = tqdm(numbers(300), file=devnull)
        assert bar.total == 300
        assert sum(1 for _ in bar) == 300
    assert tracked.load("sized-by-argument").count == 300  # type: ignore[union-attr]


def test_list_of_a_tracked_generator_is_right_when_its_total_is_wrong(file_store: object) -> None:
    @tracked.tracked("too-few", total=10)
    def fewer() -> Iterator[int]:
        yield from range(3)

    @tracked.tracked("too-many", total=2)
    def more() -> Iterator[int]:
        yield from range(6)

    gen = fewer()
    assert list(gen) == [0, 1, 2] and len(gen) == 0  # ended: no items to come
    gen = more()
    assert list(gen) == list(range(6)) and len(gen) == 0


def test_without_a_given_total_it_is_the_plain_generator_with_no_len(file_store: object) -> None:
    @tracked.tracked("percent")  # the default total is 100, a percentage, not a length
    def percent() -> Iterator[int]:
        yield 1

    @tracked.tracked("unknown", total=None)
    def unknown() -> Iterator[int]:
        yield 1

    for gen in (percent(), unknown()):
        assert inspect.isgenerator(gen)
        with pytest.raises(TypeError):
            len(gen)  # type: ignore[arg-type]
        assert operator.length_hint(gen, -1) == -1
        assert list(gen) == [1]


def test_len_follows_a_total_the_generator_changes_and_refuses_an_unknown_one(
    file_store: object,
) -> None:
    @tracked.tracked("changes", total=3)
    def changes() -> Iterator[int]:
        tracked.current().total = 8
        yield 1
        tracked.current().total = None
        yield 2

    gen = changes()
    assert len(gen) == 3
    next(gen)
    assert len(gen) == 7
    next(gen)
    with pytest.raises(TypeError, match="total is unknown"):
        len(gen)
    assert operator.length_hint(gen, -1) == -1


def test_send_throw_and_close_reach_the_generator(file_store: object) -> None:
    @tracked.tracked("echo", total=3)
    def echo() -> Iterator[object]:
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "thrown"

    gen = echo()
    assert next(gen) is None
    assert gen.send("hello") == "hello"
    assert gen.throw(ValueError("x")) == "thrown"
    assert gen.gi_running is False
    gen.close()
    state = tracked.load("echo")
    assert state is not None and state.state == "cancelled" and state.count == 3
