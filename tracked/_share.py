"""One progress across processes: ``Progress.share()`` and ``tracked.join()``.

The owner's process shares its run as a ``ShareToken`` (the store, the key and
the run id). A worker process joins with it and gets a handle of its own: its
increments and messages go into its own *part* of the run, which its flusher
writes at most once per ``min_interval`` and when the handle's block ends. A
part holds the worker's totals, never a delta, so rewriting it cannot count
twice; it is never the owner's record. Readers add the parts of a running
record to its state (``Store.with_parts``); the owner's end folds them into the
final snapshot, and parts written after that are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid

from . import _flusher
from ._progress import Progress
from ._state import State, make_key
from ._store import SharedPart, Store, judge
from .errors import StoreError

__all__ = ["JoinedProgress", "ShareToken", "join"]

logger = logging.getLogger("tracked")


@dataclasses.dataclass(frozen=True, slots=True)
class ShareToken:
    """What ``Progress.share()`` hands to workers: picklable, a few hundred bytes.

    ``store`` pickles as its location (a FileStore's directory; a RedisStore's URL
    or connection settings); ``run`` names the one run the workers add to, so a
    later run of the same name never receives their counts.
    """

    store: Store
    name: str | None
    progress_id: str | None
    run: str
    min_interval: float = 0.1
    max_messages: int = 1000

    @property
    def key(self) -> str:
        """The shared progress's storage key."""
        return make_key(self.name, self.progress_id)


class JoinedProgress(Progress):
    """A worker's handle on a shared run (see ``tracked.join``).

    ``increment``, ``+=``, ``add_message`` and ``count`` work as on any handle, on
    this worker's part: ``count`` and ``messages`` are what this handle added.
    Total, status and result stay the owner's (setting them here changes nothing
    others see). Ending it (its ``with`` block, ``finish()``) writes its part and
    stops it; it never ends the owner's run. Once the owner's run has ended, the
    handle is inert: ``in_progress`` is False and its updates are dropped.
    """

    __slots__ = ("_joined_pid", "_share_token", "_worker")

    def __init__(self, token: ShareToken) -> None:
        super().__init__(
            token.name,
            store=token.store,
            progress_id=token.progress_id,
            total=None,
            min_interval=token.min_interval,
            max_messages=token.max_messages,
        )
        self._share_token = token
        self._joined_pid = os.getpid()
        self._worker = f"{self._joined_pid}-{uuid.uuid4().hex[:16]}"

    def __repr__(self) -> str:
        return f"<JoinedProgress {self.key!r} part {self._worker} {self.count} {self._state}>"

    def _start(self) -> JoinedProgress:
        """Join: an inert handle if the run is no longer running, else a watched one."""
        record = self.store.read(self.key)
        state = None if record is None else judge(record)
        if state is None or record is None or record.owner is None:
            self._stop("finished")  # gone: pruned or deleted after it ended
            return self
        if record.owner.run != self._share_token.run or not state.in_progress:
            # Over: ended (its own state word), or replaced by a newer run of the name.
            self._stop(state.state if record.owner.run == self._share_token.run else "finished")
            return self
        self._clean = True  # nothing to write until the first update
        _flusher.watch(self)
        return self

    def _stop(self, state: str) -> None:
        """The run is over for this handle: freeze it; later updates are dropped."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._clean = False  # updates no longer reach the flusher
            self._state = state
            self._finished_time = time.time()
            self._final = self._snapshot_locked()
        _flusher.forget(self)

    def _end(self, state: str, error: str | None = None) -> None:
        """Leave the run: write this handle's part now; the owner's run goes on."""
        if self._ended:
            return
        self._write_part(ending=True)
        self._stop(state)

    def flush(self) -> bool:
        """Write this worker's part now; False if nothing was written (ended, another
        process, the store failed, or the run is over, which also stops the handle)."""
        return self._write_part(ending=False)

    def _write_part(self, *, ending: bool) -> bool:
        if self._ended or os.getpid() != self._joined_pid:
            return False
        with self._write_lock:
            if self._ended:
                return False
            self._clean = True
            self._last_write = time.monotonic()
            part = self._part(self.snapshot(), ending)
            try:
                landed = self.store.write_part(self.key, part)
            except Exception as exc:  # noqa: BLE001 - instrumentation never kills the task
                self._saved(exc)
                return False
            self._saved(None)
        if not landed:
            self._stop(self._ended_as())
        return landed

    def _part(self, state: State, ending: bool) -> SharedPart:
        return SharedPart(
            worker=self._worker,
            run=self._share_token.run,
            count=state.count,
            message_count=state.message_count,
            messages=state.messages,
            keep=self.max_messages,
            time=time.time(),
            rate=state.rate,
            ended=ending,
        )

    def _ended_as(self) -> str:
        """How the shared run ended, as far as the store tells."""
        try:
            state = self.store.load(self.key)
        except StoreError:
            return "finished"
        return state.state if state is not None and not state.in_progress else "finished"

    def _begin_write(self) -> None:
        """The flusher's turn: write the part here (parts are not batched)."""
        if not self._clean:
            self.flush()
        return None

    def _owned(self) -> bool:
        return False  # a joined handle never writes the owner's record

    def __del__(self) -> None:
        try:
            if not self._ended and self._joined_pid == os.getpid():
                self._end("finished")
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass


def join(token: ShareToken) -> JoinedProgress:
    """A handle, in this process, that adds to the progress another process shared.

    ``token`` comes from ``Progress.share()`` in the process that started the run.
    Use it as a context manager (``with tracked.join(token) as p:``): it is then
    ``tracked.current()`` inside the block, and leaving the block writes its part
    at once (so the owner sees it before the task's result). Joining a run that
    has ended (or was replaced by a newer run of the same name) gives an inert
    handle whose ``in_progress`` is False: check it to stop early. Raises
    ``StoreError`` when the store cannot be reached or shared from this process
    (a MemoryStore, outside the process that holds it).
    """
    if not isinstance(token, ShareToken):
        raise TypeError(f"tracked.join() takes a token from Progress.share(), not {token!r}")
    token.store.check_join()
    return JoinedProgress(token)._start()
