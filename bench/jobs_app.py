"""The app ``bench_jobs.py`` serves under gunicorn: one job, started off the request
(``POST /submit``, 202) or in it (``POST /inline``), and the status route.

``$BENCH_STORE`` is the FileStore directory every worker shares.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bottle

import tracked
from tracked.bottle import TrackedPlugin, accepted

app = bottle.Bottle()
app.install(TrackedPlugin(tracked.FileStore(os.environ["BENCH_STORE"])))


@tracked.tracked("bench-job", total=None)
def job(seconds: float) -> dict[str, int]:
    """Sleep in 50 ms steps for ``seconds``, one increment and message per step."""
    progress = tracked.current()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        progress.increment(1, "step done")
    return {"steps": progress.count}


@app.post("/submit")
def submit_job() -> Any:
    return accepted(tracked.submit(job, float(bottle.request.query.seconds)))


@app.post("/inline")
def inline_job() -> Any:
    return job(float(bottle.request.query.seconds))
