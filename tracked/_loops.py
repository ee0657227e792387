"""The per-item loops of ``@tracked``: ``drive`` (a generator) and its twin
``drive_async`` count every yield, with no call on that path but after a write;
``awaiting`` a coroutine; ``SizedGenerator`` gives a generator with a known total
its length. They act on a handle through its ``RunControl`` methods, and read
and set its ``_clean`` and ``_yields`` directly: those two are the per-yield path.
"""

from __future__ import annotations

import collections.abc
import contextvars
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import Any

from ._progress import (
    Progress,
    current_progress,
)

__all__ = ["SizedGenerator", "awaiting", "drive", "drive_async", "returned"]

_NoneType = type(None)


def drive(
    generator: Generator[Any, Any, Any], progress: Progress, context: contextvars.Context
) -> Generator[Any, Any, Any]:
    """Yield what ``generator`` yields, counting each item; forward send, throw and close.

    The inner generator runs in ``context``, the caller's context at the call with
    ``tracked.current()`` set to ``progress``, whoever iterates it and whenever.
    ``drive_async`` is its twin: the two differ only where ``await`` does.
    """
    run = context.run
    send, throw = generator.send, generator.throw
    push, none, text = progress.feeder(), _NoneType, str
    step: Callable[[Any], Any] = send
    argument: Any = None
    count = 0
    stopping = False
    while True:
        try:
            item = run(step, argument)
        except StopIteration as stop:
            return _finished(progress, stop.value)
        except BaseException as exc:
            progress.end_by(exc)
            raise
        count += 1
        progress._yields = count
        kind = item.__class__
        if kind is text:
            push(item)
        elif kind is not none and isinstance(item, text):
            push(text.__str__(item))  # a str subclass: kept as a plain copy
        if progress._clean and progress.written() and not stopping:
            # Asked to stop: thrown in at this yield instead of handing the item on.
            stopping = True
            step, argument = _refused(throw, progress), progress.deliver()
            continue
        try:
            argument = yield item
            step = send
        except GeneratorExit:
            _close(run, generator, progress)
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: pass it on
            step, argument = throw, exc


async def drive_async(
    generator: AsyncGenerator[Any, Any], progress: Progress
) -> AsyncGenerator[Any, Any]:
    """The async twin of ``drive``: count each item, forward asend, athrow and aclose.

    Each step runs in the awaiting task's context, with ``progress`` made current
    for the step only.
    """
    asend, athrow = generator.asend, generator.athrow
    push, none, text = progress.feeder(), _NoneType, str
    step: Callable[[Any], Awaitable[Any]] = asend
    argument: Any = None
    count = 0
    stopping = False
    while True:
        token = current_progress.set(progress)
        try:
            item = await step(argument)
        except StopAsyncIteration:
            _finished(progress, None)
            return
        except BaseException as exc:
            progress.end_by(exc)
            raise
        finally:
            current_progress.reset(token)
        count += 1
        progress._yields = count
        kind = item.__class__
        if kind is text:
            push(item)
        elif kind is not none and isinstance(item, text):
            push(text.__str__(item))  # a str subclass: kept as a plain copy
        if progress._clean and progress.written() and not stopping:
            stopping = True
            step, argument = _refused_async(athrow, progress), progress.deliver()
            continue
        try:
            argument = yield item
            step = asend
        except GeneratorExit:
            await _close_async(generator, progress)
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: pass it on
            step, argument = athrow, exc


def _finished(progress: Progress, value: Any) -> Any:
    """A driven generator returned ``value``: its result, and the run finishes."""
    returned(progress, value)
    progress.finish()
    return value


def _close(
    run: Callable[..., Any], generator: Generator[Any, Any, Any], progress: Progress
) -> None:
    """The consumer closed a driven generator: close the inner one; the run is cancelled."""
    try:
        run(generator.close)
    except BaseException as exc:
        progress.end_by(exc)
        raise
    progress.cancel()


async def _close_async(generator: AsyncGenerator[Any, Any], progress: Progress) -> None:
    """The async twin of ``_close``."""
    try:
        await generator.aclose()
    except BaseException as exc:
        progress.end_by(exc)
        raise
    progress.cancel()


def _refused(throw: Callable[[BaseException], Any], progress: Progress) -> Callable[[Any], Any]:
    """``throw``, for the one ``Cancelled`` thrown in at a yield: if the generator
    catches it and yields again, it went on working, so the run is no longer one
    that stopped on request (it reads its own end, ``cancel_requested`` true)."""

    def step(cancelled: BaseException) -> Any:
        item = throw(cancelled)
        progress.undeliver()
        return item

    return step


def _refused_async(
    athrow: Callable[[BaseException], Awaitable[Any]], progress: Progress
) -> Callable[[Any], Awaitable[Any]]:
    """The async twin of ``_refused``."""

    async def step(cancelled: BaseException) -> Any:
        item = await athrow(cancelled)
        progress.undeliver()
        return item

    return step


class SizedGenerator(collections.abc.Generator):  # type: ignore[type-arg]
    """What a ``@tracked`` generator function with a known total returns: its
    generator, plus the number of items still to come (``len()``, ``__length_hint__``).

    ``iter()`` of it is the generator itself, so ``for`` loops, ``tqdm`` and
    ``list()`` step the generator directly: the length costs nothing per item.
    ``next()``, ``send``, ``throw`` and ``close`` are forwarded; it is always true,
    as a generator is, even when no items are left.
    """

    __slots__ = ("_generator", "_progress")

    def __init__(self, generator: Generator[Any, Any, Any], progress: Progress) -> None:
        self._generator = generator
        self._progress = progress

    def __iter__(self) -> Generator[Any, Any, Any]:
        return self._generator

    def __next__(self) -> Any:
        return self._generator.__next__()

    def send(self, value: Any) -> Any:
        return self._generator.send(value)

    def throw(self, *args: Any) -> Any:
        return self._generator.throw(*args)

    def close(self) -> None:
        self._generator.close()

    def __len__(self) -> int:
        """The items still to come: the total less the items yielded, 0 once ended."""
        progress = self._progress
        total = progress.total
        if total is None:
            raise TypeError("this tracked generator's total is unknown now: it has no len()")
        if not progress.in_progress:
            return 0
        return max(0, total - progress.yielded())

    def __length_hint__(self) -> int:
        try:
            return len(self)
        except TypeError:
            return NotImplemented  # type: ignore[no-any-return]

    def __bool__(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        if name in SizedGenerator.__slots__:
            raise AttributeError(name)  # not set yet (a copy being made): no recursion
        return getattr(self._generator, name)  # gi_frame, gi_running, __name__...

    def __repr__(self) -> str:
        return f"<tracked generator {self._progress.key!r}, {self._generator!r}>"


async def awaiting(coroutine: Coroutine[Any, Any, Any], progress: Progress) -> Any:
    """Await ``coroutine`` with ``progress`` current; end it the way the coroutine ends."""
    token = current_progress.set(progress)
    _cancel_task_on_request(progress)
    try:
        result = await coroutine
    except BaseException as exc:
        progress.end_by(exc)
        raise
    finally:
        try:
            current_progress.reset(token)
        except ValueError:  # closed from outside its task (its loop closed with it pending)
            pass
    returned(progress, result)
    progress.finish()
    return result


def _cancel_task_on_request(progress: Progress) -> None:
    """Have a cancel request cancel the asyncio task awaiting the coroutine (from the
    flusher's thread, so thread-safely): it stops at its next await."""
    asyncio = sys.modules.get("asyncio")  # not imported: no asyncio task awaits this
    if asyncio is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio, a manual send): cooperative only
        return
    task = asyncio.current_task(loop)
    if task is None:
        return

    def cancel_task() -> None:  # on the loop's thread: the coroutine may have ended since
        if progress.in_progress:
            progress.deliver()  # its CancelledError is the request's: the run ends cancelled
            task.cancel()

    progress.add_cancel_hook(lambda: loop.call_soon_threadsafe(cancel_task))


def returned(progress: Progress, value: Any) -> Any:
    """Make a run's return value its result, unless it is None; pass it on."""
    if value is not None:
        progress.result = value
    return value
