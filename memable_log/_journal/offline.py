"""The journal without an engine's appender: opened for writing, or read unlocked.

Theory of operation. ``memable_log.operations`` (which the tools call)
acts on a journal from outside any engine. When no engine holds the
journal, ``OfflineJournal`` takes the lock, rebuilds the index with the
same scan and ``apply`` as the engine, and appends through the same
SegmentWriter: one write path. When an engine holds it, ``read_index``
rebuilds the same index without the lock, to check a request read-only
before it is handed over; it writes nothing and never blocks the engine.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import msgpack

from .._core import records as r
from .._core.index import Index
from .._storage.files import Storage
from .._storage.segments import ScanResult, scan
from .._storage.writer import DEFAULT_SEGMENT_SIZE, SegmentWriter

READ_ATTEMPTS = 10  # unlocked reads retried when a compaction deletes a file mid-read


class OfflineJournal:
    """``with OfflineJournal(storage) as j: j.append([...])``; raises JournalLocked."""

    def __init__(self, storage: Storage, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.storage = storage
        self.index = Index()
        # A few commits, then close: appending costs less than zero-filling
        # 1 MiB ahead and cutting it again (writer.py, preallocation).
        self.writer = SegmentWriter(storage, segment_size, preallocate=False)
        self.scan_result = ScanResult()

    def __enter__(self) -> OfflineJournal:
        self.storage.lock()
        try:
            self.scan_result = scan(self.storage, self.index.apply)
            self.writer.recover(self.scan_result)
        except BaseException:
            self.storage.unlock()
            raise
        return self

    def append(self, recs: list[list[Any]]) -> None:
        """Durably append records (one write, one fsync) and apply them."""
        seq = self.writer.next_seq
        for rec in recs:
            rec[r.SEQ] = seq
            seq += 1
        locs = self.writer.commit([msgpack.packb(rec) for rec in recs])
        for rec, loc in zip(recs, locs, strict=True):
            self.index.apply(rec, loc)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.writer.close()
        finally:
            self.storage.unlock()


def read_index(storage: Storage, attempts: int = READ_ATTEMPTS) -> Index:
    """The journal's index, read without the lock (an engine may hold it).

    The engine's compaction deletes the segments it replaced, so a file
    listed a moment ago can be gone when it is read: read again, from the
    new listing, up to ``attempts`` times; the last FileNotFoundError
    propagates. Raises JournalCorrupt for damage, as the engine would.
    """
    for _ in range(attempts - 1):
        index = Index()
        try:
            scan(storage, index.apply)
            return index
        except FileNotFoundError:
            continue
    index = Index()
    scan(storage, index.apply)
    return index
