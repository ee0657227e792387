"""A ``FileStore``'s group ledgers: one small file per group, changed under its flock.

Each group's ledger (counts, flags, the kept lines about failed children) is one
JSON file ``<record's hash>.group`` beside the group's record; reading a group
reads it once, whatever the number of children. Each child's state as counted is
one tiny file in ``<record's hash>.children/``, read and written only while the
ledger's ``flock`` is held, so a child's change is counted exactly once across
processes (the lock, not the file, makes it atomic; the kernel drops it when a
holder dies mid-change, leaving at worst a count the next sweep mends).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ._filelock import O_CLOEXEC, O_NOFOLLOW, Locked, read_regular
from ._ledger import GroupBook, Ledger
from .errors import StoreError

__all__ = ["GroupFiles"]

LEDGER_SUFFIX = ".group"
CHILDREN_SUFFIX = ".children"


class GroupFiles:
    """The ledgers of the groups in one store directory (``FileStore`` delegates)."""

    def __init__(self, directory: Path, record_name: Callable[[str], str]) -> None:
        self.directory = directory
        self._record_name = record_name

    def ledger_path(self, key: str) -> Path:
        """The ledger file of group ``key``."""
        return self.directory / (self._stem(key) + LEDGER_SUFFIX)

    def children_dir(self, key: str) -> Path:
        """The folder of group ``key``'s children as counted (one file each)."""
        return self.directory / (self._stem(key) + CHILDREN_SUFFIX)

    def _stem(self, key: str) -> str:
        return self._record_name(key).rsplit(".", 1)[0]

    def open(self, key: str, run: str) -> None:
        """Write a new ledger for run ``run`` of group ``key`` (an older one's children go)."""
        shutil.rmtree(self.children_dir(key), ignore_errors=True)
        with Locked(self.ledger_path(key), create=True) as locked:
            self._write(locked, Ledger.new(run))

    def move(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change under the ledger's lock (see ``Store.move_child``)."""
        try:
            with Locked(self.ledger_path(key), create=False) as locked:
                book = self._read_locked(locked)
                if book is None or not book.run.startswith(run):
                    return None
                entry = self._child_path(key, child)
                previous = _read_entry(entry)
                book, changed = Ledger(book).move(previous, state, units, line, time.time())
                if changed:
                    _write_entry(entry, child, state, units)
                    self._write(locked, book)
                return book
        except FileNotFoundError:
            return None

    def change(
        self, key: str, run: str, change: Callable[[GroupBook], GroupBook]
    ) -> GroupBook | None:
        """Apply ``change`` to the ledger under its lock; None if there is none of ``run``."""
        try:
            with Locked(self.ledger_path(key), create=False) as locked:
                book = self._read_locked(locked)
                if book is None or not book.run.startswith(run):
                    return None
                new = change(book)
                if new is not book:
                    self._write(locked, new)
                return new
        except FileNotFoundError:
            return None

    def read(self, key: str) -> GroupBook | None:
        """The ledger of group ``key`` (one file read, no lock: it is replaced whole or
        written in place within one page, which readers never see half done)."""
        try:
            raw = read_regular(self.ledger_path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the group ledger of {key!r}: {exc}") from exc
        return _decode(raw, key)

    def children(self, key: str) -> list[tuple[str, str]]:
        """Every child of group ``key`` with the state it is counted in."""
        folder = self.children_dir(key)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            entry = _read_full(folder / name)
            if entry is not None:
                found.append((entry[0], entry[1]))
        return found

    def delete(self, key: str) -> None:
        """Remove group ``key``'s ledger and children (never raises)."""
        with contextlib.suppress(OSError):
            os.unlink(self.ledger_path(key))
        shutil.rmtree(self.children_dir(key), ignore_errors=True)

    def _child_path(self, key: str, child: str) -> Path:
        digest = hashlib.sha256(child.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return self.children_dir(key) / digest

    def _read_locked(self, locked: Locked) -> GroupBook | None:
        raw = locked.read()
        return _decode(raw, str(locked.path)) if raw else None

    def _write(self, locked: Locked, book: GroupBook) -> None:
        data = json.dumps(book.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()
        if locked.write_in_place(data):
            return
        tmp = locked.path.with_name(f".{locked.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, locked.path)
        except OSError as exc:
            raise StoreError(f"cannot write {str(locked.path)!r}: {exc}") from exc


def _decode(raw: bytes, where: str) -> GroupBook:
    try:
        return GroupBook.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"corrupt group ledger {where!r}: {exc}") from exc


def _read_full(path: Path) -> tuple[str, str, int] | None:
    """A child's entry: its key, the state it is counted in, its units; None if none."""
    try:
        with open(path, "rb") as file:
            key, state, units = json.loads(file.read())
        return str(key), str(state), int(units)
    except (OSError, ValueError, TypeError):
        return None


def _read_entry(path: Path) -> tuple[str, int] | None:
    entry = _read_full(path)
    return None if entry is None else (entry[1], entry[2])


def _write_entry(path: Path, child: str, state: str, units: int) -> None:
    """Write a child's entry in place (only under the ledger's lock, so no two writers)."""
    data = json.dumps([child, state, units], ensure_ascii=False).encode("utf-8", "surrogatepass")
    flags = os.O_WRONLY | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:  # padded with spaces (which JSON ignores) over a longer old entry: no truncate
        old = os.fstat(fd).st_size
        os.pwrite(fd, data + b" " * (old - len(data)), 0)
    finally:
        os.close(fd)
