"""Shared fixtures: stores of every kind, a real redis-server, free ports.

In CI (``$CI`` set) a missing redis-server or chromium is a failure, never a skip.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracked

IN_CI = bool(os.environ.get("CI"))
ROOT = Path(__file__).resolve().parent.parent


def require_binary(name: str, package: str | None = None) -> str:
    """The path of ``name``; outside CI a missing binary skips the test, in CI it fails.
    ``package``: the Debian package that has it, if not named ``name``."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install -y {package or name})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


#: Where servers' ports come from: below Linux's ephemeral range (32768-60999), so no
#: outgoing connection can take a port between its pick and the server's bind; one
#: block per xdist worker (gw0: 11000-11999, gw1: 12000-12999, ...), so two workers
#: never pick the same port. Above 10080, the last port browsers refuse to load
#: (ERR_UNSAFE_PORT); below 21000, so cluster bus ports (+10000) stay below the
#: ephemeral range and apart from every block.
PORT_BASE = 11000
PORT_BLOCK = 1000
PORT_BLOCKS = 10


def worker_index() -> int:
    """This xdist worker's number (``gw3`` -> 3); 0 without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


def _port_candidates() -> Iterator[int]:
    """This worker's block, round and round from a random start: a port handed out is
    not handed out again before the other 999 (a stopped server's clients may linger),
    and two runs on one machine rarely start at the same place."""
    first = PORT_BASE + (worker_index() % PORT_BLOCKS) * PORT_BLOCK
    offset = random.SystemRandom().randrange(PORT_BLOCK)
    while True:
        yield first + offset
        offset = (offset + 1) % PORT_BLOCK


_PORTS = _port_candidates()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, this xdist worker's own."""
    for _ in range(PORT_BLOCK):
        port = next(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (another run on this machine, or a closing socket)
            return port
    raise RuntimeError(f"no free port in this worker's block of {PORT_BLOCK}")


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


#: Seconds each file takes (``--junitxml`` of a full run, 4 workers at load ~7, summed
#: by file and scaled by 0.8 to what a file takes alone). xdist workers take whole
#: files in the order collected: slowest first, so no worker starts a long file
#: while the others run out of work. A file not named here (a new one) counts
#: ``UNTIMED_FILE_SECONDS``; the figures steer the order only, never a result.
FILE_SECONDS = {
    "test_events.py": 76, "test_frameworks.py": 74, "test_cli.py": 69,
    "test_redis_store.py": 47, "test_docs.py": 43, "test_groups.py": 30, "test_element.py": 30,
    "test_rq.py": 26, "test_celery.py": 24, "test_jobs_web.py": 24, "test_browser.py": 23,
    "test_processes.py": 22, "test_share.py": 22, "test_browser_jobs.py": 18,
    "test_demo_e2e.py": 15, "test_exit_fork_and_races.py": 14, "test_web_hardening.py": 12,
    "test_lifecycle.py": 11, "test_django.py": 10, "test_serve_pages.py": 10,
    "test_packaging.py": 10, "test_flusher.py": 9, "test_queues.py": 8,
    "test_status_route.py": 8, "test_cancel_cli.py": 8, "test_file_store.py": 6,
    "test_cancel_web.py": 6, "test_progress.py": 6, "test_hardening.py": 5, "test_queued.py": 5,
    "test_store_contract.py": 4, "test_log_handler.py": 4, "test_results.py": 3,
    "test_track.py": 2, "test_cancel.py": 2, "test_jobs.py": 2, "test_fragments.py": 1,
    "test_bottle_plugin.py": 1, "test_tqdm_bridge.py": 1, "test_cancel_route.py": 1,
}
UNTIMED_FILE_SECONDS = 10


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest files first (``FILE_SECONDS``), each file's tests in their own order;
    ``--no-loadscope-reorder`` (pyproject.toml) keeps xdist to this order."""
    order = {item: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (
        -FILE_SECONDS.get(item.path.name, UNTIMED_FILE_SECONDS), str(item.path), order[item]
    ))


class RedisServer:
    """A real redis-server on a free port, without persistence; stop/start for fault tests."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(require_binary("redis-server"), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an emptied database on the session's redis-server."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


#: Cluster nodes also listen on their port + 10000 (the cluster bus): stay below this.
MAX_CLUSTER_PORT = 55535


def free_cluster_port(taken: set[int]) -> int:
    """A free port below ``MAX_CLUSTER_PORT`` whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port > MAX_CLUSTER_PORT or taken & {port, port + 10000, port - 10000}:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisCluster:
    """Three real redis-server masters joined into one Redis Cluster (no replicas)."""

    def __init__(self, binary: str, cli: str, directory: Path, masters: int = 3) -> None:
        self.binary = binary
        self.cli = cli
        self.directory = directory
        taken: set[int] = set()
        self.ports: list[int] = []
        for _ in range(masters):
            self.ports.append(free_cluster_port(taken))
            taken.add(self.ports[-1])
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The store URL: one seed node; the client discovers the others."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        """Start the nodes and join them into one cluster."""
        self.start_nodes()
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_until_ok()

    def restart(self) -> None:
        """Start stopped nodes again: they rejoin from their nodes.conf, empty."""
        self.start_nodes()
        self.wait_until_ok()

    def start_nodes(self) -> None:
        for port in self.ports:
            node_dir = self.directory / str(port)
            node_dir.mkdir(exist_ok=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_for_port(port)

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Block until every node reports ``cluster_state:ok`` and knows every other."""
        import redis

        deadline = time.monotonic() + timeout
        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                while True:
                    info = client.cluster("info")
                    if info.get("cluster_state") == "ok" and int(
                        info.get("cluster_known_nodes", 0)
                    ) == len(self.ports):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"Redis Cluster on {self.ports} not ok: {info}")
                    time.sleep(0.05)
            finally:
                client.close()

    def flush(self) -> None:
        """Empty every master."""
        import redis

        for port in self.ports:
            client = redis.Redis(host="127.0.0.1", port=port)
            client.flushall()
            client.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster for the whole session."""
    cluster = RedisCluster(
        require_binary("redis-server"),
        require_binary("redis-cli", "redis-tools"),
        tmp_path_factory.mktemp("redis-cluster"),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The ``redis+cluster://`` URL of the session's emptied Redis Cluster."""
    if not redis_cluster.processes:  # a test stopped it and failed before restarting it
        redis_cluster.restart()
    redis_cluster.flush()
    return redis_cluster.url


#: Debian's Chromium, headless, without the background traffic a closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright) for one test module.

    Not for the whole session: Playwright's sync API keeps an event loop running
    in the main thread while it is started, and asyncio tests need it gone.
    """
    executable = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


STORE_KINDS = ["memory", "file", "redis", "redis-cluster"]
SHARED_STORE_KINDS = ["file", "redis"]  # those other processes can see


@pytest.fixture
def make_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Build the URL (or path) of an empty store of a kind; other processes can open it."""

    def make(kind: str) -> str:
        if kind == "file":
            return str(tmp_path / "store")
        if kind == "redis":
            return str(request.getfixturevalue("redis_url"))
        if kind == "redis-cluster":
            return str(request.getfixturevalue("redis_cluster_url"))
        if kind == "memory":
            return "memory://"
        raise ValueError(kind)

    return make


@pytest.fixture(params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[tracked.Store]:
    """An empty store of each kind, also made the process default for the test."""
    opened = tracked.open_store(make_store_url(request.param))
    tracked.configure(store=opened)
    yield opened
    tracked.configure(store=None)
    opened.close()


@pytest.fixture(params=SHARED_STORE_KINDS)
def shared_store_url(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[str]:
    """The URL of an empty store that several processes share, of each shared kind."""
    url = make_store_url(request.param)
    tracked.configure(store=url)
    yield url
    tracked.configure(store=None)


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[tracked.FileStore]:
    """An empty file store (its directory made), made the process default for the test."""
    (tmp_path / "store").mkdir()
    opened = tracked.FileStore(tmp_path / "store")
    tracked.configure(store=opened)
    yield opened
    tracked.configure(store=None)


@pytest.fixture(autouse=True)
def _isolated_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test writes to the user's real default store."""
    monkeypatch.setenv("TRACKED_STORE", str(tmp_path / "default-store"))
    tracked.configure(store=None)
    yield
    tracked.configure(store=None)


#: Run a process as this user (``python_process(user=NOBODY)``) to test another user's access.
NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory every user may enter (pytest's own is private to us)."""
    directory = Path(tempfile.mkdtemp(prefix="tracked-shared-"))
    directory.chmod(0o755)
    yield directory
    for path in [directory, *directory.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(directory)


def python_process(
    *args: str, env: dict[str, str] | None = None, user: int | None = None,
    code: Path | None = None,
) -> subprocess.Popen[str]:
    """Start ``tests/workers.py`` with ``args`` in a new Python process.

    With ``user``, as root the process runs as that uid (and gid); as anyone else it
    runs as ourselves, where a read-only directory already denies writes. ``code``:
    a copy made by ``readable_code``, run with the base interpreter instead of this
    checkout and virtualenv (which may sit where that user cannot read).
    """
    prefix: list[str] = []
    if user is not None and os.geteuid() == 0:
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    command = [sys.executable, str(ROOT / "tests" / "workers.py")]
    if code is not None:  # -s: no user site-packages, only the copy
        command = [getattr(sys, "_base_executable", sys.executable), "-s", str(code / "workers.py")]
        env = {**(env or {}), "PYTHONPATH": str(code)}
    return subprocess.Popen(
        [*prefix, *command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def readable_code(into: Path) -> Path:
    """Copy what another user needs to run ``tests/workers.py`` into ``into/code``, all
    readable: the checkout and the virtualenv may sit under a directory only we may
    enter (a 0700 home). tracked, the packages it imports and the worker script."""
    import wrapt

    code = into / "code"
    for module in (tracked, wrapt):  # what `import tracked` needs
        source = Path(str(module.__file__)).parent
        shutil.copytree(source, code / source.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "tests" / "workers.py", code / "workers.py")
    for path in [into, code, *code.rglob("*")]:
        path.chmod(0o755)
    return code


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a worker started in its own session: SIGTERM to its group, SIGKILL after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def until_state(
    read: Callable[[], tracked.State | None],
    holds: Callable[[tracked.State], bool],
    within: float = 60.0,
) -> tracked.State:
    """The first state ``read`` gives that ``holds``; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = read()
        if state is not None and holds(state):
            return state
        time.sleep(0.02)
    raise AssertionError(f"never held; last state: {read()}")


# ----------------------------------------------------------------------------- npm

#: Browser files from the npm registry for the page tests (axe-core, htmx): package
#: spec -> the file inside it.
NPM = {"axe-core@4": "axe.min.js", "htmx.org@2": "dist/htmx.min.js",
       "htmx-ext-sse@2": "dist/sse.js"}


@pytest.fixture(scope="session")
def npm_files() -> dict[str, Path]:
    """axe-core and htmx (with its SSE extension) unpacked from the npm registry, once
    per machine: each xdist worker runs this fixture, so all share one cache (see
    ``npm_cache``) and fetch each package under a file lock, the first one for all."""
    npm = require_binary("npm")
    cache = npm_cache()
    return {spec.rsplit("@", 1)[0]: _npm_package(npm, cache, spec) / inside
            for spec, inside in NPM.items()}


def npm_cache() -> Path:
    """``$TRACKED_NPM_CACHE``, else this user's directory under the system temp (mode
    0700, refused if another user owns it: the tests load its scripts into pages)."""
    chosen = os.environ.get("TRACKED_NPM_CACHE")
    cache = Path(chosen or tempfile.gettempdir()) / ("" if chosen else f"tracked-npm-{os.getuid()}")
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cache.stat().st_uid != os.getuid():
        pytest.fail(f"{cache} belongs to another user: set TRACKED_NPM_CACHE")
    return cache


def _npm_package(npm: str, cache: Path, spec: str) -> Path:
    """``spec``'s unpacked ``package`` directory in ``cache``, keyed by the spec; packed
    and unpacked by the first worker holding the spec's lock, then renamed into place
    whole (a run killed half way leaves no half package)."""
    import fcntl
    import tarfile

    done = cache / spec / "package"
    with open(cache / f"{spec}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.is_dir():
            return done
        work = Path(tempfile.mkdtemp(prefix=f"{spec}.", dir=cache))
        try:
            packed = subprocess.run(
                [npm, "pack", spec, "--silent", "--pack-destination", str(work)],
                check=True, capture_output=True, text=True, timeout=180,
            ).stdout.strip().splitlines()[-1]
            with tarfile.open(work / packed) as archive:
                archive.extractall(work / "unpacked", filter="data")
            done.parent.mkdir(exist_ok=True)
            (work / "unpacked" / "package").rename(done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return done
