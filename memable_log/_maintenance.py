"""Background compaction inside a running engine.

Theory of operation. After every segment roll-over the service compacts all
sealed segments (see _compactor.py) on a worker thread, so the appender
never waits for it:

1. scan the sealed prefix into a private index;
2. choose the instances to drop: finished in the prefix, unchanged for the
   retention period, with no record after the prefix (``last_seq``) nor
   one in flight (``Journal.pending_instances``), and
   take them out of the live index at once, so nothing new can mention them;
3. write ``cmp-<k>`` (temp, fsync, rename, directory fsync);
4. re-point the live index's locations into the old segments at the new
   file, a thousand instances between checkpoints.

The old segments stay until the *next* compaction (or the engine's exit):
a task may hold a location it looked up before step 4 and read it a moment
later. Until they go they are leftovers that any reader skips and the
writer deletes if a crash comes first.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from . import _lifecycle as lc
from . import _snapshot
from ._compactor import expired, finish, prefix_state, remap, synthesize, write_compacted
from ._errors import EngineError
from ._format import compacted_name, segment_name
from ._journal import Journal
from ._reader import read_record_at
from ._storage import Storage

if TYPE_CHECKING:
    from ._engine import Engine

logger = logging.getLogger("memable_log")

_REMAP_CHUNK = 1000


class Compaction:
    """State of background compaction for one engine lifetime."""

    def __init__(self, retention_ms: int | None) -> None:
        self.retention_ms = retention_ms
        self.compacted_upto = 0  # the newest cmp-<k> in use
        self.leftovers_upto = 0  # segments up to it still wait for deletion
        self.leftovers_epoch = 0  # the journal's read epoch once they became leftovers
        self.runs = 0

    def start(self, journal: Journal) -> None:
        scan = journal.scan_result
        if scan is not None and scan.segments and scan.segments[0].name.startswith("cmp-"):
            self.compacted_upto = scan.segments[0].number

    async def _io(self, storage: Storage, fn: Any, *args: Any) -> Any:
        if storage.blocking:
            return await trio.to_thread.run_sync(fn, *args)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def run(self, engine: Engine, journal: Journal, storage: Storage) -> None:
        """The service: compact after every roll-over, until cancelled."""
        while True:
            await journal.wait_for_roll()
            # Loop: a roll-over during a compaction sets an event nobody
            # waits on yet, and must not wait for the next roll-over.
            while (upto := journal.applied_segment - 1) > self.compacted_upto:
                try:
                    await self.compact(engine, journal, storage, upto)
                except (OSError, EngineError) as exc:
                    logger.error("background compaction stopped: %s", exc)
                    return

    async def compact(self, engine: Engine, journal: Journal, storage: Storage, upto: int) -> None:
        if self.leftovers_upto:
            # A read that looked its location up before the last re-pointing
            # may still name a leftover (compactions can follow each other
            # within one read's thread hop).
            await journal.reads_before(self.leftovers_epoch)
            await self._io(storage, finish, storage, self.leftovers_upto)
            self.leftovers_upto = 0
        inline = engine._inline_limit
        prefix, result = await self._io(storage, prefix_state, storage, upto, inline)
        now = engine._now()
        live = engine._index.instances
        # Out of the live index at once, so nothing new can mention them;
        # back in if the compacted file never replaces their segments.
        removed = {}
        # A record in flight (a restart, a forget) is not in last_seq yet.
        busy = journal.pending_instances()
        for iid in expired(prefix, now, self.retention_ms):
            entry = live.get(iid)
            untouched = entry is not None and entry.last_seq < result.next_seq
            untouched = untouched and iid not in busy
            if untouched and entry is not None and entry.state in lc.FINISHED:
                removed[iid] = live.pop(iid)
        salts = dict(journal.writer.salts)
        records = synthesize(prefix, partial(read_record_at, storage, salts), removed)
        # Once decided, a compaction runs to its end even when the engine is
        # stopping (the file writes are uncancellable anyway): the exit then
        # snapshots an index that points at the new file.
        with trio.CancelScope(shield=True):
            # Until the live index points at the new file, it must not be saved
            # as a snapshot: its locations may name segments that are leftovers.
            journal.keep_snapshot = False
            written = False
            try:
                fresh, salt = await self._io(
                    storage, write_compacted, storage, upto, result.next_seq, records, inline
                )
                written = True
            finally:
                # Back in only if the new file never became visible: once renamed
                # into place (even if its directory fsync failed) readers and the
                # next start see the journal without them, and a record of one
                # appended now would name an instance the journal lacks.
                # (A quick listing, kept synchronous: no checkpoint in a finally.)
                if not written and compacted_name(upto) not in storage.list():
                    live.update(removed)
            journal.writer.salts[compacted_name(upto)] = salt
            ids = list(fresh.instances)
            for start in range(0, len(ids), _REMAP_CHUNK):
                chunk = set(ids[start : start + _REMAP_CHUNK])
                remap(engine._index, fresh, upto, only=chunk, next_seq=result.next_seq)
                await trio.lowlevel.checkpoint()
            journal.keep_snapshot = True
            self.compacted_upto = self.leftovers_upto = upto
            self.leftovers_epoch = journal.new_epoch()
            self.runs += 1
            if journal.snapshots:
                next_salt = journal.writer.salts[segment_name(upto + 1)]
                await self._io(
                    storage, _snapshot.write_after_compaction,
                    storage, fresh, upto, salt, result.next_seq, next_salt,
                )
        logger.info(
            "compacted segments up to %d: %d records kept, %d instances dropped",
            upto, fresh.records, len(removed),
        )

    async def close(self, storage: Storage) -> None:
        """Delete the leftovers of the last compaction (no task holds them now)."""
        if self.leftovers_upto:
            try:
                await self._io(storage, finish, storage, self.leftovers_upto)
            except OSError as exc:  # the next start deletes them (writer.recover)
                logger.warning("compacted-away segments not deleted: %s", exc)
            self.leftovers_upto = 0
