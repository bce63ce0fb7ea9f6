"""InstanceStatus: what ``engine.status()`` and ``engine.instances()`` return;
StepStatus: what ``engine.steps()`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from . import index as ix
from . import lifecycle as lc
from .errors import ErrorInfo as ErrorInfo
from .index import InstanceEntry


class Wait(NamedTuple):
    """A pending wait of an instance: ``kind`` is "signal", "timer" or
    "child", ``key`` its key, ``deadline`` its wall-clock deadline (UTC) or
    None (always None for a child)."""

    kind: str
    key: str
    deadline: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """A snapshot of one instance, as the journal records it.

    ``state`` is one of running, queued (waiting for capacity:
    ``register(max_running=...)``), suspended, sleeping, waiting,
    completed, failed, cancelled. An instance out of memory, waiting (suspended: on
    signals; sleeping: on timers; waiting: on a mix), has its pending waits
    in ``waits``, in the order first reached; ``key`` is the first one's
    key, ``deadline`` the earliest deadline (UTC). Otherwise ``waits`` is
    empty and the two are None (a running instance's branches may be
    blocked in waits, but only the engine holding it knows). ``status`` is
    the latest text recorded by ``ctx.set_status`` or a suspension's
    ``status=``, in any state (None if there was none): waits and re-runs
    without a text leave it as it is. ``steps`` counts memoised step
    outcomes; ``error`` is set for failed instances, and for an instance
    cancelled for a reason (type ``WorkflowCancelled``, message the reason,
    ``"timeout"``). ``parent`` is the id
    of the instance that started this one as a child (``ctx.start_child``),
    or None.
    """

    instance_id: str
    workflow: str
    state: str
    status: str | None
    key: str | None
    deadline: datetime | None
    steps: int
    error: ErrorInfo | None
    created_at: datetime
    updated_at: datetime
    waits: tuple[Wait, ...] = ()
    parent: str | None = None


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _waits(entry: InstanceEntry) -> tuple[Wait, ...]:
    if not entry.pending or entry.waits is None:
        return ()
    found = []
    for key in entry.pending:
        kind, deadline, _ = entry.waits[key]
        found.append(Wait(
            lc.WAIT_KIND_NAMES[kind], key, from_ms(deadline) if deadline is not None else None
        ))
    return tuple(found)


def status_of(instance_id: str, entry: InstanceEntry) -> InstanceStatus:
    return InstanceStatus(
        instance_id=instance_id,
        workflow=entry.workflow,
        state=lc.STATE_NAMES[entry.state],
        status=entry.status,
        key=entry.pending[0] if entry.pending else None,
        deadline=from_ms(entry.deadline_ms) if entry.deadline_ms is not None else None,
        steps=entry.memoised_steps(),
        error=ErrorInfo(*entry.error) if entry.error is not None else None,
        created_at=from_ms(entry.created_ms),
        updated_at=from_ms(entry.updated_ms),
        waits=_waits(entry),
        parent=entry.parent,
    )


@dataclass(frozen=True, slots=True)
class Event:
    """One event of an instance's event stream (``ctx.publish``).

    ``key`` and ``value`` are what was published; ``seq`` is the event's
    1-based position in the instance's stream (the same across restarts and
    compaction: give it back as ``engine.events(..., after=seq)`` to go on
    where a reader left off); ``at`` is when it was recorded (UTC).
    """

    key: str
    value: Any
    seq: int
    at: datetime
# -- engine.steps ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStatus:
    """One memoised step of an instance, as the journal records it.

    ``state`` is "done", "failed", or "interrupted" (an at-most-once step
    whose attempt started and recorded no outcome: a re-run raises
    StepInterrupted). ``started_at`` is when its first attempt started,
    ``finished_at`` when its outcome was recorded (None if interrupted);
    both wall-clock UTC. ``attempts`` counts every attempt, across
    restarts. ``error`` is the last attempt's error if it failed, else None.
    Steps written by format version 2 ran once as far as the journal
    knows, and started when their outcome was written.
    """

    key: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: ErrorInfo | None


_STEP_STATES = {ix.STEP_DONE_AT: "done", ix.STEP_FAILED_AT: "failed",
                ix.STEP_STARTED_AT: "interrupted"}


def steps_of(entry: InstanceEntry) -> list[StepStatus]:
    """Every memoised step of the instance, in the order first written
    (children, whose keys share the table, are not steps)."""
    table = entry.table
    steps = table if isinstance(table, dict) else ix.unpack_steps(table, intern=False)
    times = ix.step_meta(entry.created_ms, steps, entry.meta)
    tries = entry.tries or {}
    out = []
    for key, step in steps.items():
        kind = ix.entry_kind(step)
        if kind == ix.CHILD_AT:
            continue  # a child, not a step: its own instance has its steps
        started, finished, attempts, error = times.get(key, (None, None, 1, None))
        if kind == ix.STEP_STARTED_AT and key in tries:
            attempts = len(tries[key][1]) + 1  # the failed ones, then the one cut
        out.append(StepStatus(
            key=key, state=_STEP_STATES[kind],
            started_at=None if started is None else from_ms(started),
            finished_at=None if finished is None else from_ms(finished),
            attempts=attempts,
            error=None if error is None else ErrorInfo(*error),
        ))
    return out


# -- engine.schedules ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A durable schedule (``engine.schedule``), as the journal records it.

    Each tick of ``cron`` (a 5-field cron expression, in UTC) starts one
    instance of ``workflow`` with ``input``, whose id is
    ``f"{name}@{tick:%Y-%m-%dT%H:%M:%SZ}"``. ``next_tick`` is the next tick
    still to start (UTC; in the past while an overdue one is being started;
    None if the expression matches nothing any more, or cronsim is not
    installed). ``catch_up``: whether ticks missed while no engine ran are
    started at the next start.
    """

    name: str
    workflow: str
    cron: str
    input: Any
    catch_up: bool
    next_tick: datetime | None
