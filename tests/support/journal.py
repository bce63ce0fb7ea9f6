"""Small helpers shared by the journal tests: make records, write, read back.

Keep them generic: each one does one obvious thing with the public seams
(Journal, Storage, _reader.scan), so a failing test reads like the journal's
own behaviour, not like the helper's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memable_log._core import records as r
from memable_log._core.index import unpack_loc
from memable_log._journal.journal import Journal
from memable_log._storage.files import Storage
from memable_log._storage.memory import MemoryStorage, _Fault
from memable_log._storage.segments import scan
from memable_log._storage.writer import DEFAULT_SEGMENT_SIZE


def rec(n: int, size: int = 16) -> list[Any]:
    """Record number ``n``: a CREATED record of its own instance.

    Each record creates a new instance, so any subset of a prefix of them
    replays into an index without lifecycle errors.
    """
    return r.make(r.CREATED, 1_000 + n, f"inst-{n}", "wf", bytes([n % 256]) * size)


async def write_records(
    storage: Storage,
    n: int,
    *,
    start: int = 0,
    size: int = 16,
    batch: int = 1,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> list[list[Any]]:
    """Open a journal on ``storage``, append records ``start..start+n-1`` and close.

    ``batch`` records go into each commit (append_many). Returns the records
    as appended (with their sequence numbers set), all acknowledged.
    """
    written: list[list[Any]] = []
    async with Journal(storage, segment_size=segment_size) as journal:
        for first in range(start, start + n, batch):
            recs = [rec(i, size) for i in range(first, min(first + batch, start + n))]
            await journal.append_many(recs)
            written += recs
    return written


def read_all(storage: Storage) -> list[list[Any]]:
    """Every record of the journal in order, via the reader (no lock taken)."""
    out: list[list[Any]] = []
    scan(storage, lambda record, loc: out.append(record))
    return out


def read_locs(storage: Storage) -> list[tuple[int, int]]:
    """(segment, offset) of every record's frame, in order."""
    out: list[tuple[int, int]] = []
    scan(storage, lambda record, loc: out.append(unpack_loc(loc)))
    return out


def files_of(storage: MemoryStorage) -> dict[str, bytes]:
    """A copy of every file's visible bytes."""
    return {name: storage.read(name) for name in storage.list()}


def storage_from(files: dict[str, bytes]) -> MemoryStorage:
    """A MemoryStorage holding ``files``, all durable (written, fsynced, dir fsynced)."""
    storage = MemoryStorage()
    for name, data in files.items():
        handle = storage.create(name)
        if data:
            handle.write(data)
        handle.sync()
        handle.close()
    storage.sync_dir()
    return storage


class ThreadedMemory(MemoryStorage):
    """A MemoryStorage the journal treats as blocking, so commits run on its
    commit thread; ``before_sync`` runs on that thread before each fsync."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.before_sync: Callable[[], None] = lambda: None

    def _op(self, op: str) -> _Fault | None:
        if op == "sync":
            self.before_sync()
        return super()._op(op)
