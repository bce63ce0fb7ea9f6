"""InstanceStatus: what ``engine.status()`` and ``engine.instances()`` return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from . import lifecycle as lc
from .index import InstanceEntry


class ErrorInfo(NamedTuple):
    """Why an instance failed: the exception's type name and message."""

    type: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """A snapshot of one instance, as the journal records it.

    ``state`` is one of running, suspended, sleeping, completed, failed,
    cancelled. ``status`` is the suspension's status text, ``key`` the key a
    suspension or timer waits on and ``deadline`` its wall-clock deadline
    (UTC), each None when not waiting. ``steps`` counts memoised step
    outcomes; ``error`` is set for failed instances.
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


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def status_of(instance_id: str, entry: InstanceEntry) -> InstanceStatus:
    return InstanceStatus(
        instance_id=instance_id,
        workflow=entry.workflow,
        state=lc.STATE_NAMES[entry.state],
        status=entry.status,
        key=entry.wait_key,
        deadline=from_ms(entry.deadline_ms) if entry.deadline_ms is not None else None,
        steps=entry.memoised_steps(),
        error=ErrorInfo(*entry.error) if entry.error is not None else None,
        created_at=from_ms(entry.created_ms),
        updated_at=from_ms(entry.updated_ms),
    )
