"""Jobs that real ``rq worker`` and ``celery worker`` processes run in test_queues.py.

Each is an ordinary ``@tracked`` function whose progress_id is the queue's own
job id, writing to the RedisStore named by ``$TRACKED_JOBS_REDIS`` (with a lease
of ``$TRACKED_JOBS_LEASE`` seconds): exactly what docs/jobs.md shows users.
"""

from __future__ import annotations

import os
import time
from typing import Any

import rq
from celery import Celery, current_task

import tracked
from tracked.redis import RedisStore

REDIS = os.environ.get("TRACKED_JOBS_REDIS", "redis://127.0.0.1:6379/0")
LEASE = float(os.environ.get("TRACKED_JOBS_LEASE", "2"))

tracked.configure(store=RedisStore(REDIS, lease=LEASE))


def work(rows: int, pause: float, fail: bool) -> dict[str, Any]:
    """The job's body: one row per step, each a message; the first names the process."""
    progress = tracked.current()
    progress.add_message(f"pid {os.getpid()}")
    for row in range(rows):
        time.sleep(pause)
        progress.increment(1, f"row {row} imported")
        if fail and row == rows // 2:
            raise ValueError(f"row {row} has no email address")
    return {"rows": rows, "by": "worker"}


# ----------------------------------------------------------------------------- RQ


@tracked.tracked(
    "rq-import", total=lambda rows, *_: rows, progress_id=lambda *_, **__: rq.get_current_job().id
)
def rq_import(rows: int, pause: float = 0.01, fail: bool = False) -> dict[str, Any]:
    return work(rows, pause, fail)


# ----------------------------------------------------------------------------- Celery

app = Celery("queue_jobs", broker=REDIS)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)


@app.task
@tracked.tracked(
    "celery-import",
    total=lambda rows, *_: rows,
    progress_id=lambda *_, **__: current_task.request.id,
)
def celery_import(rows: int, pause: float = 0.01, fail: bool = False) -> dict[str, Any]:
    return work(rows, pause, fail)
