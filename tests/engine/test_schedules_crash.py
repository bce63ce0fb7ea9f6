"""Schedules and debounce across power cuts: a torn tick or start batch (SPEC-NEXT §4).

A tick is one batch, its instance's ``created`` then ``schedule_ticked``;
a debounced start is one batch, ``created`` then the key's ``debounce_set``
with no due time. A batch is durable whole or survives as a prefix of its
records (Backend.append_many), so a power cut while one is written may keep
the ``created`` and lose the rest. Each test cuts the power while such a
batch is written (its write lands, its fsync does not), opens the journal
as the cut left it, in every way the unsynced bytes may land (nothing, all,
every prefix, garbage: ``support.powerloss.tears``), runs on, and checks
that no tick and no debounced start is lost or made twice, and that none
runs twice. Wall time is a ManualClock under trio's MockClock; START is
2023-11-14T22:13:20Z.
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


def counting() -> tuple[Counter[str], Any]:
    """A workflow whose one step counts its runs per instance; it returns its input."""
    runs: Counter[str] = Counter()

    async def report(ctx: Context) -> Any:
        def work() -> Any:
            runs[ctx.instance_id] += 1
            return ctx.input

        return await ctx.step("work").run(work)

    return runs, report


def created(storage: MemoryStorage) -> Counter[str]:
    """How many ``created`` records each instance has."""
    return Counter(rec.instance for rec in records_of(storage) if rec.type == "created")


def ticks(*minutes: int) -> list[str]:
    return [f"every@2023-11-14T22:{m:02d}:00Z" for m in minutes]


async def cut_at_batch(storage: MemoryStorage, clock: ManualClock, report: Any,
                       drive: Callable[[Engine], Awaitable[None]], batch: list[str],
                       nth: int) -> None:
    """Run ``drive`` until the ``nth`` batch of record types ``batch`` is
    written, and cut the power before its fsync."""
    engine = memory_engine(storage, clock, report=report)
    assert await cuts.cut_at_batch(storage, engine, drive, batch, nth) == nth


@pytest.mark.parametrize("nth", [1, 2, 3])
async def test_a_power_cut_in_a_tick_batch_loses_no_tick_and_runs_none_twice(
    autojump_clock: MockClock, nth: int
) -> None:
    runs, report = counting()
    storage, clock = MemoryStorage(), ManualClock(START)

    async def drive(engine: Engine) -> None:
        await engine.schedule("every", "report", cron="* * * * *", input="tick", catch_up=True)

    await cut_at_batch(storage, clock, report, drive, ["created", "schedule_ticked"], nth)
    cut_at = clock.now()  # the nth tick's time, 22:(13 + nth):00Z
    before = dict(runs)
    assert sorted(before) == ticks(*range(14, 13 + nth))  # the cut tick's instance never ran
    for mode, tear in tears(storage, random.Random(nth)):
        runs.clear()
        runs.update(before)
        after = storage.crash(tear)
        # The engine comes back 30 s after the cut and runs until 22:18:30Z.
        clock = ManualClock(cut_at + 30)
        async with memory_engine(after, clock, report=report) as engine:
            await trio.sleep(START + 310 - clock.now())
            for iid in ticks(14, 15, 16, 17, 18):
                assert await finish(engine, iid) == "tick", mode
        assert created(after) == dict.fromkeys(ticks(14, 15, 16, 17, 18), 1), mode
        assert runs == dict.fromkeys(ticks(14, 15, 16, 17, 18), 1), mode
        ticked = [rec.fields["tick_ms"] for rec in records_of(after)
                  if rec.type == "schedule_ticked"]
        assert ticked == sorted(set(ticked)), mode  # each tick done once, in order


@pytest.mark.parametrize("nth", [1, 2])
async def test_a_power_cut_in_a_debounce_start_batch_starts_it_once_with_the_last_input(
    autojump_clock: MockClock, nth: int
) -> None:
    runs, report = counting()
    storage, clock = MemoryStorage(), ManualClock(START)
    ids: list[str] = []

    async def drive(engine: Engine) -> None:
        for burst in (1, 2):  # two bursts of three calls, 60 s apart
            for call in range(3):
                ids.append(await engine.debounce("report", "k", delay=10,
                                                 input=f"burst {burst} call {call}"))
            await trio.sleep(60)

    await cut_at_batch(storage, clock, report, drive, ["created", "debounce_set"], nth)
    assert ids == ["report~k~1"] * 3 + ["report~k~2"] * 3 * (nth - 1)
    cut_at = clock.now()
    before = dict(runs)
    for mode, tear in tears(storage, random.Random(nth)):
        runs.clear()
        runs.update(before)
        after = storage.crash(tear)
        async with memory_engine(after, ManualClock(cut_at + 30), report=report) as engine:
            # A start whose batch was lost is pending still: the start makes it.
            await wait_all_tasks_blocked()
            for n in range(1, nth + 1):
                assert await finish(engine, f"report~k~{n}") == f"burst {n} call 2", mode
            # The key's next call begins the next n: the started one is not reused.
            assert await engine.debounce("report", "k", delay=10, input="next") == (
                f"report~k~{nth + 1}"
            ), mode
            await trio.sleep(11)  # past its due time (virtual: MockClock)
            await wait_all_tasks_blocked()
            assert await finish(engine, f"report~k~{nth + 1}") == "next", mode
        made = [f"report~k~{n}" for n in range(1, nth + 2)]
        assert created(after) == dict.fromkeys(made, 1), mode
        assert runs == dict.fromkeys(made, 1), mode
