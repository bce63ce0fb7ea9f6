"""Flow control and schedules across power cuts (SPEC-NEXT §4).

Each test cuts the power while one batch is written (its write lands, its
fsync does not), opens the journal as the cut left it, in every way the
unsynced bytes may land (``support.powerloss.tears``), runs on and checks
what the contract promises. Wall time is a ManualClock under trio's
MockClock; START is 2023-11-14T22:13:20Z.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from support import cuts
from support.powerloss import tears
from support.suspend import finish, memory_engine, records_of
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import Context, Engine, ManualClock, MemoryStorage

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z

Before = Callable[[Engine], Awaitable[None]]


async def cut_at_batch(
    storage: MemoryStorage, engine: Engine, drive: Callable[[Engine], Awaitable[None]],
    batch: list[str], nth: int = 1, before: Before | None = None,
) -> None:
    """Run ``drive`` until the ``nth`` batch of record types ``batch`` is
    written; ``before`` runs just before it; then the power is cut before
    the batch's fsync."""
    assert await cuts.cut_at_batch(storage, engine, drive, batch, nth, before) == nth


def created(storage: MemoryStorage) -> Counter[str]:
    return Counter(rec.instance for rec in records_of(storage) if rec.type == "created")


def tick(minute: int) -> str:
    return f"every@2023-11-14T22:{minute:02d}:00Z"


async def test_without_catch_up_a_tick_whose_batch_a_power_cut_lost_still_starts(
    autojump_clock: MockClock,
) -> None:
    """The 22:15 tick was due while the engine was alive (work at 22:15 is
    durable) but its batch was lost: the next start, at 22:17:30, starts it;
    22:16 and 22:17 fell while no engine ran and are skipped."""
    runs: Counter[str] = Counter()

    async def report(ctx: Context) -> Any:
        def work() -> Any:
            runs[ctx.instance_id] += 1
            return ctx.input

        return await ctx.step("work").run(work)

    storage, clock = MemoryStorage(), ManualClock(START)

    async def drive(engine: Engine) -> None:
        await engine.schedule("every", "report", cron="* * * * *", input="tick")

    async def other_work(engine: Engine) -> None:  # durable, at the tick's time
        await engine.invoke("report", "other", instance_id="other")

    await cut_at_batch(storage, memory_engine(storage, clock, report=report), drive,
                       ["created", "schedule_ticked"], nth=2, before=other_work)
    assert clock.now() == START + 100  # 22:15:00Z, the second tick
    before = dict(runs)
    for mode, tear in tears(storage, random.Random(2)):
        runs.clear()
        runs.update(before)
        after = storage.crash(tear)
        clock = ManualClock(START + 250)  # 22:17:30Z
        async with memory_engine(after, clock, report=report) as engine:
            await trio.sleep(60)  # to 22:18:30Z
            await wait_all_tasks_blocked()
            for iid in (tick(14), tick(15), tick(18)):
                assert await finish(engine, iid) == "tick", mode
        made = {iid: n for iid, n in created(after).items() if iid != "other"}
        assert made == dict.fromkeys((tick(14), tick(15), tick(18)), 1), mode
        assert {iid: n for iid, n in runs.items() if iid != "other"} == made, mode


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_a_power_cut_in_the_batch_of_an_outcome_and_the_next_start_keeps_the_limit(
    autojump_clock: MockClock, outcome: str
) -> None:
    """``a1``'s outcome and ``a2``'s ``dequeued`` are one batch. Whatever of
    it survives, each instance's step runs once, both finish, and the key
    never runs two at once."""
    runs: Counter[str] = Counter()
    now: Counter[str] = Counter()
    most: Counter[str] = Counter()
    gate = trio.Event()

    async def job(ctx: Context) -> Any:
        key = ctx.input[0]
        now[key] += 1
        most[key] = max(most[key], now[key])
        try:
            def work() -> Any:
                runs[ctx.instance_id] += 1
                return ctx.input

            value = await ctx.step("work").run(work)
            await gate.wait()
            if outcome == "failed" and ctx.input == "a1":
                raise ValueError("a1 fails")
            return value
        finally:
            now[key] -= 1

    def engine_on(storage: MemoryStorage) -> Engine:
        engine = memory_engine(storage, ManualClock(START))
        engine.register("job", job, key=lambda x: x[0], max_running_per_key=1)
        return engine

    storage = MemoryStorage()

    async def drive(engine: Engine) -> None:
        for name in ("a1", "a2", "a3"):
            await engine.invoke("job", name, instance_id=name)
        await wait_all_tasks_blocked()
        gate.set()

    await cut_at_batch(storage, engine_on(storage), drive, [outcome, "dequeued"])
    before = dict(runs)
    assert before == {"a1": 1}
    for mode, tear in tears(storage, random.Random(7)):
        runs.clear()
        runs.update(before)
        most.clear()
        after = storage.crash(tear)
        async with engine_on(after) as engine:
            for name in ("a2", "a3"):
                assert await finish(engine, name) == name, mode
            assert engine.status("a1").state == outcome, mode
        assert runs == {"a1": 1, "a2": 1, "a3": 1}, mode
        assert most == {"a": 1}, mode
        types = [(rec.type, rec.instance) for rec in records_of(after)]
        for name in ("a2", "a3"):
            assert types.count(("dequeued", name)) == 1, mode
