"""``Capacity.room`` and ``key_room``: how many more starts the limits allow
now, asked by an engine before it takes queued instances of other engines
(spread.py). Nothing is taken by asking."""

from __future__ import annotations

from memable_log._engine.capacity import Capacity, Limits


def capacity(total: int | None, now: list[int]) -> Capacity:
    return Capacity(total, lambda: now[0], lambda iid, run: True, lambda ms, wf: None)


def test_room_is_the_least_of_the_engine_the_workflow_and_its_rate() -> None:
    now = [0]
    cap = capacity(None, now)
    cap.configure("free", Limits())
    assert cap.room("free") is None  # no limit anywhere
    cap.configure("wf", Limits(max_running=3, rate=(2, 1.0)))
    assert cap.room("wf") == 2  # the rate allows two starts in any second
    assert cap.take("a", "wf", None)
    assert cap.room("wf") == 1
    assert cap.room("wf") == 1  # asking takes nothing
    assert cap.take("b", "wf", None)
    assert cap.room("wf") == 0  # the rate window is full
    now[0] = 1000
    assert cap.room("wf") == 1  # it reopened: three running at most, two do
    total = capacity(2, now)
    total.configure("wf", Limits(max_running=5))
    assert total.take("a", "wf", None)
    assert total.room("wf") == 1  # the engine's limit is lower
    total.paused = True
    assert total.room("wf") == 0


def test_key_room_counts_the_running_instances_of_that_key() -> None:
    cap = capacity(None, [0])
    cap.configure("wf", Limits(key=str, max_running_per_key=2))
    cap.configure("plain", Limits(max_running=1))
    assert cap.key_room("plain", None) is None
    assert cap.key_room("wf", "k") == 2
    assert cap.take("a", "wf", "k")
    assert cap.key_room("wf", "k") == 1
    assert cap.key_room("wf", "other") == 2
    cap.release("a")
    assert cap.key_room("wf", "k") == 2
