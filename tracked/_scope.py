"""Where a progress gets its store and progress_id when the caller gives none.

Two layers: the request scope that a web integration sets for the duration of
a request (the client's progress_id and the app's store), and the process-wide
default store set by ``configure()`` or ``$TRACKED_STORE``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import tempfile
import threading
from pathlib import Path

from ._state import set_max_result_bytes
from ._store import Store
from .errors import InvalidValue, StoreError

__all__ = [
    "RequestScope",
    "configure",
    "default_store",
    "open_store",
    "request_scope",
    "resolve_store",
]

StoreSpec = Store | str | os.PathLike[str]


@dataclasses.dataclass(frozen=True, slots=True)
class RequestScope:
    """What a web integration knows about the current request."""

    progress_id: str | None = None
    store: Store | None = None


#: Set by a web integration around each request; read by ``@tracked`` at call time.
request_scope: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "tracked_request_scope", default=None
)


class _Keep:
    """The type of ``KEEP``: a ``configure()`` argument that was not given."""


KEEP = _Keep()


@dataclasses.dataclass(slots=True)
class JobSettings:
    """How ``tracked.submit`` runs jobs in this process (see ``configure``)."""

    max_workers: int = 4
    exit_timeout: float = 10.0

    @staticmethod
    def check(max_workers: object, exit_timeout: object) -> None:
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise InvalidValue(f"max_workers must be an int >= 1, got {max_workers!r}")
        if exit_timeout is not None and (
            isinstance(exit_timeout, bool)
            or not isinstance(exit_timeout, (int, float))
            or not exit_timeout >= 0
        ):
            raise InvalidValue(
                f"exit_timeout must be a number of seconds >= 0, got {exit_timeout!r}"
            )


#: Read by ``_jobs`` each time it decides whether to start a thread.
jobs = JobSettings()

#: Seconds a queued record waits for a worker before readers judge it abandoned
#: (a day), unless the queue's own expiry of the job (RQ ``ttl``, Celery
#: ``expires``) or ``configure(queued_timeout=...)`` says otherwise.
DEFAULT_QUEUED_TIMEOUT = 86400.0
#: The longest queued timeout (ten years): its lease is stored as a finite number
#: (JSON has no infinity) and as a Redis expiry in milliseconds.
MAX_QUEUED_TIMEOUT = 10 * 365 * 86400.0
_queued_timeout = [DEFAULT_QUEUED_TIMEOUT]


def queued_timeout() -> float:
    """This process's default queued timeout, in seconds (see ``configure``)."""
    return _queued_timeout[0]


def check_timeout(seconds: object) -> float:
    """``seconds`` as a float > 0 and at most ``MAX_QUEUED_TIMEOUT``, else ``InvalidValue``
    (infinity and NaN too: the lease would be unwritable)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 < seconds <= MAX_QUEUED_TIMEOUT
    ):
        raise InvalidValue(
            f"queued_timeout must be a number of seconds > 0 and <= {MAX_QUEUED_TIMEOUT:g}, "
            f"got {seconds!r}"
        )
    return float(seconds)

_configured: Store | None = None
_from_environment: Store | None = None
_opened: dict[str, Store] = {}
_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    """A thread of the parent may have held ``_lock`` at a fork: in the child nobody
    would release it, and the child's first ``start``/``load`` naming a store by a
    path or URL would wait for ever."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def configure(
    *,
    store: StoreSpec | _Keep | None = KEEP,
    max_workers: int | None = None,
    exit_timeout: float | None = None,
    max_result_bytes: int | None = None,
    queued_timeout: float | None = None,
) -> None:
    """Set process-wide settings; an argument left out keeps its current value.

    ``store``: the default store, a ``Store``, a directory, or a store URL;
    ``configure(store=None)`` goes back to ``$TRACKED_STORE`` or the per-user
    temporary directory. Raises ``StoreError`` if the store cannot be used.
    ``max_workers``: threads that run ``tracked.submit`` jobs (default 4); more
    jobs wait, queued. ``exit_timeout``: seconds the interpreter's exit waits for
    running jobs (default 10) before ending them ``cancelled``.
    ``max_result_bytes``: the largest result published, in bytes of JSON (64 KiB).
    ``queued_timeout``: seconds a queued run (``tracked.rq``, ``tracked.celery``)
    waits for a worker before readers judge it abandoned (a day), unless the job's
    own expiry says otherwise.
    """
    global _configured, _from_environment
    jobs.check(max_workers, exit_timeout)
    keep_store = isinstance(store, _Keep)
    chosen = None if store is None or isinstance(store, _Keep) else open_store(store)
    # Everything that can fail has been checked (this validates first): apply.
    if queued_timeout is not None:
        check_timeout(queued_timeout)
    if max_result_bytes is not None:
        set_max_result_bytes(max_result_bytes)
    if queued_timeout is not None:
        _queued_timeout[0] = float(queued_timeout)
    if max_workers is not None:
        jobs.max_workers = max_workers
    if exit_timeout is not None:
        jobs.exit_timeout = float(exit_timeout)
    if keep_store:
        return
    with _lock:
        _configured = chosen
        _from_environment = None


def default_store() -> Store:
    """The store used when neither the call nor the request scope names one."""
    global _from_environment
    if _configured is not None:
        return _configured
    with _lock:
        if _from_environment is None:
            _from_environment = open_store(os.environ.get("TRACKED_STORE") or default_directory())
        return _from_environment


def default_directory() -> Path:
    """A per-user directory under the system temporary directory."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"tracked-{user}"


def resolve_store(store: StoreSpec | None) -> Store:
    """The store to use: the one given, else the request's, else the default.

    A path or URL opens its store once per process and reuses it afterwards, so
    ``load(name, store="redis://...")`` does not connect anew on every call.
    """
    if isinstance(store, Store):
        return store
    if store is not None:
        spec = os.fspath(store)
        with _lock:
            opened = _opened.get(spec)
        if opened is None:
            opened = open_store(spec)
            with _lock:
                opened = _opened.setdefault(spec, opened)
        return opened
    scope = request_scope.get()
    if scope is not None and scope.store is not None:
        return scope.store
    return default_store()


def open_store(spec: Store | str | os.PathLike[str]) -> Store:
    """A store from a ``Store``, a directory path, or a ``file://``, ``memory://``,
    ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or
    ``rediss+cluster://`` URL."""
    if isinstance(spec, Store):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise StoreError(f"a store is a Store, a path or a URL, not {type(spec).__name__}")
    text = os.fspath(spec)
    scheme, sep, rest = text.partition("://")
    if not sep:
        from ._filestore import FileStore

        return FileStore(text)
    scheme = scheme.lower()
    if scheme == "file":
        from ._filestore import FileStore

        return FileStore(rest)
    if scheme == "memory":
        from ._memorystore import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore(text)
    raise StoreError(
        f"unknown store {text!r}: use a directory, file://, memory://, redis://, rediss://, "
        "unix:// or redis+cluster://"
    )
