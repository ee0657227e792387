"""Memory of the status service under a real uvicorn: held while streams are open,
given back once they close, and bounded under a ``?since=`` sweep.

    .venv/bin/python bench/bench_web_memory.py              # FileStore and Redis
    STORES=file STREAMS=300 .venv/bin/python bench/bench_web_memory.py
    TRACKED_CODE=/path/to/old/checkout .venv/bin/python bench/bench_web_memory.py

One running record of about 2 MB (1,000 kept messages of 2,000 characters) is
served by ``bench/push_app.py`` under uvicorn (plain asyncio + h11, as the tests
run). The server's RSS (``/proc/<pid>/status``) is read: after a warm-up (one
GET, one stream opened and closed), with ``STREAMS`` event streams open (each
has read its first event, the whole record; then the record changes 3 times
and every stream reads each change), 5 s after all of them closed, and after
``SWEEP`` GETs with ``?since=0 .. SWEEP-1``. Issue 18 item 1: 300 streams held
1.71 GB and kept it after closing; the sweep held 502 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = os.environ.get("TRACKED_CODE") or str(ROOT)
sys.path.insert(0, CODE)

import tracked  # noqa: E402

PREFIX = "/_progress_status"
STREAMS = int(os.environ.get("STREAMS", "300"))
SWEEP = int(os.environ.get("SWEEP", "1024"))
MESSAGES = 1000
MESSAGE = "x" * 1990


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(port)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    directory = tempfile.mkdtemp()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    wait_port(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def uvicorn_server(store_url: str) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {**os.environ, "TRACKED_STORE": store_url, "PYTHONPATH": f"{CODE}:{ROOT}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.push_app:create_app",
         "--port", str(port), "--log-level", "warning", "--no-access-log",
         "--backlog", "4096", "--loop", "asyncio", "--http", "h11"],
        cwd=tempfile.gettempdir(), env=env)
    wait_port(port)
    try:
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


async def get(port: int, target: str) -> int:
    """One GET on its own connection; the bytes of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    return len(data)


class Stream:
    """An SSE client reading whole events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, name: str) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        writer.write(f"GET {PREFIX}/{name} HTTP/1.1\r\nHost: x\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer)

    async def event(self) -> bytes:
        """The next event (chunked transfer framing included), skipping pings."""
        while True:
            data = await self.reader.readuntil(b"\n\n")
            if b"data:" in data:
                return data

    def close(self) -> None:
        self.writer.close()


async def scenario(port: int, pid: int, progress: tracked.Progress) -> dict[str, float]:
    figures: dict[str, float] = {}
    await get(port, f"{PREFIX}/big")
    warm = await Stream.open(port, "big")
    await warm.event()
    warm.close()
    await asyncio.sleep(2)
    figures["start"] = rss_mb(pid)
    figures["fds start"] = open_fds(pid)
    streams = []
    for _ in range(STREAMS):
        stream = await Stream.open(port, "big")
        await stream.event()
        streams.append(stream)
    for change in range(3):
        progress.add_message(f"change {change} " + MESSAGE)
        await asyncio.gather(*(s.event() for s in streams))
    figures["open"] = rss_mb(pid)
    for stream in streams:
        stream.close()
    await asyncio.sleep(5)
    figures["closed"] = rss_mb(pid)
    figures["fds closed"] = open_fds(pid)
    for since in range(SWEEP):
        await get(port, f"{PREFIX}/big?since={since}")
    await asyncio.sleep(1)
    figures["sweep"] = rss_mb(pid)
    return figures


def run(kind: str, url: str) -> None:
    store = tracked.open_store(url)
    with tracked.start("big", total=None, store=store, min_interval=0,
                       max_messages=MESSAGES) as progress:
        for number in range(MESSAGES):
            progress.add_message(f"{number:05d} " + MESSAGE)
        with uvicorn_server(url) as (port, pid):
            figures = asyncio.run(scenario(port, pid, progress))
    gc.collect()
    print(f"| {kind} | {STREAMS} | {figures['start']:.0f} MB | {figures['open']:.0f} MB | "
          f"{figures['closed']:.0f} MB (+{figures['closed'] - figures['start']:.0f}) | "
          f"{figures['sweep']:.0f} MB (+{figures['sweep'] - figures['closed']:.0f}) | "
          f"{figures['fds start']:.0f} -> {figures['fds closed']:.0f} |", flush=True)


def main() -> None:
    print(f"# tracked from {os.path.dirname(tracked.__file__ or '')}")
    print("| store | streams | RSS start | streams open | all closed (+ start) "
          f"| after {SWEEP}-value since sweep (+ closed) | fds |")
    print("|---|---|---|---|---|---|---|")
    kinds = os.environ.get("STORES", "file,redis").split(",")
    if "file" in kinds:
        directory = tempfile.mkdtemp()
        try:
            run("file", directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if "redis" in kinds:
        with redis_server() as url:
            run("redis", url)


if __name__ == "__main__":
    main()
