"""Host: what the engine lends the parts it runs (Context, the runner).

Theory of operation. A workflow's Context and the runner that drives it are
parts of the engine, not its clients, but they need only a few of its
things: append a record (durable and applied before it returns), the
instance's index entry, a recorded value decoded (kept inline, or read back
by location), the codec, the engine's clock and its sleep, the
registered workflows and the cancel scope of a running instance, and the
gate every step attempt passes (``step_begins``: closed while the engine
stops with a grace period, see engine.py). ``Host``
holds exactly those, under public names, and nothing else; the Engine owns
one and is the only code that sets it up (at each start) and tears it down.

The replay of a memoised step is the hot path (about a microsecond): its
callers read ``host.index`` and ``host.codec`` once and then go straight to
the objects, no extra call per step.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._core import index as ix
from .._core import records as r
from .._core import typed
from .._core.codec import Codec, EncodeError
from .._core.errors import EngineError, JournalCorrupt, NotSerializable, UnknownInstance
from .._core.index import Index
from .clock import Clock
from .read_ahead import MISSING, ReadAhead
from .retry import RetryPolicy
from .waits import RunWaits, TaskExits

if TYPE_CHECKING:
    from .._backend.seam import Backend
    from .children import Children
    from .context import Context
    from .tracing import Tracing

Workflow = Callable[["Context"], Awaitable[Any]]

class Listener(Protocol):
    """A reader of an instance's events or status (events.py)."""

    def touched(self) -> None:
        """A record of the instance was applied (or the engine stopped)."""


# The records that end a step attempt (it is no longer running).
_STEP_OUTCOMES = frozenset({r.STEP_DONE, r.STEP_FAILED, r.ATTEMPT_FAILED})


class ValueUnreadable(BaseException):
    """A recorded value could not be read back (an I/O error, damage found
    on reading). Not the workflow's outcome: the instance stops as it is
    recorded and runs again at the next start. A BaseException, so that a
    workflow's ``except Exception`` cannot take it for its own error."""


class Host:
    """The engine's state its parts share, and the operations they may use."""

    __slots__ = (
        "_changed", "_idle", "_stepping", "ahead", "backend", "clock", "codec", "default_retry",
        "draining", "exits", "graceful", "halted", "index", "on_step_call",
        "reserved", "running", "scopes", "waits", "workflows",
        "listeners",
        "children",
        "tracer",
    )

    def __init__(self, clock: Clock, codec: Codec, inline_limit: int) -> None:
        self.clock = clock
        self.codec = codec
        self.index = Index(inline_limit)
        self.backend: Backend | None = None  # set while the engine runs
        self.workflows: dict[str, Workflow] = {}
        self.running: set[str] = set()  # instances with a runner task
        self.waits: dict[str, RunWaits] = {}  # the run of each instance in memory
        self.exits = TaskExits()  # a trio instrument while the engine runs (waits.py)
        # (instance, key) whose signal or suspension timeout is being
        # written; the event is set once it is applied.
        self.reserved: dict[tuple[str, str], trio.Event] = {}
        # Instances whose run stopped until the next start (a recorded value
        # unreadable), with why.
        self.halted: dict[str, str] = {}
        self.scopes: dict[str, trio.CancelScope] = {}  # runners inside a workflow
        self._changed: dict[str, trio.Event] = {}
        # Called with (instance, key) right before a step's function is
        # called (each attempt); memable_log.testing counts executions.
        self.on_step_call: Callable[[str, str], None] | None = None
        # The retry policy of steps that set none (the builder's default_retry).
        self.default_retry: RetryPolicy | None = None
        # The engine is stopping with a grace period: nothing new starts
        # (no runner, no step attempt); the steps in ``_stepping`` (instance
        # -> keys whose attempt began and whose outcome is not yet
        # recorded) may finish, and ``_idle`` is set once there are none.
        self.draining = False
        # Whether step attempts are tracked at all: only an engine with a
        # shutdown_timeout drains them (the step path pays nothing otherwise).
        self.graceful = False
        self._stepping: dict[str, set[str]] = {}
        self._idle: trio.Event | None = None
        # Readers of an instance's events or status (events.py), by
        # instance: each is touched after every append for it. Weak, so an
        # iterator dropped unfinished leaves nothing behind; empty while
        # nobody reads, so the step path pays one test.
        self.listeners: dict[str, weakref.WeakSet[Listener]] = {}
        # Children: start, wait, end, cancel (children.py); set by the Engine.
        self.children: Children | None = None
        # OpenTelemetry spans (tracing.py), if the builder turned them on.
        self.tracer: Tracing | None = None
        # Values of memoised steps kept by location, read ahead for a replay.
        self.ahead = ReadAhead()

    # -- the journal ----------------------------------------------------------

    def require(self) -> Backend:
        """The backend, or EngineError when the engine is not running."""
        backend = self.backend
        if backend is None:
            raise EngineError("the engine is not running: use it inside `async with engine:`")
        return backend

    async def append(self, rec: list[Any]) -> None:
        """Append a record durably; the index has it when this returns."""
        await self.require().append(rec)
        if self._stepping and rec[r.TYPE] in _STEP_OUTCOMES:
            self._step_ended(rec[r.INSTANCE], rec[r.KEY])
        if self.listeners:
            self.touch(rec[r.INSTANCE])

    async def append_ending(self, rec: list[Any]) -> None:
        """Append a record that ends the wait on its key (a signal, a timer
        fired, a timeout) with the key reserved meanwhile: two ends racing
        for one key are written one at a time (``reserved``)."""
        mark = (rec[r.INSTANCE], rec[r.KEY])
        self.reserved[mark] = done = trio.Event()
        try:
            await self.append(rec)
        finally:
            del self.reserved[mark]
            done.set()

    async def append_many(self, recs: list[list[Any]]) -> None:
        """Append records in order, in one batch (see Backend.append_many)."""
        await self.require().append_many(recs)
        if self.listeners:
            for instance_id in {rec[r.INSTANCE] for rec in recs}:
                self.touch(instance_id)

    def touch(self, instance_id: str) -> None:
        """Tell the instance's listeners that a record of it was applied."""
        listeners = self.listeners.get(instance_id)
        if listeners is not None:
            for listener in list(listeners):
                listener.touched()

    def now_ms(self) -> int:
        """The engine's wall clock, in milliseconds (what records carry)."""
        return self.clock.now_ms()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the engine's clock (virtual under trio's MockClock)."""
        await self.clock.sleep(seconds)

    async def sleep_until_ms(self, deadline_ms: int) -> None:
        """Sleep until the wall-clock deadline (ms), on the engine's clock."""
        await self.clock.sleep_until(deadline_ms / 1000)

    def entry(self, instance_id: str) -> ix.InstanceEntry:
        """The instance's index entry; UnknownInstance if there is none."""
        entry = self.index.instances.get(instance_id)
        if entry is None:
            raise UnknownInstance(instance_id)
        return entry

    # -- values ---------------------------------------------------------------

    def encode(self, value: Any, what: str) -> bytes:
        """``value`` as a blob; NotSerializable (naming ``what``) if it cannot be.

        A payload sent with no declared type (an input, a signal's) that the
        codec (and its hooks) cannot take is stored as typed values are:
        its dataclasses, datetimes, ... made plain (``typed.loose``)."""
        try:
            return self.codec.encode(value)
        except EncodeError as exc:
            try:
                return self.codec.encode(typed.loose(value))
            except EncodeError:
                raise NotSerializable(what, exc.type_name, exc.reason) from None

    async def value(self, where: ix.Entry, field: int) -> Any:
        """Decode a value kept inline (a blob) or at a location (``field`` of its record)."""
        if type(where) is bytes:
            return self.codec.decode(where)
        rec = await self.require().read(where)  # type: ignore[arg-type]
        return self.codec.decode(rec[field])

    async def recorded(self, loc: int) -> list[Any]:
        """The record at ``loc``, for a workflow's replay (see ValueUnreadable)."""
        try:
            return await self.require().read(loc)
        except (OSError, JournalCorrupt) as exc:
            raise ValueUnreadable(f"record at {ix.unpack_loc(loc)}: {exc}") from exc

    async def replayed(self, where: ix.Entry, field: int) -> Any:
        """Like ``value``, for a workflow's replay (see ValueUnreadable)."""
        if type(where) is bytes:
            return self.codec.decode(where)
        return self.codec.decode((await self.recorded(where))[field])  # type: ignore[arg-type]

    def held_step(self, instance_id: str, loc: int) -> Any:
        """The value of a memoised step kept by location if it was read
        ahead (read_ahead.py), else ``read_ahead.MISSING``: no coroutine,
        for the steps of a replay served from memory (most of them)."""
        blob = self.ahead.held(instance_id, loc)
        return blob if blob is MISSING else self.codec.decode(blob)

    async def replayed_step(self, instance_id: str, loc: int) -> Any:
        """The value of a memoised step kept by location, for a replay: read
        ahead with the instance's next steps (read_ahead.py)."""
        try:
            blob = await self.ahead.field(
                self.require(), self.index, instance_id, loc, r.STEP_DONE_VALUE
            )
        except (OSError, JournalCorrupt) as exc:
            raise ValueUnreadable(f"record at {ix.unpack_loc(loc)}: {exc}") from exc
        return self.codec.decode(blob)

    # -- steps running, for a graceful stop ------------------------------------

    async def step_begins(self, instance_id: str, key: str) -> None:
        """Called before each attempt of a step's function: the attempt
        counts as running until its outcome (``step_done``, ``step_failed``)
        is recorded, or the step comes back here. While the engine is
        stopping (``draining``) no attempt begins: this blocks until the
        engine's cancel ends it, and the step runs at the next start."""
        if self.draining:
            self._step_ended(instance_id, key)  # a retry waits here: not running
            await trio.sleep_forever()
        keys = self._stepping.get(instance_id)
        if keys is None:
            keys = self._stepping[instance_id] = set()
        keys.add(key)

    def run_ended(self, instance_id: str) -> None:
        """The instance's runner ended: none of its steps runs any more."""
        self.ahead.drop(instance_id)
        if self._stepping.pop(instance_id, None) is not None:
            self._check_idle()

    def _step_ended(self, instance_id: str, key: str) -> None:
        keys = self._stepping.get(instance_id)
        if keys is not None and key in keys:
            keys.discard(key)
            if not keys:
                del self._stepping[instance_id]
            self._check_idle()

    def _check_idle(self) -> None:
        if not self._stepping and self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Start no new work; return once no step attempt is running."""
        self.draining = True
        if self._stepping:
            self._idle = trio.Event()
            await self._idle.wait()

    # -- changes --------------------------------------------------------------

    def changed(self, instance_id: str) -> trio.Event:
        """An event set at the instance's next change of state (or engine stop)."""
        event = self._changed.get(instance_id)
        if event is None:
            event = self._changed[instance_id] = trio.Event()
        return event

    def notify(self, instance_id: str) -> None:
        """Wake whoever waits on ``changed(instance_id)``."""
        event = self._changed.pop(instance_id, None)
        if event is not None:
            event.set()

    def stopped(self) -> None:
        """The engine stopped: wake every waiter, forget every runner."""
        self.backend = None
        self.draining = False
        self._stepping.clear()
        self._idle = None
        self.running.clear()
        self.scopes.clear()
        self.waits.clear()
        self.reserved.clear()
        self.halted.clear()
        self.exits.runs.clear()
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        listeners, self.listeners = self.listeners, {}
        for group in listeners.values():
            for listener in list(group):
                listener.touched()
