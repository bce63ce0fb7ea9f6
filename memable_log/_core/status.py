"""InstanceStatus: what ``engine.status()`` and ``engine.instances()`` return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from . import lifecycle as lc
from .index import InstanceEntry


class Wait(NamedTuple):
    """A pending wait of an instance: ``kind`` is "signal", "timer" or
    "child", ``key`` its key, ``deadline`` its wall-clock deadline (UTC) or
    None (always None for a child)."""

    kind: str
    key: str
    deadline: datetime | None


class ErrorInfo(NamedTuple):
    """Why an instance failed: the exception's type name and message."""

    type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """A snapshot of one instance, as the journal records it.

    ``state`` is one of running, suspended, sleeping, waiting, completed,
    failed, cancelled. An instance out of memory, waiting (suspended: on
    signals; sleeping: on timers; waiting: on a mix), has its pending waits
    in ``waits``, in the order first reached; ``key`` is the first one's
    key, ``deadline`` the earliest deadline (UTC) and ``status`` the first
    suspension's status text. Otherwise ``waits`` is empty and the three
    are None (a running instance's branches may be blocked in waits, but
    only the engine holding it knows). ``steps`` counts memoised step
    outcomes; ``error`` is set for failed instances. ``parent`` is the id
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
