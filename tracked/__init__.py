"""tracked: long-running code reports how far it has got; anyone else can ask.

``@tracked`` and ``tracked.start()`` keep a live handle whose snapshots go to a
store (a directory of JSON files by default, or Redis) that other requests,
processes and machines read.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ._api import cancel, current, is_running, load, start
from ._decorator import tracked
from ._filestore import FileStore
from ._group import Group, group
from ._jobs import submit
from ._loghandler import LogHandler
from ._memorystore import MemoryStore
from ._progress import Progress
from ._scope import configure, default_store, open_store
from ._share import join
from ._state import State
from ._store import Store
from ._token import ShareToken
from ._track import track
from ._url import status_url
from .errors import (
    AlreadyRunning,
    Cancelled,
    InvalidName,
    InvalidValue,
    NoActiveProgress,
    RunSuperseded,
    StoreError,
    TrackedError,
)

if TYPE_CHECKING:
    from ._tqdm import capture_tqdm, tqdm
    from .redis import RedisStore

try:
    __version__ = version("tracked")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AlreadyRunning",
    "Cancelled",
    "FileStore",
    "Group",
    "InvalidName",
    "InvalidValue",
    "LogHandler",
    "MemoryStore",
    "NoActiveProgress",
    "Progress",
    "RedisStore",
    "RunSuperseded",
    "ShareToken",
    "State",
    "Store",
    "StoreError",
    "TrackedError",
    "cancel",
    "capture_tqdm",
    "configure",
    "current",
    "default_store",
    "group",
    "is_running",
    "join",
    "load",
    "open_store",
    "start",
    "status_url",
    "submit",
    "tqdm",
    "track",
    "tracked",
]


def __getattr__(name: str) -> Any:
    # RedisStore needs redis-py and the tqdm bridge tqdm, optional extras: import
    # them only when asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    if name in ("tqdm", "capture_tqdm"):
        from . import _tqdm

        return getattr(_tqdm, name)
    raise AttributeError(f"module 'tracked' has no attribute {name!r}")
