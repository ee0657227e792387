"""A ``FileStore``'s group ledgers: one small file per group, changed under its flock.

Each group's ledger (counts, flags, the kept lines about failed children) is one
JSON file ``<record's hash>.group`` beside the group's record; reading a group
reads it once, whatever the number of children. Each child's state as counted is
kept in one of 256 bucket files in ``<record's hash>.children/`` (by a hash of
the child's key: no new file per child, whose creation would cost more than the
rest of a change), read and written in place only while the ledger's ``flock``
is held, so a child's change is counted exactly once across processes (the lock
makes it atomic; the kernel drops it when a holder dies, and a ``pwrite`` is
never cut in two by a signal).
"""

from __future__ import annotations

import contextlib
import dataclasses
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

__all__ = ["CHILDREN_SUFFIX", "LEDGER_SUFFIX", "FileGroupLedgers", "GroupFiles"]

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
                bucket = self._bucket_path(key, child)
                entries = _read_bucket(bucket)
                found = entries.get(child)
                previous = None if found is None else (found[0], found[1])
                book, changed = Ledger(book).move(previous, state, units, line, time.time())
                if changed:
                    entries[child] = (state, units)
                    _write_bucket(bucket, entries)
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
        found: list[tuple[str, str]] = []
        for name in names:
            found.extend((child, entry[0]) for child, entry in _read_bucket(folder / name).items())
        return found

    def delete(self, key: str) -> None:
        """Remove group ``key``'s ledger and children (never raises)."""
        with contextlib.suppress(OSError):
            os.unlink(self.ledger_path(key))
        shutil.rmtree(self.children_dir(key), ignore_errors=True)

    def delete_files(self, ledger: Path) -> None:
        """Remove the ledger file ``ledger`` and its children's folder (never raises)."""
        with contextlib.suppress(OSError):
            os.unlink(ledger)
        shutil.rmtree(ledger.with_suffix(CHILDREN_SUFFIX), ignore_errors=True)

    def _bucket_path(self, key: str, child: str) -> Path:
        digest = hashlib.sha256(child.encode("utf-8", "surrogatepass")).hexdigest()[:2]
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


class FileGroupLedgers:
    """``FileStore``'s part of the group contract (see ``tracked._groupstore``): each
    call one change of a ledger file under its lock. ``group_files`` and ``path_for``
    are the store's."""

    group_files: GroupFiles

    def path_for(self, key: str) -> Path:
        """The record file of ``key`` (the store's)."""
        raise NotImplementedError

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change under the ledger's flock; the group's record file's
        mtime moves on, so event streams and the render cache see it."""
        book = self.group_files.move(key, run, child, state, units, line)
        if book is not None:
            touch(self.path_for(key))
        return book

    def close_group(self, key: str, run: str) -> GroupBook | None:
        """Close group ``key`` (see ``Store.close_group``)."""
        book = self.group_files.change(key, run, lambda book: Ledger(book).close(time.time()))
        touch(self.path_for(key))
        return book

    def cancel_group(self, key: str, run: str) -> GroupBook | None:
        """Mark group ``key`` cancelled (see ``Store.cancel_group``)."""
        return self.group_files.change(
            key, run, lambda book: dataclasses.replace(book, cancelled=True)
        )

    def read_group(self, key: str) -> GroupBook | None:
        """Group ``key``'s ledger: one file read."""
        return self.group_files.read(key)

    def group_children(self, key: str) -> list[tuple[str, str]]:
        """Group ``key``'s children as counted (256 bucket files)."""
        return self.group_files.children(key)

    def sweep_turn(self, key: str, run: str, window: float) -> bool:
        """The first caller in ``window`` seconds moves ``swept_at`` on, under the lock."""
        now, won = time.time(), []

        def take(book: GroupBook) -> GroupBook:
            if now - book.swept_at < window:
                return book
            won.append(True)
            return dataclasses.replace(book, swept_at=now)

        self.group_files.change(key, run, take)
        return bool(won)


def touch(path: Path) -> None:
    """Move ``path``'s mtime on by at least 1 ns, so that a ``stat`` taken before
    differs; never raises (a pruned record: nothing to tell)."""
    try:
        before = os.stat(path).st_mtime_ns
        now = max(time.time_ns(), before + 1)
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def _decode(raw: bytes, where: str) -> GroupBook:
    try:
        return GroupBook.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"corrupt group ledger {where!r}: {exc}") from exc


def _read_bucket(path: Path) -> dict[str, tuple[str, int]]:
    """The children in one bucket file, by key: (state, units) as counted."""
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read() or b"{}")
        return {str(k): (str(v[0]), int(v[1])) for k, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise StoreError(f"corrupt group bucket {str(path)!r}: {exc}") from exc


def _write_bucket(path: Path, entries: dict[str, tuple[str, int]]) -> None:
    """Write a bucket in place (only under the ledger's lock, so no two writers), padded
    with spaces (which JSON ignores) over a longer old content: no truncate."""
    data = json.dumps(
        {k: [v[0], v[1]] for k, v in entries.items()}, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8", "surrogatepass")
    flags = os.O_RDWR | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        old = os.fstat(fd).st_size
        os.pwrite(fd, data + b" " * (old - len(data)), 0)
    except OSError as exc:
        raise StoreError(f"cannot write {str(path)!r}: {exc}") from exc
    finally:
        os.close(fd)
