"""The documentation: every Python sample runs, the site builds strictly, reference pages
name what the code has."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tracked
from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)
#: Samples name this Redis; the test points them at its own redis-server instead.
SAMPLE_REDIS = "redis://localhost:6379/0"
#: Samples name this Redis Cluster node; the test points them at its own cluster.
SAMPLE_REDIS_CLUSTER_NODE = "localhost:7000"


def python_blocks(page: Path) -> list[str]:
    return PYTHON_FENCE.findall(page.read_text(encoding="utf-8"))


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]


def test_the_docs_have_pages_with_code() -> None:
    """Guards the extraction below: if the fence pattern broke, nothing would run."""
    assert len(PAGES_WITH_CODE) >= 6


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda page: page.name)
def test_every_python_sample_of_a_page_runs(
    page: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A page's ```python blocks run in order, as one script, in a fresh process with an
    empty default store; ``if __name__ == "__main__":`` parts (servers) do not run."""
    code = "\n\n".join(python_blocks(page))
    if SAMPLE_REDIS in code:
        code = code.replace(SAMPLE_REDIS, str(request.getfixturevalue("redis_url")))
    if SAMPLE_REDIS_CLUSTER_NODE in code:
        node = str(request.getfixturevalue("redis_cluster_url")).split("://")[1]
        code = code.replace(SAMPLE_REDIS_CLUSTER_NODE, node)
    script = tmp_path / f"sample_{page.stem.replace('-', '_')}.py"  # never shadows a module
    script.write_text(code, encoding="utf-8")
    runner = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='docs_sample')"
    result = subprocess.run(
        [sys.executable, "-c", runner, str(script)],
        cwd=tmp_path,
        env={**os.environ, "TRACKED_STORE": str(tmp_path / "default-store")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stderr}"


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


def test_wire_format_page_lists_every_key_of_the_wire_json() -> None:
    text = (DOCS / "wire-format.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([a-z_]+)` \|", text, re.M)
    assert documented == list(tracked.State(name="x").to_dict())


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
