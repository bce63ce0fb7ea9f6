"""The journal open for writing: one appender task and group commit.

Theory of operation. ``Journal`` is an async context manager. Entering it
takes the lock, scans every segment (feeding each record to ``Index.apply``),
and makes recovery durable (see _writer.py), all on a worker thread; then it
starts the appender task in its own nursery.

``append(rec)`` gives the record the next sequence number, packs it, adds it
to the *open batch* and waits. The appender task loops: take the whole open
batch, hand it to ``SegmentWriter.commit`` on a worker thread (one write, one
fsync), then apply every record to the index, in order, and wake the batch's
waiters. Appends that arrive while a commit is in flight gather in the next
batch, so concurrent writers share fsyncs with no timer and no delay; a lone
writer pays one fsync per record. ``append`` returns only after the fsync
that covers its record, with the index already updated.

If a commit fails, that batch's waiters and every later append get
``JournalFailed``; the journal stays failed until it is reopened.
"""

from __future__ import annotations

import logging
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from . import _snapshot
from ._errors import JournalClosed, JournalCorrupt, JournalFailed
from ._format import segment_name
from ._index import Index
from ._reader import ScanResult, read_record_at, scan
from ._storage import Storage
from ._writer import DEFAULT_SEGMENT_SIZE, SegmentWriter

logger = logging.getLogger("memable_log")

if TYPE_CHECKING:
    import outcome


class _Batch:
    __slots__ = ("payloads", "records", "done", "error")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.records: list[list[Any]] = []
        self.done = trio.Event()
        self.error: str | None = None


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
        self.snapshots = snapshots  # load one at open; write one at a clean close
        self.resumed = False  # whether the open started from a snapshot
        self.index = index if index is not None else Index()
        self.writer = SegmentWriter(storage, segment_size)
        self.scan_result: ScanResult | None = None
        self.commits = 0  # batches committed
        # The seq the next append gets. Not derived from the writer, which
        # only counts a batch once its commit is done: appends that arrive
        # while a commit is in flight must not reuse its seqs.
        self._next_seq = 1
        self._batch = _Batch()
        self._committing: _Batch | None = None  # taken by the appender, not yet applied
        # The writer's segment as of the last batch applied to the index. A
        # commit in flight moves ``writer.segment`` on its worker thread
        # before its records reach the index: compaction must not count on them.
        self.applied_segment = 0
        # Reads in flight, by the epoch they began in. A compaction starts a
        # new epoch once the index points at its file, and deletes the files
        # it replaced only when no read begun before that is still running:
        # such a read may name one of them.
        self.epoch = 0
        self._reads: dict[int, int] = {}
        self._read_done = trio.Event()
        self._work = trio.Event()
        self._rolled = trio.Event()  # set (and replaced) when a segment is sealed
        self._error: str | None = None
        self._open = False
        self._closing = False
        self._nursery_cm: Any = None
        self._locked = False
        self.keep_snapshot = True  # cleared when the index may not match the files

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Journal:
        await self._run_io(self._open_sync)
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._appender)
        self._open = True
        return self

    def _open_sync(self) -> None:
        self.storage.lock()
        self._locked = True
        try:
            self.scan_result = self._scan()
            self.writer.recover(self.scan_result)
            self._next_seq = self.writer.next_seq
            self.applied_segment = self.writer.segment
        except BaseException:
            self.storage.unlock()
            self._locked = False
            raise

    def _scan(self) -> ScanResult:
        resume = _snapshot.load(self.storage, self.index) if self.snapshots else None
        if resume is not None:
            try:
                result = scan(self.storage, self.index.apply, resume)
                self.resumed = True
                return result
            except JournalCorrupt:
                # Damage after the snapshot's position is reported by the
                # full scan too; anything else was the snapshot's fault.
                self.index.instances = {}
                self.index.records = 0
        return scan(self.storage, self.index.apply)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closing = True
        self._work.set()
        try:
            # The body's exception propagates by itself, unwrapped; the
            # nursery reports only failures of the appender task.
            await self._nursery_cm.__aexit__(None, None, None)
            if self.snapshots and self._error is None and self.keep_snapshot:
                try:
                    await self._run_io(self._write_snapshot)
                except OSError as exc:  # a snapshot only speeds up the next start
                    logger.warning("index snapshot not written: %s", exc)
            return None
        finally:
            self._open = False
            self.writer.close()
            if self._locked:
                self.storage.unlock()
                self._locked = False

    async def _run_io(self, fn: Any, *args: Any) -> Any:
        if self.storage.blocking:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    # -- appending ----------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def failed(self) -> str | None:
        """Why the journal refuses writes, or None."""
        return self._error

    async def append(self, rec: list[Any]) -> int:
        """Durably append a record (see _records.make); return its seq."""
        await self.append_many([rec])
        return int(rec[1])

    async def append_many(self, recs: list[list[Any]]) -> None:
        """Durably append records, in order, in one batch."""
        if self._error is not None:
            raise JournalFailed(self._error)
        if not self._open or self._closing:
            raise JournalClosed("the journal is closed; open it to append")
        batch = self._batch
        seq = self.next_seq
        payloads = []
        for rec in recs:
            rec[1] = seq
            payloads.append(msgpack.packb(rec))
            seq += 1
        self._next_seq = seq
        batch.payloads += payloads
        batch.records += recs
        self._work.set()
        await batch.done.wait()
        if batch.error is not None:
            raise JournalFailed(batch.error)

    async def _appender(self) -> None:
        while True:
            batch = self._batch
            if not batch.payloads:
                if self._closing:
                    return
                await self._work.wait()
                self._work = trio.Event()
                continue
            self._batch, self._committing = _Batch(), batch
            segment = self.writer.segment
            try:
                locs = await self._commit(batch.payloads)
            except JournalFailed as exc:
                self._fail(batch, exc.reason)
                return
            self.commits += 1
            if self.writer.segment != segment:
                rolled, self._rolled = self._rolled, trio.Event()
                rolled.set()
            apply = self.index.apply
            for rec, loc in zip(batch.records, locs, strict=False):
                apply(rec, loc)
            self.applied_segment = self.writer.segment
            self._committing = None
            batch.done.set()

    async def _commit(self, payloads: list[bytes]) -> list[int]:
        """``writer.commit`` on a worker thread; uncancellable while it runs.

        Like ``trio.to_thread.run_sync`` without its limiter and messaging,
        which add ~60 us to each hand-off: a lone writer pays the hand-off on
        every append (bench/bench_journal.py: ~1.35x the appends/s).
        """
        if not self.storage.blocking:
            return await self._run_io(self.writer.commit, payloads)  # type: ignore[no-any-return]
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[list[int]]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(partial(self.writer.commit, payloads), deliver)
        return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
            lambda _: trio.lowlevel.Abort.FAILED
        )

    def _fail(self, batch: _Batch, reason: str) -> None:
        self._error = reason
        for failed in (batch, self._batch):
            failed.error = reason
            failed.done.set()

    def pending_instances(self) -> set[str]:
        """Instances with records appended but not yet applied to the index."""
        batches = [self._batch] if self._committing is None else [self._batch, self._committing]
        return {rec[3] for batch in batches for rec in batch.records}

    async def wait_for_roll(self) -> None:
        """Return once the next segment roll-over is done."""
        await self._rolled.wait()

    def _write_snapshot(self) -> None:
        writer = self.writer
        position = (segment_name(writer.segment), writer.size, writer.next_seq, self.index.records)
        segments = _snapshot.current_segments(self.storage, writer.salts, writer.size)
        _snapshot.write(self.storage, _snapshot.encode(self.index, position, segments))

    # -- reading ------------------------------------------------------------

    async def read(self, loc: int) -> list[Any]:
        """The record at a packed location (as kept by the index)."""
        salts = self.writer.salts
        epoch = self.epoch
        self._reads[epoch] = self._reads.get(epoch, 0) + 1
        try:
            return await self._run_io(read_record_at, self.storage, salts, loc)  # type: ignore[no-any-return]
        finally:
            self._reads[epoch] -= 1
            if not self._reads[epoch]:
                del self._reads[epoch]
            done, self._read_done = self._read_done, trio.Event()
            done.set()

    def new_epoch(self) -> int:
        """Start a read epoch (the index was re-pointed); its number."""
        self.epoch += 1
        return self.epoch

    async def reads_before(self, epoch: int) -> None:
        """Return once no read begun before ``epoch`` is in flight."""
        while any(begun < epoch for begun in self._reads):
            await self._read_done.wait()
