"""The journal open for writing: a facade over its parts.

Theory of operation. ``Journal`` is an async context manager. Entering it
opens the journal (opening.py: lock, scan into the index, make recovery
durable; on a worker thread for a directory), picks a commit executor
(executors.py: a commit thread of its own for storage that blocks, commits
inline on the event loop for MemoryStorage) and starts the commit
scheduler's reaper task in the journal's own nursery. Leaving it stops
taking appends, lets the reaper drain what was accepted, writes the index
snapshot after a clean run, and releases the lock.

The parts, one job each:

* scheduler.py: group commit. ``append``/``append_many`` go there; the same
  scheduler drives both executors, so tests on MemoryStorage (and the
  crash-test kit) exercise the scheduler a directory uses;
* executors.py: where a batch's write + fsync runs;
* opening.py: open and recovery, and the snapshot written at close;
* epochs.py: reads in flight by epoch (``read`` counts itself there);
* pauses.py: ``between_commits``, background work's pause;
* maintenance.py: ``journal.maintenance``, everything compaction may do
  with a journal, in one named object.

The compaction hooks are also reachable on the journal itself under their
old names (``between_commits``, ``pending_instances``, ``wait_for_roll``,
``applied_segment``, ``new_epoch``, ``reads_before``, ``keep_snapshot``)
until callers use ``journal.maintenance``.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import trio

from .._core.index import Index
from .._core.records import SEQ
from .._storage.files import Storage
from .._storage.segments import ScanResult, read_records_at
from .._storage.writer import DEFAULT_SEGMENT_SIZE, SegmentWriter
from .epochs import ReadEpochs
from .executors import CommitThread, InlineCommit
from .maintenance import Maintenance
from .opening import open_journal, write_snapshot
from .pauses import Pauses
from .scheduler import CommitScheduler

logger = logging.getLogger("memable_log")


class Journal:
    """An append-only journal with group commit. See the module comment."""

    def __init__(
        self,
        storage: Storage,
        index: Index | None = None,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        snapshots: bool = False,
    ) -> None:
        self.storage = storage
        self.index = index if index is not None else Index()
        self.writer = SegmentWriter(storage, segment_size)
        self.resumed = False  # whether the open started from a snapshot
        self._scheduler = CommitScheduler(self.writer, self.index)
        self._pauses = Pauses(self._scheduler)
        self._epochs = ReadEpochs()
        self.maintenance = Maintenance(
            self._scheduler, self._pauses, self._epochs, self.writer, snapshots=snapshots
        )
        self._executor: CommitThread | InlineCommit | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._locked = False

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Journal:
        opened = await self._run_io(
            open_journal, self.storage, self.index, self.writer, self.snapshots
        )
        self._locked = True
        self.maintenance.scan_result, self.resumed = opened
        try:
            if self.storage.blocking:
                self._executor = CommitThread(self.writer.commit, self._pauses.commit_ends)
                self._pauses.use_thread()
                self.writer.before_sync = self._pauses.fsync_begins
            else:
                self._executor = InlineCommit(self.writer.commit)
            self._nursery_cm = trio.open_nursery()
            self._nursery = nursery = await self._nursery_cm.__aenter__()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._release()
            raise
        nursery.start_soon(self._scheduler.run)
        self._scheduler.open(self._executor)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._scheduler.accepting = False
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()  # the reaper drains what is in flight
        try:
            # The body's exception propagates by itself, unwrapped; the
            # nursery reports only failures of the reaper (or a commit on
            # the event loop, which the reaper raises).
            await self._nursery_cm.__aexit__(None, None, None)
            if self.snapshots and self.failed is None and self.maintenance.keep_snapshot:
                try:
                    await self._run_io(write_snapshot, self.storage, self.index, self.writer)
                except OSError as exc:  # a snapshot only speeds up the next start
                    logger.warning("index snapshot not written: %s", exc)
            return None
        finally:
            self._pauses.close()  # nothing is in flight now
            with trio.CancelScope(shield=True):
                try:
                    if self._scheduler.busy:
                        # The reaper died: never close under a commit, nor strand an append.
                        await self._scheduler.drain()
                finally:
                    await self._release()

    async def _release(self) -> None:
        """Stop the executor, close the writer, unlock (whatever got that far)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await executor.aclose()
        try:
            await self._run_io(self.writer.close)  # it cuts the zero tail: I/O
        finally:
            if self._locked:
                self.storage.unlock()
                self._locked = False

    async def _run_io(self, fn: Any, *args: Any) -> Any:
        if self.storage.blocking:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    # -- appending ----------------------------------------------------------

    async def append(self, rec: list[Any]) -> int:
        """Durably append a record (see records.make); return its seq."""
        await self.append_many([rec])
        return int(rec[SEQ])

    def append_many(self, recs: list[list[Any]]) -> Coroutine[Any, Any, None]:
        """Durably append records, in order, in one batch.

        The scheduler's coroutine itself, for the caller to await: a
        coroutine level of ours would cost each step's append ~2k
        instructions (docs/performance.md, "CPU per step")."""
        return self._scheduler.append_many(recs)

    @property
    def next_seq(self) -> int:
        """The seq the next append gets."""
        return self._scheduler.next_seq

    @property
    def failed(self) -> str | None:
        """Why the journal refuses writes, or None."""
        return self._scheduler.failed

    @property
    def commit_in_flight(self) -> bool:
        """Whether a batch is submitted and not yet applied (or failed)."""
        return self._scheduler.committing is not None

    @property
    def commits(self) -> int:
        """Batches committed since the journal was opened."""
        return self._scheduler.commits

    # -- reading ------------------------------------------------------------

    async def flushed(self, instance_id: str) -> None:
        """Return once no record of ``instance_id`` is still to be committed."""
        await self._scheduler.flushed(instance_id)

    async def read(self, loc: int) -> list[Any]:
        """The record at a packed location (as kept by the index)."""
        return (await self.read_many([loc]))[0]

    async def read_many(self, locs: list[int]) -> list[list[Any]]:
        """The records at ``locs``, in their order, in one trip to the worker thread."""
        salts = self.writer.salts
        epoch = self._epochs.begin()
        try:
            return await self._run_io(read_records_at, self.storage, salts, locs)  # type: ignore[no-any-return]
        finally:
            self._epochs.end(epoch)

    # -- how it was opened --------------------------------------------------

    @property
    def snapshots(self) -> bool:
        """Whether a snapshot is loaded at open and written at a clean close."""
        return self.maintenance.snapshots

    @property
    def scan_result(self) -> ScanResult | None:
        """What the open's scan found (None before the journal is open)."""
        return self.maintenance.scan_result
