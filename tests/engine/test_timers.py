"""ctx.timer: durable sleeps with a persisted deadline and one poller task.

Every test runs under trio's MockClock (``autojump_clock``) with a
ManualClock for wall time, so days of sleeping take no real time, and
``ManualClock.advance`` between engine lifetimes simulates downtime.
``trio.current_time()`` tells when a timer actually fired.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from support.suspend import (
    DAY,
    all_tasks,
    engine_tasks,
    finish,
    limit_writes,
    memory_engine,
    records_of,
    types_of,
    until,
    until_state,
    written,
)
from trio.testing import MockClock

from memable_log import Context, ManualClock, MemoryStorage, WorkflowFailed
from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r

START = 1_700_000_000.0

def napper(ledger: list[str], delay: float | timedelta, key: str = "nap") -> Any:
    async def wf(ctx: Context) -> Any:
        await ctx.step("before").run(ledger.append, "before")
        await ctx.timer(key, delay)
        await ctx.step("after").run(ledger.append, "after")
        return trio.current_time()

    return wf


async def test_timer_sleeps_with_nothing_in_memory_and_fires_after_its_deadline(
    autojump_clock: MockClock,
) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=napper(ledger, 3600))
    async with engine:
        services = engine_tasks(engine)
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        status = engine.status(iid)
        assert (status.state, status.key, status.status) == ("sleeping", "nap", None)
        assert status.deadline == datetime.fromtimestamp(START + 3600, tz=UTC)
        assert engine.instances("sleeping") == [status]
        assert not engine._host.running
        assert engine_tasks(engine) == services
        fired_at = await finish(engine, iid)
        assert fired_at - began == pytest.approx(3600, abs=0.01)
        assert engine.status(iid).state == "completed"
        assert engine.status(iid).deadline is None
    assert ledger == ["before", "after"]
    kinds = types_of(engine._backend.make_storage(), iid)
    assert kinds == [
        "created", "step_done", "timer_set", "parked", "timer_fired", "step_done", "completed",
    ]


async def test_a_lone_timer_fires_when_the_poller_heap_is_empty(autojump_clock: MockClock) -> None:
    # Regression: the engine armed a new deadline only `if self._timers`,
    # and an empty TimerQueue is falsy (it has __len__): with no other
    # timer pending, a sleeping instance was never woken.
    engine = memory_engine(clock=ManualClock(START), wf=napper([], 10))
    async with engine:
        assert engine._timers is not None
        assert len(engine._timers) == 0
        iid = await engine.invoke("wf")
        with trio.fail_after(DAY):
            await finish(engine, iid)


async def test_timedelta_delay(autojump_clock: MockClock) -> None:
    engine = memory_engine(clock=ManualClock(START), wf=napper([], timedelta(days=2, hours=1)))
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        expected = datetime.fromtimestamp(START, tz=UTC) + timedelta(days=2, hours=1)
        assert engine.status(iid).deadline == expected
        assert await finish(engine, iid) - began == pytest.approx(2 * DAY + 3600, abs=0.01)


async def test_zero_delay_does_not_sleep(autojump_clock: MockClock) -> None:
    engine = memory_engine(clock=ManualClock(START), wf=napper([], 0))
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == began
        assert "timer_fired" in types_of(engine._backend.make_storage(), iid)


async def test_negative_delay_is_an_error(autojump_clock: MockClock) -> None:
    engine = memory_engine(clock=ManualClock(START), wf=napper([], -1))
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed, match="ValueError"):
            await finish(engine, iid)
        assert "timer_set" not in types_of(engine._backend.make_storage(), iid)


async def test_restart_mid_sleep_keeps_the_deadline_and_fires_at_it(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    ledger: list[str] = []
    engine = memory_engine(storage, clock, wf=napper(ledger, 1000))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        deadline = engine.status(iid).deadline
        await trio.sleep(500)  # half the delay, then the engine stops
    engine = memory_engine(storage, clock, wf=napper(ledger, 1000))
    async with engine:
        assert engine.status(iid).state == "sleeping"
        assert engine.status(iid).deadline == deadline
        began = trio.current_time()
        assert await finish(engine, iid) - began == pytest.approx(500, abs=0.01)
    assert ledger == ["before", "after"]
    assert types_of(storage, iid).count("timer_set") == 1


async def test_manual_clock_keeps_the_time_a_lifetime_ran(autojump_clock: MockClock) -> None:
    # Regression: ManualClock re-based each start on the last now() it had
    # returned, so time that passed in a lifetime after that call was lost
    # and a restart turned wall time back.
    clock = ManualClock(START)
    engine = memory_engine(clock=clock, wf=napper([], 1))
    async with engine:
        await trio.sleep(500)
    async with engine:
        assert clock.now() == pytest.approx(START + 500, abs=0.01)
    clock.advance(100)
    async with engine:
        assert clock.now() == pytest.approx(START + 600, abs=0.01)


async def test_overdue_timer_at_start_fires_at_once(autojump_clock: MockClock) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    ledger: list[str] = []
    engine = memory_engine(storage, clock, wf=napper(ledger, 3 * DAY))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
    clock.advance(4 * DAY)  # the process was down past the deadline
    engine = memory_engine(storage, clock, wf=napper(ledger, 3 * DAY))
    async with engine:
        began = trio.current_time()
        assert await finish(engine, iid) == began
    assert ledger == ["before", "after"]


async def test_restart_after_cancel_mid_sleep_keeps_the_original_deadline(
    autojump_clock: MockClock,
) -> None:
    # Regression: on a re-run the timer found its deadline in the journal,
    # still in the future, and unwound without writing anything; the
    # instance stayed "running" and the runner re-ran it in a tight loop.
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=napper(ledger, 1000))
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        deadline = engine.status(iid).deadline
        await trio.sleep(500)
        await engine.cancel(iid)
        await engine.restart(iid)
        with trio.fail_after(DAY):
            await until_state(engine, iid, "sleeping")
        assert engine.status(iid).deadline == deadline  # not moved by the re-run
        assert await finish(engine, iid) - began == pytest.approx(1000, abs=0.01)
    assert ledger == ["before", "after"]


async def test_restart_of_a_finished_instance_does_not_sleep_again(
    autojump_clock: MockClock,
) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=napper(ledger, 600))
    async with engine:
        iid = await engine.invoke("wf")
        await finish(engine, iid)
        began = trio.current_time()
        await engine.forget(iid, "after")
        await engine.restart(iid)
        assert await finish(engine, iid) == began
    assert ledger == ["before", "after", "after"]


async def test_bumped_timer_key_while_sleeping_does_not_spin(autojump_clock: MockClock) -> None:
    # Regression: woken by the poller, the instance re-ran still marked
    # sleeping on the old key; the new key's timer did not change what it
    # waited on, the passed deadline was armed again, and the poller woke
    # it over and over, writing a record each time.
    storage, clock = MemoryStorage(), ManualClock(START)
    ledger: list[str] = []
    engine = memory_engine(storage, clock, wf=napper(ledger, 100, "nap:v1"))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
    clock.advance(200)
    engine = memory_engine(storage, clock, wf=napper(ledger, 100, "nap:v2"))
    async with engine:
        limit_writes(engine, 50)
        began = trio.current_time()
        with trio.fail_after(DAY):
            await until(engine, iid, lambda s: s.key == "nap:v2")
        assert engine.status(iid).deadline == datetime.fromtimestamp(START + 300, tz=UTC)
        assert await finish(engine, iid) - began == pytest.approx(100, abs=0.01)
    assert types_of(storage, iid) == [
        "created", "step_done", "timer_set", "parked", "timer_fired", "timer_set", "parked",
        "timer_fired", "step_done", "completed",
    ]


async def test_concurrent_timers_wake_at_the_earliest_deadline(autojump_clock: MockClock) -> None:
    # Regression: with two timers set in one run (a nursery), the instance
    # slept on whichever was journaled first, so the short one could fire
    # only with the long one. Which comes first is up to trio's scheduler,
    # so several instances run it. Each re-run re-arms the timer that is
    # left (before the fix in Context.timer, that re-run spun in the runner).
    fired: dict[tuple[str, str], float] = {}

    async def wf(ctx: Context) -> Any:
        async def branch(key: str, delay: float) -> None:
            await ctx.timer(key, delay)
            fired.setdefault((ctx.instance_id, key), trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(branch, "short", 10)
            nursery.start_soon(branch, "long", 20)
        return "both"

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        began = trio.current_time()
        ids = [await engine.invoke("wf") for _ in range(12)]
        for iid in ids:
            assert await finish(engine, iid) == "both"
    for iid in ids:
        assert fired[iid, "short"] - began == pytest.approx(10, abs=0.01)
        assert fired[iid, "long"] - began == pytest.approx(20, abs=0.01)


def test_index_sleeps_until_the_earliest_of_concurrent_timers() -> None:
    index = ix.Index()
    index.apply([r.CREATED, 1, 0, "i", "wf", b"\xc0"], 1)
    index.apply([r.TIMER_SET, 2, 0, "i", "long", 20_000], 2)
    index.apply([r.TIMER_SET, 3, 0, "i", "short", 10_000], 3)
    index.apply([r.TIMER_SET, 4, 0, "i", "longer", 30_000], 4)
    entry = index.instances["i"]
    assert entry.state == lc.RUNNING  # registered: the branches block in memory
    index.apply([r.PARKED, 5, 0, "i", ["long", "short", "longer"]], 5)
    assert (entry.state, entry.pending, entry.deadline_ms) == (
        lc.SLEEPING, ("long", "short", "longer"), 10_000,
    )
    assert entry.waits == {
        "long": (lc.WAIT_TIMER, 20_000, None), "short": (lc.WAIT_TIMER, 10_000, None),
        "longer": (lc.WAIT_TIMER, 30_000, None),
    }
    index.apply([r.TIMER_FIRED, 6, 10_000, "i", "short"], 6)
    assert (entry.state, entry.pending, entry.deadline_ms) == (lc.RUNNING, None, None)


async def test_sequential_timers_do_not_rerun_finished_steps(autojump_clock: MockClock) -> None:
    ran: list[str] = []

    async def wf(ctx: Context) -> Any:
        for day in range(3):
            await ctx.step(f"work:{day}").run(ran.append, f"work:{day}")
            await ctx.timer(f"night:{day}", timedelta(days=1))
        return len(ran)

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == 3
        assert trio.current_time() - began == pytest.approx(3 * DAY, abs=0.01)
    assert ran == ["work:0", "work:1", "work:2"]


async def test_timers_fire_in_deadline_order_from_one_poller_task(
    autojump_clock: MockClock,
) -> None:
    fired: list[int] = []

    async def wf(ctx: Context) -> Any:
        await ctx.timer("nap", ctx.input)
        await ctx.step("mark").run(fired.append, ctx.input)

    delays = [random.Random(n).randrange(1, 10_000) * 10 for n in range(40)]
    delays = sorted(set(delays))
    shuffled = delays[:]
    random.Random(7).shuffle(shuffled)
    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        services, everything = engine_tasks(engine), all_tasks()
        ids = [await engine.invoke("wf", delay) for delay in shuffled]
        for iid in ids:
            await until_state(engine, iid, "sleeping")
        # No task per timer: the engine has its services and nothing else.
        assert engine_tasks(engine) == services
        assert all_tasks() == everything
        assert engine._timers is not None
        assert len(engine._timers) == len(delays)
        for iid in ids:
            await finish(engine, iid)
    assert fired == delays


async def test_instances_lists_sleeping_with_keys_and_deadlines(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.timer(f"nap:{ctx.input}", ctx.input)

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        ids = [await engine.invoke("wf", d, instance_id=f"i{d}") for d in (30, 10, 20)]
        for iid in ids:
            await until_state(engine, iid, "sleeping")
        sleeping = engine.instances("sleeping")
        assert [s.instance_id for s in sleeping] == ids  # creation order
        assert [(s.key, s.deadline) for s in sleeping] == [
            (f"nap:{d}", datetime.fromtimestamp(START + d, tz=UTC)) for d in (30, 10, 20)
        ]
        assert all(s.deadline is not None and s.deadline.tzinfo is UTC for s in sleeping)
        await trio.sleep(15)
        assert [s.instance_id for s in engine.instances("sleeping")] == ["i30", "i20"]
        assert [s.instance_id for s in engine.instances("completed")] == ["i10"]


async def test_cancel_a_sleeping_instance_stops_its_timer(autojump_clock: MockClock) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=napper(ledger, 100))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        await engine.cancel(iid)
        assert engine.status(iid).deadline is None
        before = written(engine)
        await trio.sleep(1000)
        assert written(engine) == before
        assert engine.status(iid).state == "cancelled"
    assert ledger == ["before"]


async def test_timer_deadline_is_persisted_once_in_the_journal(autojump_clock: MockClock) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=napper([], 100))
    async with engine:
        iid = await engine.invoke("wf")
        await finish(engine, iid)
    sets = [rec for rec in records_of(storage) if rec.type == "timer_set"]
    assert [(rec.fields["key"], rec.fields["deadline_ms"]) for rec in sets] == [
        ("nap", round((START + 100) * 1000))
    ]
