"""An in-memory Storage that can lose power.

Each file keeps two contents: ``data``, what reads see (the page cache), and
``durable``, what the last fsync made safe. The directory likewise keeps the
names reads see and the names the last directory fsync made safe.
``crash()`` returns the storage as a power cut would leave it: only durable
names, each with its durable bytes, plus, if asked, some torn part of the
bytes written since (see ``tear``). A write need not append: ``write_at``
overwrites bytes already there (a preallocated segment's zeros), and what it
replaced stays durable until the next fsync, so a power cut brings the old
bytes back (zeros, for preallocated space) where the new ones did not land.

For fault injection, ``fail(op, err)`` makes the next ``op`` raise OSError
(``partial`` bytes of a write may land first: a short write), and
``crash_at`` stops the world at the n-th mutating operation by raising
``PowerCut``, so a test can enumerate every crash point of a workload;
``crash_after_syncs`` raises it right after the n-th fsync took effect,
before the caller learns it succeeded (memable_log.testing uses both).
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Callable
from dataclasses import dataclass

from .._core.errors import JournalLocked

TearFn = Callable[[str, bytes], bytes]


class PowerCut(BaseException):
    """Raised by MemoryStorage at its ``crash_at`` operation."""


@dataclass
class _Fault:
    op: str
    err: int
    partial: int | None


class _MemFile:
    """A file's bytes as reads see them, and as the last fsync left them.

    ``lo``..``hi`` bounds what was written since that fsync, so an fsync
    copies only that (a preallocated segment is mostly zeros nobody wrote).
    """

    __slots__ = ("data", "durable", "hi", "lo")

    def __init__(self, data: bytes | bytearray = b"") -> None:
        self.data = bytearray(data)
        self.durable = bytearray(data)
        self.lo, self.hi = len(data), 0  # nothing written since

    def touch(self, lo: int, hi: int) -> None:
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def synced(self) -> None:
        data, durable = self.data, self.durable
        size = len(data)
        if len(durable) > size:
            del durable[size:]
        lo, hi = self.lo, min(self.hi, len(durable))
        if lo < hi:
            durable[lo:hi] = data[lo:hi]
        if len(durable) < size:
            durable += data[len(durable) :]
        self.lo, self.hi = size, 0


class _MemHandle:
    __slots__ = ("_storage", "_file", "_closed")

    def __init__(self, storage: MemoryStorage, file: _MemFile) -> None:
        self._storage = storage
        self._file = file
        self._closed = False

    def write(self, data: bytes) -> None:
        self.write_at(len(self._file.data), data)

    def write_at(self, offset: int, data: bytes) -> None:
        fault = self._storage._op("write")
        if fault is not None:
            if fault.partial:
                self._put(offset, data[: fault.partial])
            raise OSError(fault.err, f"injected {errno_mod.errorcode[fault.err]} on write")
        self._put(offset, data)

    def _put(self, offset: int, data: bytes) -> None:
        file = self._file.data
        self._file.touch(min(offset, len(file)), offset + len(data))
        if offset > len(file):
            file += bytes(offset - len(file))  # a hole reads as zeros
        file[offset : offset + len(data)] = data

    def sync_data(self) -> None:
        self.sync()  # the model keeps no metadata apart: fdatasync is fsync

    def sync(self) -> None:
        fault = self._storage._op("sync")
        if fault is not None:
            # Like Linux after a failed fsync: the dirty data stays visible
            # but is not durable, and a retry would not make it so.
            raise OSError(fault.err, f"injected {errno_mod.errorcode[fault.err]} on fsync")
        self._storage.syncs += 1
        self._file.synced()
        limit = self._storage.crash_after_syncs
        if limit is not None and self._storage.syncs >= limit:
            self._storage.crash_at = self._storage.ops + 1  # every later op finds it dead
            raise PowerCut(f"power cut right after fsync {self._storage.syncs}")

    def truncate(self, size: int) -> None:
        fault = self._storage._op("truncate")
        if fault is not None:
            raise OSError(fault.err, f"injected {errno_mod.errorcode[fault.err]} on truncate")
        del self._file.data[size:]

    def close(self) -> None:
        self._closed = True


class MemoryStorage:
    """Storage in memory, with power cuts and injected faults."""

    blocking = False
    location = "<memory>"

    def __init__(
        self, crash_at: int | None = None, *, crash_after_syncs: int | None = None
    ) -> None:
        self._files: dict[str, _MemFile] = {}
        self._durable_names: dict[str, _MemFile] = {}
        self._locked = False
        self._faults: list[_Fault] = []
        self.ops = 0  # mutating operations so far
        self.syncs = 0  # successful file fsyncs
        self.crash_at = crash_at
        self.crash_after_syncs = crash_after_syncs  # PowerCut right after this many fsyncs

    def _op(self, op: str) -> _Fault | None:
        self.ops += 1
        if self.crash_at is not None and self.ops >= self.crash_at:
            raise PowerCut(f"power cut at operation {self.ops} ({op})")
        for i, fault in enumerate(self._faults):
            if fault.op == op:
                del self._faults[i]
                return fault
        return None

    def _raise_fault(self, op: str) -> None:
        fault = self._op(op)
        if fault is not None:
            raise OSError(fault.err, f"injected {errno_mod.errorcode[fault.err]} on {op}")

    def fail(self, op: str, err: int = errno_mod.EIO, *, partial: int | None = None) -> None:
        """Make the next ``op`` fail with ``err``.

        ``op`` is one of write, sync, truncate, create, rename, remove,
        sync_dir. ``partial``: for a write, bytes that land before the error.
        """
        self._faults.append(_Fault(op, err, partial))

    # -- reads --------------------------------------------------------------

    def list(self) -> list[str]:
        return sorted(self._files)

    def _get(self, name: str) -> _MemFile:
        try:
            return self._files[name]
        except KeyError:
            raise FileNotFoundError(errno_mod.ENOENT, "no such file", name) from None

    def read(self, name: str) -> bytes:
        return bytes(self._get(name).data)

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        return bytes(self._get(name).data[offset : offset + size])

    def size(self, name: str) -> int:
        return len(self._get(name).data)

    # -- writes -------------------------------------------------------------

    def create(self, name: str) -> _MemHandle:
        self._raise_fault("create")
        if name in self._files:
            raise FileExistsError(errno_mod.EEXIST, "file exists", name)
        file = self._files[name] = _MemFile()
        return _MemHandle(self, file)

    def open_append(self, name: str) -> _MemHandle:
        return _MemHandle(self, self._get(name))

    def rename(self, src: str, dst: str) -> None:
        self._raise_fault("rename")
        self._files[dst] = self._files.pop(src)

    def remove(self, name: str) -> None:
        self._raise_fault("remove")
        del self._files[name]

    def sync_dir(self) -> None:
        self._raise_fault("sync_dir")
        self._durable_names = dict(self._files)

    def lock(self) -> None:
        if self._locked:
            raise JournalLocked(self.location)
        self._locked = True

    def unlock(self) -> None:
        self._locked = False

    # -- power cuts ---------------------------------------------------------

    def unsynced(self) -> dict[str, bytes]:
        """Per durable file, the bytes written since its last fsync.

        From the first byte that differs from the durable content to the
        last one (or the end, for a file that grew): bytes appended, or
        bytes that overwrote part of a preallocated (zero-filled, synced)
        segment.
        """
        out = {}
        for name, file in self._durable_names.items():
            start, end = _dirty(file)
            out[name] = bytes(file.data[start:end])
        return out

    def crash(self, tear: TearFn | None = None) -> MemoryStorage:
        """The storage after a power cut, as a new, unlocked MemoryStorage.

        Without ``tear`` every byte not yet fsynced is lost (and every name
        not yet made durable by a directory fsync). With it, for each file
        whose durable bytes are a prefix of its data, ``tear(name,
        unsynced)`` says which bytes landed after the durable ones: a
        prefix, zeros, garbage, some sectors but not others.
        """
        after = MemoryStorage()
        for name, file in self._durable_names.items():
            content = file.durable
            start, end = _dirty(file)
            if tear is not None and start < end:
                # What landed replaces the durable bytes it covers; the rest
                # of the durable content (a zero tail) is still there.
                landed = tear(name, bytes(file.data[start:end]))
                content = content[:start] + landed + content[start + len(landed) :]
            after._files[name] = _MemFile(content)
        after._durable_names = dict(after._files)
        return after


def _dirty(file: _MemFile) -> tuple[int, int]:
    """[start, end): the bytes reads see that the last fsync did not make durable."""
    data, durable = file.data, file.durable
    common = min(len(data), len(durable))
    if data[:common] == durable[:common]:
        return common, len(data)
    lo, hi = 0, common  # the first difference, by halving
    while lo < hi:
        mid = (lo + hi) // 2
        if data[lo : mid + 1] == durable[lo : mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    if len(data) > len(durable):
        return lo, len(data)
    first, lo, hi = lo, lo + 1, common  # the end: the shortest suffix that matches
    while lo < hi:
        mid = (lo + hi) // 2
        if data[mid:common] == durable[mid:common]:
            hi = mid
        else:
            lo = mid + 1
    return first, lo
