"""The lifecycle: its table and the conditions beside it.

Exhaustively, over every state and record type, a record moves the state
only as the table says; then each condition on a record's fields, as
Index.apply shows it (the lifecycle decides, the index records the data):
waits registered on their own, ``parked`` naming several, any one of them
waking the instance, and the version 1 records read as they always were.
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
    """The least that satisfies lc.Machine: parked states wait on KEY (a signal wait)."""

    def __init__(self, state: int) -> None:
        parked = state in lc.PARKED
        self.state = state
        self.pending: tuple[str, ...] | None = (KEY,) if parked else None
        self.status: str | None = "waiting" if parked else None
        self.deadline_ms: int | None = 5_000 if parked else None
        self.signals: Mapping[str, object] | None = None
        self.waits: Mapping[str, lc.Wait] | None = {KEY: (lc.WAIT_SIGNAL, 5_000, "waiting")}
        self.done_waits: Mapping[str, int] | None = None


def record(rtype: int, *fields: Any, instance: str = "i") -> list[Any]:
    return r.make(rtype, 1_000, instance, *fields)


def a_record_of(rtype: int, key: str = KEY) -> list[Any]:
    fields: dict[int, tuple[Any, ...]] = {
        r.CREATED: ("wf", b"in"), r.STEP_DONE: (key, b"v"),
        r.STEP_FAILED: (key, "E", "m", "tb"), r.STEP_STARTED: (key,),
        r.SUSPENDED: (key, None, None), r.SIGNALLED: (key, b"p"),
        r.TIMER_SET: (key, 9_000), r.TIMER_FIRED: (key,), r.SUSPEND_TIMED_OUT: (key,),
        r.FORGOT: (key,), r.COMPLETED: (b"out",), r.FAILED: ("E", "m", "tb"),
        r.CANCELLED: (), r.RESTARTED: (), r.PARKED: ([key],),
        r.STATE_IMAGE: (lc.SLEEPING, [key], {key: [lc.WAIT_TIMER, 7_000, None]}, {}),
        r.SUSPENDED_V1: (key, None, None), r.TIMER_SET_V1: (key, 9_000),
        r.STATE_IMAGE_V1: (lc.SLEEPING, key, None, 7_000, {key: 7_000}, {}),
        r.STATUS_SET: ("text", 1), r.PUBLISHED: (key, b"v"),
        r.STEP_DONE_V2: (key, b"v"), r.STEP_FAILED_V2: (key, "E", "m", "tb"),
        r.ATTEMPT_FAILED: (key, 1, "E", "m", 5),
        r.CHILD_CREATED: ("wf", b"in", "parent", key), r.CHILD_STARTED: (key, "p/k"),
        r.CHILD_ENDED: (key, lc.COMPLETED, b"v", None, None),
        r.OPTIONS: (5, 9_000, "tenant"), r.QUEUED: (), r.DEQUEUED: (),
        r.CANCELLED_FOR: ("timeout",),
        # engine-level (instance r.ENGINE): schedules and debounce
        r.SCHEDULE_SET: ("nightly", "wf", "0 3 * * *", b"in", False, 1_000),
        r.SCHEDULE_REMOVED: ("nightly",), r.SCHEDULE_TICKED: ("nightly", 60_000),
        r.DEBOUNCE_SET: ("wf", key, 1, b"in", 9_000),
        r.HANDOVER_APPLIED: ("1-2-3.act", "i"),
    }
    instance = r.ENGINE if rtype in r.ENGINE_LEVEL else "i"
    return r.check(record(rtype, *fields[rtype], instance=instance))


def an_index(*records: list[Any]) -> ix.Index:
    index = ix.Index()
    for loc, rec in enumerate([record(r.CREATED, "wf", b"in"), *records], 1):
        index.apply(rec, loc)
    return index


def entry(index: ix.Index) -> ix.InstanceEntry:
    return index.instances["i"]


def parked(e: ix.InstanceEntry) -> tuple[Any, ...]:
    return (lc.STATE_NAMES[e.state], e.pending, e.status, e.deadline_ms)


IMAGES = {r.STATE_IMAGE, r.STATE_IMAGE_V1}


@pytest.mark.parametrize("state", sorted(lc.STATE_BY_NAME.values()), ids=lc.STATE_NAMES)
@pytest.mark.parametrize("rtype", sorted(set(r.SCHEMA) - IMAGES), ids=r.TYPE_NAMES.get)
def test_a_record_for_a_pending_key_moves_the_state_as_the_table_says(
    state: int, rtype: int
) -> None:
    m = Machine(state)
    moved = lc.advance(m, a_record_of(rtype))
    expected = lc.next_state(state, rtype)
    if rtype == r.PARKED and expected != state:
        expected = lc.SUSPENDED  # the table's general case, refined by the kinds
    assert (m.state, moved) == (expected, expected != state)
    if expected != state and expected not in lc.PARKED:
        assert (m.pending, m.deadline_ms) == (None, None)
    # The status text is the latest recorded: no state change clears it.
    assert m.status == ("waiting" if state in lc.PARKED else None)


def test_record_types_that_never_change_the_state_leave_a_parked_instance_parked() -> None:
    for rtype in lc.UNCHANGED_BY:
        m = Machine(lc.SUSPENDED)
        assert not lc.advance(m, a_record_of(rtype))
        assert (m.state, m.pending, m.deadline_ms) == (lc.SUSPENDED, (KEY,), 5_000)


def test_a_registered_wait_leaves_the_instance_running_and_keeps_its_first_deadline() -> None:
    index = an_index(record(r.SUSPENDED, "approve", "check", 5_000),
                     record(r.TIMER_SET, "nap", 9_000),
                     record(r.SUSPENDED, "approve", "other", 7_000),  # a re-run's: ignored
                     record(r.TIMER_SET, "nap", 12_000))
    e = entry(index)
    # The status text is the latest recorded, in any state: the first
    # registration's (a second one of a key counts for nothing).
    assert parked(e) == ("running", None, "check", None)
    assert e.waits == {
        "approve": (lc.WAIT_SIGNAL, 5_000, "check"), "nap": (lc.WAIT_TIMER, 9_000, None),
    }


@pytest.mark.parametrize(("waits", "state"), [
    ((r.SUSPENDED,), "suspended"), ((r.SUSPENDED, r.SUSPENDED), "suspended"),
    ((r.TIMER_SET,), "sleeping"), ((r.TIMER_SET, r.TIMER_SET), "sleeping"),
    ((r.SUSPENDED, r.TIMER_SET), "waiting"), ((r.TIMER_SET, r.SUSPENDED), "waiting"),
])
def test_parked_names_the_state_by_the_kinds_of_its_waits(
    waits: tuple[int, ...], state: str
) -> None:
    registrations = [
        record(r.SUSPENDED, f"w{i}", f"s{i}", None) if kind == r.SUSPENDED
        else record(r.TIMER_SET, f"w{i}", 9_000 - i)
        for i, kind in enumerate(waits)
    ]
    keys = [f"w{i}" for i in range(len(waits))]
    e = entry(an_index(*registrations, record(r.PARKED, keys)))
    deadlines = [9_000 - i for i, kind in enumerate(waits) if kind == r.TIMER_SET]
    statuses = [f"s{i}" for i, kind in enumerate(waits) if kind == r.SUSPENDED]
    assert parked(e) == (
        state, tuple(keys), statuses[-1] if statuses else None,  # the latest text
        min(deadlines) if deadlines else None,
    )


def test_any_pending_wait_wakes_the_instance_and_the_others_stay_registered() -> None:
    base = [record(r.SUSPENDED, "approve", None, 50_000), record(r.TIMER_SET, "remind", 9_000),
            record(r.PARKED, ["approve", "remind"])]
    for ending in (record(r.TIMER_FIRED, "remind"), record(r.SIGNALLED, "approve", b"y"),
                   record(r.SUSPEND_TIMED_OUT, "approve")):
        index = an_index(*base)
        assert parked(entry(index)) == ("waiting", ("approve", "remind"), None, 9_000)
        index.apply(ending, 9)
        e = entry(index)
        assert parked(e) == ("running", None, None, None)
        # The ended wait's registration goes; the other stays for the re-run.
        assert set(e.waits or ()) == {"approve", "remind"} - {ending[r.KEY]}


def test_a_record_for_a_key_not_pending_wakes_nothing() -> None:
    index = an_index(record(r.SUSPENDED, "approve", None, None), record(r.PARKED, ["approve"]),
                     record(r.SIGNALLED, "other", b"p"), record(r.TIMER_FIRED, "cool"),
                     record(r.SUSPEND_TIMED_OUT, "else"))
    e = entry(index)
    assert parked(e) == ("suspended", ("approve",), None, None)
    assert e.signals == {"other": b"p"}  # recorded all the same
    assert e.done_waits == {"cool": r.TIMER_FIRED, "else": r.SUSPEND_TIMED_OUT}


def test_parked_with_a_wait_already_resolved_leaves_the_instance_running() -> None:
    # The signal came while the parked record was being written.
    index = an_index(record(r.SUSPENDED, "a", None, None), record(r.SUSPENDED, "b", None, None),
                     record(r.SIGNALLED, "b", b"p"), record(r.PARKED, ["a", "b"]))
    assert parked(entry(index)) == ("running", None, None, None)
    # And a key never registered is never parked on.
    index = an_index(record(r.PARKED, ["ghost"]))
    assert parked(entry(index)) == ("running", None, None, None)


def test_parked_counts_only_from_running() -> None:
    index = an_index(record(r.SUSPENDED, "a", None, None), record(r.CANCELLED),
                     record(r.PARKED, ["a"]))
    assert parked(entry(index)) == ("cancelled", None, None, None)


def test_an_ended_wait_is_not_registered_again() -> None:
    index = an_index(record(r.SIGNALLED, "a", b"p"), record(r.SUSPENDED, "a", None, 5_000),
                     record(r.TIMER_SET, "t", 1_000), record(r.TIMER_FIRED, "t"),
                     record(r.TIMER_SET, "t", 2_000))
    assert entry(index).waits is None


def test_a_wait_ends_once_by_whichever_record_came_first() -> None:
    index = an_index(record(r.SUSPENDED, "a", None, 5_000), record(r.SIGNALLED, "a", b"p"),
                     record(r.SUSPEND_TIMED_OUT, "a"))
    assert (entry(index).signals, entry(index).done_waits) == ({"a": b"p"}, None)
    index = an_index(record(r.SUSPENDED, "a", None, 5_000), record(r.SUSPEND_TIMED_OUT, "a"),
                     record(r.SIGNALLED, "a", b"p"))
    assert (entry(index).signals, entry(index).done_waits) == (
        None, {"a": r.SUSPEND_TIMED_OUT},
    )


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


def test_a_cancel_then_restart_keeps_every_registered_deadline() -> None:
    index = an_index(record(r.TIMER_SET, "nap", 9_000), record(r.PARKED, ["nap"]),
                     record(r.CANCELLED), record(r.RESTARTED))
    e = entry(index)
    assert parked(e) == ("running", None, None, None)
    assert e.waits == {"nap": (lc.WAIT_TIMER, 9_000, None)}


def test_a_state_image_sets_the_state_and_waits_as_is() -> None:
    # Even from a state the table has no way out of, and keys as given.
    index = an_index(record(r.CANCELLED), record(
        r.STATE_IMAGE, lc.WAITING, ["nap", "ok"],
        {"ok": [lc.WAIT_SIGNAL, None, "check"], "nap": [lc.WAIT_TIMER, 7_000, None],
         "old": [lc.WAIT_TIMER, 1_000, None]},
        {"old": r.TIMER_FIRED},
    ))
    e = entry(index)
    # With no text recorded before it (an image of version 1 or 2), the
    # image's latest wait text is the status, as its suspended record was.
    assert parked(e) == ("waiting", ("nap", "ok"), "check", 7_000)
    assert e.waits == {"ok": (lc.WAIT_SIGNAL, None, "check"), "nap": (lc.WAIT_TIMER, 7_000, None),
                       "old": (lc.WAIT_TIMER, 1_000, None)}
    assert e.done_waits == {"old": r.TIMER_FIRED}
    assert e.packed  # at rest


def test_a_status_text_recorded_before_a_state_image_stays() -> None:
    # Version 3's compaction writes the text as status_set, before the image.
    index = an_index(record(r.STATUS_SET, "later text", 2), record(
        r.STATE_IMAGE, lc.WAITING, ["ok"], {"ok": [lc.WAIT_SIGNAL, None, "check"]}, {},
    ))
    e = entry(index)
    assert (e.status, e.status_calls) == ("later text", 2)


# -- format version 1 --------------------------------------------------------------


def test_a_v1_suspension_parks_unless_its_signal_came_first() -> None:
    index = an_index(record(r.SUSPENDED_V1, "approve", "pending", 5_000),
                     record(r.SIGNALLED, "other", b"p"))
    e = entry(index)
    assert parked(e) == ("suspended", ("approve",), "pending", 5_000)
    assert e.waits == {"approve": (lc.WAIT_SIGNAL, 5_000, "pending")}
    index.apply(record(r.SIGNALLED, "approve", b"yes"), 9)
    assert parked(e) == ("running", None, "pending", None)  # the latest text stays
    assert e.waits is None  # ended: nothing left to keep

    index = an_index(record(r.SIGNALLED, "approve", b"yes"),
                     record(r.SUSPENDED_V1, "approve", None, None))
    assert parked(entry(index)) == ("running", None, None, None)


def test_v1_concurrent_timers_each_wait_and_the_earliest_wakes() -> None:
    index = an_index(record(r.TIMER_SET_V1, "late", 9_000), record(r.TIMER_SET_V1, "soon", 4_000),
                     record(r.TIMER_SET_V1, "late", 9_000))  # version 1 re-armed
    e = entry(index)
    assert parked(e) == ("sleeping", ("late", "soon"), None, 4_000)
    assert e.waits == {"late": (lc.WAIT_TIMER, 9_000, None), "soon": (lc.WAIT_TIMER, 4_000, None)}
    index.apply(record(r.TIMER_FIRED, "soon"), 9)
    assert parked(e) == ("running", None, None, None)
    assert e.waits == {"late": (lc.WAIT_TIMER, 9_000, None)}


def test_a_v1_state_image_reads_as_its_one_wait() -> None:
    index = an_index(record(r.STATE_IMAGE_V1, lc.SUSPENDED, "ok", "check", 5_000,
                            {"nap": 3_000}, {"nap": r.TIMER_FIRED}))
    e = entry(index)
    assert parked(e) == ("suspended", ("ok",), "check", 5_000)
    assert e.waits == {"ok": (lc.WAIT_SIGNAL, 5_000, "check")}  # "nap" ended
    assert e.done_waits == {"nap": r.TIMER_FIRED}
    index = an_index(record(r.STATE_IMAGE_V1, lc.RUNNING, None, None, None, {}, {}))
    assert parked(entry(index)) == ("running", None, None, None)
