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

from ._store import Store, open_store

__all__ = ["RequestScope", "configure", "default_store", "request_scope", "resolve_store"]

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

_configured: Store | None = None
_from_environment: Store | None = None
_opened: dict[str, Store] = {}
_lock = threading.Lock()


def configure(*, store: StoreSpec | None) -> None:
    """Set the process-wide default store: a ``Store``, a directory, or a store URL.

    ``configure(store=None)`` goes back to ``$TRACKED_STORE`` or the per-user
    temporary directory. Raises ``StoreError`` if the store cannot be used.
    """
    global _configured, _from_environment
    chosen = None if store is None else open_store(store)
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
