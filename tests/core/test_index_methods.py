"""What a running compaction does to the live index, as Index methods.

``retire`` takes an instance out and ``restore`` puts it back (a compaction
that never became visible); ``repoint`` moves the locations that point into
the compacted prefix to the new file, leaving those written since alone;
``settle`` gives instances with no record after the compacted history the
last_seq a full scan of the new files would.
"""

from __future__ import annotations

from typing import Any

from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r
from memable_log._core.index import Index, moves, pack_loc

BIG = b"x" * (ix.DEFAULT_INLINE_LIMIT + 1)  # kept as a location, not inline


def rec(rtype: int, iid: str, *fields: Any, seq: int = 0) -> list[Any]:
    made = r.make(rtype, 1_000, iid, *fields)
    made[r.SEQ] = seq
    return made


PREFIX = [  # all in the compacted prefix: segment 1
    rec(r.CREATED, "a", "wf", BIG, seq=1),
    rec(r.STEP_DONE, "a", "big", BIG, seq=2),
    rec(r.STEP_DONE, "a", "small", b"v", seq=3),
    rec(r.STEP_FAILED, "a", "bad", "E", "m", "tb", seq=4),
    rec(r.SIGNALLED, "a", "go", BIG, seq=5),
    rec(r.COMPLETED, "a", BIG, seq=6),
    rec(r.CREATED, "b", "wf", b"in", seq=7),
    rec(r.STEP_DONE, "b", "big", BIG, seq=8),
    rec(r.STEP_DONE, "b", "again", BIG, seq=9),
]
LATER = rec(r.STEP_DONE, "b", "again", BIG, seq=10)  # segment 2, after the prefix


def live_and_fresh() -> tuple[Index, Index]:
    live, fresh = Index(), Index()
    for i, record in enumerate(PREFIX):
        live.apply(record, pack_loc(1, 40 + 100 * i))
        fresh.apply(record, pack_loc(1, 40, i + 1))  # cmp-1: one block
    live.apply(LATER, pack_loc(2, 40))
    return live, fresh


def test_retire_takes_an_instance_out_and_restore_puts_it_back() -> None:
    live, _ = live_and_fresh()
    entry = live.instances["a"]
    assert live.retire("a") is entry
    assert "a" not in live.instances
    assert live.retire("a") is None
    live.restore({"a": entry})
    assert live.instances["a"] is entry


def test_restore_keeps_an_entry_that_is_back_already() -> None:
    live, _ = live_and_fresh()
    retired = live.retire("b")
    assert retired is not None
    live.apply(rec(r.CREATED, "b", "wf", b"new", seq=11), pack_loc(2, 200))
    present = live.instances["b"]
    live.restore({"b": retired})
    assert live.instances["b"] is present


def test_repoint_moves_prefix_locations_to_the_new_file_and_leaves_later_ones() -> None:
    live, fresh = live_and_fresh()
    changed = live.repoint(moves(fresh), 1)
    a, b, new_a, new_b = (
        live.instances["a"], live.instances["b"], fresh.instances["a"], fresh.instances["b"]
    )
    # input, outcome, two step locations, one signal of "a"; one step of "b".
    assert changed == 6
    assert (a.input, a.outcome, a.signals) == (new_a.input, new_a.outcome, new_a.signals)
    assert a.steps == new_a.steps
    assert a.steps["small"] == b"v"  # inline: never moves
    assert b.steps["big"] == new_b.steps["big"]
    assert b.steps["again"] == pack_loc(2, 40) << 2 | ix.STEP_DONE_AT  # written since
    assert live.repoint(moves(fresh), 1) == 0  # nothing old is left


def test_repoint_leaves_the_table_of_an_instance_at_rest_packed() -> None:
    live, fresh = live_and_fresh()
    assert live.instances["a"].state == lc.COMPLETED
    assert live.instances["a"].packed
    live.repoint(moves(fresh), 1)
    assert live.instances["a"].packed
    assert not live.instances["b"].packed  # running: the engine reads its steps


def test_settle_zeroes_last_seq_only_without_a_record_after_the_history() -> None:
    live, _ = live_and_fresh()
    assert (live.instances["a"].last_seq, live.instances["b"].last_seq) == (6, 10)
    live.settle(["a", "b", "gone"], next_seq=10)
    assert (live.instances["a"].last_seq, live.instances["b"].last_seq) == (0, 10)
