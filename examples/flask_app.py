"""tracked in a Flask app: a long job, its status route, and a page following it.

    gunicorn -k gthread --threads 8 -w 2 -b 127.0.0.1:8080 'examples.flask_app:create_app()'
    python examples/flask_app.py                 # Flask's own server, for a quick look

``TrackedMiddleware`` serves ``/_progress_status/<name>`` (JSON, 304 and
Server-Sent Events) and puts each request's ``progress_id`` (query, form field
or ``X-Progress-Id``) in scope, so the ``@tracked`` route below is named
``demo-job`` + the client's id, as with the Bottle plugin. Streams hold a thread
while open: run gunicorn with ``gthread`` (or gevent) workers, not ``sync``.
The store is ``$TRACKED_STORE`` (a directory or a ``redis://`` URL) shared by
every worker; ``$TRACKED_DEMO_SECONDS`` and ``$TRACKED_DEMO_STEPS`` shape the job.
"""

from __future__ import annotations

import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import flask

import tracked
from tracked.wsgi import TrackedMiddleware

PAGE = Path(__file__).resolve().parent / "static" / "follow.html"
#: The same job followed by ``<tracked-progress>``, with a Stop button.
BAR_PAGE = Path(__file__).resolve().parent / "static" / "bar.html"


def create_app(store: str | None = None) -> flask.Flask:
    """The app: ``/`` the page, ``POST /jobs/main`` the job, ``/_progress_status`` its status."""
    seconds = float(os.environ.get("TRACKED_DEMO_SECONDS", "10"))
    steps = int(os.environ.get("TRACKED_DEMO_STEPS", "50"))
    app = flask.Flask(__name__)
    # cancel=True: DELETE on the status route stops a run; anyone who knows its
    # unguessable progress_id may stop it (pass a callable to decide per request).
    app.wsgi_app = TrackedMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store or os.environ.get("TRACKED_STORE") or tracked.default_store(),
        cancel=True,
    )

    @app.get("/")
    def index() -> Any:
        return flask.Response(PAGE.read_bytes(), mimetype="text/html")

    @app.get("/static/tracked.js")
    def client() -> Any:
        script = files("tracked").joinpath("static/tracked.js").read_bytes()
        return flask.Response(script, mimetype="text/javascript")

    @app.get("/bar")
    def bar_page() -> Any:
        return flask.Response(BAR_PAGE.read_bytes(), mimetype="text/html")

    @tracked.tracked("demo-job", total=steps)
    def background_job() -> dict[str, Any]:
        progress = tracked.current()
        for step in range(1, steps + 1):
            progress.check()  # tracked.Cancelled once a stop was asked
            time.sleep(seconds / steps)
            progress.increment(1, f"step {step} of {steps} done")
        return {"result": "done", "steps": steps}

    @app.post("/jobs/background")
    def start_background_job() -> Any:
        """Run the job on a thread of this worker; 202 with its status URL at once."""
        progress = tracked.submit(background_job)
        return {"status_url": tracked.status_url(progress)}, 202, {
            "Location": tracked.status_url(progress)}

    @app.post("/jobs/main")
    @tracked.tracked("demo-job", total=steps)
    def main_job() -> Any:
        progress = tracked.current()
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            progress.increment(1, f"step {step} of {steps} done")
        return {"result": "done", "steps": steps}

    @app.errorhandler(tracked.AlreadyRunning)
    def already_running(exc: tracked.AlreadyRunning) -> Any:
        return {"error": str(exc), "status": "error"}, 409

    return app


if __name__ == "__main__":
    create_app().run(port=int(os.environ.get("PORT", "8080")), threaded=True)
