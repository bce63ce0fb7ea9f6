"""The Engine: lifecycle, and the calls a program makes on instances.

Theory of operation. ``async with engine:`` opens the backend (lock, scan,
recovery; the index is rebuilt by the same ``apply`` that follows every
append), then starts, in the engine's own nursery, the timer poller, a
runner for every instance the journal shows running and the backend's own
services (compaction, hand-overs from other processes). Leaving the block
cancels that nursery (runners stop where they are; the journal keeps their
state for the next start) and closes the backend.

Two settings change that life (docs/design.md, "The engine's life"). With
``resume_on_start(False)`` the start resumes nothing and arms no deadline:
only explicit calls (invoke, signal, wake, cancel, restart) start runners.
With ``shutdown_timeout(s)`` leaving first *drains*: ``host.draining`` is
set, so no runner, run or step attempt starts any more (``_start``, the
runner's loop and ``Host.step_begins`` check it), and the exit waits up to
``s`` seconds for the step attempts already running to have their outcome
recorded (``Host.drain``), then cancels the nursery as without it.

A *runner* is one task per live instance while it executes (see runner.py).
Suspended and sleeping instances have no task: only their index entry and,
with a deadline, a heap entry in the poller.

The engine runs over a backend (backend.py: the seam; the local journal is
_backend/local.py), which holds the records and applies each to the index
before an append returns, so the index is always what a restart would
rebuild. The parts the engine runs (Context, the runner) reach it only
through its Host (host.py), which names what they may use. Calls that must not write twice under
concurrency (``invoke`` of one id, two signals for one key) reserve their
key in memory while their append is in flight.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import trio

from .._backend.seam import Backend, Shared, known, refusal, take
from .._core import lifecycle as lc
from .._core import records as r
from .._core.codec import Codec
from .._core.errors import (
    EngineError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowFailed,
)
from .._core.index import Index
from .._core.listing import select
from .._core.records import check_key
from .._core.signals import check_signal
from .._core.status import Event, InstanceStatus, Schedule, StepStatus, status_of, steps_of
from .capacity import Limits
from .children import Children
from .clock import Clock
from .debounce import Debouncer
from .events import EventStream, StatusWatch, event
from .flow import FlowControl
from .host import Host, Workflow
from .retry import RetryPolicy
from .runner import run_instance
from .schedules import Schedules
from .spread import Spread
from .timed import ENGINE_TIMER
from .timers import TimerQueue

if TYPE_CHECKING:
    from .builder import EngineBuilder
    from .tracing import Tracing

_T = TypeVar("_T")
logger = logging.getLogger("memable_log")


class Engine:
    """A durable-execution engine over one journal. Build it with ``Engine.builder()``.

    An engine runs inside one ``trio.run``, on its thread: call it from
    tasks of that run. From another thread (a web framework's worker, a
    thread with its own ``trio.run``), go through trio, with the token of
    the engine's run (``trio.lowlevel.current_trio_token()`` taken inside
    ``async with engine:``)::

        instance_id = trio.from_thread.run(engine.invoke, "wf", trio_token=token)
        status = trio.from_thread.run_sync(engine.status, instance_id, trio_token=token)

    A call made directly from another thread raises EngineError at once and
    writes nothing.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock,
        codec: Codec,
        max_running: int | None,
        inline_limit: int,
        default_retry: RetryPolicy | None = None,
        shutdown_timeout: float | None = None,
        resume_on_start: bool = True,
        tracer: Tracing | None = None,
    ) -> None:
        self._backend = backend
        self._max_running = max_running
        self._shutdown_timeout = shutdown_timeout
        self._resume_on_start = resume_on_start
        self._host = Host(clock, codec, inline_limit)
        self._host.graceful = shutdown_timeout is not None
        self._host.default_retry = default_retry
        self._host.tracer = tracer
        # Flow control (SPEC-NEXT §4): limits by workflow, slots, the queue,
        # timeouts; every path that creates or wakes an instance asks it.
        self._flow = FlowControl(self._host, self._run, self._cancel)
        self._host.children = Children(self._host, self._flow, self._start, self._wait_ended)
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._timers: TimerQueue | None = None
        self._orphans: dict[str, set[str]] = {}  # workflow name -> instances waiting for it
        self._creating: dict[str, trio.Event] = {}
        # The thread the engine runs in (while it runs): every call must
        # come from it (``_here``).
        self._thread: int | None = None
        # Schedules and debounce (SPEC-NEXT §4, time): engine-level starts.
        self._schedules = Schedules(self._host, self._flow, self._start)
        self._debounce = Debouncer(self._host, self._flow, self._start)
        # A shared journal: instances queued in other engines, run here when
        # this one has room (SPEC-NEXT §9).
        self._spread = Spread(self._host, lambda: self._flow.capacity)

    @staticmethod
    def builder() -> EngineBuilder:
        """A builder: ``.open(path)`` or ``.in_memory()``, settings, ``.build()``."""
        from .builder import EngineBuilder

        return EngineBuilder()

    # -- lifecycle ----------------------------------------------------------

    def register(
        self,
        name: str,
        fn: Workflow,
        *,
        max_running: int | None = None,
        key: Callable[[Any], str] | None = None,
        max_running_per_key: int | None = None,
        rate: tuple[int, float] | None = None,
        timeout: float | None = None,
        retention: float | timedelta | None = None,
    ) -> None:
        """Register workflow ``fn`` under ``name`` (before or after start).

        Flow control (all optional): ``max_running`` caps the instances of
        this workflow that run at once (suspended, sleeping and waiting ones
        hold no slot); ``key``, a function of the input returning a str, with
        ``max_running_per_key`` caps them per key; ``rate=(n, seconds)``
        allows at most ``n`` starts in any ``seconds``. The limits count
        every instance of the workflow, whether made by ``invoke``, a
        schedule, ``debounce`` or a parent (``ctx.child``). An instance with
        no slot is ``queued`` until one frees; a parent waiting for its
        children holds none, so children queued behind it run. ``timeout`` (seconds) cancels an
        instance not finished that long after it was created
        (``WorkflowCancelled.reason == "timeout"``). ``retention`` (seconds or
        a timedelta; None keeps the builder's) is how long its finished
        instances are kept before compaction drops them.

        Raises TypeError / ValueError naming a bad setting, EngineError for
        a name already registered.
        """
        if type(name) is not str or not name:
            raise TypeError(f"a workflow name must be a non-empty str, not {name!r}")
        if not callable(fn):
            raise TypeError(f"workflow {name!r} must be an async function taking a Context")
        workflows = self._host.workflows
        if name in workflows:
            raise EngineError(f"workflow {name!r} is already registered; names are unique")
        if isinstance(retention, timedelta):
            retention = retention.total_seconds()
        self._flow.register(name, Limits(
            max_running=max_running, key=key, max_running_per_key=max_running_per_key,
            rate=rate, timeout=timeout, retention=retention,
        ))
        if retention is not None:  # overrides the builder's for its instances
            self._backend.retention_by_workflow[name] = round(retention * 1000)
        workflows[name] = fn
        for instance_id in sorted(self._orphans.pop(name, ())):
            self._start(instance_id)

    async def __aenter__(self) -> Engine:
        host = self._host
        if host.backend is not None:
            raise EngineError("this engine is already running")
        host.clock.start()
        host.index = Index(host.index.inline_limit)
        backend = self._backend
        await backend.open(host.index)  # JournalLocked / JournalCorrupt surface as themselves
        try:
            self._nursery_cm = trio.open_nursery()
            self._nursery = await self._nursery_cm.__aenter__()
        except BaseException:
            await backend.close()
            raise
        host.backend = backend
        self._thread = threading.get_ident()
        trio.lowlevel.add_instrument(host.exits)
        try:
            self._timers = TimerQueue(host.clock, self._on_deadline)
            self._nursery.start_soon(self._timers.run)
            self._flow.open(self._nursery, self._timers, self._max_running)
            await self._children().repair()  # what a torn batch of children left
            await self._flow.repair(self._backend.owns)  # keys a torn invoke batch lost
            if self._resume_on_start:
                self._resume_all()
            else:
                self._report_not_resumed()
            now = host.now_ms()
            self._schedules.started(self._nursery, self._timers, now, self._resume_on_start)
            self._debounce.started(self._nursery, self._timers, self._resume_on_start)
            if isinstance(backend, Shared):
                self._nursery.start_soon(self._spread.run, backend)
            await self._nursery.start(backend.serve, _Calls(self))
        except BaseException as exc:
            # Close the nursery and the backend, or trio's nursery stack is
            # left corrupt (a failed append while applying hand-overs, say).
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _resume_all(self) -> None:
        assert self._timers is not None
        queued = []
        flow = self._flow
        finished = lc.FINISHED  # most of a long-lived journal: one test each
        for instance_id, entry in self._host.index.instances.items():
            state = entry.state
            if state in finished:
                continue
            if state == lc.RUNNING:
                self._start(instance_id)
            elif state in lc.PARKED and entry.deadline_ms is not None:
                self._timers.push(entry.deadline_ms, instance_id)
            elif state == lc.QUEUED:
                queued.append(instance_id)
            if self._backend.owns(instance_id):
                flow.arm(instance_id, entry)  # its timeout: the owner's to fire
        # The running ones had their slots: they take them first.
        for instance_id in queued:
            self._start(instance_id)
            self._spread.seen(instance_id)  # another engine's: this one may take it
        if self._orphans:
            for name, ids in self._orphans.items():
                logger.warning(
                    "%d instance(s) of workflow %r wait for it to be registered", len(ids), name
                )

    def _report_not_resumed(self) -> None:
        instances = self._host.index.instances.values()
        interrupted = sum(1 for entry in instances if entry.state == lc.RUNNING)
        timed = sum(
            1 for entry in instances if entry.state in lc.PARKED and entry.deadline_ms is not None
        )
        if interrupted or timed:
            logger.info(
                "resume_on_start(False): %d interrupted instance(s) not resumed and %d "
                "deadline(s) not armed until a start that resumes", interrupted, timed,
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The backend stays set until the runners are gone: one resumed
        # just before the cancel runs on to its next append, and must get
        # Cancelled there, not "the engine is not running".
        assert self._nursery is not None
        try:
            # A KeyboardInterrupt, or the caller's own cancellation, stops
            # at once: only an ordinary exit (or an Exception) drains.
            grace = self._shutdown_timeout
            self._flow.pause()
            if grace is not None and (exc is None or isinstance(exc, Exception)):
                with trio.move_on_after(grace) as waited:
                    await self._host.drain()
                if waited.cancelled_caught:
                    logger.info("shutdown: steps still running after %gs are cancelled; "
                                "they run again at the next start", grace)
        finally:
            self._nursery.cancel_scope.cancel()
            await self._close()

    async def _close(self) -> None:
        assert self._nursery is not None
        try:
            # The body's own exception propagates by itself; the nursery
            # only reports failures of the engine's tasks.
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            self._nursery = None
            self._timers = None
            self._flow.close()
            self._schedules.end()
            self._debounce.end()
            self._spread.clear()
            self._orphans.clear()
            trio.lowlevel.remove_instrument(self._host.exits)
            self._thread = None
            self._host.stopped()
            await self._backend.close()

    # -- the runners ----------------------------------------------------------

    def _start(self, instance_id: str) -> None:
        """Run the instance now unless a runner already has it, or queue it
        if capacity (flow.py) gives it no slot."""
        host = self._host
        if self._nursery is None or host.draining or instance_id in host.running:
            return
        if not self._backend.owns(instance_id):  # another engine runs it (PostgreSQL)
            # A slot taken for its creation, which lost the id to another
            # engine's (or for a wake it does not own): given back.
            self._flow.unclaim(instance_id)
            return
        entry = host.index.instances[instance_id]
        if entry.workflow not in host.workflows:
            self._orphans.setdefault(entry.workflow, set()).add(instance_id)
            return
        self._flow.arm(instance_id, entry)  # its timeout (a child's, say), once
        if self._flow.admit(instance_id, entry):
            self._run(instance_id)

    def _run(self, instance_id: str) -> None:
        """Start a runner for an instance that has its slot, if this engine
        owns it (a shared journal: never one another engine runs)."""
        host = self._host
        assert self._nursery is not None
        if not self._backend.owns(instance_id):
            logger.error("instance %s: not started, another engine holds it", instance_id,
                         extra={"instance_id": instance_id})
            self._flow.released(instance_id)
            return
        host.running.add(instance_id)
        self._nursery.start_soon(
            run_instance, host, instance_id, self._after_run, self._flow,
            name=f"memable:{instance_id}",
        )

    def _on_deadline(self, instance_id: str, deadline_ms: int) -> None:
        if instance_id == ENGINE_TIMER:  # a tick, a debounced start, a flow deadline (timed.py)
            now = self._host.now_ms()
            self._schedules.fire(now)
            self._debounce.fire(now)
            self._flow.fire(now)
            return
        entry = self._host.index.instances.get(instance_id)
        if entry is not None and entry.state in lc.PARKED and entry.deadline_ms == deadline_ms:
            self._start(instance_id)

    def _wait_ended(self, instance_id: str, key: str) -> None:
        """The wait on ``key`` ended (its record applied): a branch blocked on
        it in memory goes on in place; a parked instance it woke runs."""
        host = self._host
        run = host.waits.get(instance_id)
        if run is not None:
            run.wake(key)
        if host.entry(instance_id).state == lc.RUNNING:
            self._start(instance_id)

    def _applied(self, rec: list[Any]) -> None:
        """A record another engine wrote, applied by the backend (seam.py)."""
        iid = rec[r.INSTANCE]
        host = self._host
        if host.listeners:
            host.touch(iid)
        host.notify(iid)
        if rec[r.TYPE] in (r.SIGNALLED, r.TIMER_FIRED, r.CHILD_ENDED) and self._backend.owns(iid):
            self._wait_ended(iid, rec[r.KEY])
        if rec[r.TYPE] == r.QUEUED or iid in self._spread:
            self._spread.seen(iid)

    def _claimed(self, instance_ids: list[str]) -> None:
        """Instances taken over from an engine whose lease expired, or queued
        there and taken to run here (seam.py)."""
        for iid in instance_ids:
            self._spread.seen(iid)  # this engine's now
            entry = self._host.index.instances.get(iid)
            if entry is None or entry.state not in lc.LIVE or self._timers is None:
                continue
            if entry.state in lc.PARKED:
                if entry.deadline_ms is not None:
                    self._timers.push(entry.deadline_ms, iid)
                self._flow.arm(iid, entry)
            elif iid in self._host.running and self._nursery is not None:
                # Its runner from before it was lost (an engine that rejoined)
                # is still ending: run it once that one has gone.
                self._nursery.start_soon(self._claimed_after_run, iid)
            else:
                self._start(iid)

    async def _claimed_after_run(self, instance_id: str) -> None:
        host = self._host
        while instance_id in host.running:
            await host.changed(instance_id).wait()
        self._claimed([instance_id])

    def _lost(self, instance_ids: list[str]) -> None:
        """Instances this engine must stop running now (seam.py)."""
        for iid in instance_ids:
            scope = self._host.scopes.get(iid)
            if scope is not None:
                scope.cancel()
            self._flow.dropped(iid)  # out of this engine's queue, if it was there
            self._spread.seen(iid)  # queued: this engine may take it back

    def _rejoined(self) -> None:
        """The backend joined a shared journal again (seam.py)."""
        self._schedules.rearm()
        self._debounce.rearm()

    def _after_run(self, instance_id: str) -> None:
        """Called by a runner as it ends: arm the deadline, wake waiters."""
        self._flow.released(instance_id)
        self._spread.wake()  # a slot here: instances queued in other engines may take it
        entry = self._host.index.instances[instance_id]
        timers = self._timers  # `is not None`: an empty TimerQueue is falsy
        if entry.state in lc.PARKED and entry.deadline_ms is not None and timers is not None:
            timers.push(entry.deadline_ms, instance_id)
        self._host.notify(instance_id)

    # -- the public calls ---------------------------------------------------

    def _here(self) -> Host:
        """The host, for a call made where the engine runs: its own trio run,
        on its own thread. A call from another thread (its own ``trio.run``,
        or none) would corrupt the engine's state: it is refused at once,
        before anything is written."""
        if self._thread is not None and threading.get_ident() != self._thread:
            raise EngineError(
                "this engine runs in another thread's trio run: call it there, or from "
                "this thread through trio.from_thread.run(engine.<call>, ..., "
                "trio_token=...) with that run's token (see docs/api.md)"
            )
        return self._host

    async def invoke(
        self,
        name: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        priority: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Durably record a new instance of workflow ``name``, start it, return its id.

        An existing ``instance_id`` is returned as it is and nothing starts;
        if it is live and has no priority or timeout of its own, those given
        here are recorded (an invoke retried after a crash cut its batch).
        If its workflow has no free slot (``register(max_running=...)``) the
        instance is ``queued``: queued instances start in creation order,
        higher ``priority`` first. ``timeout`` (seconds) cancels it if it
        has not finished that long after now (``WorkflowCancelled.reason
        == "timeout"``), instead of its workflow's timeout.
        Raises UnknownWorkflow (nothing written), NotSerializable, and
        TypeError / ValueError for a bad priority or timeout.
        """
        host = self._here()
        backend = host.require()
        if name not in host.workflows:
            raise UnknownWorkflow(name, list(host.workflows))
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, not {priority!r}")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
            raise ValueError(f"timeout must be seconds >= 0 or None, not {timeout!r}")
        if instance_id is None:
            instance_id = secrets.token_hex(8)
        elif type(instance_id) is not str or not instance_id:
            raise TypeError(f"instance_id must be a non-empty str, not {instance_id!r}")
        while instance_id in self._creating:
            await self._creating[instance_id].wait()
        # Being compacted away: gone for good, or back if that fails.
        await backend.settled(instance_id)
        flow = self._flow
        now = host.now_ms()
        deadline = None if timeout is None else now + round(timeout * 1000)
        if instance_id in host.index.instances:
            if backend.owns(instance_id):  # another engine's instance keeps its options
                await flow.attach(instance_id, priority, deadline)
            return instance_id
        blob = host.encode(input, f"input of workflow {name!r}")
        key = flow.key_of(name, input)
        batch = flow.creation(  # + options, + queued if it gets no slot
            r.make(r.CREATED, now, instance_id, name, blob), name, key, priority, deadline
        )
        self._creating[instance_id] = created = trio.Event()
        try:
            if len(batch) == 1:
                await host.append(batch[0])
            else:
                await host.append_many(batch)
        except BaseException:
            flow.unclaim(instance_id)  # the slot it claimed, if any
            raise
        finally:
            del self._creating[instance_id]
            created.set()
        logger.info("instance %s of %r created", instance_id, name,
                    extra={"instance_id": instance_id})
        entry = host.index.instances[instance_id]
        if backend.owns(instance_id):  # not when another engine created it meanwhile
            flow.arm(instance_id, entry)
        self._start(instance_id)
        return instance_id

    async def wait(self, instance_id: str) -> Any:
        """The workflow's return value, once it has finished.

        Raises WorkflowFailed, WorkflowCancelled, UnknownInstance;
        JournalFailed if the journal failed, and EngineError if the
        instance stopped because a recorded value cannot be read (it runs
        again at the next start) rather than wait for ever.
        """
        host = self._here()
        while True:
            backend = host.require()
            entry = host.entry(instance_id)
            if entry.state == lc.COMPLETED:
                assert entry.outcome is not None
                return await host.value(entry.outcome, r.COMPLETED_RESULT)
            if entry.state == lc.FAILED:
                assert isinstance(entry.outcome, int)
                rec = await backend.read(entry.outcome)
                raise WorkflowFailed(
                    instance_id, rec[r.FAILED_TYPE], rec[r.FAILED_MESSAGE], rec[r.FAILED_TRACEBACK]
                )
            if entry.state == lc.CANCELLED:  # its reason kept as its error (index.py)
                raise WorkflowCancelled(instance_id, entry.error[1] if entry.error else None)
            if backend.failed is not None:
                raise refusal(backend)
            halted = host.halted.get(instance_id)
            if halted is not None and instance_id not in host.running:
                raise EngineError(
                    f"instance {instance_id!r} stopped: a recorded value cannot be read "
                    f"({halted}); it runs again at the next start of the engine"
                )
            await host.changed(instance_id).wait()

    @overload
    async def result(self, instance_id: str, type: type[_T]) -> _T: ...
    @overload
    async def result(self, instance_id: str, type: object) -> Any: ...
    async def result(self, instance_id: str, type: object) -> Any:
        """Like ``wait``, with the value decoded into ``type`` (docs/values.md);
        for mypy the result has that type.

        Raises TypeMismatch, naming the instance, if the result does not fit.
        """
        from .._core import typed
        from .._core.errors import TypeMismatch

        value = await self.wait(instance_id)
        try:
            return typed.decode_as(type, value)
        except typed.Mismatch as exc:
            raise TypeMismatch(f"result of instance {instance_id!r}", typed.name_of(type),
                               str(exc)) from None

    def status(self, instance_id: str) -> InstanceStatus:
        """The instance's state as the journal records it (UnknownInstance if none)."""
        return status_of(instance_id, self._here().entry(instance_id))

    # -- talking to the outside (events.py) --

    async def event(
        self, instance_id: str, key: str, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> Any:
        """The value the instance published under ``key`` (``ctx.publish``),
        waiting for it if needed.

        Raises UnknownInstance; TimeoutError after ``timeout`` seconds (on
        trio's clock); EngineError if the instance finishes without
        publishing ``key``, or the engine stops meanwhile.
        """
        return await event(self._here(), instance_id, key, timeout)

    def events(self, instance_id: str, *, after: int | None = None) -> AsyncIterator[Event]:
        """An async iterator of the instance's events (``Event``), in publish
        order, from the one after seq ``after`` (None: from the first).

        It yields new events as they are published (woken, not polling) and
        ends once the instance has finished and every event was yielded. A
        reader that comes back with the last ``seq`` it saw misses nothing
        and sees nothing twice. Raises UnknownInstance at once; EngineError
        if the engine stops while it is read.
        """
        return EventStream(self._here(), instance_id, after)

    def watch(self, instance_id: str) -> AsyncIterator[InstanceStatus]:
        """An async iterator of ``InstanceStatus``: the current status, then
        one per change of state, status text or step count, in order; it
        ends after a finished state (at once for a finished instance).

        Raises UnknownInstance at once; EngineError if the engine stops
        while it is read.
        """
        return StatusWatch(self._here(), instance_id)

    def steps(self, instance_id: str) -> list[StepStatus]:
        """Every memoised step of the instance, in the order first written:
        its state, times, attempts and error (UnknownInstance if none)."""
        return steps_of(self._here().entry(instance_id))

    def instances(
        self,
        state: str | None = None,
        *,
        workflow: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[InstanceStatus]:
        """The instances that pass every filter given, in creation order.

        ``state`` is a state name; ``workflow`` a workflow name; ``prefix``
        the start of the instance id; ``since`` (inclusive) and ``until``
        (exclusive) bound ``created_at`` (timezone-aware datetimes);
        ``limit`` caps how many are returned (the first ones, or the newest
        with ``newest_first=True``). Raises ValueError (an unknown state, a
        naive datetime, a negative limit) and TypeError before reading.
        """
        return select(
            self._here().index.instances, state, workflow=workflow, prefix=prefix,
            since=since, until=until, limit=limit, newest_first=newest_first,
        )

    async def signal(self, workflow: str, instance_id: str, key: str, payload: Any = None) -> None:
        """Durably deliver ``payload`` to suspension ``key`` and wake the instance.

        A signal for a key not reached yet is kept for it. Raises
        UnknownInstance (also when ``workflow`` does not match),
        SignalRefused (the instance finished; the key is a timer's or a
        step's) and SignalAlreadyDelivered (a second signal, or after a
        timeout); in each case nothing is written.
        """
        host = self._here()
        backend = host.require()
        if backend.failed is not None:  # nothing may be written: say so first
            raise refusal(backend)
        await self._known(instance_id)  # created by another engine just now?
        check_signal(host.index, workflow, instance_id, key, host.now_ms(), host.reserved)
        blob = host.encode(payload, f"signal {key!r}")
        rec = r.make(r.SIGNALLED, host.now_ms(), instance_id, key, blob)
        if host.tracer is None:
            await self._flow.append_waking(rec)
        else:
            with host.tracer.signal(host.index.instances, workflow, instance_id, key):
                await self._flow.append_waking(rec)
        logger.info("instance %s: signal %r delivered", instance_id, key,
                    extra={"instance_id": instance_id, "key": key})
        self._wait_ended(instance_id, key)

    async def wake(self, instance_id: str, key: str) -> None:
        """Fire the pending timer ``key`` now, as if its deadline had passed.

        Durably records that the timer fired; a parked instance waiting on
        it runs (it returns from ``ctx.timer``), a branch blocked on it in
        memory goes on, and a timer registered but not reached yet in this
        run returns at once when the workflow reaches it. Raises
        UnknownInstance, and EngineError when the instance finished, the
        timer already fired, or ``key`` is not a timer (a suspension, a
        step, or never reached); in each case nothing is written.
        """
        host = self._here()
        backend = host.require()
        if backend.failed is not None:
            raise refusal(backend)
        await self._known(instance_id)
        host.entry(instance_id)
        check_key(key)
        await take(backend, instance_id)
        entry = host.entry(instance_id)
        where = f"wake: instance {instance_id!r}"
        if entry.state in lc.FINISHED:
            raise EngineError(
                f"{where} is {lc.STATE_NAMES[entry.state]}: it has no pending timer to fire"
            )
        ended = entry.done_waits.get(key) if entry.done_waits is not None else None
        if ended == r.TIMER_FIRED or (instance_id, key) in host.reserved:
            raise EngineError(f"{where}: timer {key!r} already fired")
        wait = entry.waits.get(key) if entry.waits is not None else None
        if wait is None or wait[0] != lc.WAIT_TIMER:
            if wait is not None or ended is not None or (
                entry.signals is not None and key in entry.signals
            ):
                what = "a suspension (signal it with engine.signal)"
            elif entry.has_step(key):
                what = "a step"
            else:
                what = "not a timer the instance has reached"
            raise EngineError(f"{where}: key {key!r} is {what}, not a pending timer")
        await self._flow.append_waking(r.make(r.TIMER_FIRED, host.now_ms(), instance_id, key))
        logger.info("instance %s: timer %r woken", instance_id, key,
                    extra={"instance_id": instance_id, "key": key})
        self._wait_ended(instance_id, key)

    # -- schedules and debounce (schedules.py, debounce.py) --

    async def schedule(
        self, name: str, workflow: str, *, cron: str, input: Any = None, catch_up: bool = False
    ) -> None:
        """Durably schedule ``workflow``: each tick of ``cron`` (5-field, UTC)
        starts one instance with ``input``, id ``f"{name}@{tick:%Y-%m-%dT%H:%M:%SZ}"``.

        A tick never runs twice, also across restarts. Ticks that fell while
        no engine ran are skipped, or with ``catch_up=True`` all started at
        the next start, oldest first; a tick due while the engine ran whose
        start a crash lost (it is before the journal's last durable record)
        is started either way. An existing schedule of that name is
        replaced (its ticks from now on), unless every argument is the same:
        then nothing is written and its ticks go on. Needs the ``cron``
        extra (EngineError without it). Raises UnknownWorkflow, ValueError
        (a bad cron expression, a name with characters not allowed in an
        instance id) and NotSerializable; in each case nothing is written.
        """
        self._here()
        await self._schedules.schedule(name, workflow, cron, input, catch_up)

    async def unschedule(self, name: str) -> None:
        """Durably remove schedule ``name``: no tick of it starts any more
        (EngineError, nothing written, if there is no such schedule)."""
        self._here()
        await self._schedules.unschedule(name)

    def schedules(self) -> list[Schedule]:
        """Every schedule, by name, with its next tick."""
        self._here()
        return self._schedules.list()

    async def debounce(
        self, workflow: str, key: str, *, delay: float, input: Any = None
    ) -> str:
        """Start one instance of ``workflow`` once ``delay`` seconds pass with
        no further call for the same ``key``; return its id,
        ``f"{workflow}~{key}~{n}"`` (``n`` from 1 per key).

        A call while a start is pending replaces its input, pushes the start
        back to ``delay`` from now and returns the same id; the first call
        after a start begins the next ``n``. Durable: a restart keeps the
        pending start (started at once if it is overdue). Raises
        UnknownWorkflow, TypeError/ValueError (a key with characters not
        allowed in an instance id, ``delay`` not above 0) and
        NotSerializable; in each case nothing is written.
        """
        self._here()
        return await self._debounce.debounce(workflow, key, delay, input)

    async def cancel(self, instance_id: str) -> None:
        """Durably mark the instance cancelled and stop it if it runs.

        Every live descendant (its children, theirs, ...) is cancelled with
        it, in one batch; a cancelled child's parent is told (``wait_child``
        raises WorkflowCancelled).
        """
        host = self._here()
        await self._known(instance_id)
        host.entry(instance_id)
        await take(host.require(), instance_id, resume=False)  # another engine's: now ours
        entry = host.entry(instance_id)
        if entry.state not in lc.LIVE:
            return
        await self._cancel(instance_id, None)

    async def _cancel(self, instance_id: str, reason: str | None) -> None:
        host = self._host
        for iid in await self._children().cancel(instance_id, reason):
            scope = host.scopes.get(iid)
            if scope is not None:
                scope.cancel()
            self._flow.dropped(iid)
            host.notify(iid)

    async def _known(self, instance_id: str) -> None:
        """An instance this engine does not know may be one another engine
        created a moment ago (a shared journal): read the log first."""
        backend = self._host.backend
        if backend is not None:
            await known(backend, self._host.index, instance_id)

    def _children(self) -> Children:
        children = self._host.children
        assert children is not None
        return children

    async def forget(self, instance_id: str, key_or_prefix: str) -> None:
        """Durably forget memoised step outcomes: ``key``, or all under ``prefix*``."""
        host = self._here()
        await self._known(instance_id)
        host.entry(instance_id)
        if type(key_or_prefix) is not str or not key_or_prefix:
            raise TypeError(f"forget takes a non-empty str key or prefix*, not {key_or_prefix!r}")
        await take(host.require(), instance_id)
        await host.append(r.make(r.FORGOT, host.now_ms(), instance_id, key_or_prefix))

    async def restart(self, instance_id: str) -> None:
        """Run a finished instance again from the top (memoised steps stay)."""
        host = self._here()
        await self._known(instance_id)
        if host.entry(instance_id).state not in lc.LIVE:  # else refused, below
            await take(host.require(), instance_id)
        entry = host.entry(instance_id)
        if entry.state in lc.LIVE:
            raise EngineError(
                f"instance {instance_id!r} is {lc.STATE_NAMES[entry.state]}; only a completed, "
                "failed or cancelled instance can be restarted"
            )
        await self._flow.append_waking(r.make(r.RESTARTED, host.now_ms(), instance_id), None)
        self._start(instance_id)


class _Calls:
    """The engine as its backend's background work sees it (EngineCalls):
    its public operations, and the hooks of a shared journal."""

    def __init__(self, engine: Engine) -> None:
        self.signal = engine.signal
        self.invoke = engine.invoke
        self.cancel = engine.cancel
        self.restart = engine.restart
        self.forget = engine.forget
        self.status = engine.status
        self.applied = engine._applied
        self.claimed = engine._claimed
        self.lost = engine._lost
        self.rejoined = engine._rejoined


def host_of(engine: Engine) -> Host:
    """The engine's Host, for memable_log.testing (its step counter and change events)."""
    return engine._host
