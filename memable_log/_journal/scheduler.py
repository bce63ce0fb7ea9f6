"""Group commit: which batch is committed next, and who waits for it.

Theory of operation. ``append_many(recs)`` gives each record the next
sequence number, packs it and adds it to the *open batch*. An executor
(executors.py: a commit thread for a directory, inline on the event loop
for MemoryStorage) commits one batch at a time: one write, one fsync.
Whoever takes a commit's result applies every record of the batch to the
index, in order, wakes the batch's waiters and submits the next open batch,
if any. Appends that arrive while a commit is in flight gather in the next
batch, so concurrent writers share fsyncs with no timer and no delay; a
lone writer pays one fsync per record. ``append_many`` returns only after
the fsync that covers its records, with the index already updated.

Who submits and who waits (the same for every executor):

* An append that finds no commit in flight submits the open batch (just its
  own records) and waits for the result itself: it is the *leader*. A lone
  writer's append thus wakes no other task.
* The *reaper* task (``run``, in the journal's nursery) waits for every
  other commit: the batches submitted on completion of the one before, and
  a leader's commit once the leader is cancelled. One waiter at a time
  (trio lets one task wait on a descriptor; inline, the waiter runs the
  commit): the reaper waits only while no leader does (``_duty`` wakes it).
* After a batch with several waiters they all append again in the next
  scheduler pass. The first of them must not submit a batch of one (the
  group would split into two half batches for good): while ``_gathering``,
  appends only wake the reaper, which submits a pass later, with all in.

An append cancelled while it waits raises Cancelled at once; its record may
still be committed. A commit in flight is never abandoned: a cancelled
reaper (the journal closing) drains what was accepted first, since the
segment file must not close under a commit.

If a commit fails, that batch's waiters and every later append get
``JournalFailed``; the journal stays failed until it is reopened. A commit
that dies of anything but JournalFailed (a simulated power cut, a bug)
fails the same way, and the exception is raised from the reaper, so it
surfaces from the journal's nursery whichever task ran the commit; the
appends' JournalFailed then has it as its ``__cause__``, so whoever logs
the failure can tell a simulated power cut (``PowerCut``) from a disk's.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack
import trio

from .._core.errors import JournalClosed, JournalFailed
from .._core.index import Index
from .._core.records import INSTANCE, SEQ
from .._storage.writer import SegmentWriter


class Executor(Protocol):
    """Runs one commit at a time (see executors.py)."""

    def submit(self, payloads: list[bytes]) -> None: ...

    async def ready(self) -> None: ...

    def result(self) -> list[int]: ...


class Batch:
    """Records committed together; ``done`` is set once applied or failed."""

    __slots__ = ("_ids", "_seen", "done", "error", "payloads", "records", "waiters")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.records: list[list[Any]] = []
        self.waiters = 0  # append calls waiting for it
        self.done = trio.Event()
        self.error: str | None = None
        # The instances of records[:_seen], built at the first ``holds``:
        # every invoke and every run asks, and a scan per question made
        # many instances at once quadratic (each batch holds theirs all).
        self._ids: set[str] = set()
        self._seen = 0

    def holds(self, instance_id: str) -> bool:
        """Whether a record of ``instance_id`` is in the batch (each record
        is looked at once, however often this is asked)."""
        records = self.records
        if self._seen < len(records):
            self._ids.update([rec[INSTANCE] for rec in records[self._seen:]])
            self._seen = len(records)
        return instance_id in self._ids


class CommitScheduler:
    """Batches appends and drives an executor. See the module comment."""

    def __init__(self, writer: SegmentWriter, index: Index) -> None:
        self._writer = writer
        self._index = index
        self._executor: Executor | None = None  # set by open()
        self.accepting = False  # open and not closing
        self.commits = 0  # batches committed
        # The seq the next append gets. Not derived from the writer, which
        # only counts a batch once its commit is done: appends that arrive
        # while a commit is in flight must not reuse its seqs.
        self.next_seq = 1
        # The writer's segment as of the last batch applied to the index. A
        # commit in flight moves ``writer.segment`` before its records reach
        # the index: compaction must not count on them.
        self.applied_segment = 0
        self.failed: str | None = None  # why appends are refused for good
        self._failed_by: BaseException | None = None  # what killed a commit, if not I/O
        self.committing: Batch | None = None  # submitted, not yet applied
        # One Packer for the journal's life (used on the event loop only):
        # ``msgpack.packb`` builds a new one per call, twice the cost.
        self._pack = msgpack.Packer().pack
        self._batch = Batch()
        self._segment_before = 0  # the writer's segment as the commit in flight began
        self._leader = False  # an appending task waits for the commit in flight
        self._duty = trio.Event()  # wakes the reaper
        self._draining = False
        self._gathering = False  # the last batch had several waiters
        self._fatal: BaseException | None = None  # for the reaper to raise
        self._rolled = trio.Event()  # set (and replaced) when a segment is sealed

    def open(self, executor: Executor) -> None:
        """Start accepting appends after the writer's recovery."""
        self._executor = executor
        self.next_seq = self._writer.next_seq
        self.applied_segment = self._writer.segment
        self.accepting = True

    @property
    def busy(self) -> bool:
        """Whether a commit is in flight or accepted appends wait to be sent."""
        return self.committing is not None or bool(self._batch.payloads)

    # -- appending ----------------------------------------------------------

    async def append_many(self, recs: list[list[Any]]) -> None:
        """Durably append records, in order, in one batch."""
        if self.failed is not None:
            raise JournalFailed(self.failed) from self._failed_by
        if not self.accepting:
            raise JournalClosed("the journal is closed; open it to append")
        batch = self._batch
        seq = self.next_seq
        payloads = []
        pack = self._pack
        for rec in recs:
            rec[SEQ] = seq
            payloads.append(pack(rec))
            seq += 1
        self.next_seq = seq
        batch.payloads += payloads
        batch.records += recs
        batch.waiters += 1
        if self.committing is None:
            if not self._gathering:
                self._send()  # straight to the executor: no task to wake first
                await self._lead()
                if batch.error is not None:
                    raise JournalFailed(batch.error) from self._failed_by
                return
            self._duty.set()
        await batch.done.wait()
        if batch.error is not None:
            raise JournalFailed(batch.error) from self._failed_by

    def _send(self) -> None:
        """Submit the open batch (no commit may be in flight)."""
        assert self._executor is not None
        batch, self._batch = self._batch, Batch()
        self.committing = batch
        self._segment_before = self._writer.segment
        self._executor.submit(batch.payloads)

    async def _lead(self) -> None:
        """Wait for the commit we submitted and take its result ourselves.

        Saves waking the reaper task and then us: a lone writer's append
        resumes in the scheduler pass that sees the commit done. If we are
        cancelled while waiting, the reaper takes the commit over.
        """
        assert self._executor is not None
        self._leader = True
        try:
            await self._executor.ready()
            self._reap(leader=True)
        finally:
            self._leader = False
            if self.committing is not None or self._draining:
                self._duty.set()  # a commit (the next batch, or ours) needs the reaper

    # -- the reaper task ----------------------------------------------------

    async def run(self) -> None:
        """The reaper: send gathered batches, take the results no leader waits for."""
        try:
            while True:
                await self._duty.wait()
                self._duty = trio.Event()
                self._raise_fatal()
                if self.committing is None and self._batch.payloads and self.failed is None:
                    # Gathered appends. Whatever woke us (maybe a stale set),
                    # we may run in the very pass where the waiters of the
                    # last batch append again: send one pass later, with all
                    # of them in.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if self.committing is None and self._batch.payloads and self.failed is None:
                        self._send()
                while self.committing is not None and not self._leader:
                    await self._reap_next()
        except trio.Cancelled:
            # Closing, or cancelled from outside: finish what is in flight.
            with trio.CancelScope(shield=True):
                await self.drain()
            raise

    async def drain(self) -> None:
        """Return once no commit is in flight (batches already accepted included).

        Raises what killed a commit on the event loop, if nobody has yet.
        """
        self._draining = True
        try:
            while True:
                if self.committing is None:
                    if not self._batch.payloads or self.failed is not None:
                        break
                    self._send()  # gathered, not sent yet
                if self._leader:
                    self._duty = trio.Event()
                    await self._duty.wait()  # set as the leader lets go
                else:
                    await self._reap_next()
        finally:
            self._draining = False
        self._raise_fatal()

    def _raise_fatal(self) -> None:
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal

    async def _reap_next(self) -> None:
        assert self._executor is not None
        await self._executor.ready()
        self._reap(leader=False)

    # -- a commit's end -----------------------------------------------------

    def _reap(self, *, leader: bool) -> None:
        """Take the result of the commit in flight: apply it, or fail."""
        assert self._executor is not None
        batch = self.committing
        assert batch is not None
        try:
            locs = self._executor.result()
        except JournalFailed as exc:
            self._fail(batch, exc.reason)
            return
        except BaseException as exc:  # not an OSError (the writer turns those into JournalFailed)
            self._fail(batch, f"commit failed: {exc!r}", exc)
            if not leader:
                raise
            # A leader is an appending task: its caller gets JournalFailed,
            # the journal's nursery gets the exception, from the reaper.
            self._fatal = exc
            self._duty.set()
            return
        self._applied(batch, locs)
        if self._batch.payloads and self.failed is None:
            if batch.waiters > 1:
                # Its waiters append again in the next pass: send what is
                # open with theirs (the reaper will), or a lone early append
                # splits the group into two half batches for good.
                self._duty.set()
            else:
                self._send()

    def _applied(self, batch: Batch, locs: list[int]) -> None:
        """A batch is durable: apply its records to the index, wake its waiters."""
        self.commits += 1
        if self._writer.segment != self._segment_before:
            rolled, self._rolled = self._rolled, trio.Event()
            rolled.set()
        apply = self._index.apply
        for rec, loc in zip(batch.records, locs, strict=False):
            apply(rec, loc)
        self.applied_segment = self._writer.segment
        self.committing = None
        self._gathering = batch.waiters > 1
        batch.done.set()

    def _fail(self, batch: Batch, reason: str, cause: BaseException | None = None) -> None:
        """The commit of ``batch`` failed: it and every later append fail.

        ``cause``: what killed the commit, if it was not a write error.
        """
        self.committing = None
        self.failed = reason
        self._failed_by = cause
        for failed in (batch, self._batch):
            failed.error = reason
            failed.done.set()

    # -- for compaction -----------------------------------------------------

    def pending_instances(self) -> set[str]:
        """Instances with records appended but not yet applied to the index."""
        batches = [self._batch] if self.committing is None else [self._batch, self.committing]
        return {rec[INSTANCE] for batch in batches for rec in batch.records}

    async def flushed(self, instance_id: str) -> None:
        """Return once no record of ``instance_id`` waits for its commit
        (applied, or failed with its batch): an append cancelled while it
        waited may still be committed, after its caller has moved on."""
        for batch in (self.committing, self._batch):
            if batch is not None and batch.holds(instance_id):
                await batch.done.wait()

    async def wait_for_roll(self) -> None:
        """Return once the next segment roll-over is done."""
        await self._rolled.wait()
