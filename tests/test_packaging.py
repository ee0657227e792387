"""The distributions: ``python -m build`` makes an sdist and a wheel that pass
``twine check``; the wheel holds tracked.js, the serve pages and py.typed; a fresh
virtualenv holding only the wheel and the ``demo`` extra runs ``tracked --help``
and the demo.

The fresh virtualenv gets the wheel and its dependencies from pip (``--python``,
run by this environment's pip, so the new one needs no pip of its own): the wheel
itself from the file built here, the dependencies from the package index (pip's
cache makes that cheap after the first run). Nothing of this checkout is on its
path: the commands run from an empty directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_for_port

#: What a wheel must hold besides the modules: the browser client, the pages of
#: ``tracked serve`` and the typing marker.
PACKAGE_DATA = [
    "tracked/py.typed",
    "tracked/static/tracked.js",
    "tracked/static/serve-index.html",
    "tracked/static/serve-progress.html",
    "tracked/static/serve.css",
]
#: The environment of the fresh virtualenv's commands: no path to this checkout.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
#: Left out of the copy the distributions are built from (what a clean clone lacks).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "site", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    "node_modules",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from a copy of the checkout (a build writes
    ``*.egg-info`` into its source directory, which must stay clean)."""
    where = tmp_path_factory.mktemp("packaging")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(where / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return where / "dist"


def one(dist: Path, pattern: str) -> Path:
    [found] = dist.glob(pattern)
    return found


def test_build_makes_an_sdist_and_a_wheel_that_pass_twine_check(dist: Path) -> None:
    files = [one(dist, "tracked-*.tar.gz"), one(dist, "tracked-*-py3-none-any.whl")]
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_wheel_and_the_sdist_hold_the_client_the_serve_pages_and_py_typed(
    dist: Path,
) -> None:
    with zipfile.ZipFile(one(dist, "*.whl")) as wheel:
        names = set(wheel.namelist())
    assert set(PACKAGE_DATA) <= names, set(PACKAGE_DATA) - names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "bench/"))]
    with tarfile.open(one(dist, "*.tar.gz")) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert set(PACKAGE_DATA) <= members, set(PACKAGE_DATA) - members


@pytest.fixture(scope="module")
def fresh_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv holding the wheel with its ``demo`` extra, and nothing else."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    wheel = one(dist, "*.whl")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--disable-pip-version-check", f"{wheel}[demo]"],
        capture_output=True, text=True, timeout=300, env=CLEAN_ENV,  # pip sees no checkout
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield venv


def test_a_fresh_venv_with_only_the_wheel_runs_tracked_help(
    fresh_venv: Path, tmp_path: Path
) -> None:
    where = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c", "import tracked; print(tracked.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env=CLEAN_ENV,
    )
    assert where.stdout.startswith(str(fresh_venv)), where.stdout + where.stderr
    helped = subprocess.run([str(fresh_venv / "bin" / "tracked"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env=CLEAN_ENV)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: tracked"), helped.stdout


def test_a_fresh_venv_with_only_the_wheel_runs_the_demo(fresh_venv: Path, tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [str(fresh_venv / "bin" / "python"), str(ROOT / "examples" / "app.py"), "--port",
         str(port), "--seconds", "1", "--steps", "2", "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True, env=CLEAN_ENV,
    )
    try:
        wait_for_port(port, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        base = f"http://127.0.0.1:{port}"
        job = urllib.request.Request(f"{base}/jobs/main?progress_id=pkg", method="POST")
        with urllib.request.urlopen(job, timeout=60) as ran:  # the whole job, 2 steps
            assert json.loads(ran.read())["steps"] == 2
        url = f"{base}/_progress_status/demo-job?progress_id=pkg"
        with urllib.request.urlopen(url, timeout=30) as status:
            wire = json.loads(status.read())
        assert (wire["state"], wire["count"], wire["total"]) == ("finished", 2, 2), wire
    finally:
        demo.terminate()
        try:
            demo.wait(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
