"""``FileStore``: one JSON file per progress in a directory, the embedded default.

Writes are atomic (a temporary file in the same directory, then ``os.replace``),
so a reader never sees half a record. Claims and prunes run under one
``filelock`` lock for the directory; ordinary writes by the owner take no lock.
File names are a hash of the key, so no name can reach outside the directory.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

from ._state import State
from ._store import Owner, Record, Store, claim_or_raise, decode_record, encode_record
from .errors import StoreError

__all__ = ["FileStore"]

LOCK_TIMEOUT = 10.0
SUFFIX = ".json"


class FileStore(Store):
    """Progress records as JSON files in ``directory`` (created with parents if missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use {str(self.directory)!r} as a progress store: {exc}"
            ) from exc
        if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreError(
                f"cannot use {str(self.directory)!r} as a progress store: not a writable directory"
            )
        self._lock_path = str(self.directory / ".claim.lock")

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds ``key``'s record: a hash, never derived from the text itself."""
        return self.directory / _file_name(key)

    # ------------------------------------------------------------------ writes

    def claim(self, state: State, owner: Owner) -> None:
        key = state.key
        with self._locked():
            try:
                existing = self.read(key)
            except StoreError:
                existing = None  # a corrupt or foreign file is replaced by a new start
            claim_or_raise(existing, key)
            self._write(self.path_for(key), encode_record(state, owner))

    def save(self, state: State, owner: Owner) -> None:
        self._write(self.path_for(state.key), encode_record(state, owner))

    def delete(self, key: str) -> bool:
        with self._locked():
            return self._unlink(self.path_for(key))

    def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        deleted = 0
        with self._locked():
            for path in self._files():
                record = self._read_path(path, missing_ok=True, skip_corrupt=True)
                if record is not None and self._prunable(record, cutoff):
                    deleted += self._unlink(path)
        return deleted

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self._replace(path, data)
        except FileNotFoundError:
            # The directory was removed under us: recreate it and try once more.
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._replace(path, data)
            except OSError as exc:
                raise StoreError(f"cannot write {str(path)!r}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {str(path)!r}: {exc}") from exc

    def _replace(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete {str(path)!r}: {exc}") from exc
        return True

    def _locked(self) -> filelock.FileLock:
        # A fresh lock object per use: flock conflicts between open files even
        # within one process, so threads and processes are excluded alike.
        return _StoreLock(self._lock_path, timeout=LOCK_TIMEOUT)

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Record | None:
        path = self.path_for(key)
        record = self._read_path(path, missing_ok=True)
        if record is not None and record.state.key != key:
            raise StoreError(f"{str(path)!r} holds another progress ({record.state.key!r})")
        return record

    def records(self) -> Iterator[Record]:
        for path in self._files():
            record = self._read_path(path, missing_ok=True, skip_corrupt=True)
            if record is not None:
                yield record

    def _files(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {str(self.directory)!r}: {exc}") from exc
        return [self.directory / n for n in names if n.endswith(SUFFIX) and not n.startswith(".")]

    def _read_path(
        self, path: Path, *, missing_ok: bool, skip_corrupt: bool = False
    ) -> Record | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise StoreError(f"no progress record at {str(path)!r}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {str(path)!r}: {exc}") from exc
        try:
            return decode_record(raw)
        except ValueError as exc:
            if skip_corrupt:
                return None
            raise StoreError(f"corrupt progress record {str(path)!r}: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _file_name(key: str) -> str:
    """A key's file name; cached because pollers ask for the same few keys again and again."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40] + SUFFIX


class _StoreLock(filelock.FileLock):
    """The directory's claim lock, turning a timeout into a ``StoreError``."""

    def __enter__(self) -> _StoreLock:
        try:
            self.acquire()
        except filelock.Timeout as exc:
            raise StoreError(
                f"timed out after {LOCK_TIMEOUT}s waiting for {self.lock_file!r}"
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot lock {self.lock_file!r}: {exc}") from exc
        return self
