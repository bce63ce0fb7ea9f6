"""The instance state machine: its table and its conditions. Pure.

Everything that decides an instance's next state lives here (as h11's
_state.py); index.py records the data (steps, signals, waits, outcomes)
and asks this module what a record does to the state.

States are small ints so the index stays compact; ``STATE_NAMES`` gives the
names used by the public API. ``TRANSITIONS`` maps (state, record type) to
the next state; a pair missing from the table leaves the state as it is
(early signals, a cancel of a finished instance). Beside it, ``RULES`` maps
every record type that can touch the state to its *condition*: what the
record's fields add to the table. A rule changes only the fields of
``Machine`` it may write (the state, the pending waits and their
earliest deadline) and returns whether the state moved along the table.
For the types in ``ONLY_ON_A_MOVE`` the index records the record's data (an
outcome, a restart's clearing of it) only then: an outcome counts only from
a live state, a restart only from a finished one. ``UNCHANGED_BY`` lists
the record types that never change the state: the bulk of a journal, which
the index applies without asking.

Waits (SPEC-NEXT §1). A workflow may wait in several branches at once.
Each wait is *registered* the first time its key is reached (``suspended``,
``timer_set``: the index keeps its kind, deadline and status, so a re-run
never moves the deadline) and the branch blocks in memory. Only when every
task of the workflow is blocked does the engine write ``parked`` with the
keys it waits on: the instance leaves memory, *suspended* if every pending
wait is a signal, *sleeping* if every one is a timer, *waiting* otherwise.
Whichever pending wait resolves first (its signal, its deadline, its
child's end) makes it running again; the others stay registered for the
re-run to block in.

Child waits (SPEC-NEXT §2). ``child_started`` registers a wait of kind
``WAIT_CHILD`` (no deadline) in the parent when it starts a child;
``child_ended``, appended with the child's outcome, ends it (``done_waits``
maps its key to CHILD_ENDED) and wakes a parent parked on it. A child's own
``child_created`` makes its entry, running, as ``created`` does.
``parked`` moves nothing if one of its keys is already resolved (a signal
that came while the record was being written): the instance stays running.

Flow control (SPEC-NEXT §4). ``queued`` takes a running instance that has
no slot (capacity.py decides) to QUEUED, in the same batch as its
``created`` when it never ran; ``dequeued`` takes it out of the queue to
RUNNING. A queued instance is live and holds no slot; a signal for it is
kept, as for any key not reached yet. ``cancelled_for`` is ``cancelled``
with a reason (the index keeps it as the entry's error).

Format version 1 records (``records.LEGACY``) keep their meaning: its
``suspended`` and ``timer_set`` registered a wait *and* parked the instance
on it, and its state image named one wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from . import records as r
from .records import (
    IMAGE_PENDING,
    IMAGE_STATE,
    IMAGE_V1_DEADLINE,
    IMAGE_V1_STATUS,
    IMAGE_V1_WAIT_KEY,
    IMAGE_WAITS,
    KEY,
    PARKED_KEYS,
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
WAITING: Final = 6
QUEUED: Final = 7  # live, waiting for capacity (SPEC-NEXT §4): holds no slot

STATE_NAMES: Final = (
    "running", "suspended", "sleeping", "completed", "failed", "cancelled", "waiting",
    "queued",
)
STATE_BY_NAME: Final = {name: i for i, name in enumerate(STATE_NAMES)}
PARKED: Final = frozenset({SUSPENDED, SLEEPING, WAITING})  # live, out of memory
LIVE: Final = frozenset({RUNNING, QUEUED}) | PARKED
FINISHED: Final = frozenset({COMPLETED, FAILED, CANCELLED})

# A registered wait's kind (index: key -> (kind, deadline_ms, status)).
WAIT_SIGNAL: Final = 0
WAIT_TIMER: Final = 1
WAIT_CHILD: Final = 2  # registered by ``child_started``, ended by ``child_ended``
WAIT_KIND_NAMES: Final = ("signal", "timer", "child")
Wait = tuple[int, int | None, str | None]  # kind, deadline_ms, status


def _table() -> dict[tuple[int, int], int]:
    table: dict[tuple[int, int], int] = {}
    for live in LIVE:
        table[live, r.COMPLETED] = COMPLETED
        table[live, r.FAILED] = FAILED
        table[live, r.CANCELLED] = CANCELLED
        table[live, r.CANCELLED_FOR] = CANCELLED  # a cancel with a reason (a timeout)
    # parked: SUSPENDED, SLEEPING or WAITING by the kinds of its waits (the
    # table names the general case), unless one of them already resolved.
    table[RUNNING, r.PARKED] = WAITING
    for parked in PARKED:
        # Only for a pending key; a timeout only of a pending suspension.
        table[parked, r.SIGNALLED] = RUNNING
        table[parked, r.SUSPEND_TIMED_OUT] = RUNNING
        table[parked, r.TIMER_FIRED] = RUNNING
        table[parked, r.CHILD_ENDED] = RUNNING  # only for a pending key
    table[RUNNING, r.SUSPENDED_V1] = SUSPENDED  # format version 1: unless its signal came first
    table[RUNNING, r.TIMER_SET_V1] = SLEEPING  # format version 1
    for done in FINISHED:
        table[done, r.RESTARTED] = RUNNING
    # Flow control: a running instance with no slot waits in the queue; a
    # start out of the queue makes it running (capacity.py decides both).
    table[RUNNING, r.QUEUED] = QUEUED
    table[QUEUED, r.DEQUEUED] = RUNNING
    return table


TRANSITIONS: Final = _table()

# Record types that never change the state (``created`` sets the first one,
# RUNNING, as the index makes the entry; a registration only records a wait).
UNCHANGED_BY: Final = frozenset({
    r.CREATED, r.STEP_DONE, r.STEP_FAILED, r.STEP_STARTED, r.FORGOT, r.SUSPENDED, r.TIMER_SET,
    # a status text (the index's data: see ``Machine.status``) and an event
    r.STATUS_SET, r.PUBLISHED,
    r.STEP_DONE_V2, r.STEP_FAILED_V2, r.ATTEMPT_FAILED,
    r.CHILD_CREATED, r.CHILD_STARTED,  # a child's creation; a child wait's registration
    r.OPTIONS,  # an invoke's options: the index's data (priority, deadline, key)
    *r.ENGINE_LEVEL,  # schedules and debounce: engine-level, no instance's state
})


# Record types whose data counts only if they moved the state (see above).
ONLY_ON_A_MOVE: Final = frozenset({
    r.COMPLETED, r.FAILED, r.CANCELLED, r.RESTARTED, r.CANCELLED_FOR,
})


def next_state(state: int, rtype: int) -> int:
    """The table alone: the state after a record of ``rtype`` (conditions aside)."""
    return TRANSITIONS.get((state, rtype), state)


class Machine(Protocol):
    """The fields of an index entry that the lifecycle reads and writes."""

    state: int
    pending: tuple[str, ...] | None  # the keys a parked instance waits on
    # The latest status text (set_status, or a suspension's status=): the
    # index records it and no state change clears it. Only format version 1
    # rules set it here (their records carried the text of the one wait).
    status: str | None
    deadline_ms: int | None  # the earliest pending deadline

    @property
    def signals(self) -> Mapping[str, object] | None:
        """The signals that have come, by key (read only: the index's data)."""

    @property
    def waits(self) -> Mapping[str, Wait] | None:
        """Every registered wait, by key, in the order first reached."""

    @property
    def done_waits(self) -> Mapping[str, int] | None:
        """Waits ended by their deadline (or a child wait by its child's end), by key."""


def _move(m: Machine, rtype: int, to: int | None = None) -> bool:
    """Take the table's transition (to ``to``, a refinement the rule chose),
    if any; a state that is not parked has no pending waits. Returns
    whether the state changed."""
    before = m.state
    after = TRANSITIONS.get((before, rtype), before)
    if after == before:
        return False
    if to is not None:
        after = to
    if after not in PARKED:
        m.pending = m.deadline_ms = None
    m.state = after
    return True


def resolved(m: Machine, key: str) -> bool:
    """Whether the wait on ``key`` has ended: its signal came, its deadline
    was recorded as passed, or (a child wait) its child's end was recorded."""
    return (m.signals is not None and key in m.signals) or (
        m.done_waits is not None and key in m.done_waits
    )


def parked_state(kinds: Iterable[int]) -> int:
    """SUSPENDED if every wait is a signal, SLEEPING if every one is a timer, else WAITING."""
    seen = set(kinds)
    if seen == {WAIT_SIGNAL}:
        return SUSPENDED
    if seen == {WAIT_TIMER}:
        return SLEEPING
    return WAITING


def _park(m: Machine, keys: Sequence[str], waits: Mapping[str, Wait]) -> None:
    """Set the pending waits (the state is set by the caller)."""
    m.pending = tuple(keys)
    deadlines = [d for k in keys if (d := waits[k][1]) is not None]
    m.deadline_ms = min(deadlines) if deadlines else None


def _parked(m: Machine, rec: list[Any]) -> bool:
    keys = rec[PARKED_KEYS]
    waits = m.waits or {}
    if m.state != RUNNING or any(resolved(m, k) or k not in waits for k in keys):
        return False  # a wait resolved first (or was never registered): stay running
    _move(m, r.PARKED, parked_state(waits[k][0] for k in keys))
    _park(m, keys, waits)
    return True


def _awaited(m: Machine, rec: list[Any]) -> bool:
    """signalled, timer_fired, suspend_timed_out: a pending wait ended, so
    the instance runs again (any other key: nothing to wake)."""
    return m.pending is not None and rec[KEY] in m.pending and _move(m, rec[r.TYPE])


def _by_table(m: Machine, rec: list[Any]) -> bool:
    """completed, failed, cancelled, restarted: the table alone decides."""
    return _move(m, rec[r.TYPE])


def _state_image(m: Machine, rec: list[Any]) -> bool:
    # Compaction's summary of what this machine had reached: set as is.
    m.state = rec[IMAGE_STATE]
    if m.state in PARKED and rec[IMAGE_PENDING]:
        waits = {k: (w[0], w[1], w[2]) for k, w in rec[IMAGE_WAITS].items()}
        _park(m, rec[IMAGE_PENDING], waits)
    else:
        m.pending = m.deadline_ms = None
    return False


# -- format version 1 --------------------------------------------------------------


def _suspended_v1(m: Machine, rec: list[Any]) -> bool:
    key = rec[KEY]
    if m.signals is not None and key in m.signals:
        return False  # its signal came first: the instance keeps running
    if _move(m, r.SUSPENDED_V1):
        m.pending, m.deadline_ms = (key,), rec[SUSPENDED_DEADLINE]
        if rec[SUSPENDED_STATUS] is not None:
            m.status = rec[SUSPENDED_STATUS]
        return True
    return False


def _timer_set_v1(m: Machine, rec: list[Any]) -> bool:
    key, deadline = rec[KEY], rec[TIMER_SET_DEADLINE]
    if _move(m, r.TIMER_SET_V1):
        m.pending, m.deadline_ms = (key,), deadline
        return True
    # Concurrent timers (a nursery): version 1 slept until the earliest;
    # each is a pending wait.
    if m.state == SLEEPING and m.pending is not None and key not in m.pending:
        m.pending += (key,)
        if m.deadline_ms is None or deadline < m.deadline_ms:
            m.deadline_ms = deadline
    return False


def _state_image_v1(m: Machine, rec: list[Any]) -> bool:
    m.state = rec[IMAGE_STATE]
    key = rec[IMAGE_V1_WAIT_KEY]
    if m.state in PARKED and key is not None:
        m.pending, m.deadline_ms = (key,), rec[IMAGE_V1_DEADLINE]
    else:
        m.pending = m.deadline_ms = None
    if rec[IMAGE_V1_STATUS] is not None:
        m.status = rec[IMAGE_V1_STATUS]
    return False


Rule = Callable[[Machine, list[Any]], bool]

# Record type -> its condition (module comment). Every record type is here
# or in UNCHANGED_BY, never both (tests/core/test_records.py).
RULES: Final[dict[int, Rule]] = {
    r.PARKED: _parked,
    r.SIGNALLED: _awaited,
    r.TIMER_FIRED: _awaited,
    r.SUSPEND_TIMED_OUT: _awaited,
    r.CHILD_ENDED: _awaited,
    r.COMPLETED: _by_table,
    r.FAILED: _by_table,
    r.CANCELLED: _by_table,
    r.RESTARTED: _by_table,
    r.CANCELLED_FOR: _by_table,
    r.QUEUED: _by_table,
    r.DEQUEUED: _by_table,
    r.STATE_IMAGE: _state_image,
    r.SUSPENDED_V1: _suspended_v1,
    r.TIMER_SET_V1: _timer_set_v1,
    r.STATE_IMAGE_V1: _state_image_v1,
}


def advance(m: Machine, rec: list[Any]) -> bool:
    """Apply ``rec`` to the state of ``m``; whether it moved along the table."""
    rule = RULES.get(rec[r.TYPE])
    return rule is not None and rule(m, rec)
