"""``tracked.submit``: run a ``@tracked`` call on a bounded pool of threads.

The progress is claimed by the caller, so a conflict raises ``AlreadyRunning``
where a route can still answer 409, and the record (status ``"queued"``) exists
before ``submit`` returns. The call then runs on one of at most ``max_workers``
daemon threads, in a copy of the caller's context: the request scope (the
client's progress_id, the app's store) reaches the job. At interpreter exit,
runs still queued end ``cancelled``; running ones are waited for up to
``exit_timeout`` seconds, and those still running then end ``cancelled`` too,
so no record is left ``running`` by a process that is gone.
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
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from ._decorator import _drive, _Spec, returned
from ._progress import Progress, current_progress
from ._scope import jobs as settings

__all__ = ["QUEUED_STATUS", "submit"]

logger = logging.getLogger("tracked")

#: The status of a submitted run until a pool thread starts it.
QUEUED_STATUS = "queued"


def submit(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Progress:
    """Claim the progress of ``func(*args, **kwargs)`` here, run it on a pool thread.

    ``func`` is a ``@tracked`` function or generator function (a generator is run
    to exhaustion). Raises what claiming raises (``AlreadyRunning``,
    ``InvalidName``, ``StoreError``) in the caller, before anything runs. The run
    reads ``state: running, status: "queued"`` until a thread is free (at most
    ``tracked.configure(max_workers=...)``, default 4), then the default status.
    Returns the live handle: read ``key``, ``name``, ``progress_id``,
    ``snapshot()``; ``wait(timeout)`` returns the call's return value or raises
    its exception.
    """
    spec, wrapped, instance, kind = _target(func)
    pool = _current_pool()
    if pool.closed:
        raise RuntimeError("tracked.submit() after the interpreter started to exit")
    context = contextvars.copy_context()
    call: Callable[[], Any]
    if kind == "generator":
        generator = wrapped(*args, **kwargs)  # runs none of its body yet
        try:
            progress = spec.start(wrapped, instance, args, kwargs, status=QUEUED_STATUS)
        except BaseException:
            generator.close()
            raise
        progress._end_on_collect = "cancelled"
        steps = context.copy()
        steps.run(current_progress.set, progress)
        call = functools.partial(_exhaust, progress, _drive(generator, progress, steps))
    else:
        progress = spec.start(wrapped, instance, args, kwargs, status=QUEUED_STATUS)
        call = functools.partial(_call, progress, wrapped, args, kwargs)
    job = _Job(progress, call, context)
    progress._job = job
    progress._cancel_hooks.append(functools.partial(pool.drop, job))
    pool.put(job)
    return progress


def _target(func: Callable[..., Any]) -> tuple[_Spec, Callable[..., Any], Any, str]:
    """What ``@tracked`` made of ``func``: its spec, the wrapped callable, the bound
    instance, and whether it is a ``"function"`` or a ``"generator"`` function."""
    wrapper = getattr(func, "_self_wrapper", None)  # wrapt's name for the wrapper function
    spec = getattr(wrapper, "__self__", None)
    if not isinstance(spec, _Spec):
        raise TypeError(
            f"tracked.submit() runs a @tracked function, not {func!r}: decorate it with"
            " @tracked.tracked(...) (the run's name, total and progress_id come from there)"
        )
    method = getattr(wrapper, "__func__", None)
    if method is _Spec.call:
        kind = "function"
    elif method is _Spec.call_generator:
        kind = "generator"
    else:
        raise TypeError(
            f"tracked.submit() runs functions and generator functions on threads; "
            f"await {func!r} (a coroutine or async generator function) instead"
        )
    wrapped: Callable[..., Any] = func.__wrapped__  # type: ignore[attr-defined]
    return spec, wrapped, getattr(func, "_self_instance", None), kind


def _started(progress: Progress) -> None:
    """A pool thread took the run: it is no longer queued."""
    if progress.status == QUEUED_STATUS:
        progress.status = None


def _call(
    progress: Progress, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    _started(progress)
    with progress:
        return returned(progress, wrapped(*args, **kwargs))


def _exhaust(progress: Progress, steps: Generator[Any, Any, Any]) -> Any:
    """Run a ``@tracked`` generator to its end; return its ``return`` value."""
    _started(progress)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


class _Job:
    """One submitted run: the call, the context it runs in, and how it ended."""

    __slots__ = ("call", "cancelled", "context", "done", "error", "progress", "value")

    def __init__(
        self, progress: Progress, call: Callable[[], Any], context: contextvars.Context
    ) -> None:
        self.progress = progress
        self.call = call
        self.context = context
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
            self.call = _ran  # drop the arguments and the generator
            self.done.set()

    def cancel_queued(self) -> None:
        """End a run that never started as ``cancelled``."""
        self.cancelled = True
        self.call = _ran
        _started(self.progress)
        self.progress.cancel()
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

    def put(self, job: _Job) -> None:
        with self.cond:
            if self.closed:
                refused = True
            else:
                refused = False
                self.queue.append(job)
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

    def work(self) -> None:
        me = threading.current_thread()
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.idle += 1
                    try:
                        self.cond.wait()
                    finally:
                        self.idle -= 1
                if self.closed or len(self.threads) > settings.max_workers:
                    self.threads.discard(me)  # closing, or max_workers was lowered
                    if self.queue:
                        self.cond.notify()
                    return
                job = self.queue.popleft()
                stopped = job.progress.cancel_requested  # asked to stop while queued
                if not stopped:
                    self.running.add(job)
            if stopped:
                job.cancel_queued()  # it never starts
                continue
            try:
                job.run()
            finally:
                with self.cond:
                    self.running.discard(job)

    def drop(self, job: _Job) -> None:
        """A cancel request reached a run: if it is still queued, it never starts."""
        with self.cond:
            try:
                self.queue.remove(job)
            except ValueError:
                return  # running (it stops at its next yield or check()) or done
        job.cancel_queued()

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
            _started(job.progress)
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
