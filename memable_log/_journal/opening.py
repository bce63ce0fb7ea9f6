"""Opening a journal for writing: lock, scan, recover; and the clean-close snapshot.

Theory of operation. ``open_journal`` runs synchronously (on a worker thread
for a directory): it takes the storage's lock, rebuilds the index by
feeding every record to ``Index.apply``, and makes recovery's decisions
durable with ``SegmentWriter.recover`` (see writer.py) before anything new
is written. With snapshots on, the scan starts from the index snapshot
(snapshot.py) and reads only the records after its position; if that
resumed scan finds the journal corrupt, the snapshot is dropped and the
full scan decides: damage after the snapshot's position is reported by the
full scan too, anything else was the snapshot's fault. On any failure the
lock is released again.

``write_snapshot`` writes the index snapshot at a clean close, so the next
open can resume from it.
"""

from __future__ import annotations

from typing import NamedTuple

from .._core.errors import JournalCorrupt
from .._core.format import segment_name
from .._core.index import Index
from .._storage import snapshot as _snapshot
from .._storage.files import Storage
from .._storage.segments import ScanResult, scan
from .._storage.writer import SegmentWriter


class Opened(NamedTuple):
    scan_result: ScanResult
    resumed: bool  # the scan started from a snapshot


def open_journal(
    storage: Storage, index: Index, writer: SegmentWriter, snapshots: bool
) -> Opened:
    """Lock, scan into ``index``, recover ``writer``. Raises JournalLocked,
    JournalCorrupt, JournalFailed (recovery's I/O failed); unlocked then."""
    storage.lock()
    try:
        opened = _scan(storage, index, snapshots)
        writer.recover(opened.scan_result)
        return opened
    except BaseException:
        storage.unlock()
        raise


def _scan(storage: Storage, index: Index, snapshots: bool) -> Opened:
    resume = _snapshot.load(storage, index) if snapshots else None
    if resume is not None:
        try:
            return Opened(scan(storage, index.apply, resume), resumed=True)
        except JournalCorrupt:
            index.instances = {}
            index.records = 0
    return Opened(scan(storage, index.apply), resumed=False)


def write_snapshot(storage: Storage, index: Index, writer: SegmentWriter) -> None:
    """Write the index snapshot as of the writer's position (all committed)."""
    position = (segment_name(writer.segment), writer.size, writer.next_seq, index.records)
    segments = _snapshot.current_segments(storage, writer.salts, writer.size)
    _snapshot.write(storage, _snapshot.encode(index, position, segments))
