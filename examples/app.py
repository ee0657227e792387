"""The tracked demo: a long job runs in one worker process; the page asks any of them.

    python examples/app.py                      # gunicorn, 3 sync workers, port 8080
    python examples/app.py --seconds 30 --port 8000
    python examples/app.py --server waitress    # one process, many threads

The page's Start button runs the job off the request (``tracked.submit``: the
POST answers 202 at once); its Stop job button asks the running job to stop
(``DELETE`` on the status route, allowed here with ``TrackedPlugin(cancel=True)``:
anyone who knows the unguessable progress_id may stop that run).
``POST /jobs/main`` runs it in the request, as the Perl original did: a long
request occupies its worker for the whole job, so the status polls must be
served by other workers (or threads). Hence gunicorn with
several workers, all sharing one FileStore directory (``--store`` or
``$TRACKED_STORE``). With ``--threads`` > 1 (gunicorn ``gthread`` workers) the
status route also streams Server-Sent Events, which tracked.js then follows;
under sync workers an open stream would hold a whole worker, so the demo turns
streams off (``max_stream_seconds=0``) and the page polls.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bottle

import tracked
from tracked.bottle import TrackedPlugin, accepted

STATIC = Path(__file__).resolve().parent / "static"
#: Shown in the message list as text; if it ever became HTML the page would run alert(1).
MARKUP_MESSAGE = "messages are text, not HTML: <img src=x onerror=alert(1)>"
#: The message a job adds when it cleans up after being asked to stop.
CLEANUP_MESSAGE = "cleanup ran: partial output removed"
#: Seconds gunicorn gives a stopping worker; background jobs get less, so that a
#: job still running then ends "cancelled" rather than being killed mid-write.
GRACEFUL_TIMEOUT = 5


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """How long the jobs take and where their progress is stored."""

    store: str
    seconds: float = 10.0
    steps: int = 50
    #: Serve Server-Sent Events: only with threads, as an open stream holds its
    #: worker; without, event-stream requests get JSON and tracked.js polls.
    streams: bool = False

    @property
    def pause(self) -> float:
        return self.seconds / self.steps


def make_app(config: DemoConfig) -> bottle.Bottle:
    """The demo's Bottle app: the page, its scripts, three job routes and the status route."""
    app = bottle.Bottle()
    app.install(TrackedPlugin(
        store=tracked.FileStore(config.store), cancel=True,
        max_stream_seconds=60 if config.streams else 0,
    ))
    tracked.configure(exit_timeout=GRACEFUL_TIMEOUT - 2)

    @app.get("/")
    def index() -> Any:
        return bottle.static_file("index.html", root=str(STATIC))

    @app.get("/static/<path:path>")
    def static(path: str) -> Any:
        return bottle.static_file(path, root=str(STATIC))

    @app.post("/jobs/main")
    @tracked.tracked("demo-job", total=config.steps)
    def main_job() -> dict[str, Any]:
        """The long job: sleeps through its steps, reporting each one."""
        run_steps(config, tracked.current())
        return {"result": "done", "steps": config.steps}

    @tracked.tracked("demo-job", total=config.steps)
    def background_job() -> dict[str, Any]:
        """The same job, to be run off the request by ``tracked.submit``."""
        run_steps(config, tracked.current())
        return {"result": "done", "steps": config.steps}

    @app.post("/jobs/background")
    def start_background_job() -> Any:
        """Claim the job (409 if this progress_id runs it already), run it on a thread
        of this worker, answer 202 with its status URL at once: no worker is held."""
        return accepted(tracked.submit(background_job))

    @app.get("/jobs/stream")
    @tracked.tracked("demo-stream", total=config.steps)
    def stream_job() -> Iterator[str]:
        """A generator route: each line goes to the client and becomes a message."""
        bottle.response.content_type = "text/plain; charset=utf-8"
        yield from stream_lines(config)

    return app


def job_messages(steps: int) -> list[str]:
    """Every message the main job emits, in order (the tests compare against it)."""
    messages = []
    for step in range(1, steps + 1):
        messages.append(f"step {step} of {steps} done")
        if step == max(1, steps // 2):
            messages.append(MARKUP_MESSAGE)
    return messages


def run_steps(config: DemoConfig, progress: tracked.Progress) -> None:
    """Do the main job's steps: one pause, one increment and its messages each.

    Before each step it checks whether it was asked to stop (``check()`` raises
    ``tracked.Cancelled``); its cleanup then runs and says so in a message."""
    expected = iter(job_messages(config.steps))
    try:
        for step in range(1, config.steps + 1):
            progress.check()
            time.sleep(config.pause)
            progress.increment(1, next(expected))
            if step == max(1, config.steps // 2):
                progress.add_message(next(expected))
    finally:
        if progress.cancel_requested:
            progress.add_message(CLEANUP_MESSAGE)


def stream_lines(config: DemoConfig) -> Iterator[str]:
    """The streaming job's output: one line per step, after a pause each."""
    for step in range(1, config.steps + 1):
        time.sleep(config.pause)
        yield stream_line(step, config.steps)


def stream_line(step: int, steps: int) -> str:
    """Line ``step`` of the streaming job; the one in the middle carries markup."""
    if step == max(1, steps // 2):
        return f"line {step} of {steps}: {MARKUP_MESSAGE}\n"
    return f"line {step} of {steps}\n"


# ----------------------------------------------------------------------------- running it


def default_store_directory() -> str:
    """$TRACKED_STORE, else a per-user directory under the system temporary directory."""
    user = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"tracked-demo-{user}"
    return os.environ.get("TRACKED_STORE") or str(fallback)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8080")),
        help="port to listen on (default $PORT, else 8080)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--server",
        choices=("gunicorn", "waitress"),
        default="gunicorn",
        help="gunicorn (default: several processes) or waitress (one process, threads)",
    )
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes (>= 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per gunicorn worker (default 1: sync) or waitress threads (default 8)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("TRACKED_DEMO_SECONDS", "10")),
        help="how long a job takes (default $TRACKED_DEMO_SECONDS, else 10)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=int(os.environ.get("TRACKED_DEMO_STEPS", "50")),
        help="how many steps (and messages) a job has (default $TRACKED_DEMO_STEPS, else 50)",
    )
    parser.add_argument(
        "--store",
        default=default_store_directory(),
        help="the FileStore directory every worker shares"
        " (default $TRACKED_STORE, else $TMPDIR/tracked-demo-<uid>)",
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 8 if args.server == "waitress" else 1
    problem = check_args(args)
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """One line saying what is wrong with the options, or None."""
    if not 0 < args.port < 65536:
        return f"--port must be 1-65535, got {args.port}"
    if args.seconds <= 0 or args.steps < 1:
        return "--seconds must be > 0 and --steps >= 1"
    if args.server == "gunicorn" and args.workers * args.threads < 2:
        return "the long job occupies its worker: use --workers >= 2 or --threads >= 2"
    if args.server == "waitress" and args.threads < 2:
        return "waitress needs --threads >= 2 (the long job occupies one thread)"
    return None


def gunicorn_timeout(seconds: float) -> int:
    """gunicorn's ``timeout`` for jobs of ``seconds``: comfortably longer than the job.

    gunicorn kills a sync worker that has not answered for ``timeout`` seconds (30 by
    default): a longer job would die mid-way and end ``failed`` with ``SystemExit: 1``.
    """
    return max(30, int(seconds * 2) + 10)


def serve_gunicorn(app: bottle.Bottle, args: argparse.Namespace, seconds: float) -> None:
    """Run ``app`` under gunicorn: sync workers, or gthread ones when --threads > 1."""
    from gunicorn.app.base import BaseApplication

    options = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread" if args.threads > 1 else "sync",
        "timeout": gunicorn_timeout(seconds),
        "graceful_timeout": GRACEFUL_TIMEOUT,
        # gunicorn >= 25 opens a control socket at one fixed path per user: several demos
        # (or test servers) at once would fight over it, and the demo does not need it.
        "control_socket_disable": True,
    }

    class DemoServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> bottle.Bottle:
            return app

    DemoServer().run()


def serve_waitress(app: bottle.Bottle, args: argparse.Namespace) -> None:
    """Run ``app`` under waitress: one process, ``--threads`` threads."""
    import waitress

    waitress.serve(app, host=args.host, port=args.port, threads=args.threads)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = DemoConfig(store=args.store, seconds=args.seconds, steps=args.steps,
                            streams=args.server == "gunicorn" and args.threads > 1)
        app = make_app(config)
    except tracked.TrackedError as exc:
        sys.exit(f"{sys.argv[0]}: error: {exc}")
    kind = (
        f"waitress, {args.threads} threads"
        if args.server == "waitress"
        else f"gunicorn, {args.workers} workers x {args.threads} threads"
    )
    print(f"tracked demo ({kind}; store {args.store}): http://{args.host}:{args.port}/", flush=True)
    if args.server == "waitress":
        serve_waitress(app, args)
    else:
        serve_gunicorn(app, args, config.seconds)


if __name__ == "__main__":
    main()
