"""The documentation: every Python sample runs on its own, the site builds strictly,
reference pages name what the code has, and what the docs tell people to run (gunicorn's
timeout, the demo's install command) is what works.

A sample that cannot run on its own is marked, just above its fence, with
``<!-- not run: the reason -->``: at most ``MAX_NOT_RUN`` of them in all the docs."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import tracked
from tests.conftest import ROOT, free_port, wait_for_port

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
#: Every page with samples a newcomer may copy: the site's pages and the README.
SAMPLE_PAGES = [*PAGES, ROOT / "README.md"]
#: A ```python block, and the HTML comment that may precede it to mark it as not run.
PYTHON_FENCE = re.compile(
    r"(?:^<!-- not run: (?P<why>[^>]+) -->\n)?^```python\n(?P<code>.*?)^```\s*$", re.S | re.M
)
#: The one place a sample takes its Redis server from (the docs say so once, in stores.md).
REDIS_VARIABLE = "TRACKED_REDIS_URL"
#: The same for the Redis Cluster samples.
REDIS_CLUSTER_VARIABLE = "TRACKED_REDIS_CLUSTER_URL"
#: How many samples may be marked ``<!-- not run: why -->``: few, each with its reason.
MAX_NOT_RUN = 2


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of ``page`` that are meant to run."""
    text = page.read_text(encoding="utf-8")
    return [m["code"] for m in PYTHON_FENCE.finditer(text) if m["why"] is None]


def not_run_blocks() -> list[tuple[str, str]]:
    """(page, reason) of each block marked as deliberately not runnable."""
    return [
        (page.name, m["why"])
        for page in SAMPLE_PAGES
        for m in PYTHON_FENCE.finditer(page.read_text(encoding="utf-8"))
        if m["why"] is not None
    ]


SAMPLES = [
    pytest.param(page, index, code, id=f"{page.name}-{index + 1}")
    for page in SAMPLE_PAGES
    for index, code in enumerate(python_blocks(page))
]


def test_the_docs_have_samples_to_run() -> None:
    """Guards the extraction: if the fence pattern broke, nothing would run."""
    assert len({param.values[0] for param in SAMPLES}) >= 8
    assert len(SAMPLES) >= 30


def test_few_samples_are_marked_not_run_and_each_says_why() -> None:
    marked = not_run_blocks()
    assert len(marked) <= MAX_NOT_RUN, marked
    assert all(len(why.strip()) >= 10 for _page, why in marked), marked


def test_redis_samples_take_the_url_from_one_variable() -> None:
    """No sample connects to a Redis URL of its own: they all read $TRACKED_REDIS_URL,
    which stores.md explains once."""
    for param in SAMPLES:
        page, _index, code = param.values
        code_lines = [line.split("#")[0] for line in str(code).splitlines()]
        assert not any("redis://" in line for line in code_lines if REDIS_VARIABLE not in line), (
            f"{page}: a sample names its own Redis URL"
        )
    stores = (DOCS / "stores.md").read_text(encoding="utf-8")
    assert f"`{REDIS_VARIABLE}`" in stores


@pytest.mark.parametrize(("page", "index", "code"), SAMPLES)
def test_every_python_sample_runs_on_its_own(
    page: Path, index: int, code: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each ```python block runs alone, imports included, in a fresh interpreter, in an
    empty directory with an empty default store: what a newcomer gets by copying that
    one block. ``if __name__ == "__main__":`` parts (servers) do not run. A block that
    reads $TRACKED_REDIS_URL gets the test's own redis-server."""
    environment = {**os.environ, "TRACKED_STORE": str(tmp_path / "default-store")}
    environment.pop(REDIS_VARIABLE, None)
    if REDIS_VARIABLE in code:
        environment[REDIS_VARIABLE] = str(request.getfixturevalue("redis_url"))
    environment.pop(REDIS_CLUSTER_VARIABLE, None)
    if REDIS_CLUSTER_VARIABLE in code:
        environment[REDIS_CLUSTER_VARIABLE] = str(request.getfixturevalue("redis_cluster_url"))
    script = tmp_path / f"sample_{page.stem.replace('-', '_')}_{index + 1}.py"
    script.write_text(code, encoding="utf-8")  # the name never shadows a module
    runner = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='docs_sample')"
    result = subprocess.run(
        [sys.executable, "-c", runner, str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"{page.name}, sample {index + 1}:\n{result.stderr}"


def test_site_builds_without_a_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    for documented in ("tracked.tracked", "TrackedPlugin", "RedisStore", "State"):
        assert documented in api


def test_the_api_page_documents_every_public_name() -> None:
    """Each name a module exports (``__all__``) has its ``::: `` entry on the API page."""
    import tracked.asgi
    import tracked.bottle
    import tracked.wsgi

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: (\S+)$", text, re.M))
    public = [f"tracked.{name}" for name in tracked.__all__]
    for module in (tracked.bottle, tracked.wsgi, tracked.asgi):
        public += [f"{module.__name__}.{name}" for name in module.__all__]
    aliases = {"tracked.RedisStore": "tracked.redis.RedisStore"}
    missing = [name for name in public if aliases.get(name, name) not in documented]
    assert missing == []


def test_wire_format_page_lists_every_key_of_the_wire_json() -> None:
    text = (DOCS / "wire-format.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([a-z_]+)` \|", text, re.M)
    # A group's child also has `group`, a group `children`: last, only on those runs.
    grouped = tracked.State(name="x", group="eA.1", children={"total": 0})
    assert documented == list(grouped.to_dict())
    assert list(tracked.State(name="x").to_dict()) == documented[:-2]


def test_cli_page_documents_every_command() -> None:
    from tracked.cli import _build_parser

    parser = _build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for command in commands.choices:
        assert f"## `tracked {command}" in text


def test_migration_page_maps_each_call_of_the_perl_plugin() -> None:
    text = (DOCS / "migrating-from-perl.md").read_text(encoding="utf-8")
    for perl in (
        "start_progress_status",
        "$progress++",
        "add_message",
        "is_progress_running",
        "set_progress_status",
        "/_progress_status/",
        "progress_id",
        "dir:",
    ):
        assert perl in text


# ----------------------------------------------------------------------------- gunicorn


def sh_lines(page: Path) -> list[str]:
    """The lines of ``page``'s ```sh blocks."""
    blocks = re.findall(r"^```sh\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
    return [line for block in blocks for line in block.splitlines()]


def test_every_gunicorn_command_with_sync_workers_sets_a_timeout() -> None:
    """Where the docs recommend gunicorn, the command carries ``--timeout``: with sync
    workers (no ``--threads``) the default 30 s kills any longer job mid-way."""
    commands = [
        (page.name, line)
        for page in [*SAMPLE_PAGES, ROOT / "examples" / "README.md"]
        for line in sh_lines(page)
        if line.startswith("gunicorn ")
    ]
    assert commands, "no gunicorn command found: the check would prove nothing"
    for page, line in commands:
        assert "--timeout" in line or "--threads" in line, f"{page}: {line}"


def load_demo() -> Any:
    """examples/app.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("tracked_demo", ROOT / "examples" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seconds", [0.1, 1, 9.9, 10, 10.1, 30, 300, 3600])
def test_the_demo_gives_gunicorn_a_timeout_longer_than_its_job(seconds: float) -> None:
    timeout = load_demo().gunicorn_timeout(seconds)
    assert timeout >= 30 and timeout >= seconds + 10


LONG_JOB_APP = """
import time, bottle, tracked
from tracked.bottle import TrackedPlugin

app = bottle.Bottle()
app.install(TrackedPlugin())


@app.post("/job")
@tracked.tracked("long-job", total=6)
def job():
    for _ in range(6):
        time.sleep(0.5)
        tracked.current().increment()
    return "done"
"""


def run_long_job_under_gunicorn(tmp_path: Path, *options: str) -> tracked.State:
    """POST a 3 s job to a real gunicorn started with ``options``; the job's final state."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "longjob.py").write_text(LONG_JOB_APP)
    # gunicorn >= 25 opens a control socket at one path per user: several servers at once
    # would fight over it. A setting an older gunicorn does not know is ignored here.
    (tmp_path / "gunicorn.conf.py").write_text("control_socket_disable = True\n")
    store = tmp_path / "store"
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", *options]
    command += ["--bind", f"127.0.0.1:{port}", "longjob:app"]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "TRACKED_STORE": str(store)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/job", method="POST")
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError:
            pass  # the killed worker's request: gunicorn answers 500
        state = tracked.load("long-job", store=str(store))
        assert state is not None
        return state
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_job_longer_than_gunicorns_timeout_dies_on_a_sync_worker(tmp_path: Path) -> None:
    """What the warning in bottle.md says, on a real gunicorn: a 3 s job under
    ``--timeout 1`` is killed and ends failed with SystemExit: 1; under a timeout
    longer than the job it finishes."""
    killed = run_long_job_under_gunicorn(tmp_path / "short", "--timeout", "1")
    assert (killed.state, killed.error) == ("failed", "SystemExit: 1")
    finished = run_long_job_under_gunicorn(tmp_path / "long", "--timeout", "30")
    assert (finished.state, finished.count) == ("finished", 6)


def test_a_threaded_gunicorn_worker_is_not_killed_by_a_long_job(tmp_path: Path) -> None:
    """bottle.md: with --threads the worker's main thread keeps reporting."""
    state = run_long_job_under_gunicorn(tmp_path, "--threads", "2", "--timeout", "1")
    assert (state.state, state.count) == ("finished", 6)


# ----------------------------------------------------------------------------- install


def extra_requirements(extra: str | None) -> set[str]:
    """The distribution names that installing tracked (with ``extra``) pulls in."""
    names = set()
    for requirement in importlib.metadata.requires("tracked") or []:
        spec, _, marker = requirement.partition(";")
        wanted = f'extra == "{extra}"' in marker if extra else not marker.strip()
        if wanted:
            names.add(re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower())
    return names


def third_party_imports(script: Path) -> set[str]:
    """The distributions whose modules ``script`` imports, the standard library and
    tracked apart."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    distributions = importlib.metadata.packages_distributions()
    outside = modules - set(sys.stdlib_module_names) - {"tracked", "__future__"}
    return {distributions[module][0].lower() for module in outside}


def test_the_demo_extra_is_what_the_demo_imports_and_nothing_more() -> None:
    """``pip install -e '.[demo]'`` brings the demo's servers, not the test tooling
    (mypy, ruff, mkdocs, playwright: most of the test extra's install time)."""
    core, demo, test = (extra_requirements(e) for e in (None, "demo", "test"))
    assert demo == third_party_imports(ROOT / "examples" / "app.py") - core
    assert demo == {"gunicorn", "waitress"}
    assert demo <= test  # the test extra keeps everything


def test_the_readme_installs_the_demo_extra_to_run_the_demo() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo_commands = [line for line in sh_lines(ROOT / "README.md") if "examples/app.py" in line]
    assert demo_commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[demo]' "
        "&& .venv/bin/python examples/app.py"
    ]
    assert "pip install -e '.[test]' && .venv/bin/python -m pytest" in readme


# ----------------------------------------------------------------------------- total


def test_the_docs_say_plainly_that_total_defaults_to_100_as_the_code_does() -> None:
    for entry_point in (tracked.start, tracked.tracked):
        assert inspect.signature(entry_point).parameters["total"].default == 100
    assert "**`total` defaults to 100**, as in the Perl original" in (
        DOCS / "decorator-and-handle.md"
    ).read_text(encoding="utf-8")
    assert "`total` is 100, as in the Perl original" in (DOCS / "getting-started.md").read_text(
        encoding="utf-8"
    )
