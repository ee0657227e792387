"""Push benchmarks: Server-Sent Events against polling, under a real uvicorn.

    .venv/bin/python bench/bench_push.py freshness   # write -> SSE client, Redis and file
    .venv/bin/python bench/bench_push.py follow      # 100 clients follow a job 60 s: poll vs SSE
    .venv/bin/python bench/bench_push.py route       # status JSON vs a trivial route (wrk)
    .venv/bin/python bench/bench_push.py route-redis # tracked.asgi, Redis, vs FastAPI+redis.asyncio
    BENCH_STACK=asyncio BENCH_ROUNDS=15 .venv/bin/python bench/bench_push.py route
    .venv/bin/python bench/bench_push.py crowd           # 1,000 SSE clients, 10 jobs, Redis
    .venv/bin/python bench/bench_push.py crowd-together  # ... the 10 jobs writing at once
    .venv/bin/python bench/bench_push.py crowd-fast      # ... each job writing every 0.1 s
    BENCH_ROUNDS=3 .venv/bin/python bench/bench_push.py fanout  # tracked vs sse-starlette vs floor

Each part starts its own redis-server and uvicorn (``bench/push_app.py``) on free
ports. Figures are medians (and p99) of the runs printed; see bench/README.md.

``BENCH_STACK`` picks uvicorn's event loop and HTTP parser: ``auto`` (the default:
what uvicorn picks itself, uvloop and httptools when installed) or ``asyncio``
(``--loop asyncio --http h11``). ``BENCH_ROUNDS`` sets the route part's rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import tracked
from tracked._store import Owner

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/_progress_status"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 60  # a loaded machine starts uvicorn slowly
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(port)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    directory = tempfile.mkdtemp()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, "--maxclients", "20000"],
        stdout=subprocess.DEVNULL)
    wait_port(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def python_path() -> str:
    """The servers' ``PYTHONPATH``: this checkout, after ``$PYTHONPATH`` (so that a
    ``PYTHONPATH=/tmp/base`` run serves an exported older ``tracked``)."""
    outer = os.environ.get("PYTHONPATH")
    return f"{outer}{os.pathsep}{ROOT}" if outer else str(ROOT)


STACKS = {"auto": [], "asyncio": ["--loop", "asyncio", "--http", "h11"]}


def stack() -> str:
    """The uvicorn stack ``$BENCH_STACK`` asks for, named by its loop and parser."""
    choice = os.environ.get("BENCH_STACK", "auto")
    if choice not in STACKS:
        raise SystemExit(f"BENCH_STACK must be one of {sorted(STACKS)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio: --loop asyncio --http h11"
    # What uvicorn's "auto" picks: uvloop and httptools when importable.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"auto: {loop} + {http}"


@contextlib.contextmanager
def uvicorn_server(
    store_url: str, factory: str = "bench.push_app:create_app"
) -> Iterator[tuple[int, int]]:
    """(port, pid) of uvicorn serving ``factory`` (bench/push_app.py) for ``store_url``."""
    port = free_port()
    env = {**os.environ, "TRACKED_STORE": store_url, "PYTHONPATH": python_path()}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory,
         "--port", str(port), "--log-level", "warning", "--no-access-log",
         "--backlog", "4096", "--limit-concurrency", "20000",
         *STACKS[os.environ.get("BENCH_STACK", "auto")]],
        cwd=ROOT, env=env)
    try:
        wait_port(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


class Writer:
    """Writes a record straight to the store, a timestamp as each message."""

    def __init__(self, store: tracked.Store, name: str) -> None:
        self.store = store
        self.owner = Owner.for_this_process()
        self.state = tracked.State(name=name, total=None, start_time=time.time(),
                                   current_time=time.time())
        store.claim(self.state, self.owner)

    def write(self, *, final: bool = False) -> None:
        now = time.time()
        state = self.state
        messages = (*state.messages[-49:], f"{now:.6f}")
        self.state = dataclasses.replace(
            state, count=state.count + 1, messages=messages,
            message_count=state.message_count + 1, current_time=now)
        if final:
            self.state = self.state.ended("finished", now)
        self.store.save(self.state, self.owner)


def sse_lines(port: int, path: str) -> Iterator[str]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n".encode())
    reader = sock.makefile("rb")
    for raw in reader:
        yield raw.decode().rstrip("\n")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# ----------------------------------------------------------------------------- freshness


def freshness(rounds: int = 3, writes: int = 200) -> None:
    """Write -> SSE client delay for Redis and file stores, interleaved rounds."""
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as directory:
        stores = {"redis": redis_url, "file": directory}
        results: dict[str, list[float]] = {kind: [] for kind in stores}
        servers = {kind: contextlib.ExitStack() for kind in stores}
        ports = {kind: servers[kind].enter_context(uvicorn_server(url))[0]
                 for kind, url in stores.items()}
        try:
            for round_ in range(rounds):
                for kind, url in stores.items():
                    store = tracked.open_store(url)
                    name = f"fresh-{round_}"
                    writer = Writer(store, name)
                    delays: list[float] = []
                    done = threading.Event()

                    def read(port: int = ports[kind], name: str = name,
                             delays: list[float] = delays, done: threading.Event = done) -> None:
                        seen = 0
                        for line in sse_lines(port, f"{PREFIX}/{name}"):
                            if line.startswith("data: {") and seen >= 0:
                                now = time.time()
                                data = json.loads(line[6:])
                                if seen:
                                    delays.extend(now - float(m) for m in data["messages"])
                                seen += 1
                                if not data["in_progress"]:
                                    break
                        done.set()

                    reader = threading.Thread(target=read)
                    reader.start()
                    time.sleep(0.3)
                    for i in range(writes):
                        writer.write(final=i == writes - 1)
                        time.sleep(0.02)
                    done.wait(10)
                    reader.join(10)
                    results[kind].extend(delays)
                    store.close()
        finally:
            for stack in servers.values():
                stack.close()
    print("freshness, write -> SSE client (uvicorn, tracked.asgi), ms:")
    for kind, delays in results.items():
        ms = [d * 1000 for d in delays]
        print(f"  {kind:5} n={len(ms)} p50={statistics.median(ms):.1f} "
              f"p99={percentile(ms, 99):.1f} max={max(ms):.1f}")


# ----------------------------------------------------------------------------- follow


def server_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow(clients: int = 100, seconds: float = 60.0) -> None:
    """Requests and server CPU to follow one job: polling every 1 s vs SSE."""
    with redis_server() as url, uvicorn_server(url) as (port, pid):
        store = tracked.open_store(url)
        for mode in ("poll", "sse", "poll", "sse"):
            follow_once(store, port, pid, mode, clients, seconds)
        store.close()


def follow_once(
    store: tracked.Store, port: int, pid: int, mode: str, clients: int, seconds: float
) -> None:
    import httpx

    base = f"http://127.0.0.1:{port}{PREFIX}"
    name = f"follow-{mode}-{time.monotonic_ns()}"
    writer = Writer(store, name)
    requests = 0
    received = [0] * clients

    async def poller(index: int, client: httpx.AsyncClient, end: float) -> None:
        nonlocal requests
        since = 0
        while time.monotonic() < end:
            response = await client.get(f"{base}/{name}?since={since}")
            requests += 1
            state = response.json()
            since = state["message_count"]
            received[index] += len(state["messages"])
            await asyncio.sleep(1.0)

    async def streamer(index: int, client: httpx.AsyncClient, end: float) -> None:
        nonlocal requests
        last = None
        while time.monotonic() < end:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            requests += 1
            with contextlib.suppress(httpx.ReadTimeout):
                async with client.stream("GET", f"{base}/{name}", headers=headers,
                                         timeout=end - time.monotonic() + 1) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            last = line[4:]
                        elif line.startswith("data: "):
                            received[index] += len(json.loads(line[6:])["messages"])
                        if time.monotonic() >= end:
                            break

    async def run() -> None:
        end = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            task = poller if mode == "poll" else streamer
            await asyncio.gather(*(task(i, client, end) for i in range(clients)))

    def write() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            writer.write()
            time.sleep(0.1)

    thread = threading.Thread(target=write)
    cpu = server_cpu(pid)
    thread.start()
    asyncio.run(run())
    thread.join()
    cpu = server_cpu(pid) - cpu
    print(f"  {mode:4}: {clients} clients, {seconds:.0f} s: {requests} requests "
          f"({requests / seconds:.1f}/s), server CPU {cpu:.2f} s, "
          f"messages per client {statistics.median(received):.0f} "
          f"of {writer.state.message_count}")


# ----------------------------------------------------------------------------- route


def route(rounds: int = 7, duration: str = "3s", redis_store: bool = False) -> None:
    """Status JSON under uvicorn vs a trivial ASGI route on the same server (wrk);
    each round runs both back to back, in alternating order. Besides requests/s
    (which wrk, on the same 2 cores, also shapes), the server's CPU per request.
    ``redis_store``: the status route on a RedisStore against the hand-written FastAPI
    endpoint reading the same keys (``bench/push_app.py``) instead of the trivial one."""
    rounds = int(os.environ.get("BENCH_ROUNDS", rounds))
    print(f"  uvicorn stack {stack()}; {rounds} rounds of wrk -t2 -c16 -d{duration}")
    with contextlib.ExitStack() as stack_:
        if redis_store:
            url = stack_.enter_context(redis_server())
            store: tracked.Store = tracked.open_store(url)
        else:
            url = stack_.enter_context(tempfile.TemporaryDirectory())
            store = tracked.FileStore(url)
        port, pid = stack_.enter_context(uvicorn_server(url))
        with tracked.start("bench", store=store) as progress:
            progress.increment(5, *[f"message {i}" for i in range(10)])
        time.sleep(0.2)
        baseline = "/hand/bench" if redis_store else "/trivial"
        urls = {"trivial": f"http://127.0.0.1:{port}{baseline}",
                "status": f"http://127.0.0.1:{port}{PREFIX}/bench"}
        if redis_store:
            print("  'trivial' below is the hand-written FastAPI + redis.asyncio endpoint")
        rates: dict[str, list[float]] = {kind: [] for kind in urls}
        cpu_us: dict[str, list[float]] = {kind: [] for kind in urls}
        for round_ in range(rounds):
            for kind in ("trivial", "status") if round_ % 2 == 0 else ("status", "trivial"):
                url = urls[kind]
                before = server_cpu(pid)
                out = subprocess.run(["wrk", "-t2", "-c16", f"-d{duration}", url],
                                     capture_output=True, text=True, check=True).stdout
                used = server_cpu(pid) - before
                match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
                count = re.search(r"(\d+) requests in", out)
                assert match and count, out
                rates[kind].append(float(match.group(1)))
                cpu_us[kind].append(used / int(count.group(1)) * 1e6)
    trivial, status = (statistics.median(rates[k]) for k in ("trivial", "status"))
    ratios = [s / t for s, t in zip(rates["status"], rates["trivial"], strict=True)]
    print(f"  trivial {rates['trivial']} median {trivial:.0f}/s")
    print(f"  status  {rates['status']} median {status:.0f}/s")
    print(f"  status / trivial: of the medians {status / trivial:.2f}, "
          f"median of the {rounds} back-to-back pairs {statistics.median(ratios):.2f}")
    trivial_cpu, status_cpu = (statistics.median(cpu_us[k]) for k in ("trivial", "status"))
    print(f"  server CPU per request: trivial {trivial_cpu:.1f} us, status {status_cpu:.1f} us,"
          f" trivial / status {trivial_cpu / status_cpu:.2f}")


# ----------------------------------------------------------------------------- crowd


#: The messages of an event's data (timestamps, written as JSON strings).
MESSAGES = re.compile(rb'"messages":\[([^\]]*)\]')


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(pid)


def crowd(
    clients: int = 1000, jobs: int = 10, writes: int = 20, pause: float = 0.5, *, together: bool
) -> None:
    """1,000 SSE clients on one uvicorn process following 10 jobs on Redis; each job
    writes every ``pause`` seconds (0.1: the default min_interval, flat out)."""
    with redis_server() as url, uvicorn_server(url) as (port, pid):
        figures = measure_crowd(url, port, pid, PREFIX, clients, jobs, writes, pause,
                                together=together)
    print(f"  {clients} streams open: server RSS {figures.rss_before} -> {figures.rss} KiB "
          f"({figures.kib_per_stream:.1f} KiB per client)")
    print(f"  Redis connections opened by the server since start: "
          f"{figures.connections} (pub/sub connections now: {figures.pubsub})")
    print(f"  server CPU while the jobs ran: {figures.cpu:.2f} s in {figures.took:.1f} s "
          f"({figures.cpu / figures.took:.0%} of a core)")
    ms = figures.ms
    print(f"  freshness over {len(ms)} deliveries: p50={statistics.median(ms):.1f} ms "
          f"p90={percentile(ms, 90):.1f} ms p99={percentile(ms, 99):.1f} ms "
          f"max={max(ms):.1f} ms; streams ended: {figures.finished}/{clients}")
    if os.environ.get("BENCH_ROUNDS"):
        per = len(ms) // writes
        for r in range(writes):
            chunk = sorted(ms[r * per:(r + 1) * per])
            print(f"    slice {r}: p50={chunk[len(chunk) // 2]:.1f} max={chunk[-1]:.1f}")


@dataclasses.dataclass
class Crowd:
    """What one crowd run measured: delivery delays (ms), server RSS and CPU."""

    ms: list[float]
    rss_before: int
    rss: int
    clients: int
    cpu: float
    took: float
    finished: int
    connections: int
    pubsub: int

    @property
    def kib_per_stream(self) -> float:
        return (self.rss - self.rss_before) / self.clients

    @property
    def cpu_us_per_delivery(self) -> float:
        return self.cpu / max(1, len(self.ms)) * 1e6


def measure_crowd(
    url: str, port: int, pid: int, path: str, clients: int, jobs: int, writes: int,
    pause: float, *, together: bool, names: str = "job",
) -> Crowd:
    """``clients`` SSE clients of the server on ``port`` (process ``pid``) following
    ``{path}/{names}-J`` for ``jobs`` jobs written by another process on Redis ``url``."""
    admin = redis.Redis.from_url(url)
    # The writes come from another process, as a job's would: no GIL shared with
    # the clients here. It claims the records, says so, and writes on "go".
    writer_process = subprocess.Popen(
        [sys.executable, __file__, "_write", url, str(jobs), str(writes), str(pause),
         "together" if together else "apart", names],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer_process.stdout is not None and writer_process.stdin is not None
    assert writer_process.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    rss_before = rss_kib(pid)
    connections_before = int(admin.info("stats")["total_connections_received"])
    delays: list[float] = []
    opened = 0
    finished = 0
    figures: dict[str, Any] = {}

    class Client(asyncio.Protocol):
        """One SSE client, as cheap as a Python client gets (a protocol, no
        stream reader): it notes the time bytes arrive, then parses them."""

        def __init__(self, ready: asyncio.Event, done: asyncio.Future[None]) -> None:
            self.ready, self.done = ready, done
            self.buffer = b""
            self.first = True

        def data_received(self, data: bytes) -> None:
            nonlocal opened
            now = time.time()
            self.buffer += data
            *events, self.buffer = self.buffer.split(b"\n\n")
            for event in events:
                start = event.find(b"data: {")
                if start < 0:
                    continue
                body = event[start + 6 :]
                if self.first:
                    self.first = False
                    opened += 1
                    if opened == clients:
                        self.ready.set()
                else:
                    found = MESSAGES.search(body)
                    stamps = found.group(1).split(b",") if found and found.group(1) else []
                    delays.extend(now - float(stamp.strip(b'"')) for stamp in stamps)
                if b'"in_progress":false' in body and not self.done.done():
                    self.done.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def client(index: int, ready: asyncio.Event) -> None:
        nonlocal finished
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: Client(ready, done), "127.0.0.1", port
        )
        transport.write(f"GET {path}/{names}-{index % jobs} HTTP/1.0\r\n"
                        "Accept: text/event-stream\r\n\r\n".encode())
        await done
        finished += 1
        transport.close()

    async def run() -> None:
        assert writer_process.stdin is not None
        ready = asyncio.Event()
        tasks = []
        for i in range(clients):
            tasks.append(asyncio.create_task(client(i, ready)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(1.0)
        figures["rss"] = rss_kib(pid)
        pubsub = admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        figures["pubsub"] = len([x for x in pubsub.decode().splitlines() if x])
        figures["connections"] = (int(admin.info("stats")["total_connections_received"])
                                  - connections_before)
        cpu = server_cpu(pid)
        started = time.monotonic()
        writer_process.stdin.write("go\n")
        writer_process.stdin.flush()
        await asyncio.to_thread(writer_process.wait)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        figures["took"] = time.monotonic() - started
        figures["cpu"] = server_cpu(pid) - cpu

    if importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())
    admin.close()
    return Crowd(ms=[d * 1000 for d in delays], rss_before=rss_before, clients=clients,
                 finished=finished, **figures)


# ----------------------------------------------------------------------------- fanout


@contextlib.contextmanager
def floor_server(store_url: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of the raw uvloop floor (``bench/fanout_apps.py``)."""
    port = free_port()
    env = {**os.environ, "TRACKED_STORE": store_url, "PYTHONPATH": python_path()}
    process = subprocess.Popen([sys.executable, "-m", "bench.fanout_apps", "floor", str(port)],
                               cwd=ROOT, env=env)
    try:
        wait_port(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


#: The servers ``fanout`` compares: how to start one, and the path prefix of its streams.
FANOUT = {
    "tracked": (lambda url: uvicorn_server(url), PREFIX),
    "sse-starlette": (lambda url: uvicorn_server(url, "bench.fanout_apps:create_sse_starlette"),
                      "/sse"),
    "floor": (floor_server, "/floor"),
}


def fanout(counts: tuple[int, ...] = (1000, 2000), jobs: int = 1, writes: int = 20,
           pause: float = 0.5) -> None:
    """tracked.asgi against sse-starlette with one shared subscriber and a raw uvloop
    floor with one subscription: ``counts`` clients following ``jobs`` jobs on Redis
    that write in the same instant every ``pause`` s. Each (count, round) runs the
    three on fresh servers, in a rotated order; the figures are medians of rounds,
    and the ratios are the medians of each round's own ratio."""
    rounds = int(os.environ.get("BENCH_ROUNDS", 3))
    print(f"  uvicorn stack {stack()}; {rounds} rounds; {jobs} job(s), {writes} writes "
          f"every {pause} s, all clients' deliveries at once; load {os.getloadavg()[0]:.1f}")
    kinds = list(FANOUT)
    with redis_server() as url:
        for count in counts:
            runs: dict[str, list[Crowd]] = {kind: [] for kind in kinds}
            loads = []
            for round_ in range(rounds):
                order = kinds[round_ % 3:] + kinds[:round_ % 3]
                for kind in order:
                    start, path = FANOUT[kind]
                    loads.append(os.getloadavg()[0])
                    with start(url) as (port, pid):
                        time.sleep(1.0)  # let the server settle before its RSS is read
                        runs[kind].append(measure_crowd(
                            url, port, pid, path, count, jobs, writes, pause, together=True,
                            names=f"{kind}-{count}-{round_}"))
                    got = runs[kind][-1]
                    print(f"    {count} {kind:13} round {round_}: p50 "
                          f"{statistics.median(got.ms):.1f} p99 {percentile(got.ms, 99):.1f} "
                          f"max {max(got.ms):.1f} ms, {got.cpu_us_per_delivery:.1f} us/delivery, "
                          f"{got.kib_per_stream:.1f} KiB/stream, {len(got.ms)} deliveries, "
                          f"ended {got.finished}/{count}")
            print(f"  {count} clients (load {min(loads):.1f}-{max(loads):.1f}):")
            for kind in kinds:
                done = runs[kind]
                p50 = statistics.median(statistics.median(c.ms) for c in done)
                print(f"    {kind:13} p50 {p50:6.1f}"
                      f"  p99 {statistics.median(percentile(c.ms, 99) for c in done):6.1f}"
                      f"  max {statistics.median(max(c.ms) for c in done):6.1f} ms;"
                      f"  {statistics.median(c.cpu_us_per_delivery for c in done):5.1f} us CPU"
                      f" per delivery; {statistics.median(c.kib_per_stream for c in done):5.1f}"
                      f" KiB per stream; pub/sub connections {done[-1].pubsub}")
            for other in ("sse-starlette", "floor"):
                ratios = [percentile(t.ms, 99) / percentile(o.ms, 99)
                          for t, o in zip(runs["tracked"], runs[other], strict=True)]
                cpu = [t.cpu_us_per_delivery / o.cpu_us_per_delivery
                       for t, o in zip(runs["tracked"], runs[other], strict=True)]
                print(f"    tracked / {other}: p99 {statistics.median(ratios):.2f} "
                      f"({min(ratios):.2f}-{max(ratios):.2f}), CPU per delivery "
                      f"{statistics.median(cpu):.2f}")


# ----------------------------------------------------------------------------- stream-memory


def stream_memory(clients: int = 1000, top: int = 30, *, trace: bool = True) -> None:
    """What an open stream holds: a tracemalloc snapshot of the uvicorn process
    (``bench/push_app.py`` with ``$BENCH_TRACEMALLOC``) before and after ``clients``
    SSE streams opened on one Redis record, the difference by line, per stream.
    ``trace=False``: the server's RSS only, without tracemalloc's own weight."""
    directory = tempfile.mkdtemp()
    if trace:
        os.environ["BENCH_TRACEMALLOC"] = f"{directory}/snapshot"
    before, after = f"{directory}/snapshot.before", f"{directory}/snapshot.after"
    with redis_server() as url, uvicorn_server(url) as (port, pid):
        store = tracked.open_store(url)
        writer = Writer(store, "memory")
        writer.write()

        def snapshot(path: str) -> None:
            if not trace:
                return
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"GET /snapshot?{path.rsplit('.', 1)[1]} HTTP/1.0\r\n\r\n".encode())
                while sock.recv(4096):
                    pass

        async def open_streams() -> None:
            loop = asyncio.get_running_loop()
            opened = 0
            ready = asyncio.Event()

            class Client(asyncio.Protocol):
                first = True

                def data_received(self, data: bytes) -> None:
                    nonlocal opened
                    if self.first and b"data: {" in data:
                        self.first = False
                        opened += 1
                        if opened == clients:
                            ready.set()

            transports = []
            for i in range(clients):
                transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
                transport.write(f"GET {PREFIX}/memory HTTP/1.0\r\n"
                                "Accept: text/event-stream\r\n\r\n".encode())
                transports.append(transport)
                if i % 50 == 49:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(ready.wait(), 60)
            await asyncio.sleep(0.5)
            rss = rss_kib(pid)
            await asyncio.to_thread(snapshot, after)
            print(f"  {clients} streams: RSS {rss_before} -> {rss} KiB, "
                  f"{(rss - rss_before) / clients:.1f} KiB per stream")
            for transport in transports:
                transport.close()

        time.sleep(0.5)
        snapshot(before)
        time.sleep(0.3)
        rss_before = rss_kib(pid)
        asyncio.run(open_streams())
        writer.write(final=True)
        store.close()
    if not trace:
        return
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    diff = new.compare_to(old, "lineno")
    grown = sum(d.size_diff for d in diff)
    print(f"  traced Python memory: +{grown / 1024:.0f} KiB, "
          f"{grown / clients / 1024:.2f} KiB per stream; by line (bytes per stream, blocks):")
    for stat in diff[:top]:
        frame = stat.traceback[0]
        print(f"    {stat.size_diff / clients:8.0f} B {stat.count_diff / clients:5.1f}  "
              f"{frame.filename.split('site-packages/')[-1].split('/push19/')[-1]}:{frame.lineno}")
    shutil.rmtree(directory, ignore_errors=True)


def _write(url: str, jobs: str, writes: str, pause: str, mode: str, names: str = "job") -> None:
    """The crowd's writer process: ``writes`` rounds over ``jobs`` records, every
    ``pause`` seconds. ``together``: the jobs write in the same instant (the worst
    case, 1,000 deliveries at once); ``apart``: each job at its own phase of the
    period, as independent jobs' flushers do."""
    store = tracked.open_store(url)
    writers = [Writer(store, f"{names}-{j}") for j in range(int(jobs))]
    period = float(pause)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    slots = sorted(
        (i * period + (0 if mode == "together" else j * period / len(writers)), i, j)
        for i in range(int(writes))
        for j in range(len(writers))
    )
    for at, i, j in slots:
        time.sleep(max(0.0, start + at - time.monotonic()))
        writers[j].write(final=i == int(writes) - 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_write"]:
        _write(*sys.argv[2:])
        sys.exit(0)
    parts = {
        "freshness": freshness,
        "follow": follow,
        "route": route,
        "route-redis": lambda: route(redis_store=True),
        "crowd": lambda: crowd(together=False),
        "crowd-together": lambda: crowd(together=True),
        "crowd-fast": lambda: crowd(writes=40, pause=0.1, together=False),
        "fanout": fanout,
        "stream-memory": stream_memory,
        "stream-rss": lambda: stream_memory(trace=False),
        "fanout-1000": lambda: fanout((1000,)),
    }
    for part in sys.argv[1:] or list(parts):
        print(f"== {part}")
        parts[part]()
