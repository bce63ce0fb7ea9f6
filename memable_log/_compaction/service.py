"""Background compaction inside a running engine.

Theory of operation. After every segment roll-over the service compacts all
sealed segments (see _compactor.py) so the appender never waits for it:

1. choose the instances to drop, from the live index: finished, unchanged
   for the retention period, with no record after the prefix
   (``last_seq``) nor one in flight (``Journal.pending_instances``), and
   take them out of the live index at once, so nothing new can mention them;
2. in a child process (_compact_process.py; on a worker thread for
   storages that are not a real directory): scan the sealed prefix, write
   ``cmp-<k>`` (temp, fsync, rename, directory fsync) without them, and the
   index snapshot of the compacted history;
3. re-point the live index's locations into the old segments at the new
   file.

The engine's own share is steps 1 and 3, on the event loop in slices of
``_SLICE_S``, each begun at a moment that delays no commit: as the commit
in flight begins its fsync, or with none in flight
(``Journal.between_commits``). A compaction thus costs its commits no GIL
time to speak of.

The old segments stay until the *next* compaction (or the engine's exit):
a task may hold a location it looked up before step 3 and read it a moment
later. Until they go they are leftovers that any reader skips and the
writer deletes if a crash comes first.

A compaction that fails (a full disk, an I/O error, its child killed) is
logged as a WARNING and tried again after ``RETRY_FIRST_S``, then twice as
long each time up to ``RETRY_MAX_S`` (on trio's clock, the engine's); a
success resets the wait. A failure changes nothing acknowledged: before the
new file is visible the instances taken out go back into the live index;
after it, they stay out (the files no longer hold them), and the live
index still points at the old segments, which stay until a compaction
succeeds. The next attempt starts over from the files: it removes a temp
file a failed attempt left, and writes a compacted file anew over one
already renamed into place. Only a failed journal (its commits failed)
stops the service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from .._core import lifecycle as lc
from .._core.errors import EngineError, JournalCorrupt
from .._core.format import (
    HEADER_SIZE,
    TEMP_SUFFIX,
    compacted_name,
    parse_compacted_name,
    segment_name,
    unpack_header,
)
from .._core.index import InstanceEntry
from .._journal.journal import Journal
from .._journal.maintenance import Maintenance
from .._storage.crashpoints import crashpoint
from .._storage.files import FileStorage, Storage
from .child import ChildFailed, Rewritten, compact_in_child, usable
from .compactor import compact_prefix, finish, moves

logger = logging.getLogger("memable_log")

# Work done on the event loop at a time, at most: begun as a commit's fsync
# does (Journal.between_commits), it ends before the fsync (~150-250 us
# here) does, so the commit thread never waits for the GIL behind it.
_SLICE_S = 50e-6

# The wait before trying a failed compaction again: doubled after each
# failure in a row, up to the limit; a success starts over.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


class _Slices:
    """Where a long loop should pause: after ``_SLICE_S`` of work.

    ``used_up`` is synchronous on purpose: an awaited check would make a
    coroutine object per item, and a hundred thousand of those set off full
    garbage collections of the whole index (tens of ms each).
    """

    __slots__ = ("_deadline", "_journal")

    def __init__(self, journal: Maintenance) -> None:
        self._journal = journal
        self._deadline = time.perf_counter() + _SLICE_S

    def used_up(self, i: int) -> bool:
        """Whether to pause before item ``i`` (the clock is read every 16)."""
        return not i & 15 and time.perf_counter() >= self._deadline

    async def pause(self) -> None:
        """Let commits through (Journal.between_commits); a new slice begins."""
        await self._journal.between_commits()
        self._deadline = time.perf_counter() + _SLICE_S


class Compaction:
    """State of background compaction for one engine lifetime."""

    def __init__(
        self, journal: Journal, now_ms: Callable[[], int], retention_ms: int | None
    ) -> None:
        self.journal = journal.maintenance  # what compaction may do with the journal
        # Whether the journal failed (its commits did): compaction stops then.
        self._journal_failed: Callable[[], str | None] = lambda: journal.failed
        self.storage = journal.storage
        self.index = journal.index  # the live index: the journal applies to it
        self.now_ms = now_ms
        self.retention_ms = retention_ms
        # Workflows with a retention of their own (register(retention=)), in
        # ms: the engine fills it; it overrides retention_ms for their instances.
        self.retention_by_workflow: dict[str, int] = {}
        self.compacted_upto = 0  # the newest cmp-<k> in use
        self.leftovers_upto = 0  # segments up to it still wait for deletion
        self.leftovers_epoch = 0  # the journal's read epoch once they became leftovers
        self.runs = 0
        self.use_child = True  # compact in a child process where the storage allows
        # Instances taken out of the live index by the compaction under way:
        # invoking one of their ids waits until it is decided (see Engine.invoke).
        self.retiring: set[str] = set()
        self.decided = trio.Event()
        # The segment as the journal opened: a roll-over after it and before
        # ``run`` waits (the engine's runners start first) is not missed.
        self._opened_at = self.journal.applied_segment

        scan = self.journal.scan_result
        if scan is not None and scan.segments and scan.segments[0].name.startswith("cmp-"):
            self.compacted_upto = scan.segments[0].number

    async def _io(self, fn: Any, *args: Any) -> Any:
        if self.storage.blocking:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def run(self) -> None:
        """The service: compact after every roll-over, until cancelled."""
        journal = self.journal
        if journal.applied_segment == self._opened_at:
            await journal.wait_for_roll()
        wait = 0.0  # before the next attempt, after a failure (see the module comment)
        while True:
            # Loop: a roll-over during a compaction sets an event nobody
            # waits on yet, and must not wait for the next roll-over.
            while (upto := journal.applied_segment - 1) > self.compacted_upto:
                try:
                    await self.compact(upto)
                except (OSError, EngineError, ChildFailed) as exc:
                    if self._journal_failed() is not None:
                        logger.error("background compaction stopped (the journal failed): %s", exc)
                        return
                    wait = min(RETRY_MAX_S, 2 * wait or RETRY_FIRST_S)
                    logger.warning(
                        "background compaction of segments up to %d failed: %s; retrying in %g s",
                        upto, exc, wait,
                    )
                    await trio.sleep(wait)
                else:
                    wait = 0.0
            await journal.wait_for_roll()

    async def compact(self, upto: int) -> None:
        """Compact the sealed segments up to ``upto`` (see the module comment)."""
        journal, storage = self.journal, self.storage
        if self.leftovers_upto:
            # A read that looked its location up before the last re-pointing
            # may still name a leftover (compactions can follow each other
            # within one read's thread hop).
            await journal.reads_before(self.leftovers_epoch)
            await self._io(finish, storage, self.leftovers_upto)
            self.leftovers_upto = 0
        # A failed attempt may have left its temp file (a start would remove it).
        await self._io(_remove_temps, storage)
        # The seq after the prefix: the first of the segment after it.
        header = await self._io(storage.read_at, segment_name(upto + 1), 0, HEADER_SIZE)
        next_seq = unpack_header(header).first_seq
        live = self.index.instances
        ids = list(live)
        removed: dict[str, InstanceEntry] = {}
        try:
            # Until the live index points at the new file, it must not be saved
            # as a snapshot: its locations may name segments that are leftovers.
            journal.keep_snapshot = False
            written = False
            try:
                await self._take_expired(ids, next_seq, removed)
                # An engine stopping now kills a compaction child (its files are
                # as after a crash: the next start cleans them up); a worker
                # thread cannot be stopped and is waited for.
                done = await self._rewrite(upto, removed)
                written = True
            finally:
                # Back in only if the new file never became visible: once renamed
                # into place (even if its directory fsync failed) readers and the
                # next start see the journal without them, and a record of one
                # appended now would name an instance the journal lacks.
                # (A quick listing, kept synchronous: no checkpoint in a finally.)
                if not written and compacted_name(upto) not in storage.list():
                    self.index.restore(removed)
                    journal.keep_snapshot = True  # the index matches the files again
            if done.next_seq != next_seq:
                raise JournalCorrupt(
                    storage.location, 0,
                    f"compacted history ends at seq {done.next_seq}, "
                    f"segment {upto + 1} starts at {next_seq}",
                )
            # Written: re-pointing runs to its end even when the engine is
            # stopping, so the exit snapshots an index that points at the new file.
            with trio.CancelScope(shield=True):
                await self._repoint(upto, done, ids)
        finally:
            self.retiring = set()
            self.decided.set()
            self.decided = trio.Event()
        logger.info(
            "compacted segments up to %d: %d records kept, %d instances dropped",
            upto, done.records, len(removed),
        )

    async def _repoint(self, upto: int, done: Rewritten, ids: list[str]) -> None:
        """Point the live index at ``cmp-<upto>``; the old files become leftovers."""
        journal = self.journal
        journal.add_segment(compacted_name(upto), done.salt)
        crashpoint("compact.before-remap")
        index, slices = self.index, _Slices(journal)
        for i, move in enumerate(done.moved):
            if slices.used_up(i):
                await slices.pause()
            index.repoint((move,), upto)
        for i in range(0, len(ids), 16):
            if slices.used_up(i):
                await slices.pause()
            index.settle(ids[i : i + 16], done.next_seq)
        journal.keep_snapshot = True
        self.compacted_upto = self.leftovers_upto = upto
        self.leftovers_epoch = journal.new_epoch()
        self.runs += 1

    async def _take_expired(
        self, ids: list[str], next_seq: int, removed: dict[str, InstanceEntry]
    ) -> None:
        """Take the instances past retention out of the live index, into ``removed``.

        Out at once, each in the same step as its check, so nothing new can
        mention it: finished, unchanged for the retention period, with no
        record after the prefix (``last_seq``; then the prefix holds all of
        it) nor one in flight (a restart, a forget: not in last_seq yet).
        """
        own = self.retention_by_workflow
        if self.retention_ms is None and not own:
            return
        journal = self.journal
        now = self.now_ms()
        default = None if self.retention_ms is None else now - self.retention_ms
        cutoffs = {name: now - ms for name, ms in own.items()}
        live = self.index.instances
        finished, slices = lc.FINISHED, _Slices(journal)
        busy = journal.pending_instances()
        for i, iid in enumerate(ids):
            if slices.used_up(i):
                await slices.pause()
                busy = journal.pending_instances()  # appends may have come meanwhile
            entry = live.get(iid)
            if entry is None:
                continue
            cutoff = cutoffs.get(entry.workflow, default) if cutoffs else default
            if (
                cutoff is not None and entry.state in finished
                and entry.updated_ms <= cutoff and entry.last_seq < next_seq
                and iid not in busy
            ):
                removed[iid] = entry
                self.index.retire(iid)
                self.retiring.add(iid)

    async def _rewrite(self, upto: int, removed: dict[str, InstanceEntry]) -> Rewritten:
        """compact_prefix, in a child process when the storage allows."""
        storage = self.storage
        inline, snapshot = self.index.inline_limit, self.journal.snapshots
        if self.use_child and usable(storage):
            assert isinstance(storage, FileStorage)
            try:
                return await compact_in_child(storage, upto, inline, removed, snapshot)
            except OSError as exc:  # no interpreter to start: on a thread then
                logger.warning("compaction child not started (%s); compacting in-process", exc)
                self.use_child = False
        fresh, salt, next_seq = await self._io(
            compact_prefix, storage, upto, inline, removed, snapshot
        )
        return Rewritten(salt, next_seq, fresh.records, moves(fresh))

    async def settled(self, instance_id: str) -> None:
        """Return once ``instance_id`` is not being compacted away: gone for
        good, or back in the live index if the compaction failed."""
        while instance_id in self.retiring:
            await self.decided.wait()

    async def close(self) -> None:
        """Delete the leftovers of the last compaction (no task holds them now)."""
        if self.leftovers_upto:
            try:
                await self._io(finish, self.storage, self.leftovers_upto)
            except OSError as exc:  # the next start deletes them (writer.recover)
                logger.warning("compacted-away segments not deleted: %s", exc)
            self.leftovers_upto = 0


def _remove_temps(storage: Storage) -> None:
    """Delete the temp files of compacted segments (no compaction is writing one)."""
    for name in storage.list():
        stem = name[: -len(TEMP_SUFFIX)]
        if name.endswith(TEMP_SUFFIX) and parse_compacted_name(stem) is not None:
            storage.remove(name)
