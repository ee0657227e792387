"""``FileStore``: one JSON file per progress in a directory, the embedded default.

Writes are atomic (a temporary file in the same directory, then ``os.replace``),
so a reader never sees half a record. Every change of a record (claim, save,
delete, prune) holds an exclusive ``flock`` on the record's own file while it
checks what is there and writes: a check and the write it allows are one step for
every process, claims of different names never wait on one another, and an older
run's write can never land over a newer claim. File names are a hash of the key,
so no name can reach outside the directory. Reading needs no write access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._filegroups import CHILDREN_SUFFIX, FileGroupLedgers, GroupFiles, join_ledger, split_ledger
from ._filelock import LOCK_TIMEOUT as LOCK_TIMEOUT
from ._filelock import O_CLOEXEC, O_NOFOLLOW, Locked, read_regular
from ._filelock import READ_LOCK_TIMEOUT as READ_LOCK_TIMEOUT
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
    swappable,
)
from .errors import RunSuperseded, StoreError

__all__ = ["FileStore"]

SUFFIX = ".json"
TEMP_SUFFIX = ".tmp"
#: The joined workers' parts of a shared run live in ``<record name>.parts/``.
PARTS_SUFFIX = ".parts"
#: A cancel request is an empty file ``<record's hash>.<run token>.cancel``.
CANCEL_SUFFIX = ".cancel"
#: From this many live runs on, the cancel poll may list the directory once instead
#: of a ``stat`` per run (``FileStore.cancels_requested``).
_LIST_CANCELS_FROM = 32
#: A temporary file older than this was left by a killed writer: ``prune`` removes it.
STALE_TEMP_AGE = 60.0
_RUN = re.compile(rb'"run":"([^"\\]*)"')


class FileStore(FileGroupLedgers, Store):
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
        #: The group ledgers in this directory (``tracked._filegroups``).
        self.group_files = GroupFiles(self.directory, _file_name)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds ``key``'s record: a hash, never derived from the text itself."""
        return self.directory / _file_name(key)

    # ------------------------------------------------------------------ writes

    def claim(self, state: State, owner: Owner) -> None:
        """Create or take over ``state.key``'s file under its ``flock`` (see ``Store.claim``)."""
        key = state.key
        data = encode_record(state, owner)
        self._make_writable()
        path = self.path_for(key)
        with Locked(path, create=True) as locked:
            try:
                existing = self._decode(locked.read(), path)
            except StoreError:
                existing = None  # a corrupt or foreign file is replaced by a new start
            if existing is not None and existing.state.key != key:
                existing = None
            claim_or_raise(existing, key)
            try:
                self._write_locked(locked, data)
            except StoreError:
                if locked.created:  # a full disk, say: leave no empty file behind
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise

    def save(self, state: State, owner: Owner) -> None:
        """Write ``owner``'s snapshot if its run still holds the record, checked and
        written under the record's lock. A record deleted since (``delete``, ``prune``)
        is not brought back: the run is over for this store, and ``RunSuperseded``
        says so. Only a store directory removed as a whole is made again."""
        path = self.path_for(state.key)
        data = encode_record(state, owner)
        try:
            locked = Locked(path, create=False).acquire()
        except FileNotFoundError:
            if self.directory.is_dir():
                raise self._superseded(state.key, path, "was deleted") from None
            self._make_writable()  # removed under us: a run may write itself back
            locked = Locked(path, create=True).acquire()
        with locked:
            stored = _stored_run(locked)
            if stored is _EMPTY and locked.created:
                pass  # the directory was made again just now: this run's write fills it
            elif stored != owner.run:
                raise self._superseded(state.key, path, "belongs to another run now")
            if state.children is not None:  # a group's: only its record reads the file
                data = _keep_ledger(locked.read(), data)
            self._write_locked(locked, data)

    def swap(self, state: State, owner: Owner, *, run: str, was: frozenset[str]) -> bool:
        """Checked and written under the record's lock, as claims and saves are: a queued
        record has no owner process, its one writer is whoever swaps it."""
        path = self.path_for(state.key)
        data = encode_record(state, owner)
        try:
            locked = Locked(path, create=False).acquire()
        except FileNotFoundError:
            return False
        with locked:
            raw = locked.read()
            try:
                existing = self._decode(raw, path)
            except StoreError:
                return False
            if existing is None or existing.state.key != state.key:
                return False
            if not swappable(existing, run, was):
                return False
            self._write_locked(locked, data if state.children is None else _keep_ledger(raw, data))
        return True

    def _write_locked(self, locked: Locked, data: bytes) -> None:
        """Write ``data`` as the locked record: in place when the old and the new record
        each fit in one page (a single ``pwrite`` at offset 0, which no signal can cut
        in two and readers, who take the lock shared, never see half done), else by
        an atomic replace of the file (which readers of the old file see whole)."""
        if locked.write_in_place(data):
            return
        self._write(locked.path, data)

    @staticmethod
    def _superseded(key: str, path: Path, why: str) -> RunSuperseded:
        return RunSuperseded(f"progress {key!r} in {str(path)!r} {why}; not writing it")

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
        """Remove ``key``'s file and its parts folder; True if the file was there."""
        path = self.path_for(key)
        self._remove_parts(self.parts_dir(key))
        self.group_files.delete(key)
        try:
            locked = Locked(path, create=False).acquire()
        except FileNotFoundError:
            return False
        except StoreError:  # not a file we can lock (a directory): unlink says why
            return self._unlink(path)
        with locked:  # no write of this record is half done: it stays deleted
            return self._unlink(path)

    def prune(self, older_than: float) -> int:
        """Delete old ended records, and temporary files left by killed writers once
        older than ``STALE_TEMP_AGE`` (those are not counted)."""
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - older_than
        deleted = 0
        for path in self._files():
            record = self._readable(path)
            if record is None:
                self._remove_if_empty(path, time.time() - STALE_TEMP_AGE)
            elif self._prunable(record, cutoff):
                deleted += self._prune_one(path, cutoff)
        self._remove_stale_temporaries(time.time() - STALE_TEMP_AGE)
        self._prune_parts()
        self._remove_stale_cancels()
        self._prune_groups()
        return deleted

    def _prune_groups(self) -> None:
        """Remove groups' children folders whose record is gone (pruned, deleted)."""
        for path in self._names(lambda n: n.endswith(CHILDREN_SUFFIX) and not n.startswith(".")):
            if not path.with_suffix(SUFFIX).exists():
                shutil.rmtree(path, ignore_errors=True)

    def _prune_one(self, path: Path, cutoff: float) -> bool:
        """Delete the record at ``path`` if, under its lock, it is still prunable (a new
        run may have claimed the name since it was listed)."""
        try:
            with Locked(path, create=False) as locked:
                try:
                    record = self._decode(locked.read(), path)
                except StoreError:
                    return False
                if record is None or not self._prunable(record, cutoff):
                    return False
                return self._unlink(path)
        except (FileNotFoundError, StoreError):
            return False

    def _remove_if_empty(self, path: Path, cutoff: float) -> None:
        """Remove an empty record file older than ``cutoff``: a claimer killed between
        creating it and writing its first snapshot left it (readers see no record)."""
        try:
            if path.stat().st_size or path.stat().st_mtime >= cutoff:
                return
            with Locked(path, create=False) as locked:
                if not locked.head():
                    self._unlink(path)
        except (OSError, StoreError):
            pass

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
        """Create the cancel marker file of ``key``'s live run; False if none runs."""
        owner = cancellable(self.read(key))
        if owner is None:
            return False
        path = self.cancel_path(key, owner.run)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o666))
        except OSError as exc:
            raise StoreError(f"cannot write the cancel request {str(path)!r}: {exc}") from exc
        return True

    def cancels_requested(self, runs: Sequence[tuple[str, Owner]]) -> list[bool]:
        """One ``stat`` per run; for many runs, one listing of the directory instead
        when it is not much larger than the runs (every ``stat`` gives the GIL back,
        and a busy process's flusher waits to get it back after each)."""
        paths = [self.cancel_path(key, owner.run) for key, owner in runs]
        if len(paths) >= _LIST_CANCELS_FROM and self._small_for(len(paths)):
            try:
                names = set(os.listdir(self.directory))
            except FileNotFoundError:
                return [False] * len(paths)
            except OSError:
                pass
            else:
                return [path.name in names for path in paths]
        return [os.path.exists(path) for path in paths]

    def _small_for(self, runs: int) -> bool:
        """Whether listing the directory costs less than ``runs`` stats: its size (a
        few dozen to a hundred bytes an entry on common file systems) within 1 KiB a run."""
        try:
            return os.stat(self.directory).st_size <= runs * 16 * 64
        except OSError:
            return False

    def clear_cancel(self, key: str, owner: Owner) -> None:
        """Remove the cancel marker file of ``owner``'s run of ``key``."""
        self._unlink(self.cancel_path(key, owner.run))

    def _remove_stale_cancels(self) -> None:
        """Markers left by owners that died before removing them: their run no longer
        holds a running record."""
        for path in self._names(lambda n: n.endswith(CANCEL_SUFFIX) and not n.startswith(".")):
            digest, _, run = path.name[: -len(CANCEL_SUFFIX)].partition(".")
            record = self._readable(self.directory / (digest + SUFFIX))
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
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o666)
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


    # ------------------------------------------------------------------ groups

    def open_group(self, key: str, run: str) -> None:
        """Start group ``key``'s ledger file (see ``tracked._filegroups``)."""
        self._make_writable()
        self.group_files.open(key, run)

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
        """The part files of run ``run`` in ``key``'s parts folder (none: no folder)."""
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
        """Remove the part files of run ``run`` of ``key`` (never raises)."""
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
            path = folder.with_suffix(SUFFIX)
            record = self._readable(path)
            if record is None and path.exists():
                continue  # a record there that cannot be read: leave its parts alone
            # An abandoned record keeps its parts (readers add them) until it is pruned.
            if record is None or not record.state.in_progress:
                self._remove_parts(folder)

    # ------------------------------------------------------------------ reads

    def read(self, key: str) -> Record | None:
        """The record in ``key``'s file, or None; ``StoreError`` if it holds another key."""
        path = self.path_for(key)
        record = self._read_path(path, missing_ok=True)
        if record is not None and record.state.key != key:
            raise StoreError(f"{str(path)!r} holds another progress ({record.state.key!r})")
        return record

    def records(self) -> Iterator[Record]:
        """Every readable record; an entry that cannot be read (corrupt, truncated, a
        directory, no permission) is skipped, and ``unreadable`` names it."""
        for path in self._files():
            record = self._readable(path)
            if record is not None:
                yield record

    def _readable(self, path: Path) -> Record | None:
        """The record at ``path``, or None if it is missing or cannot be read at all:
        listing and pruning go on past one bad entry."""
        try:
            return self._read_path(path, missing_ok=True)
        except StoreError:
            return None

    def unreadable(self) -> list[str]:
        """One message per record file that exists but cannot be read."""
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
            raw = read_regular(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise StoreError(f"no progress record at {str(path)!r}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {str(path)!r}: {exc}") from exc
        if skip_corrupt:
            try:
                return self._decode(raw, path)
            except StoreError:
                return None
        return self._decode(raw, path)

    @staticmethod
    def _decode(raw: bytes, path: Path) -> Record | None:
        """The record in ``raw``; None for an empty file (a claim not written yet)."""
        if not raw:
            return None
        try:
            return decode_record(raw)
        except ValueError as exc:
            raise StoreError(f"corrupt progress record {str(path)!r}: {exc}") from exc


_NO_RECORD = "\0none"  # never a run token
_EMPTY = "\0empty"  # the run "token" of an empty file
_serial = itertools.count()


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


def _stored_run(locked: Locked) -> str | None:
    """The run token of the locked record, from its first bytes (``encode_record``
    writes the owner first) or, failing that, the whole record; ``_EMPTY`` for an
    empty file, ``_NO_RECORD`` for one that is not a record, None for no owner."""
    head = locked.head()
    if not head:
        return _EMPTY
    found = _RUN.search(head)
    if found is not None:
        return found.group(1).decode("ascii", "replace")
    try:
        record = decode_record(locked.read())
    except ValueError:
        return _NO_RECORD
    return None if record.owner is None else record.owner.run


def _keep_ledger(raw: bytes, data: bytes) -> bytes:
    """A group's new record ``data`` with the ledger its file holds (``raw``): the
    ledger is changed by children under the same lock, never by the group's writer."""
    ledger = split_ledger(raw)[1]
    return data if ledger is None else join_ledger(data, ledger)
