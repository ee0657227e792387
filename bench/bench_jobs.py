"""Jobs off the request under gunicorn (3 sync workers): how fast ``POST`` answers 202,
and whether 3 running jobs slow the status polls down.

Each round, interleaved: an idle window (no job runs) of status polls; then 3 jobs
started with ``tracked.submit`` (``POST /submit``, each timed to its 202) and the
same window of polls while all 3 run. Polls come from 2 client threads, a new
connection each (sync workers do not keep connections alive), all to one finished
record, so both windows ask the server for the same work. Reported: medians over
the rounds of each window's p50 and p99. With ``--inline``, one more window with
3 jobs run *in* their requests (``POST /inline``), which holds all 3 workers.

    .venv/bin/python bench/bench_jobs.py [--rounds 5] [--polls 400] [--inline]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import tracked

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "bench-reference"
JOB_SECONDS = 6.0


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tracked-bench-jobs-") as directory:
        store = tracked.FileStore(directory)
        with tracked.start(REFERENCE, total=10, store=store) as reference:
            reference.increment(10, *[f"step {i} done" for i in range(10)])
        time.sleep(0.1)  # settled, as any record polled after its end
        port = free_port()
        server = start_gunicorn(port, directory)
        try:
            rows = [run_round(port, args.polls) for _ in range(args.rounds)]
            inline = run_inline(port, args.polls) if args.inline else None
        finally:
            stop(server)
    report(rows, inline, args)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--polls", type=int, default=400, help="status polls per window")
    parser.add_argument("--inline", action="store_true", help="also 3 jobs in their requests")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gunicorn(port: int, store: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "3",
        "-k",
        "sync",
        "--timeout",
        "120",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "bench.jobs_app:app",
    ]
    env = {**os.environ, "BENCH_STORE": store, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    stop(process)
    raise SystemExit("gunicorn did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def call(port: int, method: str, path: str) -> tuple[int, float, bytes]:
    """One request on a new connection: status, seconds until the whole answer, body."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return response.status, time.perf_counter() - started, body


def poll_window(port: int, polls: int) -> list[float]:
    """``polls`` status polls of the reference record from 2 threads; their latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = []
        for _ in range(polls // 2):
            status, seconds, _ = call(port, "GET", f"/_progress_status/{REFERENCE}")
            assert status == 200, status
            mine.append(seconds)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def state_of(port: int, progress_id: str) -> bytes:
    return call(port, "GET", f"/_progress_status/bench-job?progress_id={progress_id}")[2]


def run_round(port: int, polls: int) -> dict[str, float]:
    idle = poll_window(port, polls)
    ids = [uuid.uuid4().hex for _ in range(3)]
    accepted = []
    for progress_id in ids:
        status, seconds, body = call(
            port, "POST", f"/submit?seconds={JOB_SECONDS}&progress_id={progress_id}"
        )
        assert status == 202, (status, body)
        accepted.append(seconds)
    busy = poll_window(port, polls)
    still_running = all(b'"state":"running"' in state_of(port, i) for i in ids)
    for progress_id in ids:  # let the jobs end before the next idle window
        while b'"in_progress":false' not in state_of(port, progress_id):
            time.sleep(0.1)
    return {
        "accepted_median": statistics.median(accepted),
        "accepted_max": max(accepted),
        "idle_p50": p(idle, 0.5),
        "idle_p99": p(idle, 0.99),
        "busy_p50": p(busy, 0.5),
        "busy_p99": p(busy, 0.99),
        "jobs_ran_throughout": float(still_running),
    }


def run_inline(port: int, polls: int) -> dict[str, float]:
    """3 jobs of 3 s in their requests (all 3 sync workers busy), then the polls."""
    ids = [uuid.uuid4().hex for _ in range(3)]
    threads = [
        threading.Thread(target=call, args=(port, "POST", f"/inline?seconds=3&progress_id={i}"))
        for i in ids
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the 3 requests have reached the 3 workers
    window = poll_window(port, min(polls, 40))
    for thread in threads:
        thread.join()
    return {"p50": p(window, 0.5), "p99": p(window, 0.99)}


def report(
    rows: list[dict[str, float]], inline: dict[str, float] | None, args: argparse.Namespace
) -> None:
    def median(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    ms = 1000.0
    print(f"gunicorn 3 sync workers; {args.rounds} rounds, {args.polls} polls per window")
    print(
        f"202 answer (POST /submit):  median {median('accepted_median') * ms:.1f} ms, "
        f"worst round max {max(r['accepted_max'] for r in rows) * ms:.1f} ms"
    )
    print(
        f"polls, no job running:      p50 {median('idle_p50') * ms:.2f} ms, "
        f"p99 {median('idle_p99') * ms:.2f} ms"
    )
    print(
        f"polls, 3 jobs running:      p50 {median('busy_p50') * ms:.2f} ms, "
        f"p99 {median('busy_p99') * ms:.2f} ms"
    )
    print(
        f"p99 ratio (3 jobs / none):  {median('busy_p99') / median('idle_p99'):.2f} "
        f"(target <= 2); jobs ran through every busy window: "
        f"{all(r['jobs_ran_throughout'] for r in rows)}"
    )
    if inline is not None:
        print(
            f"polls, 3 jobs in requests:  p50 {inline['p50'] * ms:.0f} ms, "
            f"p99 {inline['p99'] * ms:.0f} ms (for contrast)"
        )


if __name__ == "__main__":
    sys.exit(main())
