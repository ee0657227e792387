"""One progress across processes: ``Progress.share()`` and ``tracked.join()``.

The owner's process shares its run as a ``ShareToken``: a short ``str`` (safe in
a URL, a queue header, JSON) naming the run (its key and run id) and, by a
fingerprint only, the store it lives in. It carries no address and no secret: a
worker opens the store from its own configuration (``join(token, store=...)``,
``tracked.configure(store=...)`` or ``$TRACKED_STORE``); in the owner's process
and its forked children the owner's own store is found by that fingerprint. A
worker's handle adds to its own *part* of the run, which its flusher writes at
most once per ``min_interval`` and when the handle's block ends. A part holds
the worker's totals, never a delta, so rewriting it cannot count twice; it is
never the owner's record. Readers add the parts of a running record to its state
(``Store.with_parts``); the owner's end folds them into the final snapshot, and
parts written after that, or once the owner is judged dead, are refused.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from . import _flusher
from ._progress import Progress
from ._scope import StoreSpec, resolve_store
from ._state import State
from ._store import Record, SharedPart, Store, judge
from ._token import ShareToken, known_store, store_fingerprint
from ._writer import RunWriter
from .errors import Cancelled, StoreError

__all__ = ["JoinedProgress", "join"]

logger = logging.getLogger("tracked")


class PartWriter(RunWriter):
    """A joined worker's writer: the flusher's turns write the worker's part (parts
    are not batched); it never writes the owner's record (``owned`` is False)."""

    __slots__ = ()

    def owned(self) -> bool:
        """Never: a joined handle does not own the run it adds to."""
        return False

    def flush(self) -> bool:
        """Write the worker's part now (``JoinedProgress.flush``)."""
        handle = self.handle()
        return handle is not None and handle.flush()

    def begin_write(self) -> None:
        """The flusher's turn: write the part here, nothing for its batch."""
        if not self.clean:
            self.flush()


class JoinedProgress(Progress):
    """A worker's handle on a shared run (see ``tracked.join``).

    ``increment``, ``+=``, ``add_message`` and ``count`` work as on any handle, on
    this worker's part: ``count`` and ``messages`` are what this handle added.
    Total, status and result stay the owner's (setting them here changes nothing
    others see). Ending it (its ``with`` block, ``finish()``) writes its part and
    stops it; it never ends the owner's run. Once the owner's run has ended, the
    handle is inert: ``in_progress`` is False and its updates are dropped.
    """

    __slots__ = ("_joined_pid", "_run", "_worker")
    _writer_class = PartWriter

    def __init__(self, token: ShareToken, store: Store) -> None:
        super().__init__(
            token.name,
            store=store,
            progress_id=token.progress_id,
            total=None,
            min_interval=token.min_interval,
            max_messages=token.max_messages,
        )
        self._run = token.run
        self._joined_pid = os.getpid()
        self._worker = f"{self._joined_pid}-{uuid.uuid4().hex[:16]}"

    def __repr__(self) -> str:
        return f"<JoinedProgress {self.key!r} part {self._worker} {self.count} {self._state}>"

    def _start(self, record: Record | None) -> JoinedProgress:
        """Join: an inert handle if the run is no longer running, else a watched one.

        The run's owner record is kept as its writer's ``owner``: the flusher polls the
        store for a cancel request of that run with it (a joined handle never writes
        the owner's record: ``PartWriter.owned`` is False)."""
        state = None if record is None else judge(record)
        if state is None or record is None or record.owner is None:
            self._stop("finished")  # gone: pruned or deleted after it ended
            return self
        if record.owner.run != self._run or not state.in_progress:
            # Over: ended (its own state word), or replaced by a newer run of the name.
            self._stop(state.state if record.owner.run == self._run else "finished")
            return self
        self._writer.owner = record.owner
        self._clean = True  # nothing to write until the first update
        _flusher.watch(self._writer)
        return self

    def _stop(self, state: str) -> None:
        """The run is over for this handle: freeze it; later updates are dropped."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._clean = False  # updates no longer reach the flusher
            self._state = state
            self._outcome.finished_time = time.time()
            self._final = self._snapshot_locked()
        _flusher.forget(self._writer)

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
        writer = self._writer
        with writer.write_lock:
            if self._ended:
                return False
            self._clean = True
            writer.last_write = time.monotonic()
            part = self._part(self.snapshot(), ending)
            try:
                landed = self.store.write_part(self.key, part)
            except Exception as exc:  # noqa: BLE001 - instrumentation never kills the task
                writer.saved(exc)
                return False
            writer.saved(None)
        if not landed:
            self._stop(self._ended_as())
        return landed

    def _part(self, state: State, ending: bool) -> SharedPart:
        return SharedPart(
            worker=self._worker,
            run=self._run,
            count=state.count,
            message_count=state.message_count,
            messages=state.messages,
            keep=self.max_messages,
            time=time.time(),
            rate=state.rate,
            ended=ending,
            asked=self._cancel.requested,
            stopped=self._cancel.delivered,
        )

    def deliver(self) -> Cancelled:
        """As on any handle, and the part says so at its next write: the owner's end
        then reads ``cancelled`` (the work stopped on the request)."""
        cancelled = super().deliver()
        if self._clean:
            self._touched()
        return cancelled

    def _ended_as(self) -> str:
        """How the shared run ended, as far as the store tells."""
        try:
            state = self.store.load(self.key)
        except StoreError:
            return "finished"
        return state.state if state is not None and not state.in_progress else "finished"

    def __del__(self) -> None:
        try:
            if not self._ended and self._joined_pid == os.getpid():
                self._end("finished")
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass


def join(token: str, *, store: StoreSpec | None = None) -> JoinedProgress:
    """A handle, in this process, that adds to the progress another process shared.

    ``token`` is the ``str`` that ``Progress.share()`` returned in the process that
    started the run. The store is ``store`` if given (a ``Store``, a directory or a
    URL), else the one the run was shared from when this process (or the parent it
    was forked from) shared it, else this process's default store
    (``tracked.configure(store=...)`` or ``$TRACKED_STORE``). Use it as a context
    manager (``with tracked.join(token) as p:``): it is then ``tracked.current()``
    inside the block, and leaving the block writes its part at once (so the owner
    sees it before the task's result). Joining a run that has ended (or was
    replaced by a newer run of the same name) gives an inert handle whose
    ``in_progress`` is False: check it to stop early. Raises ``InvalidValue`` for
    anything but a share token, ``StoreError`` when the store cannot be reached or
    shared from this process (a MemoryStore, outside the process that holds it),
    or when it is not the token's store and holds no such run.
    """
    token = ShareToken(token)
    chosen = _store_for(token, store)
    chosen.check_join()
    record = chosen.read(token.key)
    if (record is None or record.owner is None or record.owner.run != token.run) and (
        store_fingerprint(chosen) != token.store_id
    ):
        raise StoreError(
            f"cannot join progress {token.key!r}: {chosen!r} is not the store it was "
            "shared from, and holds no such run. Give this process that store: "
            "tracked.join(token, store=...), tracked.configure(store=...) or $TRACKED_STORE"
        )
    return JoinedProgress(token, chosen)._start(record)


def _store_for(token: ShareToken, store: StoreSpec | None) -> Store:
    """The store a join uses (see ``join``)."""
    if store is not None:
        return resolve_store(store)
    known = known_store(token.store_id)
    return known if known is not None else resolve_store(None)
