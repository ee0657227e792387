"""Status route throughput, as ratios against baselines measured in the same run.

Two records in one FileStore: a finished one (100 items, 20 messages) and a
running one (10 messages) owned by this process, so readers in other processes
judge its owner's liveness as they would a real job's. ``bench/status_app.py``
(a Bottle app with ``TrackedPlugin``) serves the status route next to three
baselines: ``/trivial`` (a constant dict), ``/bare`` (the finished record's
file bytes) and ``/bare-running`` (the running record's file bytes).

1. In process: one WSGI call per request, no server; each round times every
   route (order rotated), the ratios are taken within the round, and the
   medians over the rounds are reported. ``wsgi-running`` is the same request
   to ``tracked.wsgi.status_app`` (when the code has it).
2. Under gunicorn (2 sync workers; 2 gthread workers x 4 threads): ``wrk`` loads
   each route in turn, order rotated per round; ratios per round, medians kept.

Targets: status / bare >= 0.90, running / bare-running >= 0.90,
status-304 and running-304 / trivial >= 0.95 (throughput ratios).

    .venv/bin/python bench/bench_status_route.py [--rounds 5] [--duration 3] [--servers sync]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tracked

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-job"
RUNNING_KEY = "bench-running"
SERVERS = {
    "sync": ("gunicorn 2 sync workers", ["-w", "2", "-k", "sync"]),
    "gthread": (
        "gunicorn 2 gthread workers x 4 threads",
        ["-w", "2", "-k", "gthread", "--threads", "4"],
    ),
}
ROUTES = ["trivial", "bare", "status", "status-304", "bare-running", "running", "running-304"]
#: (route, baseline, target): throughput of route / throughput of baseline.
RATIOS = [
    ("status", "bare", 0.90),
    ("status-304", "trivial", 0.95),
    ("running", "bare-running", 0.90),
    ("running-304", "trivial", 0.95),
]
PREFIX = "/_progress_status"


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tracked-bench-") as directory:
        store = tracked.FileStore(directory)
        make_record(store)
        # A running record owned by this process, 10 messages, written once and left alone.
        with tracked.start(RUNNING_KEY, total=100, store=store) as running:
            running.increment(40, *[f"step {i} done" for i in range(10)])
            running.flush()
            time.sleep(0.2)  # records settle, as any record polled a moment after its write
            os.environ.update(BENCH_STORE=directory, BENCH_KEY=KEY, BENCH_RUNNING_KEY=RUNNING_KEY)
            in_process(Path(directory), args)
            wrk = shutil.which("wrk")
            if wrk is None:
                print("\nwrk is not installed (apt-get install -y wrk): no server figures")
                return 0
            for server in args.servers:
                label, options = SERVERS[server]
                rounds = bench_server(wrk, options, args)
                report_server(label, rounds)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median kept)")
    parser.add_argument("--calls", type=int, default=2000, help="WSGI calls per route and round")
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=list(SERVERS))
    return parser.parse_args()


def make_record(store: tracked.FileStore) -> None:
    """A finished record of typical size: 100 items, 20 messages."""
    with tracked.start(KEY, total=100, store=store) as progress:
        for i in range(100):
            progress.increment(1, *([f"step {i} done"] if i % 5 == 0 else []))


# ----------------------------------------------------------------------------- in process


def in_process(directory: Path, args: argparse.Namespace) -> None:
    """Microseconds per WSGI call of each route, and the ratios, medians over rounds."""
    sys.path.insert(0, str(ROOT / "bench"))
    from status_app import app

    status_path = f"{PREFIX}/{KEY}"
    running_path = f"{PREFIX}/{RUNNING_KEY}"
    etag = wsgi_call(app, status_path)["Etag"]  # Bottle title-cases header names
    running_etag = wsgi_call(app, running_path)["Etag"]
    calls: dict[str, Callable[[], Any]] = {
        "trivial": lambda: wsgi_call(app, "/trivial"),
        "bare": lambda: wsgi_call(app, "/bare"),
        "status": lambda: wsgi_call(app, status_path),
        "status-304": lambda: wsgi_call(app, status_path, etag),
        "bare-running": lambda: wsgi_call(app, "/bare-running"),
        "running": lambda: wsgi_call(app, running_path),
        "running-304": lambda: wsgi_call(app, running_path, running_etag),
    }
    try:
        from tracked.wsgi import status_app
    except ImportError:
        pass
    else:
        plain = status_app(tracked.FileStore(directory))
        calls["wsgi-running"] = lambda: wsgi_call(plain, f"/{RUNNING_KEY}", script=PREFIX)
    names = list(calls)
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        shift = number % len(names)
        costs: dict[str, float] = {}
        for route in names[shift:] + names[:shift]:
            call = calls[route]
            started = time.perf_counter()
            for _ in range(args.calls):
                call()
            costs[route] = (time.perf_counter() - started) / args.calls * 1e6
        rounds.append(costs)
    print(f"in process, one WSGI call: microseconds per request, median of {args.rounds} rounds")
    for route in names:
        print(f"  {route:<14}{statistics.median(r[route] for r in rounds):>8.1f}")
    ratios = [*RATIOS]
    if "wsgi-running" in calls:
        ratios.append(("wsgi-running", "bare-running", 0.90))
    report_ratios([{k: 1 / v for k, v in r.items()} for r in rounds], ratios)


def wsgi_call(
    app: Any, path: str, if_none_match: str | None = None, script: str = ""
) -> dict[str, str]:
    """Call a WSGI app for ``GET path``, drain the body, return the response headers."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": script,
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.input": io.BytesIO()}
    if if_none_match:
        environ["HTTP_IF_NONE_MATCH"] = if_none_match
    headers: dict[str, str] = {}

    def start_response(status: str, header_list: list[tuple[str, str]], exc_info: Any = None):
        headers.update(header_list)

    body = app(environ, start_response)
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return headers


def report_ratios(rounds: list[dict[str, float]], ratios: list[tuple[str, str, float]]) -> None:
    """Throughput ratios (route / baseline) per round; their median, min and max."""
    for route, baseline, target in ratios:
        values = sorted(r[route] / r[baseline] for r in rounds)
        print(f"  {route + ' / ' + baseline:<30}median {statistics.median(values):.2f}"
              f"  (min {values[0]:.2f}, max {values[-1]:.2f}; target >= {target:.2f})")


# ----------------------------------------------------------------------------- gunicorn + wrk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def bench_server(
    wrk: str, options: list[str], args: argparse.Namespace
) -> list[dict[str, tuple[float, str, str]]]:
    """Start gunicorn on a free port, run wrk on every route each round, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *options,
               "--pythonpath", str(ROOT / "bench"), "--log-level", "warning", "status_app:app"]
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        status_url = f"{base}{PREFIX}/{KEY}"
        running_url = f"{base}{PREFIX}/{RUNNING_KEY}"
        wait_for(status_url)
        urls = {
            "trivial": (f"{base}/trivial", []),
            "bare": (f"{base}/bare", []),
            "status": (status_url, []),
            "status-304": (status_url, ["-H", f"If-None-Match: {etag_of(status_url)}"]),
            "bare-running": (f"{base}/bare-running", []),
            "running": (running_url, []),
            "running-304": (running_url, ["-H", f"If-None-Match: {etag_of(running_url)}"]),
        }
        for url, extra in urls.values():  # warm up workers and caches
            run_wrk(wrk, url, extra, args, duration=1)
        rounds = []
        for number in range(args.rounds):
            shift = number % len(ROUTES)
            rounds.append({route: run_wrk(wrk, *urls[route], args)
                           for route in ROUTES[shift:] + ROUTES[:shift]})
        return rounds
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def etag_of(url: str) -> str:
    with urllib.request.urlopen(url) as response:
        return str(response.headers["ETag"])


def run_wrk(
    wrk: str, url: str, extra: list[str], args: argparse.Namespace, duration: int = 0
) -> tuple[float, str, str]:
    """Requests/s, p50 and p99 of one wrk run; fails on any error response."""
    seconds = duration or args.duration
    output = subprocess.run(
        [wrk, "-t2", f"-c{args.connections}", f"-d{seconds}s", "--latency", *extra, url],
        check=True, capture_output=True, text=True,
    ).stdout
    if "Non-2xx or 3xx" in output:
        raise SystemExit(f"error responses from {url}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    return rate, p50, p99


def report_server(label: str, rounds: list[dict[str, tuple[float, str, str]]]) -> None:
    print(f"\n{label}: wrk, median of {len(rounds)} rounds")
    print(f"  {'route':<14}{'req/s':>10}{'p50':>10}{'p99':>10}")
    for route in ROUTES:
        middle = sorted((r[route] for r in rounds), key=lambda result: result[0])
        rate, p50, p99 = middle[len(middle) // 2]
        print(f"  {route:<14}{rate:>10.0f}{p50:>10}{p99:>10}")
    report_ratios([{k: v[0] for k, v in r.items()} for r in rounds], RATIOS)


if __name__ == "__main__":
    sys.exit(main())
