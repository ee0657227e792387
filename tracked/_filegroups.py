"""A ``FileStore``'s group ledgers: inside each group's record file, changed under its flock.

Each group's ledger (counts, flags, the kept lines about failed children) is the
last member of the group's record document, ``,"ledger":{...}}``: reading a group
is reading its record, one file, whatever the number of children, and a reader
never sees a record and counts from two moments. A child's change locks the
group's record file (the lock its writer takes), splices the new ledger in and
writes the file in place (one ``pwrite`` within a page, which readers never see
half done; a longer record is replaced whole). Each child's state as counted is
kept in one of 256 bucket files in ``<record's hash>.children/`` (by a hash of
the child's key: no new file per child), read and rewritten through one descriptor
while the record's lock is held, so a change is counted exactly once across
processes (the kernel drops the lock when a holder dies).
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

__all__ = ["CHILDREN_SUFFIX", "FileGroupLedgers", "GroupFiles", "join_ledger", "split_ledger"]

CHILDREN_SUFFIX = ".children"
#: What comes before a group's ledger in its record file (never inside a JSON string,
#: where a quote is escaped, and no other member of a record is named ``ledger``).
_MARK = b',"ledger":'

#: A bucket is read in chunks this long (one read for any bucket under 64 KiB).
_CHUNK = 1 << 16

Change = Callable[[GroupBook | None], GroupBook | None]


def split_ledger(raw: bytes) -> tuple[bytes, bytes | None]:
    """A record file's bytes as the record without its ledger, and the ledger's JSON
    (None when the record has none)."""
    at = raw.rfind(_MARK)
    if at < 0:
        return raw, None
    return raw[:at] + b"}", raw[at + len(_MARK) : raw.rstrip().rfind(b"}")]


def join_ledger(record: bytes, ledger: bytes) -> bytes:
    """The record document ``record`` with ``ledger`` as its last member."""
    return record.rstrip()[:-1] + _MARK + ledger + b"}"


class GroupFiles:
    """The ledgers of the groups in one store directory (``FileStore`` delegates)."""

    def __init__(self, directory: Path, record_name: Callable[[str], str]) -> None:
        self.directory = directory
        self._record_name = record_name

    def record_path(self, key: str) -> Path:
        """The record file of group ``key``, which holds its ledger."""
        return self.directory / self._record_name(key)

    def children_dir(self, key: str) -> Path:
        """The folder of group ``key``'s children as counted (256 bucket files)."""
        return self.directory / (self._record_name(key).rsplit(".", 1)[0] + CHILDREN_SUFFIX)

    def open(self, key: str, run: str) -> None:
        """Write a new ledger for run ``run`` into group ``key``'s record (an older
        ledger's children go)."""
        shutil.rmtree(self.children_dir(key), ignore_errors=True)
        if self._change(key, lambda _: Ledger.new(run)) is None:
            raise StoreError(f"no record of group {key!r} to keep its ledger in")

    def move(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change under the record's lock (see ``Store.move_child``)."""
        try:
            with Locked(self.record_path(key), create=False) as locked:
                record, book = _split_locked(locked)
                if book is None or not book.run.startswith(run):
                    return None
                with _Bucket(self._bucket_path(key, child)) as bucket:
                    found = bucket.entries.get(child)
                    previous = None if found is None else (found[0], found[1])
                    book, changed = Ledger(book).move(previous, state, units, line, time.time())
                    if changed:
                        old = dict(bucket.entries)
                        bucket.entries[child] = (state, units)
                        bucket.write()
                        try:
                            _write(locked, record, book)
                        except BaseException:  # a full disk: the bucket must not count
                            bucket.entries = old  # what the ledger does not (the sweep
                            bucket.write()  # mends both from the child's record)
                            raise
                return book
        except FileNotFoundError:
            return None

    def change(
        self, key: str, run: str, change: Callable[[GroupBook], GroupBook]
    ) -> GroupBook | None:
        """Apply ``change`` to the ledger under the record's lock; None if there is none
        of ``run``."""
        return self._change(
            key, lambda book: change(book) if book is not None and book.run.startswith(run)
            else None,
        )

    def _change(self, key: str, change: Change) -> GroupBook | None:
        try:
            with Locked(self.record_path(key), create=False) as locked:
                record, book = _split_locked(locked)
                if not record.strip():
                    return None  # claimed, not written yet
                new = change(book)
                if new is not None and new is not book:
                    _write(locked, record, new)
                return new
        except FileNotFoundError:
            return None

    def read(self, key: str) -> GroupBook | None:
        """The ledger of group ``key`` (one file read, no lock: the record is replaced
        whole or written in place within one page, which readers never see half done)."""
        try:
            raw = read_regular(self.record_path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the group ledger of {key!r}: {exc}") from exc
        ledger = split_ledger(raw)[1]
        return None if ledger is None else _decode(ledger, key)

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
        """Remove group ``key``'s children (its ledger goes with its record; never raises)."""
        shutil.rmtree(self.children_dir(key), ignore_errors=True)

    def _bucket_path(self, key: str, child: str) -> Path:
        digest = hashlib.sha256(child.encode("utf-8", "surrogatepass")).hexdigest()[:2]
        return self.children_dir(key) / digest


def _split_locked(locked: Locked) -> tuple[bytes, GroupBook | None]:
    """The locked record's bytes without its ledger, and the ledger."""
    record, ledger = split_ledger(locked.read())
    return record, None if ledger is None else _decode(ledger, str(locked.path))


def _write(locked: Locked, record: bytes, book: GroupBook) -> None:
    """Write ``record`` with ``book`` as its ledger: in place, or by an atomic replace."""
    ledger = json.dumps(book.to_dict(), ensure_ascii=False, separators=(",", ":"))
    data = join_ledger(record, ledger.encode("utf-8", "surrogatepass"))
    if locked.write_in_place(data):
        return
    tmp = locked.path.with_name(f".{locked.path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, locked.path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk: the partial copy holds space nobody frees
        raise StoreError(f"cannot write {str(locked.path)!r}: {exc}") from exc


class FileGroupLedgers:
    """``FileStore``'s part of the group contract (see ``tracked._groupstore``): each
    call one change of a group's record file under its lock. ``group_files`` and ``path_for``
    are the store's."""

    group_files: GroupFiles

    def path_for(self, key: str) -> Path:
        """The record file of ``key`` (the store's)."""
        raise NotImplementedError

    def move_child(
        self, key: str, run: str, child: str, state: str, units: int, line: str | None
    ) -> GroupBook | None:
        """Count a child's change under the group's record's flock; the record file's
        mtime moves on with the write, so event streams and the render cache see it."""
        return self.group_files.move(key, run, child, state, units, line)

    def close_group(self, key: str, run: str) -> GroupBook | None:
        """Close group ``key`` (see ``Store.close_group``)."""
        return self.group_files.change(key, run, lambda book: Ledger(book).close(time.time()))

    def cancel_group(self, key: str, run: str) -> GroupBook | None:
        """Mark group ``key`` cancelled (see ``Store.cancel_group``)."""
        return self.group_files.change(
            key, run, lambda book: Ledger(book).cancel()
        )

    def read_group(self, key: str) -> GroupBook | None:
        """Group ``key``'s ledger: one read of its record file (``read`` gives it too)."""
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


def _decode(raw: bytes, where: str) -> GroupBook:
    try:
        return GroupBook.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"corrupt group ledger {where!r}: {exc}") from exc


def _read_bucket(path: Path) -> dict[str, tuple[str, int]]:
    """The children in one bucket file, by key: (state, units) as counted."""
    try:
        with open(path, "rb") as file:
            return _entries(file.read(), path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StoreError(f"cannot read group bucket {str(path)!r}: {exc}") from exc


class _Bucket:
    """One bucket file of children, read and rewritten in place through one descriptor
    (only under the group record's lock, so no two writers), padded with spaces (which
    JSON ignores) over a longer old content: no truncate, no new file per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.size = 0
        self.raw = b""
        self.entries: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> _Bucket:
        flags = os.O_RDWR | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW
        try:
            self.fd = os.open(self.path, flags, 0o666)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot open {str(self.path)!r}: {exc}") from exc
        try:
            chunks = [os.read(self.fd, _CHUNK)]  # one read: buckets are small
            while len(chunks[-1]) == _CHUNK:
                chunks.append(os.read(self.fd, _CHUNK))
            raw = b"".join(chunks)
            self.size = len(raw)
            self.raw = raw
            self.entries = _entries(raw, self.path)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def write(self) -> None:
        """Write the entries back over the old content."""
        data = json.dumps(
            {k: [v[0], v[1]] for k, v in self.entries.items()},
            ensure_ascii=False, separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        data += b" " * (self.size - len(data))
        error: OSError | None = None
        try:
            written = os.pwrite(self.fd, data, 0)
        except OSError as exc:
            written, error = 0, exc
        if written < len(data):  # a full disk cut it short: put back the bytes it
            self.size = max(self.size, written)  # replaced, over space already held
            with contextlib.suppress(OSError):
                os.pwrite(self.fd, self.raw + b" " * (self.size - len(self.raw)), 0)
            raise StoreError(f"cannot write {str(self.path)!r}: {error or 'disk full'}")
        self.size = len(data)
        self.raw = data

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _entries(raw: bytes, path: Path) -> dict[str, tuple[str, int]]:
    """The children in one bucket's bytes, by key: (state, units) as counted."""
    try:
        data = json.loads(raw or b"{}")
        return {str(k): (str(v[0]), int(v[1])) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise StoreError(f"corrupt group bucket {str(path)!r}: {exc}") from exc
