"""Suspended and sleeping instances cost an index entry, not a workflow.

``ctx.suspend`` and ``ctx.timer`` unwind the workflow and end its task: a
weak reference to an object the workflow held dies, the engine's nursery
holds only its own service tasks, and ten thousand waiting instances stay
within a small, fixed memory budget each (tracemalloc) with a constant task
count: one poller, not one task per timer.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from typing import Any

import trio
from support.suspend import (
    DAY,
    all_tasks,
    engine_tasks,
    finish,
    memory_engine,
    until_state,
)
from trio.testing import MockClock

from memable_log import Context, ManualClock, MemoryStorage

START = 1_700_000_000.0


class Held:
    """Something big a workflow keeps in a local variable."""

    def __init__(self) -> None:
        self.payload = bytearray(1 << 20)


def holding(refs: list[weakref.ref[Held]], wait: str) -> Any:
    async def wf(ctx: Context) -> Any:
        held = Held()
        refs.append(weakref.ref(held))
        if wait == "suspend":
            answer = await ctx.suspend("k", status="held")
        elif wait == "timer":
            await ctx.timer("k", DAY)
            answer = "slept"
        else:  # suspend inside a nursery: unwinds as an exception group
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ctx.suspend, "k")
                nursery.start_soon(ctx.step("side").run, len, held.payload)
            answer = "grouped"
        return [answer, len(held.payload)]

    return wf


async def check_dropped(wait: str, state: str) -> None:
    refs: list[weakref.ref[Held]] = []
    engine = memory_engine(clock=ManualClock(START), wf=holding(refs, wait))
    async with engine:
        services, everything = engine_tasks(engine), all_tasks()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, state)
        gc.collect()
        assert len(refs) == 1
        assert refs[0]() is None, "the workflow's frame outlived its suspension"
        assert not engine._host.running
        assert not engine._host.scopes
        assert engine_tasks(engine) == services
        assert all_tasks() == everything
        if wait == "timer":
            await trio.sleep(DAY)
        else:
            await engine.signal("wf", iid, "k", "yes")
        result = await finish(engine, iid)
        assert result[1] == 1 << 20
        gc.collect()
        assert all(ref() is None for ref in refs)
        assert engine_tasks(engine) == services


async def test_suspend_drops_the_workflow_from_memory(autojump_clock: MockClock) -> None:
    await check_dropped("suspend", "suspended")


async def test_timer_drops_the_workflow_from_memory(autojump_clock: MockClock) -> None:
    await check_dropped("timer", "sleeping")


async def test_suspend_in_a_nursery_drops_the_workflow(autojump_clock: MockClock) -> None:
    await check_dropped("nursery", "suspended")


async def test_waiting_instances_leave_only_service_tasks(autojump_clock: MockClock) -> None:
    engine = memory_engine(clock=ManualClock(START), wf=holding([], "suspend"))
    async with engine:
        assert engine._nursery is not None
        services = sorted(task.name for task in engine._nursery.child_tasks)
        assert any("TimerQueue.run" in name for name in services)
        # The poller and the compaction service: one each, whatever waits.
        assert len(services) == 2
        ids = [await engine.invoke("wf") for _ in range(20)]
        for iid in ids:
            await until_state(engine, iid, "suspended")
        names = sorted(task.name for task in engine._nursery.child_tasks)
        assert names == services  # no runner (named memable:<id>) is left
        assert not any(name.startswith("memable:") for name in names)


async def waits(ctx: Context) -> Any:
    """Odd inputs suspend (every third with a timeout), even ones sleep."""
    n = ctx.input
    if n % 2:
        return await ctx.suspend(
            "approval:v1", status="Waiting for manager approval",
            timeout=DAY + n if n % 3 == 0 else None,
        )
    await ctx.timer("nap:v1", DAY + n)
    return "slept"


async def test_ten_thousand_waiting_instances_stay_bounded(autojump_clock: MockClock) -> None:
    count = 10_000
    deadlines = sum(1 for n in range(count) if n % 2 == 0 or n % 3 == 0)
    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=waits)
    async with engine:
        services, everything = engine_tasks(engine), all_tasks()
        gc.collect()
        objects = len(gc.get_objects())
        ids: list[str] = []

        async def invoke_range(lo: int, hi: int) -> None:
            for n in range(lo, hi):
                ids.append(await engine.invoke("wf", n, instance_id=f"i{n}"))

        async with trio.open_nursery() as nursery:
            step = count // 20
            for lo in range(0, count, step):
                nursery.start_soon(invoke_range, lo, lo + step)
        # Every instance has settled into its wait and no runner is left.
        await trio.testing.wait_all_tasks_blocked()
        assert len(ids) == count
        assert not engine._host.running
        assert len(engine.instances("suspended")) == count // 2
        assert len(engine.instances("sleeping")) == count // 2
        assert engine_tasks(engine) == services
        assert all_tasks() == everything
        assert engine._timers is not None
        assert len(engine._timers) == deadlines
        # No workflow, context, task or event is kept per instance: a few
        # GC-tracked objects at most (its index entry).
        gc.collect()
        per_instance = (len(gc.get_objects()) - objects) / count
        assert per_instance < 4, f"{per_instance:.1f} objects per waiting instance"

    # The same instances as the next start rebuilds them from the journal,
    # measured byte by byte.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        engine = memory_engine(storage, clock, wf=waits)
        async with engine:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert len(engine._host.index.instances) == count
            assert engine_tasks(engine) == services
            assert all_tasks() == everything
            assert not engine._host.running
            assert engine._timers is not None
            assert len(engine._timers) == deadlines
    finally:
        tracemalloc.stop()
    assert held / count < 2048, f"{held / count:.0f} bytes per waiting instance"
