"""The lifecycle: its table and the conditions beside it.

Exhaustively, over every state and record type, a record moves the state
only as the table says; then each condition on a record's fields, as
Index.apply shows it (the lifecycle decides, the index records the data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r

KEY = "k"


class Machine:
    """The least that satisfies lc.Machine."""

    def __init__(self, state: int, wait_key: str | None = None) -> None:
        self.state = state
        self.wait_key = wait_key
        self.status: str | None = "waiting" if wait_key else None
        self.deadline_ms: int | None = 5_000 if wait_key else None
        self.signals: Mapping[str, object] | None = None


def record(rtype: int, *fields: Any, instance: str = "i") -> list[Any]:
    return r.make(rtype, 1_000, instance, *fields)


def a_record_of(rtype: int, key: str = KEY) -> list[Any]:
    fields: dict[int, tuple[Any, ...]] = {
        r.CREATED: ("wf", b"in"), r.STEP_DONE: (key, b"v"),
        r.STEP_FAILED: (key, "E", "m", "tb"), r.STEP_STARTED: (key,),
        r.SUSPENDED: (key, None, None), r.SIGNALLED: (key, b"p"),
        r.TIMER_SET: (key, 9_000), r.TIMER_FIRED: (key,), r.SUSPEND_TIMED_OUT: (key,),
        r.FORGOT: (key,), r.COMPLETED: (b"out",), r.FAILED: ("E", "m", "tb"),
        r.CANCELLED: (), r.RESTARTED: (),
        r.STATE_IMAGE: (lc.SLEEPING, key, None, 7_000, {key: 7_000}, {}),
    }
    return r.check(record(rtype, *fields[rtype]))


def an_index(*records: list[Any]) -> ix.Index:
    index = ix.Index()
    for loc, rec in enumerate([record(r.CREATED, "wf", b"in"), *records], 1):
        index.apply(rec, loc)
    return index


def entry(index: ix.Index) -> ix.InstanceEntry:
    return index.instances["i"]


@pytest.mark.parametrize("state", sorted(lc.STATE_BY_NAME.values()), ids=lc.STATE_NAMES)
@pytest.mark.parametrize("rtype", sorted(set(r.SCHEMA) - {r.STATE_IMAGE}), ids=r.TYPE_NAMES.get)
def test_a_record_for_the_awaited_key_moves_the_state_as_the_table_says(
    state: int, rtype: int
) -> None:
    m = Machine(state, KEY if state in lc.WAITING else None)
    moved = lc.advance(m, a_record_of(rtype))
    expected = lc.next_state(state, rtype)
    assert (m.state, moved) == (expected, expected != state)
    if expected != state and expected not in lc.WAITING:
        assert (m.wait_key, m.status, m.deadline_ms) == (None, None, None)


def test_record_types_that_never_change_the_state_leave_a_waiting_instance_waiting() -> None:
    for rtype in lc.UNCHANGED_BY:
        m = Machine(lc.SUSPENDED, KEY)
        assert not lc.advance(m, a_record_of(rtype))
        assert (m.state, m.wait_key, m.deadline_ms) == (lc.SUSPENDED, KEY, 5_000)


def test_a_signal_wakes_a_suspension_only_for_the_awaited_key() -> None:
    index = an_index(record(r.SUSPENDED, "approve", "pending", 5_000),
                     record(r.SIGNALLED, "other", b"p"))
    e = entry(index)
    assert (e.state, e.wait_key, e.status, e.deadline_ms) == (
        lc.SUSPENDED, "approve", "pending", 5_000,
    )
    assert e.signals == {"other": b"p"}  # recorded all the same
    index.apply(record(r.SIGNALLED, "approve", b"yes"), 9)
    assert (e.state, e.wait_key, e.status, e.deadline_ms) == (lc.RUNNING, None, None, None)


def test_a_suspension_whose_signal_came_first_does_not_suspend() -> None:
    index = an_index(record(r.SIGNALLED, "approve", b"yes"),
                     record(r.SUSPENDED, "approve", None, None))
    assert (entry(index).state, entry(index).wait_key) == (lc.RUNNING, None)


def test_a_timer_or_a_timeout_ends_only_the_awaited_wait() -> None:
    index = an_index(record(r.TIMER_SET, "nap", 5_000), record(r.TIMER_FIRED, "cool"))
    e = entry(index)
    assert (e.state, e.wait_key) == (lc.SLEEPING, "nap")
    assert e.done_waits == {"cool": r.TIMER_FIRED}
    index.apply(record(r.TIMER_FIRED, "nap"), 9)
    assert (e.state, e.wait_key, e.deadline_ms) == (lc.RUNNING, None, None)

    index = an_index(record(r.SUSPENDED, "approve", None, 5_000),
                     record(r.SUSPEND_TIMED_OUT, "other"))
    assert entry(index).state == lc.SUSPENDED
    index.apply(record(r.SUSPEND_TIMED_OUT, "approve"), 9)
    assert entry(index).state == lc.RUNNING


def test_concurrent_timers_sleep_until_the_earliest() -> None:
    index = an_index(record(r.TIMER_SET, "late", 9_000), record(r.TIMER_SET, "soon", 4_000),
                     record(r.TIMER_SET, "later", 12_000))
    e = entry(index)
    assert (e.state, e.wait_key, e.deadline_ms) == (lc.SLEEPING, "soon", 4_000)
    assert e.timers == {"late": 9_000, "soon": 4_000, "later": 12_000}


def test_an_outcome_is_recorded_only_from_a_live_state() -> None:
    index = an_index(record(r.COMPLETED, b"first"), record(r.COMPLETED, b"second"),
                     record(r.FAILED, "E", "late", "tb"))
    e = entry(index)
    assert (e.state, e.outcome, e.error) == (lc.COMPLETED, b"first", None)

    index = an_index(record(r.CANCELLED), record(r.COMPLETED, b"late"))
    assert (entry(index).state, entry(index).outcome) == (lc.CANCELLED, None)

    index = an_index(record(r.FAILED, "E", "boom", "tb"))
    assert (entry(index).state, entry(index).outcome, entry(index).error) == (
        lc.FAILED, 2, ("E", "boom"),  # the failed record's location
    )


def test_a_restart_clears_the_outcome_only_of_a_finished_instance() -> None:
    index = an_index(record(r.RESTARTED))
    assert entry(index).state == lc.RUNNING
    index.apply(record(r.FAILED, "E", "boom", "tb"), 3)
    index.apply(record(r.RESTARTED), 4)
    e = entry(index)
    assert (e.state, e.outcome, e.error) == (lc.RUNNING, None, None)


def test_a_state_image_sets_the_state_and_wait_as_is() -> None:
    # Even from a state the table has no way out of, and keys as given.
    index = an_index(record(r.CANCELLED), a_record_of(r.STATE_IMAGE, "nap"))
    e = entry(index)
    assert (e.state, e.wait_key, e.status, e.deadline_ms) == (lc.SLEEPING, "nap", None, 7_000)
    assert (e.timers, e.done_waits) == ({"nap": 7_000}, None)
    assert e.packed  # at rest
