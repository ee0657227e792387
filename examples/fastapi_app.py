"""tracked in a FastAPI app: a long job, its status route, and a page following it.

    uvicorn --factory examples.fastapi_app:create_app --port 8080

``TrackedMiddleware`` serves ``/_progress_status/<name>`` (JSON, 304 and
Server-Sent Events; a waiting stream holds no thread) and puts each request's
``progress_id`` (query, form field or ``X-Progress-Id``) in scope, so the
``@tracked`` endpoint below is named ``demo-job`` + the client's id. FastAPI
runs the plain ``def`` endpoint in its thread pool, with the scope. The store is
``$TRACKED_STORE`` (a directory or a ``redis://`` URL); ``$TRACKED_DEMO_SECONDS``
and ``$TRACKED_DEMO_STEPS`` shape the job.
"""

from __future__ import annotations

import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import fastapi
from fastapi.responses import HTMLResponse, JSONResponse, Response

import tracked
from tracked.asgi import TrackedMiddleware

PAGE = Path(__file__).resolve().parent / "static" / "follow.html"
#: The same job followed by ``<tracked-progress>``, with a Stop button.
BAR_PAGE = Path(__file__).resolve().parent / "static" / "bar.html"


def create_app(store: str | None = None) -> fastapi.FastAPI:
    """The app: ``/`` the page, ``POST /jobs/main`` the job, ``/_progress_status`` its status."""
    seconds = float(os.environ.get("TRACKED_DEMO_SECONDS", "10"))
    steps = int(os.environ.get("TRACKED_DEMO_STEPS", "50"))
    app = fastapi.FastAPI()
    # cancel=True: DELETE on the status route stops a run; anyone who knows its
    # unguessable progress_id may stop it (pass a callable to decide per request).
    app.add_middleware(
        TrackedMiddleware,
        store=store or os.environ.get("TRACKED_STORE") or tracked.default_store(),
        cancel=True,
    )

    @app.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/static/tracked.js")
    def client() -> Response:
        script = files("tracked").joinpath("static/tracked.js").read_bytes()
        return Response(script, media_type="text/javascript")

    @app.get("/bar")
    def bar_page() -> HTMLResponse:
        return HTMLResponse(BAR_PAGE.read_text())

    @tracked.tracked("demo-job", total=steps)
    def background_job() -> dict[str, Any]:
        progress = tracked.current()
        for step in range(1, steps + 1):
            progress.check()  # tracked.Cancelled once a stop was asked
            time.sleep(seconds / steps)
            progress.increment(1, f"step {step} of {steps} done")
        return {"result": "done", "steps": steps}

    @app.post("/jobs/background", status_code=202)
    def start_background_job(response: Response) -> dict[str, str]:
        """Run the job on a thread of this process; 202 with its status URL at once."""
        progress = tracked.submit(background_job)
        response.headers["Location"] = tracked.status_url(progress)
        return {"status_url": tracked.status_url(progress)}

    @app.post("/jobs/main")
    @tracked.tracked("demo-job", total=steps)
    def main_job() -> dict[str, Any]:
        progress = tracked.current()
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            progress.increment(1, f"step {step} of {steps} done")
        return {"result": "done", "steps": steps}

    @app.exception_handler(tracked.AlreadyRunning)
    def already_running(request: fastapi.Request, exc: tracked.AlreadyRunning) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": "error"}, status_code=409)

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), port=int(os.environ.get("PORT", "8080")))
