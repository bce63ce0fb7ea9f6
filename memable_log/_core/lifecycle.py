"""The instance state machine: its table and its conditions. Pure.

Everything that decides an instance's next state lives here (as h11's
_state.py); index.py records the data (steps, signals, timers, outcomes)
and asks this module what a record does to the state.

States are small ints so the index stays compact; ``STATE_NAMES`` gives the
names used by the public API. ``TRANSITIONS`` maps (state, record type) to
the next state; a pair missing from the table leaves the state as it is
(early signals, a cancel of a finished instance). Beside it, ``RULES`` maps
every record type that can touch the state to its *condition*: what the
record's fields add to the table (a signal wakes a suspension only for the
key it waits on; a suspension whose signal came first does not suspend; a
timer or a timeout ends only the awaited wait; concurrent timers sleep until
the earliest; a state image sets the state as is). A rule changes only the
fields of ``Machine`` it may write (the state and the wait) and returns
whether the state moved along the table. For the types in
``ONLY_ON_A_MOVE`` the index records the record's data (an outcome, a
restart's clearing of it) only then: an outcome counts only from a live
state, a restart only from a finished one. ``UNCHANGED_BY`` lists the
record types that never change the state: the bulk of a journal, which the
index applies without asking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from . import records as r
from .records import (
    IMAGE_DEADLINE,
    IMAGE_STATE,
    IMAGE_STATUS,
    IMAGE_WAIT_KEY,
    KEY,
    SUSPENDED_DEADLINE,
    SUSPENDED_STATUS,
    TIMER_SET_DEADLINE,
)

RUNNING: Final = 0
SUSPENDED: Final = 1
SLEEPING: Final = 2
COMPLETED: Final = 3
FAILED: Final = 4
CANCELLED: Final = 5

STATE_NAMES: Final = ("running", "suspended", "sleeping", "completed", "failed", "cancelled")
STATE_BY_NAME: Final = {name: i for i, name in enumerate(STATE_NAMES)}
LIVE: Final = frozenset({RUNNING, SUSPENDED, SLEEPING})
WAITING: Final = frozenset({SUSPENDED, SLEEPING})
FINISHED: Final = frozenset({COMPLETED, FAILED, CANCELLED})


def _table() -> dict[tuple[int, int], int]:
    table: dict[tuple[int, int], int] = {}
    for live in LIVE:
        table[live, r.COMPLETED] = COMPLETED
        table[live, r.FAILED] = FAILED
        table[live, r.CANCELLED] = CANCELLED
    table[RUNNING, r.SUSPENDED] = SUSPENDED  # unless its signal came first
    table[RUNNING, r.TIMER_SET] = SLEEPING
    table[SUSPENDED, r.SIGNALLED] = RUNNING  # only for the awaited key
    table[SUSPENDED, r.SUSPEND_TIMED_OUT] = RUNNING  # only for the awaited key
    table[SLEEPING, r.TIMER_FIRED] = RUNNING  # only for the awaited key
    for done in FINISHED:
        table[done, r.RESTARTED] = RUNNING
    return table


TRANSITIONS: Final = _table()

# Record types that never change the state (``created`` sets the first one,
# RUNNING, as the index makes the entry).
UNCHANGED_BY: Final = frozenset({
    r.CREATED, r.STEP_DONE, r.STEP_FAILED, r.STEP_STARTED, r.FORGOT,
})


# Record types whose data counts only if they moved the state (see above).
ONLY_ON_A_MOVE: Final = frozenset({r.COMPLETED, r.FAILED, r.CANCELLED, r.RESTARTED})


def next_state(state: int, rtype: int) -> int:
    """The table alone: the state after a record of ``rtype`` (conditions aside)."""
    return TRANSITIONS.get((state, rtype), state)


class Machine(Protocol):
    """The fields of an index entry that the lifecycle reads and writes."""

    state: int
    wait_key: str | None  # the key a suspension or timer waits on
    status: str | None  # a suspension's status text
    deadline_ms: int | None  # the wait's deadline

    @property
    def signals(self) -> Mapping[str, object] | None:
        """The signals that have come, by key (read only: the index's data)."""


def _move(m: Machine, rtype: int) -> bool:
    """Take the table's transition, if any; a state that is not waiting
    has no wait. Returns whether the state changed."""
    before = m.state
    after = TRANSITIONS.get((before, rtype), before)
    if after == before:
        return False
    if after not in WAITING:
        m.wait_key = m.status = m.deadline_ms = None
    m.state = after
    return True


def _suspended(m: Machine, rec: list[Any]) -> bool:
    key = rec[KEY]
    if m.signals is not None and key in m.signals:
        return False  # its signal came first: the instance keeps running
    if _move(m, r.SUSPENDED):
        m.wait_key, m.status, m.deadline_ms = key, rec[SUSPENDED_STATUS], rec[SUSPENDED_DEADLINE]
        return True
    return False


def _timer_set(m: Machine, rec: list[Any]) -> bool:
    deadline = rec[TIMER_SET_DEADLINE]
    if _move(m, r.TIMER_SET):
        m.wait_key, m.status, m.deadline_ms = rec[KEY], None, deadline
        return True
    # Concurrent timers (a nursery in the workflow): sleep until the earliest.
    if m.state == SLEEPING and m.deadline_ms is not None and deadline < m.deadline_ms:
        m.wait_key, m.status, m.deadline_ms = rec[KEY], None, deadline
    return False


def _awaited(m: Machine, rec: list[Any]) -> bool:
    """signalled, timer_fired, suspend_timed_out: they end only the awaited wait."""
    return rec[KEY] == m.wait_key and _move(m, rec[r.TYPE])


def _by_table(m: Machine, rec: list[Any]) -> bool:
    """completed, failed, cancelled, restarted: the table alone decides."""
    return _move(m, rec[r.TYPE])


def _state_image(m: Machine, rec: list[Any]) -> bool:
    # Compaction's summary of what this machine had reached: set as is.
    m.state = rec[IMAGE_STATE]
    m.wait_key, m.status, m.deadline_ms = (
        rec[IMAGE_WAIT_KEY], rec[IMAGE_STATUS], rec[IMAGE_DEADLINE]
    )
    return False


Rule = Callable[[Machine, list[Any]], bool]

# Record type -> its condition (module comment). Every record type is here
# or in UNCHANGED_BY, never both (tests/core/test_records.py).
RULES: Final[dict[int, Rule]] = {
    r.SUSPENDED: _suspended,
    r.SIGNALLED: _awaited,
    r.TIMER_SET: _timer_set,
    r.TIMER_FIRED: _awaited,
    r.SUSPEND_TIMED_OUT: _awaited,
    r.COMPLETED: _by_table,
    r.FAILED: _by_table,
    r.CANCELLED: _by_table,
    r.RESTARTED: _by_table,
    r.STATE_IMAGE: _state_image,
}


def advance(m: Machine, rec: list[Any]) -> bool:
    """Apply ``rec`` to the state of ``m``; whether it moved along the table."""
    rule = RULES.get(rec[r.TYPE])
    return rule is not None and rule(m, rec)
