"""Plain ``@tracked`` jobs that real ``rq worker`` and ``celery worker`` processes run in
tests/test_rq.py and tests/test_celery.py: no progress_id lambda, no custom worker class.

They write to the RedisStore named by ``$TRACKED_JOBS_REDIS`` (lease ``$TRACKED_JOBS_LEASE``
seconds) and leave side-effect files in ``$TRACKED_JOBS_SIDE``: ``<mark>.started`` when
the body starts, ``<mark>.done`` when it ran to its end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import tracked
from tracked.redis import RedisStore

REDIS = os.environ.get("TRACKED_JOBS_REDIS", "redis://127.0.0.1:6379/0")
LEASE = float(os.environ.get("TRACKED_JOBS_LEASE", "2"))
SIDE = Path(os.environ.get("TRACKED_JOBS_SIDE", "/tmp"))

tracked.configure(store=RedisStore(REDIS, lease=LEASE))


def _touch(mark: str | None, what: str) -> None:
    if mark:
        (SIDE / f"{mark}.{what}").write_text(str(os.getpid()))


@tracked.tracked("import", total=lambda rows, *_, **__: rows)
def import_rows(
    rows: int, pause: float = 0.01, mark: str | None = None, checks: bool = True
) -> dict[str, Any]:
    """One row per step, each a message; the first message names the process."""
    progress = tracked.current()
    progress.add_message(f"pid {os.getpid()}")
    _touch(mark, "started")
    for row in range(rows):
        time.sleep(pause)
        if checks:
            progress.check()
        progress.increment(1, f"row {row}")
    _touch(mark, "done")
    return {"rows": rows}


@tracked.tracked("flaky", total=2)
def flaky(mark: str) -> int:
    """Fails its first attempt (after one step and a message), succeeds on the next."""
    tries = SIDE / f"{mark}.tries"
    attempt = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(attempt))
    progress = tracked.current()
    progress.increment(1, f"attempt {attempt}")
    if attempt == 1:
        raise ValueError("the first attempt fails")
    return attempt


@tracked.tracked("stubborn", total=2)
def stubborn(mark: str, pause: float) -> int:
    """Like ``flaky``, but its first attempt works ``pause`` seconds (never checking
    for a stop) before it fails; each attempt leaves ``<mark>.attempt<N>``."""
    tries = SIDE / f"{mark}.tries"
    attempt = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(attempt))
    _touch(mark, f"attempt{attempt}")
    progress = tracked.current()
    progress.increment(1, f"attempt {attempt}")
    if attempt == 1:
        time.sleep(pause)
        raise ValueError("the first attempt fails")
    return attempt


def explode() -> None:
    """Called when a ``Poison`` argument is unpickled: in the worker, before the job runs."""
    raise RuntimeError("this argument cannot be loaded here")


class Poison:
    """An argument that pickles fine and fails to load (a class the worker lacks, say)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (explode, ())
