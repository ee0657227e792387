"""``tracked.track()``: count the items of any iterable, as ``rich.progress.track`` does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ._adopt import (
    caller_frame,
    caller_name,
    claim_driver,
    live_progress,
    make_current,
    release_driver,
    restore_current,
)
from ._api import start
from ._progress import Progress
from ._scope import StoreSpec, request_scope, resolve_store
from ._state import check_total, make_key

__all__ = ["track"]

T = TypeVar("T")


def track(
    iterable: Iterable[T],
    name: str | None = None,
    total: int | None = None,
    *,
    description: str | None = None,
    store: StoreSpec | None = None,
    min_interval: float = 0.1,
    max_messages: int = 1000,
    messages: bool = False,
) -> Iterator[T]:
    """Yield the items of ``iterable``, counting each one when the loop asks for the next.

    ``total`` defaults to ``len(iterable)`` when it has a length, else unknown.
    ``description`` becomes the status. With ``messages=True`` each ``str`` item is
    also added as a message as it is handed out; off by default, because the items
    of an existing loop are its data (lines, rows, paths), not text for people.

    Outside a live progress, or given a ``name``, it starts its own progress at the
    first item (the name defaults to the caller's module and qualified name, or
    the client's progress_id in a web request), which is ``tracked.current()`` in
    the loop body. It ends ``finished`` when the iterable is exhausted, ``failed``
    if the iterable raises, and ``cancelled`` if the loop stops early: a ``break``
    and an exception in the loop body both close the generator, and it cannot tell
    them apart. Wrap the loop in ``tracked.start()`` for other endings.

    Without a ``name`` inside a live progress it drives that progress instead: it
    counts into it, sets its total to its count so far plus this loop's length
    (when known), sets its status to ``description`` if given, and leaves ending it
    to its owner; ``store``, ``min_interval`` and ``max_messages`` are then unused.
    A loop nested in another loop or bar that already counts into the same
    progress does not count (its ``str`` items still become messages with
    ``messages=True``).
    """
    if total is None:
        total = _length(iterable)
    else:
        check_total(total)
    if name is None:
        live = live_progress()
        if live is not None:
            return _drive(iterable, live, total, description, messages)
        name = caller_name(caller_frame(1))
    # Resolved now, not at the first item: a web server may iterate after the
    # request (and its progress_id and store) is gone.
    scope = request_scope.get()
    progress_id = scope.progress_id if scope is not None else None
    make_key(name, progress_id)  # a bad name fails here, at the call
    opened = resolve_store(store)

    def begin() -> Progress:
        return start(
            name,
            total,
            status=description,
            progress_id=progress_id,
            store=opened,
            min_interval=min_interval,
            max_messages=max_messages,
        )

    return _own(iterable, begin, messages)


def _own(iterable: Iterable[T], begin: Callable[[], Progress], messages: bool) -> Iterator[T]:
    progress = begin()
    token = make_current(progress)
    driver = object()
    claim_driver(progress, driver)
    outcome: BaseException | None = None
    try:
        yield from progress.counted(iterable, messages)
    except BaseException as exc:
        outcome = exc
        raise
    finally:
        release_driver(progress, driver)
        restore_current(token)
        progress.end_by(outcome)


def _drive(
    iterable: Iterable[T],
    progress: Progress,
    total: int | None,
    description: str | None,
    messages: bool,
) -> Iterator[T]:
    if description is not None:
        progress.status = description
    driver = object()
    if not claim_driver(progress, driver):  # an outer loop or bar counts already
        if messages:
            for item in iterable:
                if isinstance(item, str):
                    progress.add_message(item)
                yield item
        else:
            yield from iterable
        return
    try:
        if total is not None:
            progress.total = progress.count + total
        yield from progress.counted(iterable, messages)
    finally:
        release_driver(progress, driver)


def _length(iterable: Iterable[object]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
