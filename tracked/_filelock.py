"""The locks under a ``FileStore``: a writer's exclusive ``flock`` on a record's file
(``Locked``), the range locks that let readers and in-place writes exclude each
other, and the descriptors a forked child must close.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
import time
from pathlib import Path

from .errors import StoreError

#: A writer waits at most this long for a record's lock: then ``StoreError``.
LOCK_TIMEOUT = 10.0
#: A reader waits at most this long for a record's writer (a writer holds the lock for
#: microseconds, unless it was stopped mid-write): then ``StoreError``, not a hang.
READ_LOCK_TIMEOUT = 2.0
#: ``encode_record`` writes the owner first, so its run token is in the file's head.
_HEAD_BYTES = 1024
#: A record at most this long (and replacing one at most this long) is rewritten in
#: place: one ``pwrite`` within the first page, all or nothing even for SIGKILL.
_PAGE = min(mmap.PAGESIZE, 4096)
#: An mtime older than this (50 ms: many ticks of any kernel's file clock) is surely
#: moved on by a write now, so ``Locked._touch`` need not set it.
_MTIME_SETTLED_NS = 50_000_000
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: A record or marker is never opened through a symbolic link: one planted in the
#: store would have small writes land in the file it points to, outside the store.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path``, read under a shared range lock (a
    small record is rewritten in place under the exclusive one); ``OSError`` for
    anything else (a directory, or a FIFO, whose plain open would wait forever).

    Not the writers' ``flock``: a reader stopped while holding it would make every
    writer of the record wait (a task's start or final write), where an in-place
    writer that finds the range lock taken replaces the file instead."""
    fd = _open_held(path, os.O_RDONLY | O_CLOEXEC | _O_NONBLOCK | O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        _range_lock_shared(fd, path)
        info = os.fstat(fd)
        chunks = [os.read(fd, info.st_size + 1)]  # one read, unless the file grew
        while len(chunks[-1]) > 0 and sum(map(len, chunks)) > info.st_size:
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    finally:
        _close_held(fd)

#: The record descriptors this process has open: a forked child closes its copies at
#: once, or a record a parent's thread locks (before or after the fork) would stay
#: locked for as long as the child lives (a ``flock`` belongs to the open file, which
#: both share). A fork waits for ``_fork_guard``, so no descriptor is open and not
#: yet listed when it happens.
_held_fds: set[int] = set()

_fork_guard = threading.Lock()


def _open_held(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open``, the descriptor listed in ``_held_fds`` in the same step for forks."""
    with _fork_guard:
        fd = os.open(path, flags, mode)
        _held_fds.add(fd)
    return fd


def _close_held(fd: int) -> None:
    """Close a descriptor ``_open_held`` opened; no fork between the two steps."""
    with _fork_guard:
        _held_fds.discard(fd)  # before the close: the number may be reused at once
        os.close(fd)


def _close_inherited_locks() -> None:
    """In a forked child: close the copies of the parent's record descriptors."""
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()
    _fork_guard.release()  # taken by this (the forking) thread before the fork

if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_fork_guard.acquire,
        after_in_parent=_fork_guard.release,
        after_in_child=_close_inherited_locks,
    )


class Locked:
    """An exclusive ``flock`` on the file that is a record's now.

    Locks belong to the open file, so threads and processes are excluded alike, and
    the kernel drops them when a holder dies. A file replaced (``os.replace``) or
    deleted while we waited is no longer the record: we then lock what is there now.
    With ``create``, a missing record file is created empty (readers see no record
    until the first snapshot is written into its place). ``FileNotFoundError`` when
    there is no file (or, with ``create``, no directory).
    """

    __slots__ = ("create", "created", "fd", "mtime_ns", "path", "size", "writable")

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self.create = create
        self.created = False
        self.writable = True
        self.size = 0
        self.mtime_ns = 0
        self.fd = -1

    def acquire(self) -> Locked:
        """Lock the file that is the record's once the lock is held (see the class)."""
        flags = os.O_RDWR | O_CLOEXEC | _O_NONBLOCK | O_NOFOLLOW
        while True:
            fd = self._open(flags)
            if fd is None:
                continue  # deleted in between: create it after all
            try:
                info = _lock(fd, self.path)
            except BaseException:
                self._close(fd)
                raise
            if info.st_nlink > 0:
                self.fd, self.size, self.mtime_ns = fd, info.st_size, info.st_mtime_ns
                return self
            self._close(fd)  # replaced or deleted while we waited: lock what is there now
            if not self.create:
                self._check_present()

    def _open(self, flags: int) -> int | None:
        """The record file opened (created empty first with ``create``); None when it was
        deleted between finding it there and opening it."""
        try:
            fd = _open_held(self.path, flags | os.O_CREAT | os.O_EXCL) \
                if self.create else self._open_existing(flags)
            self.created = self.create
        except FileExistsError:
            try:
                fd = self._open_existing(flags)
            except FileNotFoundError:
                return None
            except OSError as exc:  # a directory, a symbolic link: not a record file
                raise StoreError(f"cannot open {str(self.path)!r}: {exc}") from exc
            self.created = False
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise StoreError(f"cannot open {str(self.path)!r}: {exc}") from exc
        return fd

    def _check_present(self) -> None:
        """``FileNotFoundError`` if the record file is gone (deleted while we waited)."""
        try:
            os.stat(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "deleted", str(self.path)) from None
        except OSError:
            pass


    def _open_existing(self, flags: int) -> int:
        """Open the file for writing in place or, when this user may not write it (a
        record another user left, in a directory we may write), for reading only:
        the lock works either way, and the write then replaces the file."""
        try:
            self.writable = True
            return _open_held(self.path, flags)
        except PermissionError:
            self.writable = False
            return _open_held(self.path, (flags & ~os.O_RDWR) | os.O_RDONLY)

    def write_in_place(self, data: bytes) -> bool:
        """Overwrite the file with ``data`` in one ``pwrite`` if the old and the new
        record both fit in the first page (padded with spaces, which JSON ignores, up
        to the old size, so no byte of the old record is left after it); False, with
        nothing written, when the record must be replaced instead."""
        if not self.writable or max(len(data), self.size) > _PAGE:
            return False
        if not _range_lock(self.fd, _F_WRLCK):
            return False  # a reader is in the file (or stopped in it): replace, never wait
        if self.size > len(data):
            data += b" " * (self.size - len(data))
        # Only a write that grows the file can be cut short (a full disk, a file size
        # limit): keep the old bytes to put back then, never a record half new.
        old = os.pread(self.fd, self.size, 0) if len(data) > self.size else b""
        try:
            written = os.pwrite(self.fd, data, 0)
            if 0 < written < len(data):
                os.pwrite(self.fd, (old + b" " * written)[:written], 0)  # what it hit
        except OSError as exc:
            raise StoreError(f"cannot write {str(self.path)!r}: {exc}") from exc
        finally:
            _range_lock(self.fd, _F_UNLCK)
        if written != len(data):  # the old record is back: replace it whole instead
            return False
        self.size = len(data)
        self._touch()
        return True

    def _touch(self) -> None:
        """Give the file an mtime later than before, even within one tick of the file
        system's clock: readers that ``stat`` a record to tell whether it changed
        (the status route's cache, event streams) see every write, also one that
        left the size as it was (a replaced file gets a new inode; this one not).
        When the old mtime is well in the past, the ``pwrite`` itself has already
        moved it on (the kernel's clock lags by a tick at most): no ``utime`` then,
        one system call (one GIL hand-off) less per flusher write."""
        now = time.time_ns()
        if now - self.mtime_ns > _MTIME_SETTLED_NS:
            return
        now = max(now, self.mtime_ns + 1)
        try:
            os.utime(self.fd, ns=(now, now))
        except PermissionError:  # another user's file we may write: only "now" is allowed
            with contextlib.suppress(OSError):
                os.utime(self.fd)
        except OSError:
            pass

    def head(self) -> bytes:
        """The file's first bytes, enough to hold the owner's run token."""
        return os.pread(self.fd, _HEAD_BYTES, 0)

    def read(self) -> bytes:
        """The whole file."""
        size = os.fstat(self.fd).st_size
        chunks = [os.pread(self.fd, size + 1, 0)]
        while len(chunks[-1]) > 0 and sum(map(len, chunks)) > size:
            chunks.append(os.pread(self.fd, 1 << 16, sum(map(len, chunks))))
        return b"".join(chunks)

    def __enter__(self) -> Locked:
        return self if self.fd >= 0 else self.acquire()

    def __exit__(self, *exc: object) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            self._close(fd)

    @staticmethod
    def _close(fd: int) -> None:
        _close_held(fd)

#: Open-file-description record locks (Linux): they belong to the open file like a
#: ``flock`` and are independent of it, so readers and in-place writes exclude each
#: other without readers ever holding up the writers' ``flock``. Without them no
#: record is written in place and readers take no lock (every write is a replace).
_F_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)

_F_RDLCK, _F_WRLCK, _F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK

_FLOCK = "hhqqi4x"  # struct flock: l_type, l_whence, l_start, l_len (0: to the end), l_pid


def _range_lock(fd: int, kind: int) -> bool:
    """Take (or, with ``F_UNLCK``, drop) a range lock on the whole file without waiting;
    False if another open file holds a conflicting one, or there are no such locks."""
    if _F_OFD_SETLK is None:
        return False
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _range_lock_shared(fd: int, path: Path) -> None:
    """A reader's shared range lock: at once, else polling up to ``READ_LOCK_TIMEOUT``
    (an in-place write holds it for one ``pwrite``), then ``StoreError``."""
    if _F_OFD_SETLK is None or _range_lock(fd, _F_RDLCK):
        return
    deadline = time.monotonic() + READ_LOCK_TIMEOUT
    delay = 0.0002
    while not _range_lock(fd, _F_RDLCK):
        if time.monotonic() > deadline:
            raise StoreError(
                f"timed out after {READ_LOCK_TIMEOUT}s waiting for the writer of {str(path)!r}"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _lock(
    fd: int, path: Path, operation: int = fcntl.LOCK_EX, timeout: float = LOCK_TIMEOUT
) -> os.stat_result:
    """Take a ``flock`` on ``fd`` (exclusive: readers take none): at once if
    it is free (the common case), else polling, up to ``timeout`` seconds; returns the
    file's ``fstat``."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            time.sleep(delay)
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"timed out after {timeout}s waiting for the lock of {str(path)!r}"
                    ) from None
            delay = min(delay * 2, 0.01)
    except OSError as exc:
        raise StoreError(f"cannot lock {str(path)!r}: {exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"cannot use {str(path)!r} as a record: not a regular file")
    return info
