"""The journal open for writing: group commit on a dedicated commit thread.

Theory of operation. ``Journal`` is an async context manager. Entering it
takes the lock, scans every segment (feeding each record to ``Index.apply``),
and makes recovery durable (see _writer.py), all on a worker thread; then it
starts its commit thread and, in its own nursery, the reaper task.

``append(rec)`` gives the record the next sequence number, packs it and adds
it to the *open batch*. The commit thread (one per journal, for its whole
life) runs ``SegmentWriter.commit`` on a batch (one write, one fsync) and
reports back through a pipe; whoever waits on that pipe applies every
record of the batch to the index, in order, wakes the batch's waiters and
hands the next open batch, if any, to the thread. Appends that arrive while
a commit is in flight gather in the next batch, so concurrent writers share
fsyncs with no timer and no delay; a lone writer pays one fsync per record.
``append`` returns only after the fsync that covers its record, with the
index already updated. The event loop never waits for the disk.

Who hands over and who waits:

* An append that finds no commit in flight sends the open batch (just its
  own records) to the thread itself and waits on the pipe itself: it is
  the *leader*. A lone writer's append thus wakes no other task.
* The *reaper* task waits on the pipe for every other commit: the batches
  sent on completion of the one before, and a leader's commit once the
  leader is cancelled. Trio lets one task at a time wait on a descriptor,
  so the reaper waits only while no leader does (``_duty`` wakes it).
* After a batch with several waiters they all append again in the next
  scheduler pass. The first of them must not send a batch of one (the group
  would split into two half batches for good): while ``_gathering``, appends
  only wake the reaper, which sends a pass later, with all of them in.

Why a thread of our own, woken through pipes (bench/bench_engine.py (a)): a
lone writer pays the trip to the thread and back on every append. A thread
parked on a pipe read wakes sooner than one parked on a lock (trio's thread
cache), and a task waiting on a pipe is woken by the event loop directly,
where ``run_sync_soon`` goes through trio's entry-queue task, one scheduler
pass more. Measured here, the trip costs about 100 us less per append.

Background work on the event loop (compaction's share) runs in short
slices and pauses between them in ``between_commits``, which returns only
at moments a slice delays no commit: while the commit in flight is in its
fsync (the commit thread holds no GIL then; the writer's ``before_sync``
hook marks it and tells the loop), or when the loop is about to wait with
no commit in flight (``_IdleWatch``).

Storage that does not block (MemoryStorage) has no thread: an appender task
commits on the event loop instead, so a simulated power cut (PowerCut,
raised inside a commit) surfaces from the journal's nursery.

An append cancelled while it waits raises Cancelled at once; its record may
still be committed. A commit in flight is never abandoned: closing (or a
cancelled reaper) waits for it, since the segment file must not close under
it.

If a commit fails, that batch's waiters and every later append get
``JournalFailed``; the journal stays failed until it is reopened.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgpack
import trio

from .._core.errors import JournalClosed, JournalCorrupt, JournalFailed
from .._core.format import segment_name
from .._core.index import Index
from .._storage import snapshot as _snapshot
from .._storage.files import Storage
from .._storage.segments import ScanResult, read_record_at, scan
from .._storage.writer import DEFAULT_SEGMENT_SIZE, SegmentWriter

logger = logging.getLogger("memable_log")


class _Batch:
    __slots__ = ("done", "error", "payloads", "records", "waiters")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.records: list[list[Any]] = []
        self.waiters = 0  # append calls waiting for it
        self.done = trio.Event()
        self.error: str | None = None


class _CommitThread:
    """A long-lived thread that runs one commit at a time, handed over by pipes.

    ``submit`` puts the payloads in a slot and writes a byte to the wake
    pipe; the thread, parked reading it, runs ``commit`` and writes a byte to
    the done pipe, which the event loop waits on (``done_fd``); ``result``
    then returns the locations or raises the commit's error. The journal
    submits the next commit only after taking the last one's result.
    ``stop`` closes the wake pipe: the thread reads end-of-file and ends.
    """

    __slots__ = ("_commit", "_error", "_job", "_result", "_wake_w", "done_fd", "thread")

    def __init__(self, commit: Callable[[list[bytes]], list[int]]) -> None:
        self._commit = commit
        self._job: list[bytes] = []
        self._result: list[int] = []
        self._error: BaseException | None = None
        wake_r, self._wake_w = os.pipe()
        self.done_fd, done_w = os.pipe()
        os.set_blocking(self.done_fd, False)
        thread = threading.Thread(
            target=self._run, args=(wake_r, done_w), name="memable_log commit", daemon=True
        )
        self.thread = thread
        try:
            thread.start()
        except BaseException:
            for fd in (wake_r, self._wake_w, self.done_fd, done_w):
                os.close(fd)
            raise

    def _run(self, wake_r: int, done_w: int) -> None:
        # The thread owns (and closes) its pipe ends: a descriptor closed
        # under a blocked read could be reused for another file.
        try:
            while os.read(wake_r, 1):
                try:
                    self._result = self._commit(self._job)
                except BaseException as exc:  # handed to the event loop, raised there
                    self._error = exc
                self._job = []
                os.write(done_w, b"\0")
        finally:
            os.close(wake_r)
            os.close(done_w)

    def submit(self, payloads: list[bytes]) -> None:
        self._job = payloads
        os.write(self._wake_w, b"\0")

    def result(self) -> list[int]:
        """Once ``done_fd`` is readable: the commit's locations, or its error."""
        os.read(self.done_fd, 1)
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    def stop(self) -> None:
        """End the thread (no commit may be in flight)."""
        os.close(self._wake_w)
        os.close(self.done_fd)


class _IdleWatch(trio.abc.Instrument):
    """Wakes a task in ``Journal.between_commits`` once the event loop is
    about to wait for I/O with no commit in flight: the commit it waited on
    ended and nobody sent another (a steady writer sends the next at once,
    and the task sleeps on until that one's fsync begins). A hook the run
    loop calls anyway, so a steady writer's commits are not interrupted by
    an extra task step just as the thread frames the next batch.
    """

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def before_io_wait(self, timeout: float) -> None:
        journal = self._journal
        if (
            journal._quiet is not None and journal._committing is None
            and not journal._idle_asked and journal._token is not None
        ):
            journal._idle_asked = True
            journal._token.run_sync_soon(journal._idle_or_not)  # wakes the loop, too


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
        # One Packer for the journal's life (used on the event loop only):
        # ``msgpack.packb`` builds a new one per call, twice the cost.
        self._pack = msgpack.Packer().pack
        self._batch = _Batch()
        self._committing: _Batch | None = None  # being committed, not yet applied
        self._thread: _CommitThread | None = None  # None: commits on the event loop
        self._segment_before = 0  # the writer's segment when the commit in flight began
        # Who waits for the thread's result: the appending task that sent the
        # commit (the leader), else the reaper task, woken by ``_duty``. Never
        # both: trio allows one task per descriptor.
        self._leader = False
        self._duty = trio.Event()
        self._draining = False
        # The last batch had several waiters: appends leave the sending to
        # the reaper (see the module comment).
        self._gathering = False
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
        # Background work waiting for a quiet moment (between_commits): set
        # as the commit in flight begins its fsync, or once the event loop is
        # about to wait with no commit in flight (_IdleWatch).
        self._quiet: trio.Event | None = None
        # Set on the commit thread while it is in a batch's fsync (and just
        # after); the batch that last gave between_commits its moment.
        self._in_fsync = False
        self._sliced: _Batch | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._idle_watch: _IdleWatch | None = None  # installed by between_commits
        self._idle_asked = False
        self._error: str | None = None
        self._open = False
        self._closing = False
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._locked = False
        self.keep_snapshot = True  # cleared when the index may not match the files

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Journal:
        await self._run_io(self._open_sync)
        if self.storage.blocking:
            try:
                self._thread = _CommitThread(self._commit_on_thread)
                self._token = trio.lowlevel.current_trio_token()
                self.writer.before_sync = self._syncing
            except BaseException:
                self.writer.close()
                self.storage.unlock()
                self._locked = False
                raise
        self._nursery_cm = trio.open_nursery()
        self._nursery = nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._appender if self._thread is None else self._reaper)
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
        if self._thread is None:
            self._work.set()
        else:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()  # the reaper drains what is in flight
        try:
            # The body's exception propagates by itself, unwrapped; the
            # nursery reports only failures of the appender or reaper task.
            await self._nursery_cm.__aexit__(None, None, None)
            if self.snapshots and self._error is None and self.keep_snapshot:
                try:
                    await self._run_io(self._write_snapshot)
                except OSError as exc:  # a snapshot only speeds up the next start
                    logger.warning("index snapshot not written: %s", exc)
            return None
        finally:
            self._open = False
            if self._idle_watch is not None:
                trio.lowlevel.remove_instrument(self._idle_watch)
                self._idle_watch = None
            self._wake_quiet()  # nothing is in flight now
            if self._thread is not None:
                if self._committing is not None or self._batch.payloads:
                    # The reaper died: never close under a commit, nor strand an append.
                    with trio.CancelScope(shield=True):
                        await self._drain()
                self._thread.stop()
                with trio.CancelScope(shield=True):  # no thread outlives the journal
                    await trio.to_thread.run_sync(self._thread.thread.join)
                self._thread = None
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
        pack = self._pack
        for rec in recs:
            rec[1] = seq
            payloads.append(pack(rec))
            seq += 1
        self._next_seq = seq
        batch.payloads += payloads
        batch.records += recs
        batch.waiters += 1
        if self._committing is None:
            if self._thread is None:
                self._work.set()
            elif not self._gathering:
                self._send()  # straight to the thread: no task to wake first
                await self._lead()
                if batch.error is not None:
                    raise JournalFailed(batch.error)
                return
            else:
                self._duty.set()
        await batch.done.wait()
        if batch.error is not None:
            raise JournalFailed(batch.error)

    def _send(self) -> None:
        """Hand the open batch to the commit thread (none may be in flight)."""
        assert self._thread is not None
        batch, self._batch = self._batch, _Batch()
        self._committing = batch
        self._segment_before = self.writer.segment
        self._thread.submit(batch.payloads)

    async def _lead(self) -> None:
        """Wait for the commit we sent and reap it ourselves.

        Saves waking the reaper task and then us: a lone writer's append
        resumes in the scheduler pass that sees the commit done. If we are
        cancelled while waiting, the reaper takes the commit over.
        """
        assert self._thread is not None
        self._leader = True
        try:
            await trio.lowlevel.wait_readable(self._thread.done_fd)
            self._reap()
        finally:
            self._leader = False
            if self._committing is not None or self._draining:
                self._duty.set()  # a commit (the next batch, or ours) needs the reaper

    async def _reaper(self) -> None:
        """Send gathered batches; reap the commits no leader waits for."""
        try:
            while True:
                await self._duty.wait()
                self._duty = trio.Event()
                if self._committing is None and self._batch.payloads and self._error is None:
                    # Gathered appends. Whatever woke us (maybe a stale set),
                    # we may run in the very pass where the waiters of the
                    # last batch append again: send one pass later, with all
                    # of them in.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if self._committing is None and self._batch.payloads and self._error is None:
                        self._send()
                while self._committing is not None and not self._leader:
                    await self._reap_next()
        except trio.Cancelled:
            # Closing, or cancelled from outside: finish what is in flight.
            with trio.CancelScope(shield=True):
                await self._drain()
            raise

    async def _drain(self) -> None:
        """Return once no commit is in flight (batches already accepted included)."""
        self._draining = True
        try:
            while True:
                if self._committing is None:
                    if not self._batch.payloads or self._error is not None:
                        return
                    self._send()  # gathered, not sent yet
                if self._leader:
                    self._duty = trio.Event()
                    await self._duty.wait()  # set as the leader lets go
                else:
                    await self._reap_next()
        finally:
            self._draining = False

    async def _reap_next(self) -> None:
        assert self._thread is not None
        await trio.lowlevel.wait_readable(self._thread.done_fd)
        self._reap()

    def _reap(self) -> None:
        assert self._thread is not None
        batch = self._committing
        assert batch is not None
        try:
            locs = self._thread.result()
        except JournalFailed as exc:
            self._fail(batch, exc.reason)
            return
        except BaseException as exc:  # not an OSError (the writer turns those into JournalFailed)
            self._fail(batch, f"commit failed: {exc!r}")
            raise
        self._applied(batch, locs, self._segment_before)
        if self._batch.payloads and self._error is None:
            if batch.waiters > 1:
                # Its waiters append again in the next pass: send what is
                # open with theirs (the reaper will), or a lone early append
                # splits the group into two half batches for good.
                self._duty.set()
            else:
                self._send()

    def _applied(self, batch: _Batch, locs: list[int], segment_before: int) -> None:
        """A batch is durable: apply its records to the index, wake its waiters."""
        self.commits += 1
        if self.writer.segment != segment_before:
            rolled, self._rolled = self._rolled, trio.Event()
            rolled.set()
        apply = self.index.apply
        for rec, loc in zip(batch.records, locs, strict=False):
            apply(rec, loc)
        self.applied_segment = self.writer.segment
        self._committing = None
        self._gathering = batch.waiters > 1
        batch.done.set()

    async def _appender(self) -> None:
        """Commits on the event loop, for storage that does not block."""
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
                await trio.lowlevel.checkpoint()
                locs = self.writer.commit(batch.payloads)
            except JournalFailed as exc:
                self._fail(batch, exc.reason)
                return
            except BaseException as exc:
                # A simulated power cut, or the journal's nursery cancelled:
                # nothing will commit this batch, so nobody may wait for it
                # (a shielded wait in between_commits would never end).
                self._fail(batch, f"commit failed: {exc!r}")
                raise
            self._applied(batch, locs, segment)

    def _fail(self, batch: _Batch, reason: str) -> None:
        """The commit of ``batch`` failed: it and every later append fail."""
        self._committing = None
        self._error = reason
        for failed in (batch, self._batch):
            failed.error = reason
            failed.done.set()

    async def between_commits(self) -> None:
        """Return at a moment when a short stretch of work on the event loop
        (~50 us: compaction's share) delays no commit.

        That is when no commit is in flight, or while one is in its fsync:
        the commit thread then needs the GIL only once the fsync returns, so
        a slice shorter than an fsync costs it nothing. Work that ran instead
        as a commit is handed over holds the GIL the commit thread needs to
        frame and write its batch (measured: 160 us more per commit). One
        return per fsync, so slices do not run on past it; a steady writer
        thus gives one slice per commit and never starves the work. Commits
        on the event loop (no thread) are simply waited for.
        """
        # No checkpoint first while a commit is in flight: a task step run as
        # its waiters send the next batch holds the GIL its thread needs.
        while (batch := self._committing) is not None:
            if self._thread is None:
                await batch.done.wait()
                return
            if self._in_fsync and self._sliced is not batch:
                self._sliced = batch
                return
            if self._quiet is None:
                self._quiet = trio.Event()
            if self._idle_watch is None:
                self._idle_watch = _IdleWatch(self)
                trio.lowlevel.add_instrument(self._idle_watch)
            await self._quiet.wait()  # an fsync began, or the loop is idle
        await trio.lowlevel.checkpoint()

    def _commit_on_thread(self, payloads: list[bytes]) -> list[int]:
        try:
            return self.writer.commit(payloads)
        finally:
            self._in_fsync = False

    def _syncing(self) -> None:
        """On the commit thread, as an fsync begins (SegmentWriter.before_sync)."""
        self._in_fsync = True
        if self._quiet is not None and self._token is not None:
            self._token.run_sync_soon(self._wake_quiet)

    def _idle_or_not(self) -> None:
        self._idle_asked = False
        if self._committing is None:
            self._wake_quiet()

    def _wake_quiet(self) -> None:
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.set()

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
