"""Durable schedules: ``engine.schedule``, ``unschedule``, ``schedules``.

Theory of operation (docs/design.md, "Schedules and debounce"). A schedule
is engine-level state in the index (``index.schedules``: name -> workflow,
cron, input blob, catch_up, ``after_ms``), written as ``schedule_set`` and
``schedule_removed`` records. Its ticks are the cron expression's times
after its *cursor*: ``after_ms`` (when it was set, then each tick started),
raised for a schedule without ``catch_up`` to just before this engine's
start, so ticks missed while no engine ran are skipped. Only those: a tick
at or before the time of the journal's last durable record (as this start
found it) fell while an engine was alive, so its batch was lost (a power
cut) rather than never due; it still starts.

The next tick is a deadline on the engine's poller (timed.py). When it is
due, a task of the engine's nursery starts every due tick in order, each
with one batch, the instance's ``created`` (with its ``options`` and
``queued`` as flow control decides: ``FlowControl.creation``, as for
``invoke``) then ``schedule_ticked``, and a checkpoint between ticks: a
tick is in the journal whole or not at all, and its instance id is the
tick, so it never starts twice; after a crash the tick whose batch was lost
is still due and starts at the next start (also without ``catch_up``: it
fell before the last durable record). Ticks of one name are written under
its lock, so a ``schedule`` replacing it or an ``unschedule`` falls between
two ticks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from .._backend.seam import refusal
from .._core import records as r
from .._core.errors import EngineError, JournalClosed, JournalFailed, UnknownWorkflow
from .._core.index import Index, ScheduleEntry
from .._core.status import Schedule, from_ms
from . import cron
from .flow import FlowControl
from .host import Host
from .timed import KeyedLocks, Timed

logger = logging.getLogger("memable_log")

MAX_NAME = 200


def check_name(value: object, what: str, forbidden: str) -> str:
    """``value`` if it can be part of an instance id; else TypeError/ValueError.

    Non-empty, at most MAX_NAME characters, printable, no whitespace, and
    none of ``/`` (a child id's separator), ``*`` (a forget's prefix) and
    ``forbidden`` (the separator of the ids it makes).
    """
    if type(value) is not str or not value:
        raise TypeError(f"a {what} must be a non-empty str, not {value!r}")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} {value[:40]!r}... is longer than {MAX_NAME} characters")
    bad = sorted({c for c in value if not c.isprintable() or c.isspace() or c in "/*" + forbidden})
    if bad:
        raise ValueError(
            f"{what} {value!r} has characters not allowed in an instance id: "
            f"{', '.join(map(repr, bad))} (no whitespace, control characters, "
            f"'/', '*' or {forbidden!r})"
        )
    return value


def _last_record_ms(index: Index) -> int:
    """The time of the journal's latest record, as far as the index tells:
    its instances' latest records and its schedules' latest ticks or sets."""
    last = max((entry.updated_ms for entry in index.instances.values()), default=0)
    return max(last, max((e.after_ms for e in index.schedules.values()), default=0))


class Schedules(Timed[str]):
    """The engine's schedules: its calls, and its ticks."""

    def __init__(self, host: Host, flow: FlowControl, start: Callable[[str], None]) -> None:
        super().__init__()
        self._host = host
        self._flow = flow
        self._start = start
        self._locks: KeyedLocks[str] = KeyedLocks()
        self._ticking: set[str] = set()  # names a tick task is working on
        self._started_ms = 0  # this engine's start: ticks before it are missed
        self._alive_ms = 0  # the last durable record at the start: ticks to then were due

    def started(self, nursery: trio.Nursery, timers: Any, now_ms: int, arm: bool) -> None:
        """The engine started at ``now_ms``; ``arm``: arm every schedule's next tick."""
        self.begin(nursery, timers)
        self._started_ms = now_ms
        index = self._host.index
        schedules = index.schedules
        if not arm or not schedules:
            return
        if not all(entry.catch_up for entry in schedules.values()):
            self._alive_ms = _last_record_ms(index)
        if not cron.available():
            logger.error("%d schedule(s) are not armed: %s", len(schedules), cron.MISSING)
            return
        for name in schedules:
            self._arm_next(name)

    def rearm(self) -> None:
        """Arm every schedule's next tick again: the engine rejoined a shared
        journal, and a tick refused while it was out is due again."""
        if self.nursery is not None and cron.available():
            for name in self._host.index.schedules:
                self._arm_next(name)

    # -- the calls -----------------------------------------------------------

    async def schedule(
        self, name: str, workflow: str, cron_expr: str, value: Any, catch_up: bool
    ) -> None:
        host = self._host
        backend = host.require()
        check_name(name, "schedule name", "@")
        if type(workflow) is not str or workflow not in host.workflows:
            raise UnknownWorkflow(workflow, list(host.workflows))
        cron.check(cron_expr)
        if type(catch_up) is not bool:
            raise TypeError(f"catch_up must be True or False, not {catch_up!r}")
        blob = host.encode(value, f"input of schedule {name!r}")
        if backend.failed is not None:
            raise refusal(backend)
        async with self._locks.hold(name):
            old = host.index.schedules.get(name)
            if old is not None and (old.workflow, old.cron, old.input, old.catch_up) == (
                workflow, cron_expr, blob, catch_up
            ):
                return  # declared again as it is: its ticks go on from where they are
            now = host.now_ms()
            await host.append(r.make(
                r.SCHEDULE_SET, now, r.ENGINE, name, workflow, cron_expr, blob, catch_up, now
            ))
        logger.info("schedule %r %s: %r runs at %r", name, "replaced" if old else "set",
                    workflow, cron_expr)
        self._arm_next(name)

    async def unschedule(self, name: str) -> None:
        host = self._host
        host.require()
        if type(name) is not str or not name:
            raise TypeError(f"a schedule name must be a non-empty str, not {name!r}")
        async with self._locks.hold(name):
            if name not in host.index.schedules:
                known = ", ".join(sorted(host.index.schedules)) or "none"
                raise EngineError(f"no schedule named {name!r} (schedules: {known})")
            await host.append(r.make(r.SCHEDULE_REMOVED, host.now_ms(), r.ENGINE, name))
        logger.info("schedule %r removed", name)

    def list(self) -> list[Schedule]:
        host = self._host
        has_cron = cron.available()
        out = []
        for name, e in sorted(host.index.schedules.items()):
            tick = cron.next_tick(e.cron, self._cursor(e)) if has_cron else None
            out.append(Schedule(
                name=name, workflow=e.workflow, cron=e.cron,
                input=host.codec.decode(e.input), catch_up=e.catch_up,
                next_tick=None if tick is None else from_ms(tick),
            ))
        return out

    # -- the ticks -----------------------------------------------------------

    def _cursor(self, entry: ScheduleEntry) -> int:
        """Ticks strictly after this are still to start: with ``catch_up``
        all; without, those due while an engine was alive (up to the last
        durable record: a tick whose batch a power cut lost) and those from
        this engine's start on."""
        if entry.catch_up:
            return entry.after_ms
        if entry.after_ms < self._alive_ms:
            tick = cron.next_tick(entry.cron, entry.after_ms)
            if tick is not None and tick <= self._alive_ms:
                return entry.after_ms
        return max(entry.after_ms, self._started_ms - 1)

    def _arm_next(self, name: str) -> None:
        entry = self._host.index.schedules.get(name)
        if entry is not None:
            tick = cron.next_tick(entry.cron, self._cursor(entry))
            if tick is not None:
                self.arm(tick, name)

    def due(self, name: str) -> None:
        if self.nursery is not None and name not in self._ticking:
            self._ticking.add(name)
            self.nursery.start_soon(self._ticks, name, name=f"memable:schedule:{name}")

    async def _ticks(self, name: str) -> None:
        """Start every due tick of ``name`` in order, then arm the next one."""
        host = self._host
        try:
            while True:
                async with self._locks.hold(name):
                    entry = host.index.schedules.get(name)
                    if entry is None or host.draining or host.require().failed is not None:
                        return
                    tick = cron.next_tick(entry.cron, self._cursor(entry))
                    if tick is None:
                        return
                    if tick > host.now_ms():
                        self.arm(tick, name)
                        return
                    await self._start_tick(name, entry, tick)
                await trio.lowlevel.checkpoint()
        except (JournalFailed, JournalClosed) as exc:
            # Nothing more can be written: the tick is still due at the next start.
            logger.error("schedule %r: tick not started: %s", name, exc)
        finally:
            self._ticking.discard(name)

    async def _start_tick(self, name: str, entry: ScheduleEntry, tick: int) -> None:
        """One batch: the tick's instance created (unless it exists), the tick done."""
        host = self._host
        instance_id = cron.tick_id(name, tick)
        await host.require().settled(instance_id)
        now = host.now_ms()
        create = instance_id not in host.index.instances
        recs = [r.make(r.SCHEDULE_TICKED, now, r.ENGINE, name, tick)]
        flow = self._flow
        if create:  # + options, + queued if capacity gives it no slot
            key = flow.key_of_blob(entry.workflow, entry.input)
            recs[:0] = flow.creation(
                r.make(r.CREATED, now, instance_id, entry.workflow, entry.input),
                entry.workflow, key,
            )
        try:
            await host.append_many(recs)
        except BaseException:
            flow.unclaim(instance_id)
            raise
        if create:
            logger.info("instance %s of %r created by schedule %r", instance_id,
                        entry.workflow, name, extra={"instance_id": instance_id})
            self._start(instance_id)
