"""``tracked serve`` under a burst: N clients connect at once and GET /progresses.json.

    .venv/bin/python bench/bench_serve.py            # 50, 200 and 500 clients, 3 rounds each

Starts ``tracked serve`` (of ``$TRACKED_CODE`` when set: the code before a change)
over a store of 50 ended records, releases N threads from a barrier, each opening
its own connection with a 10 s timeout, and prints failures and latency percentiles
per round. Issue 18 item 5: wsgiref's listen backlog of 5 timed out 52 of 200.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_tracked

tracked = load_tracked()
CLIENTS = [int(n) for n in os.environ.get("CLIENTS", "50,200,500").split(",")]
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def burst(port: int, clients: int) -> tuple[int, list[float]]:
    """(failures, seconds per successful request) of ``clients`` simultaneous GETs."""
    barrier = threading.Barrier(clients)
    took: list[float] = []
    failures: list[str] = []

    def client() -> None:
        barrier.wait()
        start = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/progresses.json")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(str(response.status))
                    return
            finally:
                connection.close()
        except OSError as exc:
            failures.append(type(exc).__name__)
            return
        took.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(failures), took


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = tracked.FileStore(Path(directory) / "store")
        for number in range(50):
            with tracked.start(f"job-{number}", total=10, store=store) as progress:
                progress.increment(number % 10, f"step {number}")
        port = free_port()
        code = os.environ.get("TRACKED_CODE") or str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": code}
        server = subprocess.Popen(  # cwd: ``-m`` would import tracked from the current directory
            [sys.executable, "-m", "tracked", "serve", "--port", str(port),
             "--store", str(store.directory)], stdout=subprocess.DEVNULL, env=env, cwd=directory)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print("| clients | round | failures | p50 | p95 | max |")
            print("|---|---|---|---|---|---|")
            for clients in CLIENTS:
                for number in range(ROUNDS):
                    failed, took = burst(port, clients)
                    took.sort()
                    p95 = took[int(len(took) * 0.95) - 1] if took else float("nan")
                    print(f"| {clients} | {number + 1} | {failed} | "
                          f"{statistics.median(took) * 1000:.0f} ms | {p95 * 1000:.0f} ms | "
                          f"{took[-1] * 1000:.0f} ms |")
                    time.sleep(0.5)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
