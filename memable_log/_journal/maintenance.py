"""What compaction may do with a journal open for writing.

Theory of operation. Background compaction (_compaction/service.py) runs
inside the engine beside live appends. It needs a few things of the journal
that nothing else does, and this object is all of them, so the contract
between the two is in one place:

* ``between_commits()``: pause between slices of work on the event loop,
  at moments that delay no commit (pauses.py);
* ``wait_for_roll()`` and ``applied_segment``: when a segment has been
  sealed, and which segments are sealed *and* applied to the index (a
  commit in flight may have moved the writer on already);
* ``pending_instances()``: instances with records appended but not yet
  applied, which compaction must not drop;
* ``add_segment(name, salt)``: a compacted segment readers may now be
  pointed at (its salt seeds its checksums);
* ``new_epoch()`` / ``reads_before(epoch)``: when the files a compaction
  replaced are no longer read (epochs.py);
* ``keep_snapshot``: cleared while the live index does not match the files
  (no snapshot is written at close then); ``snapshots`` and
  ``scan_result``: how the journal was opened.
"""

from __future__ import annotations

from .._storage.segments import ScanResult
from .._storage.writer import SegmentWriter
from .epochs import ReadEpochs
from .pauses import Pauses
from .scheduler import CommitScheduler


class Maintenance:
    """The journal as compaction sees it. See the module comment."""

    __slots__ = (
        "_epochs", "_pauses", "_scheduler", "_writer", "keep_snapshot", "scan_result", "snapshots",
    )

    def __init__(
        self, scheduler: CommitScheduler, pauses: Pauses, epochs: ReadEpochs,
        writer: SegmentWriter, *, snapshots: bool,
    ) -> None:
        self._scheduler = scheduler
        self._pauses = pauses
        self._epochs = epochs
        self._writer = writer
        self.snapshots = snapshots  # loaded at open, written at a clean close
        self.scan_result: ScanResult | None = None  # set once open
        self.keep_snapshot = True  # cleared when the index may not match the files

    async def between_commits(self) -> None:
        """Return at a moment ~50 us of work on the event loop delays no commit."""
        await self._pauses.between_commits()

    async def wait_for_roll(self) -> None:
        """Return once the next segment roll-over is done."""
        await self._scheduler.wait_for_roll()

    @property
    def applied_segment(self) -> int:
        """The writer's segment as of the last batch applied to the index."""
        return self._scheduler.applied_segment

    def pending_instances(self) -> set[str]:
        """Instances with records appended but not yet applied to the index."""
        return self._scheduler.pending_instances()

    def add_segment(self, name: str, salt: int) -> None:
        """Readers may be pointed at segment ``name`` (salted ``salt``) now."""
        self._writer.salts[name] = salt

    def new_epoch(self) -> int:
        """Start a read epoch (the index was re-pointed); its number."""
        return self._epochs.new_epoch()

    async def reads_before(self, epoch: int) -> None:
        """Return once no read begun before ``epoch`` is in flight."""
        await self._epochs.reads_before(epoch)
