"""``tracked.submit``: run a ``@tracked`` call off the caller, on a bounded pool of threads.

The progress is claimed by the caller, so a conflict raises ``AlreadyRunning``
where a route can still answer 409, and the record exists before ``submit``
returns: ``state: "queued"`` with its ``position`` (1 = next) while it waits
for one of at most ``max_workers`` daemon threads, ``running`` once one takes
it. It runs in a copy of the caller's context: the request scope (the client's
progress_id, the app's store) reaches the job. A queued record is owned by the
submitting process, whose in-memory queue dies with it: if the process dies,
readers see it ``abandoned``, as any run of a dead owner. At interpreter exit,
runs still queued end ``cancelled``; running ones are waited for up to
``exit_timeout`` seconds, and those still running then end ``cancelled`` too,
so no record is left ``running`` by a process that is gone.

Coroutine and async generator functions submitted inside a running event loop
run as a task on that loop; outside one, on the pool, each in a loop of its own.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextvars
import functools
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from ._decorator import Spec
from ._loops import awaiting, drive, drive_async, returned
from ._progress import (
    Progress,
    current_progress,
)
from ._scope import jobs as settings

if TYPE_CHECKING:
    import asyncio

__all__ = ["submit", "submit_child"]

logger = logging.getLogger("tracked")


def submit(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Progress:
    """Claim the progress of ``func(*args, **kwargs)`` here, run it off the caller.

    ``func`` is a ``@tracked`` function, generator function, coroutine function
    or async generator function (a generator is run to exhaustion). Raises what
    claiming raises (``AlreadyRunning``, ``InvalidName``, ``StoreError``) in the
    caller, before anything runs. A run waiting for a pool thread (at most
    ``tracked.configure(max_workers=...)``, default 4) reads ``state: "queued"``
    with its ``position`` in line (1 = next), then ``running``. Called inside a
    running event loop, a coroutine (or async generator) function runs as a task
    on that loop instead, held until it ends. Returns the live handle: read
    ``key``, ``name``, ``progress_id``, ``snapshot()``; ``wait(timeout)`` returns
    the call's return value or raises its exception.
    """
    return _submit(None, func, args, kwargs)


def submit_child(group: str, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Progress:
    """``submit`` as a child of the group whose token is ``group`` (``Group.submit``)."""
    return _submit(group, func, args, kwargs)


def _submit(
    group: str | None, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Progress:
    spec, wrapped, instance, kind = _target(func)
    _held.end_orphans()
    if kind in ("coroutine", "async generator"):
        loop = _running_loop()
        if loop is not None:
            return _submit_to_loop(loop, spec, wrapped, instance, kind, args, kwargs, group)
    pool = _current_pool()
    if pool.closed:
        raise RuntimeError(
            f"tracked.submit({_qualname(func)}) after the interpreter started to exit"
        )
    context = contextvars.copy_context()
    position = pool.waiting() + 1
    call: Callable[[], Any]
    discard: Callable[[], object] = _ran
    if kind == "function":
        progress = spec.start(wrapped, instance, args, kwargs, position=position, group=group)
        call = functools.partial(_call, progress, wrapped, args, kwargs)
    else:
        made = wrapped(*args, **kwargs)  # runs none of its body yet
        try:
            progress = spec.start(wrapped, instance, args, kwargs, position=position, group=group)
        except BaseException:
            if kind != "async generator":
                made.close()
            raise
        progress.cancel_on_collect()
        if kind == "generator":
            steps = context.copy()
            steps.run(current_progress.set, progress)
            call = functools.partial(_exhaust, progress, drive(made, progress, steps))
        elif kind == "coroutine":
            runner = awaiting(made, progress)
            call = functools.partial(_run_in_own_loop, progress, runner)
            discard = functools.partial(_close_all, runner, made)
        else:
            runner = _exhaust_async(drive_async(made, progress))
            call = functools.partial(_run_in_own_loop, progress, runner)
            discard = runner.close
    job = _Job(progress, call, context, discard)
    progress.attach_job(job)
    progress.add_cancel_hook(functools.partial(pool.drop, job))
    pool.put(job)
    return progress


def _qualname(func: Callable[..., Any]) -> str:
    """The user's function as errors name it: ``module.Class.method``."""
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _target(func: Callable[..., Any]) -> tuple[Spec, Callable[..., Any], Any, str]:
    """What ``@tracked`` made of ``func``: its spec, the wrapped callable, the bound
    instance, and whether it is a ``"function"``, a ``"generator"``, a ``"coroutine"``
    or an ``"async generator"`` function."""
    wrapper = getattr(func, "_self_wrapper", None)  # wrapt's name for the wrapper function
    spec = getattr(wrapper, "__self__", None)
    if not isinstance(spec, Spec):
        raise TypeError(
            f"tracked.submit() runs a @tracked function, not {_qualname(func)}: decorate it"
            " with @tracked.tracked(...) (the run's name, total and progress_id come from there)"
        )
    kind = _KINDS[wrapper.__func__]  # type: ignore[union-attr]
    wrapped: Callable[..., Any] = func.__wrapped__  # type: ignore[attr-defined]
    return spec, wrapped, getattr(func, "_self_instance", None), kind


_KINDS = {
    Spec.call: "function",
    Spec.call_generator: "generator",
    Spec.call_coroutine: "coroutine",
    Spec.call_async_generator: "async generator",
}


def _call(
    progress: Progress, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    progress.take_up()
    with progress:
        return returned(progress, wrapped(*args, **kwargs))


def _exhaust(progress: Progress, steps: Generator[Any, Any, Any]) -> Any:
    """Run a ``@tracked`` generator to its end; return its ``return`` value."""
    progress.take_up()
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


async def _exhaust_async(steps: AsyncGenerator[Any, Any]) -> None:
    """Run a ``@tracked`` async generator to its end (it has no return value)."""
    async for _ in steps:
        pass


def _run_in_own_loop(progress: Progress, runner: Coroutine[Any, Any, Any]) -> Any:
    """On a pool thread: run a coroutine job in an event loop of its own."""
    import asyncio

    progress.take_up()
    return asyncio.run(runner)


def _close_all(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """A coroutine job that never ran: close its coroutines, so none warns unawaited."""
    for coroutine in coroutines:
        coroutine.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any (asyncio imported: none without it)."""
    if "asyncio" not in sys.modules:
        return None
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _submit_to_loop(
    loop: asyncio.AbstractEventLoop,
    spec: Spec,
    wrapped: Callable[..., Any],
    instance: Any,
    kind: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    group: str | None = None,
) -> Progress:
    """Run a coroutine (or async generator) function as a task on the caller's loop."""
    made = wrapped(*args, **kwargs)  # runs none of its body yet
    close = made.close if kind == "coroutine" else _ran
    progress = spec.start_for(close, wrapped, instance, args, kwargs, group)
    runner = awaiting(made, progress) if kind == "coroutine" else _exhaust_async(
        drive_async(made, progress)
    )
    task = loop.create_task(runner)  # in a copy of this context: the request scope
    job = _LoopJob(progress, task, loop)
    progress.attach_job(job)
    _held.hold(job)
    return progress


class _LoopJob:
    """A submitted coroutine running as a task on the caller's event loop."""

    __slots__ = ("done", "loop", "progress", "task")

    def __init__(
        self, progress: Progress, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.progress = progress
        self.task = task
        self.loop = loop
        self.done = threading.Event()

    def wait(self, timeout: float | None) -> Any:
        if _running_loop() is self.loop:
            raise RuntimeError(
                f"progress {self.progress.key!r} runs on this event loop: waiting here would"
                " block it; await the task instead, or wait from another thread"
            )
        if not self.done.wait(timeout):
            raise TimeoutError(f"progress {self.progress.key!r} still runs after {timeout}s")
        if not self.task.done():  # its loop was closed with it pending: it never ends
            import asyncio

            raise asyncio.CancelledError(
                f"progress {self.progress.key!r}: its event loop closed before it ended"
            )
        return self.task.result()


#: Seconds between two looks for loops closed with a submitted task still pending.
ORPHAN_CHECK_S = 0.5


class _Held:
    """Strong references to the loop tasks of submitted coroutines (an event loop
    keeps only weak ones) until they end. A task whose loop was closed with it still
    pending never ends: its run is ended ``cancelled`` when that is noticed (by a
    watcher thread that lives while tasks are held, at the next submit, or at exit);
    it would otherwise read ``running`` for as long as the process lives."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: set[_LoopJob] = set()
        self.watching = False

    def hold(self, job: _LoopJob) -> None:
        with self.lock:
            self.jobs.add(job)
            start, self.watching = not self.watching, True
        if start:
            threading.Thread(target=self.watch, name="tracked-loop-watch", daemon=True).start()
        job.task.add_done_callback(functools.partial(self.release, job))

    def watch(self) -> None:
        """End the runs of closed loops every ``ORPHAN_CHECK_S``; stop once none is held."""
        while True:
            time.sleep(ORPHAN_CHECK_S)
            try:
                self.end_orphans()
            except Exception:  # a run that cannot be ended now is tried again
                logger.exception("cannot end the runs of closed event loops")
            with self.lock:
                if not self.jobs:
                    self.watching = False
                    return

    def release(self, job: _LoopJob, _task: object = None) -> None:
        with self.lock:
            self.jobs.discard(job)
        job.done.set()

    def end_orphans(self) -> None:
        if not self.jobs:
            return
        with self.lock:
            orphans = [j for j in self.jobs if j.loop.is_closed() and not j.task.done()]
            self.jobs.difference_update(orphans)
        for job in orphans:
            job.progress.cancel()  # its loop closed before it ended: it will never run on
            job.done.set()


_held = _Held()
atexit.register(lambda: _held.end_orphans())


def _fresh_held_in_child() -> None:
    """A forked child runs none of its parent's loops: it holds none of their tasks
    (and a parent thread may have held the lock at the fork)."""
    global _held
    _held = _Held()


class _Job:
    """One submitted run: the call, the context it runs in, and how it ended."""

    __slots__ = ("call", "cancelled", "context", "discard", "done", "error", "progress", "value")

    def __init__(
        self,
        progress: Progress,
        call: Callable[[], Any],
        context: contextvars.Context,
        discard: Callable[[], object] = lambda: None,
    ) -> None:
        self.progress = progress
        self.call = call
        self.context = context
        self.discard = discard  # what a job that never runs must close
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.cancelled = False

    def run(self) -> None:
        """Run the call on this (pool) thread; keep what it returned or raised."""
        try:
            self.value = self.context.run(self.call)
        except BaseException as exc:  # noqa: BLE001 - handed to wait(), and ended the run
            self.error = exc
        finally:
            self.call = self.discard = _ran  # drop the arguments and the generator
            self.done.set()

    def cancel_queued(self) -> None:
        """End a run that never started as ``cancelled`` (count 0: nothing ran)."""
        self.cancelled = True
        self.call = _ran
        discard, self.discard = self.discard, _ran
        self.progress.status = "cancelled before it started"
        self.progress.cancel()
        try:
            discard()
        except Exception:  # closing what never ran must not stop the cancel
            logger.debug("closing the unrun job %r failed", self.progress.key,
                         exc_info=True)
        self.done.set()

    def wait(self, timeout: float | None) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError(f"progress {self.progress.key!r} still runs after {timeout}s")
        if self.cancelled:
            raise concurrent.futures.CancelledError(
                f"progress {self.progress.key!r} was cancelled before it started"
            )
        if self.error is not None:
            raise self.error
        return self.value


def _ran() -> None:
    """What a job's call is replaced by once it has run."""


class _Pool:
    """At most ``settings.max_workers`` daemon threads taking jobs from one queue."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: collections.deque[_Job] = collections.deque()
        self.threads: set[threading.Thread] = set()
        self.running: set[_Job] = set()
        self.idle = 0
        self.closed = False
        self.pid = os.getpid()
        self.numbers = itertools.count(1)
        # Places in line: computed under `cond`, written to the handles under `moving`
        # in the order computed (a newer list is never overwritten by an older one).
        self.moving = threading.Lock()
        self.line_number = itertools.count(1).__next__
        self.line_applied = 0

    def waiting(self) -> int:
        """How many runs wait for a thread now."""
        return len(self.queue)

    def line(self) -> tuple[int, list[_Job]]:
        """The queue as it is now, numbered (call with ``cond`` held)."""
        return self.line_number(), list(self.queue)

    def reposition(self, numbered: tuple[int, list[_Job]]) -> None:
        """Give each waiting run its place (1 = next): O(queued) attribute writes; the
        flusher writes the changed records in its next batch."""
        number, jobs = numbered
        with self.moving:
            if number < self.line_applied:
                return  # a newer line was already given out
            self.line_applied = number
            for place, job in enumerate(jobs, 1):
                job.progress.move_in_line(place)

    def put(self, job: _Job) -> None:
        with self.cond:
            if self.closed:
                refused = True
            else:
                refused = False
                self.queue.append(job)
                numbered = self.line()
                if len(self.queue) > self.idle and len(self.threads) < settings.max_workers:
                    thread = threading.Thread(
                        target=self.work, name=f"tracked-job-{next(self.numbers)}", daemon=True
                    )
                    self.threads.add(thread)
                    thread.start()
                else:
                    self.cond.notify()
        if refused:
            job.cancel_queued()
        else:
            self.reposition(numbered)

    def work(self) -> None:
        """A pool thread: run the queued jobs in order, until the pool closes (or has
        more threads than ``max_workers`` now allows)."""
        me = threading.current_thread()
        while True:
            with self.cond:
                if not self.wait_for_job(me):
                    return
                job = self.queue.popleft()
                numbered = self.line() if self.queue else None
                # Asked to stop while queued, or ended by its handle's cancel(): never run.
                stopped = job.progress.cancel_requested or not job.progress.in_progress
                if not stopped:
                    self.running.add(job)
            if numbered is not None:
                self.reposition(numbered)
            if stopped:
                job.cancel_queued()  # it never starts
                continue
            try:
                job.run()
            finally:
                with self.cond:
                    self.running.discard(job)

    def wait_for_job(self, me: threading.Thread) -> bool:
        """With ``cond`` held: wait until a job is queued; False (the thread leaves the
        pool) once it is closing, or ``max_workers`` was lowered below its threads."""
        while not self.queue and not self.closed:
            self.idle += 1
            try:
                self.cond.wait()
            finally:
                self.idle -= 1
        if self.closed or len(self.threads) > settings.max_workers:
            self.threads.discard(me)
            if self.queue:
                self.cond.notify()
            return False
        return True

    def drop(self, job: _Job) -> None:
        """A cancel request reached a run: if it is still queued, it never starts."""
        with self.cond:
            try:
                self.queue.remove(job)
            except ValueError:
                return  # running (it stops at its next yield or check()) or done
            numbered = self.line()
        job.cancel_queued()
        self.reposition(numbered)

    def shutdown(self, timeout: float) -> None:
        """Cancel queued runs, wait up to ``timeout`` for running ones, cancel the rest."""
        with self.cond:
            self.closed = True
            queued = list(self.queue)
            self.queue.clear()
            threads = list(self.threads)
            self.cond.notify_all()
        for job in queued:
            job.cancel_queued()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self.cond:
            unfinished = list(self.running)
        for job in unfinished:
            logger.warning(
                "progress %r still ran %ss after the interpreter started to exit; "
                "ending it as cancelled",
                job.progress.key.replace("\0", "?progress_id="),
                timeout,
            )
            job.progress.cancel()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    """A thread of the parent may have held ``_pool_lock`` at a fork: the child's
    first ``submit`` would wait for it for ever."""
    global _pool_lock
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)
    os.register_at_fork(after_in_child=_fresh_held_in_child)


def _current_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # forked: the parent's threads are not ours
            _pool = _Pool()
        return _pool


@atexit.register
def _shutdown_at_exit() -> None:
    pool = _pool
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown(settings.exit_timeout)
