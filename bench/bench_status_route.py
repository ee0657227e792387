"""Status route throughput under gunicorn, as ratios against two baselines of the same app.

One gunicorn per worker kind (2 sync workers; 2 gthread workers x 4 threads)
serves ``bench/status_app.py``; ``wrk`` loads each route in turn in the same run:
the trivial constant-dict route, the bare file-bytes route, the real status
route for a finished record (200), the same with a matching ``If-None-Match``
(304), and, for information, the status route for a running record (read,
parsed and judged on every request).
Targets: status >= 0.9 x bare for a 200, status-304 >= 0.95 x trivial.

    .venv/bin/python bench/bench_status_route.py [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import tracked

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-job"
SERVERS = {
    "sync 2w": ["-w", "2", "-k", "sync"],
    "gthread 2w x 4t": ["-w", "2", "-k", "gthread", "--threads", "4"],
}
RUNNING_KEY = "bench-running"
ROUTES = ["trivial", "bare", "status", "status-304", "running"]


def main() -> int:
    args = parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tracked-bench-") as directory:
        make_record(Path(directory))
        time.sleep(0.1)  # let the record settle, as any record polled after its end has
        report_app_costs(Path(directory))
        # A running record owned by this process: read, parsed and judged on every poll.
        with tracked.start(RUNNING_KEY, store=tracked.FileStore(directory)) as running:
            running.increment(40, *[f"step {i} done" for i in range(8)])
            running.flush()
            for label, options in SERVERS.items():
                results = bench_server(wrk, Path(directory), options, args)
                report(label, results)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="interleaved runs per route; the best is kept, since other load only slows runs",
    )
    return parser.parse_args()


def make_record(directory: Path) -> None:
    """A finished record of typical size: 100 items, 20 messages."""
    store = tracked.FileStore(directory)
    with tracked.start(KEY, total=100, store=store) as progress:
        for i in range(100):
            progress.increment(1, *([f"step {i} done"] if i % 5 == 0 else []))


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
    wrk: str, directory: Path, options: list[str], args: argparse.Namespace
) -> dict[str, tuple[float, str, str]]:
    """Start gunicorn on a free port, run wrk on every route, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BENCH_STORE": str(directory), "BENCH_KEY": KEY}
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *options,
               "--pythonpath", str(ROOT / "bench"), "--log-level", "warning", "status_app:app"]
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        status_url = f"{base}/_progress_status/{KEY}"
        wait_for(status_url)
        with urllib.request.urlopen(status_url) as response:
            etag = response.headers["ETag"]
        urls = {
            "trivial": (f"{base}/trivial", []),
            "bare": (f"{base}/bare", []),
            "status": (status_url, []),
            "status-304": (status_url, ["-H", f"If-None-Match: {etag}"]),
            "running": (f"{base}/_progress_status/{RUNNING_KEY}", []),
        }
        for url, extra in urls.values():  # warm up workers, threads and caches
            run_wrk(wrk, url, extra, args, duration=1)
        best: dict[str, tuple[float, str, str]] = {}
        for round_number in range(args.rounds):
            shift = round_number % len(ROUTES)  # rotate the order: no route always goes first
            for route in ROUTES[shift:] + ROUTES[:shift]:
                url, extra = urls[route]
                result = run_wrk(wrk, url, extra, args)
                if route not in best or result[0] > best[route][0]:
                    best[route] = result
        return best
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


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


def report_app_costs(directory: Path, calls: int = 3000) -> None:
    """Microseconds of one WSGI call of each route in this process, no server: the
    part of a request the plugin controls, steadier than wrk on a shared machine."""
    os.environ.update(BENCH_STORE=str(directory), BENCH_KEY=KEY)
    sys.path.insert(0, str(ROOT / "bench"))
    from status_app import app

    etag = wsgi_call(app, f"/_progress_status/{KEY}")["Etag"]  # Bottle title-cases names
    paths = {"trivial": ("/trivial", None), "bare": ("/bare", None),
             "status": (f"/_progress_status/{KEY}", None),
             "status-304": (f"/_progress_status/{KEY}", etag)}
    costs = {}
    for route, (path, if_none_match) in paths.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                wsgi_call(app, path, if_none_match)
            best = min(best, (time.perf_counter() - started) / calls)
        costs[route] = best * 1e6
    print("in-process WSGI call, microseconds per request (best of 5)")
    for route, cost in costs.items():
        print(f"  {route:<12}{cost:>8.1f}")
    print(f"  status - bare {costs['status'] - costs['bare']:+.1f}, "
          f"status-304 - trivial {costs['status-304'] - costs['trivial']:+.1f}")


def wsgi_call(app: object, path: str, if_none_match: str | None = None) -> dict[str, str]:
    """Call a WSGI app for ``GET path``, drain the body, return the response headers."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO()}
    if if_none_match:
        environ["HTTP_IF_NONE_MATCH"] = if_none_match
    headers: dict[str, str] = {}

    def start_response(status: str, header_list: list[tuple[str, str]], exc_info=None):
        headers.update(header_list)

    body = app(environ, start_response)  # type: ignore[operator]
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return headers


def report(label: str, results: dict[str, tuple[float, str, str]]) -> None:
    print(f"\n{label}")
    print(f"  {'route':<12}{'req/s':>10}{'p50':>10}{'p99':>10}")
    for route in ROUTES:
        rate, p50, p99 = results[route]
        print(f"  {route:<12}{rate:>10.0f}{p50:>10}{p99:>10}")
    ratio_200 = results["status"][0] / results["bare"][0]
    ratio_304 = results["status-304"][0] / results["trivial"][0]
    print(f"  status/bare (200)        {ratio_200:.2f}  (target >= 0.90)")
    print(f"  status-304/trivial (304) {ratio_304:.2f}  (target >= 0.95)")
    ratio_running = results["running"][0] / results["bare"][0]
    print(f"  running/bare             {ratio_running:.2f}  (no target: a job still going)")


if __name__ == "__main__":
    sys.exit(main())
