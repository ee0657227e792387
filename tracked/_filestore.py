"""``FileStore``: one JSON file per progress in a directory, the embedded default.

Writes are atomic (a temporary file in the same directory, then ``os.replace``),
so a reader never sees half a record. Claims and prunes run under one
``filelock`` lock for the directory; ordinary writes by the owner take no lock,
only a read of the stored record's run token. File names are a hash of the key,
so no name can reach outside the directory. Reading needs no write access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import filelock

from ._state import State
from ._store import (
    Owner,
    Record,
    SharedPart,
    Store,
    cancellable,
    claim_or_raise,
    decode_record,
    encode_record,
    judge,
)
from .errors import RunSuperseded, StoreError

__all__ = ["FileStore"]

LOCK_TIMEOUT = 10.0
SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
#: The joined workers' parts of a shared run live in ``<record name>.parts/``.
PARTS_SUFFIX = ".parts"
#: A cancel request is an empty file ``<record's hash>.<run token>.cancel``.
CANCEL_SUFFIX = ".cancel"
#: A temporary file older than this was left by a killed writer: ``prune`` removes it.
STALE_TEMP_AGE = 60.0
#: ``encode_record`` writes the owner first, so its run token is in the file's head.
_HEAD_BYTES = 1024
_RUN = re.compile(rb'"run":"([^"\\]*)"')


class FileStore(Store):
    """Progress records as JSON files in ``directory``.

    Opening and reading never create or change anything: the directory (with its
    parents) is made by the first claim, which alone needs write access.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise StoreError(
                f"cannot use {str(self.directory)!r} as a progress store: not a directory"
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
        self._make_writable()
        with self._locked():
            try:
                existing = self.read(key)
            except StoreError:
                existing = None  # a corrupt or foreign file is replaced by a new start
            claim_or_raise(existing, key)
            self._write(self.path_for(key), encode_record(state, owner))

    def save(self, state: State, owner: Owner) -> None:
        path = self.path_for(state.key)
        if self._stored_run(path) not in (owner.run, _NO_RECORD):
            raise RunSuperseded(
                f"progress {state.key!r} in {str(path)!r} belongs to another run now; "
                "not overwriting it"
            )
        self._write(path, encode_record(state, owner))

    def _stored_run(self, path: Path) -> str | None:
        """The run token of the record at ``path`` (a cheap read of the file's head);
        ``_NO_RECORD`` if there is none or it is corrupt, None if it has no owner."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            try:
                head = os.read(fd, _HEAD_BYTES)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return _NO_RECORD
        except OSError as exc:
            raise StoreError(f"cannot read {str(path)!r}: {exc}") from exc
        found = _RUN.search(head)
        if found is not None:
            return found.group(1).decode("ascii", "replace")
        record = self._read_path(path, missing_ok=True, skip_corrupt=True)  # an older layout
        if record is None:
            return _NO_RECORD
        return None if record.owner is None else record.owner.run

    def _make_writable(self) -> None:
        """Create the directory if needed; ``StoreError`` naming it if it is not writable."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use {str(self.directory)!r} as a progress store: {exc}"
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreError(
                f"cannot use {str(self.directory)!r} as a progress store: not a writable directory"
            )

    def delete(self, key: str) -> bool:
        with self._locked():
            self._remove_parts(self.parts_dir(key))
            return self._unlink(self.path_for(key))

    def prune(self, older_than: float) -> int:
        """Delete old ended records, and temporary files left by killed writers once
        older than ``STALE_TEMP_AGE`` (those are not counted)."""
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - older_than
        deleted = 0
        with self._locked():
            for path in self._files():
                record = self._read_path(path, missing_ok=True, skip_corrupt=True)
                if record is not None and self._prunable(record, cutoff):
                    deleted += self._unlink(path)
            self._remove_stale_temporaries(time.time() - STALE_TEMP_AGE)
            self._prune_parts()
            self._remove_stale_cancels()
        return deleted

    def _remove_stale_temporaries(self, cutoff: float) -> None:
        for path in self._names(lambda n: n.startswith(".") and n.endswith(TEMP_SUFFIX)):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot delete {str(path)!r}: {exc}") from exc

    # ------------------------------------------------------------------ cancel requests

    def cancel_path(self, key: str, run: str) -> Path:
        """The marker file asking run ``run`` of ``key`` to stop (next to its record)."""
        return self.directory / (_file_name(key)[: -len(SUFFIX)] + "." + run + CANCEL_SUFFIX)

    def request_cancel(self, key: str) -> bool:
        owner = cancellable(self.read(key))
        if owner is None:
            return False
        path = self.cancel_path(key, owner.run)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o666))
        except OSError as exc:
            raise StoreError(f"cannot write the cancel request {str(path)!r}: {exc}") from exc
        return True

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """One ``stat`` per run."""
        return [os.path.exists(self.cancel_path(key, owner.run)) for key, owner in runs]

    def clear_cancel(self, key: str, owner: Owner) -> None:
        self._unlink(self.cancel_path(key, owner.run))

    def _remove_stale_cancels(self) -> None:
        """Markers left by owners that died before removing them: their run no longer
        holds a running record."""
        for path in self._names(lambda n: n.endswith(CANCEL_SUFFIX) and not n.startswith(".")):
            digest, _, run = path.name[: -len(CANCEL_SUFFIX)].partition(".")
            record = self._read_path(
                self.directory / (digest + SUFFIX), missing_ok=True, skip_corrupt=True
            )
            owner = cancellable(record)
            if owner is None or owner.run != run:
                self._unlink(path)

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
        tmp, fd = self._create_temporary()
        try:
            try:
                view = memoryview(data)
                while view:  # plain os calls: they still work while the interpreter exits
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _create_temporary(self) -> tuple[Path, int]:
        """A new temporary file, mode 0o666 less the umask (mkstemp's is always 0600).

        Named by pid and a counter, not random bytes: no extra system call, which on
        the flusher thread would also be one more wait for the GIL.
        """
        while True:
            tmp = self.directory / f".{os.getpid()}-{next(_serial)}{TEMP_SUFFIX}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
            except FileExistsError:  # left by a killed process that had this pid
                continue
            return tmp, fd

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

    # ------------------------------------------------------------------ shared runs

    def __reduce__(self) -> tuple[type[FileStore], tuple[str]]:
        """Pickle as the directory alone."""
        return (FileStore, (str(self.directory),))

    def parts_dir(self, key: str) -> Path:
        """The directory of the joined workers' parts of ``key`` (``tracked.join``):
        one file per worker, ``<run>.<worker>.json``, never the owner's record."""
        return self.directory / _parts_name(key)

    def write_part(self, key: str, part: SharedPart) -> bool:
        """Refused once the run ended or its owner is judged dead (readers then show
        ``abandoned`` with the parts written until then). A part changes what readers
        see without replacing the record, so it moves the record file's mtime on: the
        status route's render cache and event streams, which ``stat`` the record,
        see the change as they see the owner's writes."""
        record_path = self.path_for(key)
        record = self._read_path(record_path, missing_ok=True, skip_corrupt=True)
        if (
            record is None
            or record.owner is None
            or record.owner.run != part.run
            or not judge(record).in_progress
        ):
            return False
        folder = self.parts_dir(key)
        path = folder / f"{part.run}.{part.worker}{SUFFIX}"
        try:
            try:
                self._replace(path, part.encode())
            except FileNotFoundError:
                folder.mkdir(parents=True, exist_ok=True)
                self._replace(path, part.encode())
        except OSError as exc:
            raise StoreError(f"cannot write {str(path)!r}: {exc}") from exc
        _touch(record_path)
        return True

    def read_parts(self, key: str, run: str) -> list[SharedPart]:
        # Every read of a running record asks: plain strings, as Path operations
        # would cost more than the one system call that finds no parts directory.
        where = f"{self.directory}{os.sep}{_parts_name(key)}"
        try:
            names = os.listdir(where)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {where!r}: {exc}") from exc
        folder = Path(where)
        parts = []
        for name in names:
            if name.startswith(run + ".") and name.endswith(SUFFIX):
                try:
                    part = SharedPart.decode((folder / name).read_bytes())
                except (OSError, ValueError):
                    continue  # gone since the listing, or not a part: it adds nothing
                if part.run == run:
                    parts.append(part)
        return parts

    def delete_parts(self, key: str, run: str) -> None:
        self._remove_parts(self.parts_dir(key), run + ".")

    @staticmethod
    def _remove_parts(folder: Path, prefix: str = "") -> None:
        """Delete the part files in ``folder`` whose names start with ``prefix``, and
        the folder once empty; never raises (what is left, ``prune`` removes later)."""
        try:
            for name in os.listdir(folder):
                if name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        os.unlink(folder / name)
            os.rmdir(folder)
        except OSError:
            pass

    def _prune_parts(self) -> None:
        """Remove parts directories whose record is gone or ended (a worker's write
        that raced its owner's end, or a run whose owner was killed)."""
        for folder in self._names(lambda n: n.endswith(PARTS_SUFFIX)):
            record = self._read_path(folder.with_suffix(SUFFIX), missing_ok=True, skip_corrupt=True)
            # An abandoned record keeps its parts (readers add them) until it is pruned.
            if record is None or not record.state.in_progress:
                self._remove_parts(folder)

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

    def unreadable(self) -> list[str]:
        problems = []
        for path in self._files():
            try:
                self._read_path(path, missing_ok=True)
            except StoreError as exc:
                problems.append(str(exc))
        return problems

    def _files(self) -> list[Path]:
        return self._names(lambda n: n.endswith(SUFFIX) and not n.startswith("."))

    def _names(self, wanted: Callable[[str], bool]) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {str(self.directory)!r}: {exc}") from exc
        return [self.directory / n for n in names if wanted(n)]

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


_NO_RECORD = "\0none"  # never a run token
_serial = itertools.count()
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@functools.lru_cache(maxsize=4096)
def _file_name(key: str) -> str:
    """A key's file name; cached because pollers ask for the same few keys again and again."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40] + SUFFIX


def _touch(path: Path) -> None:
    """Move ``path``'s mtime on by at least 1 ns (so a ``stat`` taken before differs
    even within one tick of the file system's clock); never raises."""
    try:
        before = os.stat(path).st_mtime_ns
        now = max(time.time_ns(), before + 1)
        try:
            os.utime(path, ns=(now, now))
        except PermissionError:  # another user's file: only "now" may be set
            os.utime(path)
    except OSError:
        pass  # gone (the run ended and was pruned): nothing to tell readers


@functools.lru_cache(maxsize=4096)
def _parts_name(key: str) -> str:
    """The name of a key's parts directory (see ``FileStore.parts_dir``)."""
    return _file_name(key)[: -len(SUFFIX)] + PARTS_SUFFIX


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
