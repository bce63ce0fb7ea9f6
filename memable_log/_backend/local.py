"""The local journal as an engine's backend: a directory, or memory for tests.

Theory of operation. ``LocalBackend`` implements the engine's backend seam
(``_engine/backend.py``) with the parts that make the local journal:

* the ``Journal`` (``_journal/``): lock, scan and recovery at ``open``, then
  group commit (one write and one fsync per batch) for every ``append``;
* background compaction (``_compaction/service.py``) after each roll-over;
* for a real directory, the inbox (``_storage/inbox.py``): signals that
  other processes hand over while the engine holds the lock, applied
  through the engine's own ``signal`` with the same checks as a program's.
  A hand-over refused for a reason of the journal's (unknown instance,
  already signalled) is logged and deleted; one that cannot be applied at
  all (unreadable, undecodable, invalid) is logged by name and moved to
  ``inbox/rejected/``, and the engine goes on. A journal that fails while
  a hand-over is applied is the engine's failed journal: the hand-over
  stays for the next start, the inbox stops (a failure at start surfaces
  from the start as itself).

A ``MemoryStorage`` journal is the same backend over another storage: it
compacts on a worker thread instead of a child process and has no inbox.
The storage is made anew at each ``open`` by the factory the builder gives
(``in_memory()`` hands back the same MemoryStorage, so re-entering the
engine is a restart).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .._compaction.service import Compaction
from .._core import records as r
from .._core.errors import (
    EngineError,
    JournalClosed,
    JournalFailed,
    SignalAlreadyDelivered,
    UnknownInstance,
)
from .._core.index import Index
from .._journal.journal import Journal
from .._storage.files import FileStorage, Storage
from .._storage.inbox import (
    INBOX,
    InboxWatcher,
    decode_action,
    decode_handover,
    is_action,
    move_inbox_aside,
    pending,
    read_handover,
    reject_handover,
    remove_handover,
)

if TYPE_CHECKING:
    from .seam import EngineCalls

logger = logging.getLogger("memable_log")

# While an action hand-over is applied: [its handover_applied record], taken
# by the first append of the action's instance in this task (the engine's
# call appends in the task that calls it), so the marker is durable in the
# same batch as the action's own records, after them. A batch survives a
# crash as a prefix, and only as the journal's tail: an action whose marker
# was cut off has nothing after it, so applying it again changes nothing.
_MARKER: contextvars.ContextVar[list[list[Any]] | None] = contextvars.ContextVar(
    "memable_handover_marker", default=None
)


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
        self._index: Index | None = None  # the engine's, while open
        # Per-workflow retention overrides (ms), filled by the engine's register.
        self.retention_by_workflow: dict[str, int] = {}
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
        self._index = index
        if self.compacts:
            self.compaction = Compaction(journal, self._now_ms, self.retention_ms)
            self.compaction.retention_by_workflow = self.retention_by_workflow

    async def close(self) -> None:
        journal = self._require()
        try:
            if self.compaction is not None and journal.failed is None:
                await self.compaction.close()
        finally:
            self.compaction = None
            self.journal = None
            self._index = None
            await journal.__aexit__(None, None, None)

    async def append(self, rec: list[Any]) -> None:
        marker = _take_marker([rec])
        if marker is None:
            await self._require().append(rec)
        else:
            await self._require().append_many([rec, marker])

    async def append_many(self, recs: list[list[Any]]) -> None:
        marker = _take_marker(recs)
        await self._require().append_many(recs if marker is None else [*recs, marker])

    async def read(self, loc: int) -> list[Any]:
        return await self._require().read(loc)

    async def read_many(self, locs: list[int]) -> list[list[Any]]:
        return await self._require().read_many(locs)

    async def settled(self, instance_id: str) -> None:
        await self._require().flushed(instance_id)
        if self.compaction is not None:
            await self.compaction.settled(instance_id)

    def owns(self, instance_id: str) -> bool:
        return True  # one process holds the journal

    async def serve(
        self, calls: EngineCalls, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        storage = self._require().storage
        watcher = None
        if isinstance(storage, FileStorage):
            watcher = InboxWatcher(storage.path)
            # Hand-overs left while no engine ran are applied before the engine's
            # start returns (a failed journal there surfaces from it as itself).
            names = await self._pending(watcher)
            if names is None:
                watcher = None  # the inbox cannot be listed (logged)
            else:
                await self._apply_handovers(calls, watcher, names)
                await trio.to_thread.run_sync(partial(watcher.sweep, now=True))
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
            try:
                names = await trio.to_thread.run_sync(watcher.wait, abandon_on_cancel=True)
            except OSError as exc:
                if await self._inbox_unlistable(watcher.path, exc):
                    continue
                return
            if not names:
                return
            try:
                await self._apply_handovers(calls, watcher, names)
            except (JournalFailed, JournalClosed):
                return  # logged; the engine's calls report it, as its runners do

    async def _pending(self, watcher: InboxWatcher) -> list[str] | None:
        """The hand-overs waiting now; None if the inbox cannot be listed (logged)."""
        path = watcher.path
        while True:
            try:
                names = await trio.to_thread.run_sync(pending, path)
            except OSError as exc:
                if await self._inbox_unlistable(path, exc):
                    continue
                return None
            return [name for name in names if name not in watcher.skip]

    async def _inbox_unlistable(self, path: str, exc: OSError) -> bool:
        """Move an inbox that is not a directory aside (True: look again), or give up."""
        try:
            aside = await trio.to_thread.run_sync(move_inbox_aside, path)
        except OSError as move_exc:
            aside, exc = None, move_exc
        if aside is not None:
            logger.error("%s is not a directory (%s): renamed it %s; signals are handed "
                         "over through a new %s", INBOX, exc, aside, INBOX)
            return True
        logger.error("signal hand-overs are not applied until the engine starts again: "
                     "cannot list %s: %s", INBOX, exc)
        return False

    async def _apply_handovers(
        self, calls: EngineCalls, watcher: InboxWatcher, names: list[str]
    ) -> None:
        path = watcher.path
        for name in names:
            try:
                data = await trio.to_thread.run_sync(read_handover, path, name)
            except FileNotFoundError:  # only this engine deletes them; nothing to do
                logger.warning("signal hand-over %s/%s vanished before it was read", INBOX, name)
                continue
            except OSError as exc:  # a directory, unreadable
                await self._reject(watcher, name, f"cannot be read: {_why(exc)}")
                continue
            if is_action(name):
                applied = await self._apply_action(calls, watcher, name, data)
            else:
                applied = await self._apply_signal(calls, watcher, name, data)
            if not applied:
                continue
            try:
                await trio.to_thread.run_sync(remove_handover, path, name)
            except OSError as exc:
                # Applied: the next start finds it applied and deletes it.
                watcher.skip.add(name)
                logger.error("hand-over %s/%s applied but not deleted: %s", INBOX, name, exc)

    async def _apply_signal(
        self, calls: EngineCalls, watcher: InboxWatcher, name: str, data: bytes
    ) -> bool:
        """Apply a signal hand-over; False if it was moved aside instead."""
        try:
            workflow, instance_id, key, blob = decode_handover(data)
            payload = self._decode(blob)  # the codec's hooks may raise anything
        except Exception as exc:
            await self._reject(watcher, name, f"cannot be decoded: {_why(exc)}")
            return False
        try:
            await calls.signal(workflow, instance_id, key, payload)
        except (UnknownInstance, SignalAlreadyDelivered) as exc:
            logger.warning("signal hand-over %s/%s not applied: %s", INBOX, name, exc)
        except (JournalFailed, JournalClosed) as exc:
            logger.error("signal hand-over %s/%s not applied; it stays in the inbox for "
                         "the next start: %s", INBOX, name, exc)
            raise
        except Exception as exc:  # an empty key, a payload it cannot encode again
            await self._reject(watcher, name, f"refused: {_why(exc)}")
            return False
        return True

    async def _apply_action(
        self, calls: EngineCalls, watcher: InboxWatcher, name: str, data: bytes
    ) -> bool:
        """Apply an action hand-over through the engine's own call (its checks),
        once: its name is written with its records (``handover_applied``) and
        one found in the index is only deleted. False if it was refused or
        cannot be applied, and moved aside with why."""
        if self._index is not None and name in self._index.handovers:
            logger.warning("hand-over %s/%s was applied before the engine stopped; "
                           "not applied again", INBOX, name)
            return True
        try:
            action, instance_id, args = decode_action(data)
            value = self._decode(args["input"]) if action == "invoke" else None
        except Exception as exc:
            await self._reject(watcher, name, f"cannot be decoded: {_why(exc)}")
            return False
        token = _MARKER.set([r.make(r.HANDOVER_APPLIED, self._now_ms(), r.ENGINE, name,
                                    instance_id)])
        try:
            await self._act(calls, action, instance_id, args, value)
        except (JournalFailed, JournalClosed) as exc:
            logger.error("%s hand-over %s/%s not applied; it stays in the inbox for "
                         "the next start: %s", action, INBOX, name, exc)
            raise
        except Exception as exc:  # the engine's refusal: UnknownWorkflow, EngineError...
            await self._reject(watcher, name, f"refused: {exc}", reason=str(exc))
            return False
        finally:
            _MARKER.reset(token)
        logger.info("%s hand-over %s/%s applied to instance %s", action, INBOX, name,
                    instance_id, extra={"instance_id": instance_id})
        return True

    @staticmethod
    async def _act(
        calls: EngineCalls, action: str, instance_id: str, args: dict[str, Any], value: Any
    ) -> None:
        if action == "invoke":
            await calls.invoke(args["workflow"], value, instance_id=instance_id)
        elif action == "cancel":
            await calls.cancel(instance_id)
        elif action == "forget":
            await calls.forget(instance_id, args["key"])
        else:  # restart: of the instance as the tool saw it, so never twice
            seen = calls.status(instance_id).updated_at
            if round(seen.timestamp() * 1000) != args["updated_ms"]:
                raise EngineError(
                    f"instance {instance_id!r} changed since the restart was asked "
                    "(restarted already?): not restarted again"
                )
            await calls.restart(instance_id)

    async def _reject(
        self, watcher: InboxWatcher, name: str, why: str, reason: str | None = None
    ) -> None:
        """Move a hand-over that cannot be applied to inbox/rejected/ and log it
        (with ``reason`` beside it, for the tool that handed it over)."""
        try:
            where = await trio.to_thread.run_sync(reject_handover, watcher.path, name, reason)
        except OSError as exc:
            watcher.skip.add(name)  # not looked at again until the next start
            logger.error("hand-over %s/%s not applied, %s; not moved aside (%s): "
                         "it stays in the inbox", INBOX, name, why, exc)
            return
        logger.error("hand-over %s/%s not applied, %s; moved to %s",
                     INBOX, name, why, where)


def _take_marker(recs: list[list[Any]]) -> list[Any] | None:
    """The marker of the hand-over being applied, if ``recs`` are its
    action's (of its instance) and no earlier append took it."""
    held = _MARKER.get()
    if not held or not any(
        rec[r.INSTANCE] == held[0][r.HANDOVER_APPLIED_INSTANCE_ID] for rec in recs
    ):
        return None
    return held.pop()


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
