"""The Bottle app the ``<tracked-progress>`` tests load in Chromium: a blank page with
tracked.js, the status route (cancel allowed) and two jobs run off the request."""

from __future__ import annotations

import threading
import time
from importlib.resources import files
from typing import Any

import bottle
import waitress

import tracked
from tracked.bottle import TrackedPlugin, accepted

STEPS = 10
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracked-progress under test</title>
<link rel="icon" href="data:,">
<script src="/tracked.js"></script></head>
<body><main><h1>tracked-progress</h1><div id="slot"></div></main></body></html>
"""


def make_app(store: tracked.Store, pause: float) -> bottle.Bottle:
    app = bottle.Bottle()
    app.install(TrackedPlugin(store=store, cancel=True))

    @app.get("/")
    def page() -> Any:
        return PAGE

    @app.get("/tracked.js")
    def script() -> Any:
        bottle.response.content_type = "text/javascript"
        return files("tracked").joinpath("static/tracked.js").read_bytes()

    @tracked.tracked("steps", total=STEPS)
    def steps() -> dict[str, Any]:
        for step in range(1, STEPS + 1):
            time.sleep(pause)
            tracked.current().increment(1, f"step {step} of {STEPS}")
        return {"steps": STEPS}

    @tracked.tracked("forever", total=1000)
    def forever() -> None:
        for _ in range(1000):
            tracked.current().check()
            time.sleep(pause)
            tracked.current().increment(1)

    @app.post("/jobs/steps")
    def start_steps() -> Any:
        return accepted(tracked.submit(steps))

    @app.post("/jobs/forever")
    def start_forever() -> Any:
        return accepted(tracked.submit(forever))

    return app


class BottleServer:
    """``make_app`` under waitress on a free port of 127.0.0.1, in a thread."""

    def __init__(self, store: tracked.FileStore, pause: float = 0.1) -> None:
        self.store_directory = store.directory
        self.server: Any = waitress.create_server(
            make_app(store, pause), host="127.0.0.1", port=0, threads=8
        )
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.close()
        self.thread.join(10)
