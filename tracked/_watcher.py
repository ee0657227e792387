"""The base of change notification (see ``_watch``): a ``Subscription`` that a thread or
an asyncio task waits on, and the ``Watcher`` that wakes the subscriptions of one store
(the base class polls; ``_watch`` and ``_redis_watch`` hold the stores' own watchers).
"""

from __future__ import annotations

import asyncio
import threading
import time

import tracked

__all__ = ["FILE_INTERVAL", "Change", "Subscription", "Watcher", "wake_loops"]

#: Seconds between two ``stat`` calls on a followed file record.
FILE_INTERVAL = 0.05

#: What a wake-up says: whether something changed, and the new state when known.
Change = tuple[bool, "tracked.State | None"]


class Subscription:
    """One stream's interest in one key: woken by its store's watcher."""

    __slots__ = ("_cond", "_latest", "_lock", "_pending", "_waiters", "key", "watcher")

    def __init__(self, watcher: Watcher, key: str) -> None:
        self.watcher = watcher
        self.key = key
        self._lock = threading.Lock()
        # Made by the first blocking ``wait``: a stream driven on an event loop never
        # needs one, and a Condition costs about 1 KiB (a dict of bound methods, a deque).
        self._cond: threading.Condition | None = None
        self._pending = False
        self._latest: tracked.State | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self, state: tracked.State | None = None) -> None:
        """Something wrote ``key`` (``state``: what was written, when known)."""
        wake_loops(self.mark(state))

    def mark(
        self, state: tracked.State | None
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """Record a change and wake waiting threads; the loop waiters still to wake."""
        with self._lock:
            # Two changes before the stream looked: the state in hand misses the first.
            self._latest = state if not self._pending else None
            self._pending = True
            if self._cond is not None:
                self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        return waiters

    def take(self) -> Change:
        """Whether a change arrived since the last ``take`` (and its state), resetting it."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> Change:
        change = (self._pending, self._latest)
        self._pending = False
        self._latest = None
        return change

    def wait(self, timeout: float) -> Change:
        """Block up to ``timeout`` seconds for a change; then ``take()`` it."""
        with self._lock:
            if not self._pending and timeout > 0:
                if self._cond is None:
                    self._cond = threading.Condition(self._lock)
                self._cond.wait(timeout)
        return self.take()

    async def wait_async(self, timeout: float) -> Change:
        """Wait up to ``timeout`` seconds on the running loop, holding no thread.

        One future and one timer per wait (no ``wait_for`` task machinery): with a
        thousand streams woken at once, each wake-up is the loop's cheapest."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._pending or timeout <= 0:
                return self._take_locked()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        timer = loop.call_later(timeout, _resolve_one, future)
        try:
            await future
        finally:
            timer.cancel()
            if not future.done() or self._waiters:
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[1] is not future]
        return self.take()

    def close(self) -> None:
        """Stop following the key."""
        self.watcher.unsubscribe(self)


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _resolve_one(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def wake_loops(
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]],
    here: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Resolve waiting futures: those of ``here`` (the loop running this call) at
    once, the others with one hand-off per event loop (not one per stream)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        if loop is here:
            if not future.done():
                future.set_result(None)
        else:
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # the loop is closed: its streams are gone
            pass


class Watcher:
    """Wakes the subscriptions of one store when a followed key may have changed.

    The base class polls: its thread wakes every subscription every
    ``FILE_INTERVAL`` (a store without a change signal is re-read that often).
    """

    interval = FILE_INTERVAL

    def __init__(self, store: tracked.Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._thread: threading.Thread | None = None

    def subscribe(self, key: str) -> Subscription:
        """Follow ``key`` from now on: changes after this call wake the subscription."""
        sub = Subscription(self, key)
        with self._lock:
            first = key not in self._subs
            self._subs.setdefault(key, set()).add(sub)
            self._start()
        if first:
            self._added(key)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            last = not subs
            if last:
                del self._subs[sub.key]
        if last:
            self._removed(sub.key)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._subs)

    def notify(self, key: str, state: tracked.State | None = None) -> None:
        """Wake every subscription to ``key``."""
        with self._lock:
            subs = list(self._subs.get(key, ()))
        waiters = []
        for sub in subs:
            waiters.extend(sub.mark(state))
        wake_loops(waiters)

    # ------------------------------------------------------------------ per-store hooks

    def _start(self) -> None:
        """Start the thread on first use (called with the lock held)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name=f"tracked-watch-{type(self.store).__name__}", daemon=True
            )
            self._thread.start()

    def _added(self, key: str) -> None:
        """A first subscription to ``key``."""

    def _removed(self, key: str) -> None:
        """The last subscription to ``key`` ended."""

    def _idle(self) -> bool:
        """True (and the thread forgotten) when nothing is followed: the thread ends."""
        with self._lock:
            if self._subs:
                return False
            self._thread = None
            return True

    def _run(self) -> None:
        while not self._idle():
            time.sleep(self.interval)
            for key in self.keys():
                self.notify(key)
