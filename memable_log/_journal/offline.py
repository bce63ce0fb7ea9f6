"""The journal opened for writing without an engine, synchronously, for tools.

``memable-signal`` (when no engine holds the journal) and ``memable-compact``
take the lock, rebuild the index with the same scan and ``apply`` as the
engine, and append through the same SegmentWriter: one write path.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import msgpack

from .._core.index import Index
from .._storage.files import Storage
from .._storage.segments import ScanResult, scan
from .._storage.writer import DEFAULT_SEGMENT_SIZE, SegmentWriter


class OfflineJournal:
    """``with OfflineJournal(storage) as j: j.append([...])``; raises JournalLocked."""

    def __init__(self, storage: Storage, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.storage = storage
        self.index = Index()
        self.writer = SegmentWriter(storage, segment_size)
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
            rec[1] = seq
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
        self.writer.close()
        self.storage.unlock()
