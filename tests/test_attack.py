"""Regressions found by attacking the hardened handle, stores and status service."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracked
from tracked import FileStore, InvalidValue, Store

# ------------------------------------------------------------------ a refused call


def test_a_call_refused_for_a_bad_message_changes_nothing(store: Store) -> None:
    with tracked.start("refused", total=10, store=store) as progress:
        progress.increment(2)
        with pytest.raises(InvalidValue):
            progress.increment(3, None)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            progress.decrement(1, "fine", 5)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            progress.add_message("fine", None)  # type: ignore[arg-type]
        assert (progress.count, progress.messages, progress.message_count) == (2, (), 0)


# ------------------------------------------------------------------ unreadable entries


def test_listing_and_pruning_skip_an_entry_that_cannot_be_read(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with tracked.start("good", store=store) as progress:
        progress.increment(1)
    with tracked.start("blocked", store=store) as progress:
        progress.increment(1)
    blocked = store.path_for("blocked")
    blocked.unlink()
    blocked.mkdir()  # what no read of it survives, as another user's 0600 file
    assert [state.name for state in store.list()] == ["good"]
    assert len(store.unreadable()) == 1
    assert store.prune(older_than=0) == 1
    assert blocked.is_dir()
    cli = subprocess.run(
        [sys.executable, "-m", "tracked", "--store", str(store.directory), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "skipped" in cli.stderr


# ------------------------------------------------------------------ interpreter exit

EXITING_WITH_A_RUNNING_HANDLE = """
import sys, tracked
progress = tracked.start("left", total=None, store=sys.argv[1], min_interval=5)
for _ in range(1000):
    progress.increment(1)
progress.add_message("last")
"""


def test_a_process_exiting_with_a_running_handle_ends_it_without_hanging(
    tmp_path: Path,
) -> None:
    """The flusher thread used to be frozen by the interpreter's finalisation while
    holding its lock, and the handle collected then (ending its run) waited for it
    for ever: about one exit in two hung."""
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXITING_WITH_A_RUNNING_HANDLE))
    for round_ in range(12):
        directory = tmp_path / f"store{round_}"
        done = subprocess.run(
            [sys.executable, str(script), str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(tracked.__file__).parent.parent)},
        )
        assert done.returncode == 0, done.stderr
        state = FileStore(directory).load("left")
        assert state is not None
        assert (state.count, state.state, state.messages) == (1000, "finished", ("last",))
