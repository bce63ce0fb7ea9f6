"""engine.schedule / unschedule / schedules: durable cron ticks (SPEC-NEXT §4, time).

Every test runs under trio's MockClock (``autojump_clock``) with a
ManualClock for wall time: minutes of ticks take no real time, and
``ManualClock.advance`` between engine lifetimes is downtime. START is
2023-11-14T22:13:20Z, so the first minute tick after it is 22:14:00Z.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from support.suspend import finish, memory_engine, records_of
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import (
    Context,
    Engine,
    EngineError,
    ManualClock,
    MemoryStorage,
    NotSerializable,
    Schedule,
    UnknownWorkflow,
)
from memable_log._engine import cron

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


async def report(ctx: Context) -> Any:
    return ctx.input


def created(storage: MemoryStorage) -> list[str]:
    """The ids of every ``created`` record, in journal order."""
    return [rec.instance for rec in records_of(storage) if rec.type == "created"]


def ticks(*minutes: int, name: str = "every") -> list[str]:
    """Tick ids at 22:<minute>:00Z of START's day."""
    return [f"{name}@2023-11-14T22:{m:02d}:00Z" for m in minutes]


def engine_on(storage: MemoryStorage, clock: ManualClock) -> Engine:
    return memory_engine(storage, clock, report=report)


async def test_each_tick_starts_one_instance_with_the_tick_as_its_id(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *", input={"n": 1})
        await trio.sleep(200)  # 22:16:40Z
        assert created(storage) == ticks(14, 15, 16)
        for iid in ticks(14, 15, 16):
            assert await finish(engine, iid) == {"n": 1}
            assert engine.status(iid).workflow == "report"
        # The tick's created and schedule_ticked are one batch, in that order.
        types = [(rec.type, rec.instance) for rec in records_of(storage)]
        at = types.index(("created", ticks(14)[0]))
        assert types[at + 1] == ("schedule_ticked", "")


async def test_schedules_lists_each_with_its_next_tick(autojump_clock: MockClock) -> None:
    async with engine_on(MemoryStorage(), ManualClock(START)) as engine:
        await engine.schedule("nightly", "report", cron="0 3 * * *", input=[1, 2])
        await engine.schedule("every", "report", cron="*/5 * * * *", catch_up=True)
        assert engine.schedules() == [
            Schedule(name="every", workflow="report", cron="*/5 * * * *", input=None,
                     catch_up=True, next_tick=datetime(2023, 11, 14, 22, 15, tzinfo=UTC)),
            Schedule(name="nightly", workflow="report", cron="0 3 * * *", input=[1, 2],
                     catch_up=False, next_tick=datetime(2023, 11, 15, 3, 0, tzinfo=UTC)),
        ]


@pytest.mark.parametrize("catch_up", [False, True])
async def test_a_tick_never_runs_twice_across_a_restart(
    autojump_clock: MockClock, catch_up: bool
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *", catch_up=catch_up)
        await trio.sleep(40.5)  # 22:14:00.5: the 22:14 tick started
        assert created(storage) == ticks(14)
    # Restarted at once (the same wall time: the tick is still "due"), then
    # again, declaring the schedule as it was at each start.
    for _ in range(2):
        async with engine_on(storage, clock) as engine:
            await engine.schedule("every", "report", cron="* * * * *", catch_up=catch_up)
            await trio.sleep(60)
    assert created(storage) == ticks(14, 15, 16)


async def test_ticks_missed_while_no_engine_ran_are_skipped_without_catch_up(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *")
        await trio.sleep(50)  # 22:14:10: one tick
    clock.advance(300)  # down from 22:14:10 to 22:19:10: five ticks missed
    async with engine_on(storage, clock) as engine:
        assert engine.schedules()[0].next_tick == datetime(2023, 11, 14, 22, 20, tzinfo=UTC)
        await trio.sleep(60)
    assert created(storage) == ticks(14, 20)


async def test_ticks_missed_while_no_engine_ran_all_start_with_catch_up_oldest_first(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *", input="x", catch_up=True)
        await trio.sleep(50)  # 22:14:10: one tick
    clock.advance(300)  # 22:19:10: five ticks missed
    async with engine_on(storage, clock) as engine:
        began = trio.current_time()
        # The declaration at start writes nothing: the catch-up is kept.
        await engine.schedule("every", "report", cron="* * * * *", input="x", catch_up=True)
        await wait_all_tasks_blocked()  # the ticks' task has run
        for iid in ticks(15, 16, 17, 18, 19):
            assert await finish(engine, iid) == "x"
        assert trio.current_time() == began, "the missed ticks start at the start"
        await trio.sleep(60)
    assert created(storage) == ticks(14, 15, 16, 17, 18, 19, 20)
    assert [r.type for r in records_of(storage)].count("schedule_set") == 1


async def test_a_schedule_changed_is_replaced_from_now_and_the_same_one_writes_nothing(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="*/10 * * * *", input=1)
        before = len(records_of(storage))
        await engine.schedule("every", "report", cron="*/10 * * * *", input=1)
        assert len(records_of(storage)) == before
        await engine.schedule("every", "report", cron="* * * * *", input=2)
        assert len(records_of(storage)) == before + 1
        await trio.sleep(101)  # 22:15:01
        assert created(storage) == ticks(14, 15)
        assert await finish(engine, ticks(15)[0]) == 2


async def test_unschedule_stops_the_ticks_and_an_unknown_name_is_refused(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *")
        await trio.sleep(41)
        await engine.unschedule("every")
        assert engine.schedules() == []
        with pytest.raises(EngineError, match="no schedule named 'every'"):
            await engine.unschedule("every")
        await trio.sleep(300)
    async with engine_on(storage, clock) as engine:
        assert engine.schedules() == []
        await trio.sleep(300)
    assert created(storage) == ticks(14)


@pytest.mark.parametrize(("args", "error", "match"), [
    (("every", "report", "* * *"), ValueError, "bad cron expression '\\* \\* \\*': it has 3"),
    (("every", "report", "61 * * * *"), ValueError, "bad cron expression .*Bad minute"),
    (("every", "nope", "* * * * *"), UnknownWorkflow, "unknown workflow 'nope'"),
    (("a/b", "report", "* * * * *"), ValueError, "not allowed in an instance id: '/'"),
    (("a b", "report", "* * * * *"), ValueError, "not allowed in an instance id: ' '"),
    (("a@b", "report", "* * * * *"), ValueError, "not allowed in an instance id: '@'"),
    (("", "report", "* * * * *"), TypeError, "non-empty str"),
])
async def test_bad_input_fails_clearly_and_writes_nothing(
    autojump_clock: MockClock, args: tuple[str, str, str], error: type, match: str
) -> None:
    storage = MemoryStorage()
    async with engine_on(storage, ManualClock(START)) as engine:
        before = len(records_of(storage))
        name, workflow, expr = args
        with pytest.raises(error, match=match):
            await engine.schedule(name, workflow, cron=expr)
        with pytest.raises(TypeError, match="catch_up must be True or False"):
            await engine.schedule("every", "report", cron="* * * * *", catch_up=1)  # type: ignore[arg-type]
        with pytest.raises(NotSerializable):
            await engine.schedule("every", "report", cron="* * * * *", input=object())
        assert len(records_of(storage)) == before
        assert engine.schedules() == []


async def test_without_cronsim_schedule_names_the_extra(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)  # import cronsim: ImportError
    cron.check.cache_clear()
    storage = MemoryStorage()
    async with engine_on(storage, ManualClock(START)) as engine:
        with pytest.raises(EngineError, match=r"pip install 'memable-log\[cron\]'"):
            await engine.schedule("every", "report", cron="* * * * *")
        assert engine.schedules() == []
    cron.check.cache_clear()


async def test_a_tick_for_a_workflow_registered_later_waits_for_it(
    autojump_clock: MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        await engine.schedule("every", "report", cron="* * * * *", input=7, catch_up=True)
    clock.advance(60)
    engine = Engine.builder().in_memory(storage).clock(clock).build()
    async with engine:
        await wait_all_tasks_blocked()
        assert created(storage) == ticks(14)
        assert engine.status(ticks(14)[0]).state == "running"
        engine.register("report", report)
        assert await finish(engine, ticks(14)[0]) == 7
