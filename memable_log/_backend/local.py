"""The local journal as an engine's backend: a directory, or memory for tests.

Theory of operation. ``LocalBackend`` implements the engine's backend seam
(``_engine/backend.py``) with the parts that make the local journal:

* the ``Journal`` (``_journal/``): lock, scan and recovery at ``open``, then
  group commit (one write and one fsync per batch) for every ``append``;
* background compaction (``_compaction/service.py``) after each roll-over;
* for a real directory, the inbox (``_storage/inbox.py``): signals that
  other processes hand over while the engine holds the lock, applied
  through the engine's own ``signal`` with the same checks as a program's.

A ``MemoryStorage`` journal is the same backend over another storage: it
compacts on a worker thread instead of a child process and has no inbox.
The storage is made anew at each ``open`` by the factory the builder gives
(``in_memory()`` hands back the same MemoryStorage, so re-entering the
engine is a restart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .._compaction.service import Compaction
from .._core.errors import EngineError, SignalAlreadyDelivered, UnknownInstance
from .._core.index import Index
from .._journal.journal import Journal
from .._storage.files import FileStorage, Storage
from .._storage.inbox import (
    HandoverError,
    InboxWatcher,
    decode_handover,
    pending,
    read_handover,
    remove_handover,
    remove_stale_temps,
)

if TYPE_CHECKING:
    from .seam import EngineCalls

logger = logging.getLogger("memable_log")


class LocalBackend:
    """The journal in a directory (or a MemoryStorage) as an engine's backend."""

    def __init__(
        self,
        make_storage: Callable[[], Storage],
        *,
        segment_size: int,
        snapshots: bool,
        compaction: bool,
        retention_ms: int | None,
        now_ms: Callable[[], int],
        decode: Callable[[bytes], Any],
    ) -> None:
        self.make_storage = make_storage
        self.segment_size = segment_size
        self.snapshots = snapshots
        self.compacts = compaction
        self.retention_ms = retention_ms
        self._now_ms = now_ms
        self.journal: Journal | None = None  # while open
        self.compaction: Compaction | None = None  # while open, if enabled
        # The engine's codec decodes hand-over payloads: operations.signal
        # may have encoded one with the same codec's encode hook.
        self._decode = decode

    def _require(self) -> Journal:
        if self.journal is None:
            raise EngineError("the engine is not running: use it inside `async with engine:`")
        return self.journal

    @property
    def failed(self) -> str | None:
        return None if self.journal is None else self.journal.failed

    async def open(self, index: Index) -> None:
        if self.journal is not None:
            raise EngineError("this journal is already open")
        storage = await trio.to_thread.run_sync(self.make_storage)
        journal = Journal(storage, index, segment_size=self.segment_size, snapshots=self.snapshots)
        await journal.__aenter__()  # JournalLocked / JournalCorrupt surface as themselves
        self.journal = journal
        if self.compacts:
            self.compaction = Compaction(journal, self._now_ms, self.retention_ms)

    async def close(self) -> None:
        journal = self._require()
        try:
            if self.compaction is not None and journal.failed is None:
                await self.compaction.close()
        finally:
            self.compaction = None
            self.journal = None
            await journal.__aexit__(None, None, None)

    async def append(self, rec: list[Any]) -> None:
        await self._require().append(rec)

    async def append_many(self, recs: list[list[Any]]) -> None:
        await self._require().append_many(recs)

    async def read(self, loc: int) -> list[Any]:
        return await self._require().read(loc)

    async def settled(self, instance_id: str) -> None:
        await self._require().flushed(instance_id)
        if self.compaction is not None:
            await self.compaction.settled(instance_id)

    async def serve(
        self, calls: EngineCalls, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        storage = self._require().storage
        watcher = None
        if isinstance(storage, FileStorage):
            # Hand-overs left while no engine ran are applied before the engine's
            # start returns (a failure there surfaces from it as itself).
            await self._apply_handovers(calls, storage.path, pending(storage.path))
            await trio.to_thread.run_sync(remove_stale_temps, storage.path)
            watcher = InboxWatcher(storage.path)
        try:
            async with trio.open_nursery() as nursery:
                if self.compaction is not None:
                    nursery.start_soon(self.compaction.run)
                if watcher is not None:
                    nursery.start_soon(self._inbox_service, calls, watcher)
                task_status.started()
        finally:
            if watcher is not None:
                watcher.stop()  # its thread, abandoned on cancel, ends at its next look

    async def _inbox_service(self, calls: EngineCalls, watcher: InboxWatcher) -> None:
        """Apply signals handed over by other processes (see _storage/inbox.py)."""
        while True:
            names = await trio.to_thread.run_sync(watcher.wait, abandon_on_cancel=True)
            if not names:
                return
            await self._apply_handovers(calls, watcher.path, names)

    async def _apply_handovers(self, calls: EngineCalls, path: str, names: list[str]) -> None:
        for name in names:
            try:
                data = await trio.to_thread.run_sync(read_handover, path, name)
            except FileNotFoundError:  # only this engine deletes them; nothing to do
                logger.warning("signal hand-over %s vanished before it was read", name)
                continue
            try:
                workflow, instance_id, key, blob = decode_handover(data)
                payload = self._decode(blob)
                await calls.signal(workflow, instance_id, key, payload)
            except (HandoverError, UnknownInstance, SignalAlreadyDelivered, ValueError) as exc:
                logger.warning("signal hand-over %s not applied: %s", name, exc)
            await trio.to_thread.run_sync(remove_handover, path, name)
