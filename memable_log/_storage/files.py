"""The storage seam: the few file-system operations the journal needs.

``Storage`` is a flat directory of named files. ``FileStorage`` is a real
directory; ``MemoryStorage`` (in _memstorage.py) keeps files in memory and
can simulate a power cut. Everything here is synchronous and may block: the
async journal calls it from a worker thread when ``blocking`` is true.

Writes either write every byte or raise OSError. A short write (fewer bytes
than asked, as on a disk that fills up) is followed by a write of the rest:
on a full disk that one raises ENOSPC, the truth to report, where a short
write alone would say nothing of why. An error names the file. ``sync`` is fsync;
``sync_dir`` fsyncs the directory, which makes creations, renames and
removals durable.

A handle from ``open_append`` writes at the end of the file (``write``) or,
for a preallocated segment, over bytes already there (``write_at``: the
segment writer zero-fills space ahead of its records and then overwrites
it); ``sync_data`` is fdatasync, which makes such an overwrite durable
without a metadata update (the file's size does not change).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from typing import Protocol

from .._core.errors import JournalLocked
from .._core.format import LOCK_NAME

DEFAULT_DIR_MODE = 0o700
DEFAULT_FILE_MODE = 0o600


class FileHandle(Protocol):
    def write(self, data: bytes) -> None: ...
    def write_at(self, offset: int, data: bytes) -> None: ...
    def sync(self) -> None: ...
    def sync_data(self) -> None: ...
    def truncate(self, size: int) -> None: ...
    def close(self) -> None: ...


class Storage(Protocol):
    @property
    def blocking(self) -> bool:
        """True if calls may block (and belong on a worker thread)."""
        ...

    @property
    def location(self) -> str:
        """A name for messages: the directory's path, or "<memory>"."""
        ...

    def list(self) -> list[str]: ...
    def read(self, name: str) -> bytes: ...
    def read_at(self, name: str, offset: int, size: int) -> bytes: ...
    def size(self, name: str) -> int: ...
    def create(self, name: str) -> FileHandle: ...
    def open_append(self, name: str) -> FileHandle: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def sync_dir(self) -> None: ...
    def lock(self) -> None: ...
    def unlock(self) -> None: ...


def write_all(
    fd: int, data: bytes, write: Callable[[int, memoryview], int] | None = None,
    offset: int | None = None,
) -> None:
    """Write every byte of ``data`` to ``fd``, the rest again after a short write.

    At the file's position, or with ``offset`` at that offset (pwrite).
    ``write`` is ``os.write`` unless a test gives a fake. A write that takes
    no byte at all raises OSError (EIO) rather than spin.
    """
    view = memoryview(data)
    while view:
        if offset is None:
            written = (os.write if write is None else write)(fd, view)
        else:
            written = os.pwrite(fd, view, offset)
            offset += max(written, 0)
        if written <= 0:
            raise OSError(errno.EIO, f"write took no byte of {len(view)}")
        view = view[written:]


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` with ``path`` as its file name (os.write and os.fsync give none)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, path)  # the subclass for the errno


class _OsFile:
    """An open file: ``write`` appends (at the end, tracked here), ``write_at`` overwrites."""

    __slots__ = ("_end", "_fd", "_path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self._end = os.fstat(fd).st_size

    def write(self, data: bytes) -> None:
        self.write_at(self._end, data)

    def write_at(self, offset: int, data: bytes) -> None:
        try:
            write_all(self._fd, data, offset=offset)
        except OSError as exc:
            try:  # part of it may have landed
                self._end = max(self._end, os.fstat(self._fd).st_size)
            except OSError:
                pass
            raise _named(exc, self._path) from exc
        self._end = max(self._end, offset + len(data))

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _named(exc, self._path) from exc

    def sync_data(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _named(exc, self._path) from exc

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._end = size

    def close(self) -> None:
        os.close(self._fd)


class FileStorage:
    """A journal directory on disk, created owner-only if missing."""

    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        dir_mode: int = DEFAULT_DIR_MODE,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = os.fspath(path)
        self._file_mode = file_mode
        self._lock_fd: int | None = None
        if create and not os.path.isdir(self.path):
            os.makedirs(self.path, mode=dir_mode, exist_ok=True)
            parent = os.path.dirname(os.path.abspath(self.path))
            fsync_dir(parent)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(errno.ENOENT, "no journal directory", self.path)

    @property
    def location(self) -> str:
        return self.path

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def list(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def read(self, name: str) -> bytes:
        with open(self._p(name), "rb") as f:
            return f.read()

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        fd = os.open(self._p(name), os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def size(self, name: str) -> int:
        return os.stat(self._p(name)).st_size

    def create(self, name: str) -> _OsFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return _OsFile(os.open(self._p(name), flags, self._file_mode), self._p(name))

    def open_append(self, name: str) -> _OsFile:
        flags = os.O_WRONLY | os.O_CLOEXEC
        return _OsFile(os.open(self._p(name), flags), self._p(name))

    def rename(self, src: str, dst: str) -> None:
        os.rename(self._p(src), self._p(dst))

    def remove(self, name: str) -> None:
        os.unlink(self._p(name))

    def sync_dir(self) -> None:
        fsync_dir(self.path)

    def lock(self) -> None:
        """Take the journal's write lock or raise JournalLocked at once.

        The holder's pid goes into the file (for the refusal's message only:
        the flock alone decides, and a file without a pid, as older versions
        left it, is fine).
        """
        fd = os.open(self._p(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._file_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise JournalLocked(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        try:  # written, then cut: a reader meanwhile still finds one whole first line
            mine = f"{os.getpid()}\n".encode()
            os.pwrite(fd, mine, 0)
            os.ftruncate(fd, len(mine))
        except OSError:  # a full disk: the lock holds without it
            pass

    @property
    def lock_fd(self) -> int | None:
        """The descriptor holding the write lock (a child given it holds it too)."""
        return self._lock_fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None


def _holder(fd: int) -> int | None:
    """The pid a lock holder wrote into the lock file, if it did (see lock)."""
    try:
        first = os.pread(fd, 32, 0).split(b"\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.isdigit() and 0 < len(first) < 20 else None


def fsync_dir(path: str) -> None:
    """fsync a directory: makes creations, renames and removals in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
