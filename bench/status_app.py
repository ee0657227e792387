"""The app ``bench_status_route.py`` serves under gunicorn: the status route and baselines.

``$BENCH_STORE`` is the FileStore directory, ``$BENCH_KEY`` the finished
record's name and ``$BENCH_RUNNING_KEY`` the running record's, all prepared by
the benchmark before the server starts.
"""

from __future__ import annotations

import os

import bottle

import tracked
from tracked.bottle import TrackedPlugin

store = tracked.FileStore(os.environ["BENCH_STORE"])
record_path = store.path_for(os.environ["BENCH_KEY"])
running_path = store.path_for(os.environ.get("BENCH_RUNNING_KEY", "bench-running"))

app = bottle.Bottle()
app.install(TrackedPlugin(store))


@app.get("/trivial")
def trivial() -> dict[str, object]:
    """Baseline: a Bottle route returning a constant dict (Bottle serialises it)."""
    return {"ok": True, "status": "constant"}


@app.get("/bare")
def bare() -> bytes:
    """Baseline: the floor of any file-backed status route, the record file's bytes."""
    with open(record_path, "rb") as file:
        body = file.read()
    bottle.response.content_type = "application/json"
    return body


@app.get("/bare-running")
def bare_running() -> bytes:
    """Baseline for the running record: its file's bytes, nothing else."""
    with open(running_path, "rb") as file:
        body = file.read()
    bottle.response.content_type = "application/json"
    return body
