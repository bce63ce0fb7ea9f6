"""The Engine: lifecycle, and the calls a program makes on instances.

Theory of operation. ``async with engine:`` opens the journal (lock, scan,
recovery; the index is rebuilt by the same ``apply`` that follows every
append), then starts, in the engine's own nursery, the timer poller and a
runner for every instance the journal shows running. Leaving the block
cancels that nursery (runners stop where they are; the journal keeps their
state for the next start) and closes the journal.

A *runner* is one task per live instance while it executes (see _runner.py).
Suspended and sleeping instances have no task: only their index entry and,
with a deadline, a heap entry in the poller.

Every state change is a record appended through ``_append`` and applied to
the index by the journal before the call returns, so the index is always
what a restart would rebuild. Calls that must not write twice under
concurrency (``invoke`` of one id, two signals for one key) reserve their
key in memory while their append is in flight.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from .._compaction.service import Compaction
from .._core import index as ix
from .._core import lifecycle as lc
from .._core import records as r
from .._core.codec import Codec, EncodeError
from .._core.errors import (
    EngineError,
    JournalCorrupt,
    JournalFailed,
    NotSerializable,
    SignalAlreadyDelivered,
    UnknownInstance,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowFailed,
)
from .._core.index import Index
from .._core.signals import check_signal
from .._core.status import InstanceStatus, status_of
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
from .clock import Clock
from .context import Context, ValueUnreadable
from .runner import run_instance
from .timers import TimerQueue

if TYPE_CHECKING:
    from .builder import EngineBuilder

logger = logging.getLogger("memable_log")

Workflow = Callable[[Context], Awaitable[Any]]


class Engine:
    """A durable-execution engine over one journal. Build it with ``Engine.builder()``."""

    def __init__(
        self,
        storage: Callable[[], Storage],
        *,
        clock: Clock,
        codec: Codec,
        max_running: int | None,
        segment_size: int,
        inline_limit: int,
        retention_ms: int | None = None,
        compaction: bool = True,
        snapshots: bool = True,
    ) -> None:
        self._make_storage = storage
        self._clock = clock
        self._codec = codec
        self._max_running = max_running
        self._segment_size = segment_size
        self._inline_limit = inline_limit
        self._retention_ms = retention_ms
        self._compaction_enabled = compaction
        self._snapshots = snapshots
        self._compaction: Compaction | None = None
        self._workflows: dict[str, Workflow] = {}
        self._index = Index(inline_limit)
        self._journal: Journal | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._timers: TimerQueue | None = None
        self._limiter = trio.CapacityLimiter(math.inf)
        self._active: set[str] = set()  # instances with a runner task
        self._scopes: dict[str, trio.CancelScope] = {}  # runners inside a workflow
        self._orphans: dict[str, set[str]] = {}  # workflow name -> instances waiting for it
        self._changed: dict[str, trio.Event] = {}
        self._reserved: set[tuple[str, str]] = set()  # (instance, key) being written
        self._creating: dict[str, trio.Event] = {}
        self._watcher: InboxWatcher | None = None
        # Private hook for memable_log.testing: called with (instance, key)
        # right before a step's function is called (each attempt).
        self._on_step_call: Callable[[str, str], None] | None = None

    @staticmethod
    def builder() -> EngineBuilder:
        """A builder: ``.open(path)`` or ``.in_memory()``, settings, ``.build()``."""
        from .builder import EngineBuilder

        return EngineBuilder()

    # -- lifecycle ----------------------------------------------------------

    def register(self, name: str, fn: Workflow) -> None:
        """Register workflow ``fn`` under ``name`` (before or after start)."""
        if type(name) is not str or not name:
            raise TypeError(f"a workflow name must be a non-empty str, not {name!r}")
        if not callable(fn):
            raise TypeError(f"workflow {name!r} must be an async function taking a Context")
        if name in self._workflows:
            raise EngineError(f"workflow {name!r} is already registered; names are unique")
        self._workflows[name] = fn
        for instance_id in sorted(self._orphans.pop(name, ())):
            self._start(instance_id)

    async def __aenter__(self) -> Engine:
        if self._journal is not None:
            raise EngineError("this engine is already running")
        storage = await trio.to_thread.run_sync(self._make_storage)
        self._clock.start()
        self._index = Index(self._inline_limit)
        journal = Journal(
            storage, self._index, segment_size=self._segment_size, snapshots=self._snapshots
        )
        await journal.__aenter__()  # JournalLocked / JournalCorrupt surface as themselves
        try:
            self._limiter = trio.CapacityLimiter(self._max_running or math.inf)
            self._nursery_cm = trio.open_nursery()
            self._nursery = await self._nursery_cm.__aenter__()
        except BaseException:
            await journal.__aexit__(None, None, None)
            raise
        self._journal = journal
        try:
            self._timers = TimerQueue(self._clock, self._on_deadline)
            self._nursery.start_soon(self._timers.run)
            self._resume_all()
            if self._compaction_enabled:
                self._compaction = Compaction(self._retention_ms)
                self._compaction.start(journal)
                self._nursery.start_soon(self._compaction.run, self, journal, storage)
            if isinstance(storage, FileStorage):
                # Hand-overs left while no engine ran are applied before we return.
                await self._apply_handovers(storage.path, pending(storage.path))
                await trio.to_thread.run_sync(remove_stale_temps, storage.path)
                self._watcher = InboxWatcher(storage.path)
                self._nursery.start_soon(self._inbox_service, self._watcher)
        except BaseException as exc:
            # Close the nursery and the journal, or trio's nursery stack is
            # left corrupt (a failed append while applying hand-overs, say).
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _resume_all(self) -> None:
        assert self._timers is not None
        for instance_id, entry in self._index.instances.items():
            if entry.state == lc.RUNNING:
                self._start(instance_id)
            elif entry.state in lc.WAITING and entry.deadline_ms is not None:
                self._timers.push(entry.deadline_ms, instance_id)
        if self._orphans:
            for name, ids in self._orphans.items():
                logger.warning(
                    "%d instance(s) of workflow %r wait for it to be registered", len(ids), name
                )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The journal stays set until the runners are gone: one resumed
        # just before the cancel runs on to its next append, and must get
        # Cancelled there, not "the engine is not running".
        journal = self._journal
        assert journal is not None
        assert self._nursery is not None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._nursery.cancel_scope.cancel()
        try:
            # The body's own exception propagates by itself; the nursery
            # only reports failures of the engine's tasks.
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            self._journal = None
            self._nursery = None
            self._timers = None
            self._active.clear()
            self._scopes.clear()
            self._orphans.clear()
            self._reserved.clear()
            for event in self._changed.values():
                event.set()
            self._changed.clear()
            try:
                if self._compaction is not None and journal.failed is None:
                    await self._compaction.close(journal.storage)
            finally:
                self._compaction = None
                await journal.__aexit__(None, None, None)

    async def _inbox_service(self, watcher: InboxWatcher) -> None:
        """Apply signals handed over by other processes (see _inbox.py)."""
        while True:
            names = await trio.to_thread.run_sync(watcher.wait, abandon_on_cancel=True)
            if not names:
                return
            await self._apply_handovers(watcher.path, names)

    async def _apply_handovers(self, path: str, names: list[str]) -> None:
        for name in names:
            data = await trio.to_thread.run_sync(read_handover, path, name)
            try:
                workflow, instance_id, key, blob = decode_handover(data)
                await self.signal(workflow, instance_id, key, self._codec.decode(blob))
            except (HandoverError, UnknownInstance, SignalAlreadyDelivered, ValueError) as exc:
                logger.warning("signal hand-over %s not applied: %s", name, exc)
            await trio.to_thread.run_sync(remove_handover, path, name)

    # -- plumbing for Context and runners -----------------------------------

    def _require(self) -> Journal:
        if self._journal is None:
            raise EngineError("the engine is not running: use it inside `async with engine:`")
        return self._journal

    async def _append(self, rec: list[Any]) -> None:
        await self._require().append(rec)

    def _now(self) -> int:
        return self._clock.now_ms()

    async def _value(self, where: ix.Entry, field: int) -> Any:
        """Decode a value kept inline (a blob) or at a location (field of its record)."""
        if type(where) is bytes:
            return self._codec.decode(where)
        rec = await self._require().read(where)  # type: ignore[arg-type]
        return self._codec.decode(rec[field])

    async def _recorded(self, loc: int) -> list[Any]:
        """The record at ``loc``, for a workflow's replay (see ValueUnreadable)."""
        try:
            return await self._require().read(loc)
        except (OSError, JournalCorrupt) as exc:
            raise ValueUnreadable(f"record at {ix.unpack_loc(loc)}: {exc}") from exc

    async def _replayed(self, where: ix.Entry, field: int) -> Any:
        """Like ``_value``, for a workflow's replay (see ValueUnreadable)."""
        if type(where) is bytes:
            return self._codec.decode(where)
        return self._codec.decode((await self._recorded(where))[field])  # type: ignore[arg-type]

    def _encode(self, value: Any, what: str) -> bytes:
        try:
            return self._codec.encode(value)
        except EncodeError as exc:
            raise NotSerializable(what, exc.type_name, exc.reason) from None

    def _entry(self, instance_id: str) -> ix.InstanceEntry:
        entry = self._index.instances.get(instance_id)
        if entry is None:
            raise UnknownInstance(instance_id)
        return entry

    def _start(self, instance_id: str) -> None:
        """Run the instance now unless a runner already has it."""
        if self._nursery is None or instance_id in self._active:
            return
        entry = self._index.instances[instance_id]
        if entry.workflow not in self._workflows:
            self._orphans.setdefault(entry.workflow, set()).add(instance_id)
            return
        self._active.add(instance_id)
        self._nursery.start_soon(run_instance, self, instance_id, name=f"memable:{instance_id}")

    def _notify(self, instance_id: str) -> None:
        event = self._changed.pop(instance_id, None)
        if event is not None:
            event.set()

    def _on_deadline(self, instance_id: str, deadline_ms: int) -> None:
        entry = self._index.instances.get(instance_id)
        if entry is not None and entry.state in lc.WAITING and entry.deadline_ms == deadline_ms:
            self._start(instance_id)

    def _after_run(self, instance_id: str) -> None:
        """Called by a runner as it ends: arm the deadline, wake waiters."""
        entry = self._index.instances[instance_id]
        timers = self._timers  # `is not None`: an empty TimerQueue is falsy
        if entry.state in lc.WAITING and entry.deadline_ms is not None and timers is not None:
            timers.push(entry.deadline_ms, instance_id)
        self._notify(instance_id)

    # -- the public calls ---------------------------------------------------

    async def invoke(self, name: str, input: Any = None, *, instance_id: str | None = None) -> str:
        """Durably record a new instance of workflow ``name``, start it, return its id.

        An existing ``instance_id`` is returned as it is and nothing starts.
        Raises UnknownWorkflow (nothing written) and NotSerializable.
        """
        self._require()
        if name not in self._workflows:
            raise UnknownWorkflow(name, list(self._workflows))
        if instance_id is None:
            instance_id = secrets.token_hex(8)
        elif type(instance_id) is not str or not instance_id:
            raise TypeError(f"instance_id must be a non-empty str, not {instance_id!r}")
        while True:
            if instance_id in self._creating:
                await self._creating[instance_id].wait()
            elif self._compaction is not None and instance_id in self._compaction.retiring:
                # Being compacted away: gone for good, or back if that fails.
                await self._compaction.decided.wait()
            else:
                break
        if instance_id in self._index.instances:
            return instance_id
        blob = self._encode(input, f"input of workflow {name!r}")
        self._creating[instance_id] = created = trio.Event()
        try:
            await self._append(r.make(r.CREATED, self._now(), instance_id, name, blob))
        finally:
            del self._creating[instance_id]
            created.set()
        logger.info("instance %s of %r created", instance_id, name,
                    extra={"instance_id": instance_id})
        self._start(instance_id)
        return instance_id

    async def wait(self, instance_id: str) -> Any:
        """The workflow's return value, once it has finished.

        Raises WorkflowFailed, WorkflowCancelled, UnknownInstance.
        """
        while True:
            journal = self._require()
            entry = self._entry(instance_id)
            if entry.state == lc.COMPLETED:
                assert entry.outcome is not None
                return await self._value(entry.outcome, 4)
            if entry.state == lc.FAILED:
                assert isinstance(entry.outcome, int)
                rec = await journal.read(entry.outcome)
                raise WorkflowFailed(instance_id, rec[4], rec[5], rec[6])
            if entry.state == lc.CANCELLED:
                raise WorkflowCancelled(instance_id)
            if journal.failed is not None:
                raise JournalFailed(journal.failed)
            event = self._changed.setdefault(instance_id, trio.Event())
            await event.wait()

    def status(self, instance_id: str) -> InstanceStatus:
        """The instance's state as the journal records it (UnknownInstance if none)."""
        return status_of(instance_id, self._entry(instance_id))

    def instances(self, state: str | None = None) -> list[InstanceStatus]:
        """Every instance (in creation order), or those in ``state``."""
        wanted = None
        if state is not None:
            if state not in lc.STATE_BY_NAME:
                raise ValueError(f"unknown state {state!r}; one of {', '.join(lc.STATE_NAMES)}")
            wanted = lc.STATE_BY_NAME[state]
        return [
            status_of(iid, entry)
            for iid, entry in self._index.instances.items()
            if wanted is None or entry.state == wanted
        ]

    async def signal(self, workflow: str, instance_id: str, key: str, payload: Any = None) -> None:
        """Durably deliver ``payload`` to suspension ``key`` and wake the instance.

        Raises UnknownInstance (also when ``workflow`` does not match) and
        SignalAlreadyDelivered (a second signal, or after a timeout); in both
        cases nothing is written.
        """
        self._require()
        check_signal(self._index, workflow, instance_id, key, self._now(), self._reserved)
        entry = self._index.instances[instance_id]
        blob = self._encode(payload, f"signal {key!r}")
        self._reserved.add((instance_id, key))
        try:
            await self._append(r.make(r.SIGNALLED, self._now(), instance_id, key, blob))
        finally:
            self._reserved.discard((instance_id, key))
        logger.info("instance %s: signal %r delivered", instance_id, key,
                    extra={"instance_id": instance_id, "key": key})
        if entry.state == lc.RUNNING:
            self._start(instance_id)

    async def cancel(self, instance_id: str) -> None:
        """Durably mark the instance cancelled and stop it if it runs."""
        entry = self._entry(instance_id)
        if entry.state not in lc.LIVE:
            return
        await self._append(r.make(r.CANCELLED, self._now(), instance_id))
        scope = self._scopes.get(instance_id)
        if scope is not None:
            scope.cancel()
        self._notify(instance_id)

    async def forget(self, instance_id: str, key_or_prefix: str) -> None:
        """Durably forget memoised step outcomes: ``key``, or all under ``prefix*``."""
        self._entry(instance_id)
        if type(key_or_prefix) is not str or not key_or_prefix:
            raise TypeError(f"forget takes a non-empty str key or prefix*, not {key_or_prefix!r}")
        await self._append(r.make(r.FORGOT, self._now(), instance_id, key_or_prefix))

    async def restart(self, instance_id: str) -> None:
        """Run a finished instance again from the top (memoised steps stay)."""
        entry = self._entry(instance_id)
        if entry.state in lc.LIVE:
            raise EngineError(
                f"instance {instance_id!r} is {lc.STATE_NAMES[entry.state]}; only a completed, "
                "failed or cancelled instance can be restarted"
            )
        await self._append(r.make(r.RESTARTED, self._now(), instance_id))
        self._start(instance_id)
