"""The instance state machine, as a table. Pure.

States are small ints so the index stays compact; ``STATE_NAMES`` gives the
names used by the public API. ``TRANSITIONS`` maps (state, record type) to
the next state; a pair missing from the table leaves the state as it is
(step records, forgets, early signals, a cancel of a finished instance).
Conditions that depend on a record's fields (a signal wakes a suspension
only for the key it waits on; a suspension whose signal came first does not
suspend) are decided by _index.py before it consults the table.
"""

from __future__ import annotations

from typing import Final

from . import records as r

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
    table[RUNNING, r.SUSPENDED] = SUSPENDED
    table[RUNNING, r.TIMER_SET] = SLEEPING
    table[SUSPENDED, r.SIGNALLED] = RUNNING  # only for the awaited key
    table[SUSPENDED, r.SUSPEND_TIMED_OUT] = RUNNING  # only for the awaited key
    table[SLEEPING, r.TIMER_FIRED] = RUNNING  # only for the awaited key
    for done in FINISHED:
        table[done, r.RESTARTED] = RUNNING
    return table


TRANSITIONS: Final = _table()


def next_state(state: int, rtype: int) -> int:
    return TRANSITIONS.get((state, rtype), state)
