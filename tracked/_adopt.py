"""What the adoption helpers (``track``, the tqdm bridge, ``LogHandler``) share.

They only use the public face of ``Progress`` (increment, add_message, the
count/total/status setters, finish/fail/cancel) plus the context variable that
``tracked.current()`` reads, so the core can change how a handle works inside.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from types import FrameType

from ._progress import Progress, current_progress
from ._scope import request_scope
from .errors import Cancelled

__all__ = [
    "CurrentToken",
    "caller_frame",
    "caller_name",
    "claim_driver",
    "end_by",
    "live_progress",
    "make_current",
    "release_driver",
    "restore_current",
]

CurrentToken = contextvars.Token[Progress | None]


def live_progress() -> Progress | None:
    """The innermost live progress of this context, or None; never raises."""
    progress = current_progress.get()
    if progress is None or not progress.in_progress:
        return None
    return progress


def make_current(progress: Progress) -> CurrentToken:
    """Make ``progress`` what ``tracked.current()`` returns in this context."""
    return current_progress.set(progress)


def restore_current(token: CurrentToken | None) -> None:
    """Undo ``make_current``. A generator or a bar may be closed in another context
    (collected by another thread, or ended by another asyncio task): then there is
    nothing of ours to undo here, and the ended progress no longer counts as live."""
    if token is None:
        return
    try:
        current_progress.reset(token)
    except (ValueError, RuntimeError):
        pass


def caller_name(frame: FrameType | None) -> str | None:
    """The name a progress started from ``frame`` gets when none is given.

    In a web request that carries a progress_id, None (the progress_id alone is
    the key, as with ``@tracked``); else the caller's module and qualified name.
    """
    scope = request_scope.get()
    if scope is not None and scope.progress_id is not None:
        return None
    if frame is None:  # pragma: no cover - only without sys._getframe
        return "tracked"
    code = frame.f_code
    qualname = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
    module = frame.f_globals.get("__name__", "")
    return f"{module}.{qualname}" if module else str(qualname)


def caller_frame(depth: int) -> FrameType | None:
    """The frame ``depth`` calls up from the caller of this function."""
    try:
        return sys._getframe(depth + 1)
    except (AttributeError, ValueError):  # pragma: no cover - other Pythons
        return None


# Which loop or bar drives the count of a progress: the outermost one. Loops and
# bars nested inside it do not count into it (a bar shows itself as status text).
# Keyed by id, holding the progress, so it needs nothing of the handle (no weak
# reference); every claim is released when its loop or bar ends.
_drivers: dict[int, tuple[Progress, object]] = {}
_drivers_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    """A thread of the parent may have held ``_drivers_lock`` at a fork: the child's
    first tracked loop or bar would wait for it for ever."""
    global _drivers_lock
    _drivers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


def claim_driver(progress: Progress, driver: object) -> bool:
    """Make ``driver`` the one that counts into ``progress`` unless another already does."""
    with _drivers_lock:
        return _drivers.setdefault(id(progress), (progress, driver))[1] is driver


def release_driver(progress: Progress, driver: object) -> None:
    with _drivers_lock:
        entry = _drivers.get(id(progress))
        if entry is not None and entry[1] is driver:
            del _drivers[id(progress)]


def end_by(progress: Progress, exc: BaseException | None) -> None:
    """End ``progress`` the way ``with tracked.start(...)`` would for ``exc``: None
    finishes; a closed generator, Ctrl-C, a cancelled task or ``Cancelled`` cancels;
    else it fails."""
    if exc is None:
        progress.finish()
    elif is_cancellation(exc):
        progress.cancel()
    else:
        progress.fail(exc)


def is_cancellation(exc: BaseException) -> bool:
    """A closed generator, Ctrl-C, a cancelled task, or ``tracked.Cancelled`` (a loop
    or bar handed it on a cancel request) stop work from outside; other errors fail it."""
    if isinstance(exc, (GeneratorExit, KeyboardInterrupt, Cancelled)):
        return True
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)
