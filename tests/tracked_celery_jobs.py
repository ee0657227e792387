"""Plain ``@tracked`` Celery tasks for tests/test_celery.py: ``tracked.celery.install(app)``
and nothing else (no progress_id lambda, no base class). Side-effect files as in
tests/tracked_jobs.py."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals

import tracked
import tracked.celery
from tracked.redis import RedisStore

REDIS = os.environ.get("TRACKED_JOBS_REDIS", "redis://127.0.0.1:6379/0")
LEASE = float(os.environ.get("TRACKED_JOBS_LEASE", "2"))
SIDE = Path(os.environ.get("TRACKED_JOBS_SIDE", "/tmp"))

tracked.configure(store=RedisStore(REDIS, lease=LEASE))
app = Celery("tracked_celery_jobs", broker=REDIS, backend=REDIS)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


def _late_revoke_announce(request: Any = None, terminated: bool = False, **_: Any) -> None:
    """Connected before tracked's revoke handler: for a task ``revoke(terminate=True)``
    killed, give its process half a second to end the run its own way before the worker's
    announce goes on (the order seen under load), or until that record has ended."""
    if not (terminated and request):
        return
    deadline = time.monotonic() + 0.5  # well below the tests' lease (2 s): not abandoned
    while time.monotonic() < deadline:
        state = tracked.load("celery-loop", progress_id=request.id)
        if state is None or not state.in_progress:
            return
        time.sleep(0.01)


signals.task_revoked.connect(_late_revoke_announce, weak=False)
tracked.celery.install(app)


@app.task(name="tracked_celery_jobs.import_rows")
@tracked.tracked("celery-import", total=lambda rows, *_, **__: rows)
def import_rows(rows: int, pause: float = 0.01, mark: str | None = None) -> dict[str, Any]:
    progress = tracked.current()
    progress.add_message(f"pid {os.getpid()}")
    if mark:
        (SIDE / f"{mark}.started").write_text("")
    for row in range(rows):
        time.sleep(pause)
        progress.check()
        progress.increment(1, f"row {row}")
    if mark:
        (SIDE / f"{mark}.done").write_text("")
    return {"rows": rows}


@app.task(bind=True, name="tracked_celery_jobs.flaky", max_retries=2)
@tracked.tracked("celery-flaky", total=2)
def flaky(self: Any, mark: str) -> int:
    tries = SIDE / f"{mark}.tries"
    attempt = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(attempt))
    tracked.current().increment(1, f"attempt {attempt}")
    if attempt == 1:
        raise self.retry(exc=ValueError("the first attempt fails"), countdown=0)
    return attempt


@app.task(bind=True, name="tracked_celery_jobs.stubborn", max_retries=2)
@tracked.tracked("celery-stubborn", total=2)
def stubborn(self: Any, mark: str, pause: float) -> int:
    """Like ``flaky``, but its first attempt works ``pause`` seconds (never checking
    for a stop) before it retries; each attempt leaves ``<mark>.attempt<N>``."""
    tries = SIDE / f"{mark}.tries"
    attempt = int(tries.read_text()) + 1 if tries.exists() else 1
    tries.write_text(str(attempt))
    (SIDE / f"{mark}.attempt{attempt}").write_text("")
    tracked.current().increment(1, f"attempt {attempt}")
    if attempt == 1:
        time.sleep(pause)
        raise self.retry(exc=ValueError("the first attempt fails"), countdown=0)
    return attempt


@app.task(name="tracked_celery_jobs.loop")
@tracked.tracked("celery-loop", total=lambda rows, *_, **__: rows)
def loop(rows: int, pause: float, mark: str, checks: bool = True) -> dict[str, Any]:
    """A slow loop that checks for a stop at each row (or never, ``checks=False``)."""
    progress = tracked.current()
    progress.add_message(f"pid {os.getpid()}")
    (SIDE / f"{mark}.started").write_text("")
    for row in range(rows):
        time.sleep(pause)
        if checks:
            progress.check()
        progress.increment(1, f"row {row}")
    (SIDE / f"{mark}.done").write_text("")
    return {"rows": rows}


class FailsBeforeStart(app.Task):  # type: ignore[name-defined,misc]
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        raise RuntimeError("the task's setup failed")


@app.task(base=FailsBeforeStart, name="tracked_celery_jobs.never_starts")
@tracked.tracked("celery-setup", total=1)
def never_starts(mark: str) -> None:
    (SIDE / f"{mark}.started").write_text("")


@app.task(name="tracked_celery_jobs.part")
@tracked.tracked("part-{i}", total=2, group=lambda i, group: group)
def part(i: int, group: str) -> int:
    """One child of a ``tracked.group``: its token travels as an argument (docs/groups.md)."""
    progress = tracked.current()
    progress += 2
    if i == 7:
        raise ValueError("part 7 is bad")
    return i
