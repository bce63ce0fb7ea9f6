"""The engine follows the wall clock as it is now (issue 13 f, SPEC-NEXT §1).

A machine may run with a wrong clock until NTP steps it (a VM booting
before its time is set). The engine used to read the wall clock once at
start and advance it by the monotonic clock: every deadline and timestamp
kept the error for the engine's whole life, and a timer set then fired at
once at the next start. Now ``Clock.now()`` reads the wall clock each time,
and a sleep until a wall-clock time re-reads it at least every
``REAIM_SECONDS`` so a step while asleep moves the wake-up by no more than
that (and never before the deadline).

Every test runs on trio's MockClock with an injected wall source: trio's
virtual time plus an offset the test steps.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from support.suspend import memory_engine, until_state
from trio.testing import MockClock

from memable_log import Clock, Context, ManualClock
from memable_log._engine.clock import REAIM_SECONDS

BOOT = 1_700_000_000.0  # where the wall clock (wrongly) starts


class SteppedWall:
    """A wall clock running with trio's clock, which a test can step."""

    def __init__(self, offset: float = BOOT) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return trio.current_time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


async def test_now_reads_the_wall_clock_as_it_is_now(autojump_clock: MockClock) -> None:
    wall = SteppedWall()
    clock = Clock(wall)
    clock.start()
    await trio.sleep(10)
    assert clock.now() == wall()
    wall.step(3600)
    assert clock.now() == wall()
    assert clock.now_ms() == round(wall() * 1000)
    wall.step(-7200)
    assert clock.now() == wall()


async def test_a_sleep_wakes_soon_after_the_deadline_when_the_clock_steps_forward(
    autojump_clock: MockClock,
) -> None:
    wall = SteppedWall()
    clock = Clock(wall)
    clock.start()
    began = trio.current_time()
    deadline = wall() + 30

    async def correct_later() -> None:
        await trio.sleep(5)
        wall.step(20)  # the deadline is now 5 s away, not 25

    async with trio.open_nursery() as nursery:
        nursery.start_soon(correct_later)
        await clock.sleep_until(deadline)
    slept = trio.current_time() - began
    assert clock.now() >= deadline
    assert 10 <= slept <= 10 + REAIM_SECONDS


async def test_a_sleep_never_wakes_early_when_the_clock_steps_back(
    autojump_clock: MockClock,
) -> None:
    wall = SteppedWall()
    clock = Clock(wall)
    clock.start()
    began = trio.current_time()
    deadline = wall() + 30

    async def correct_later() -> None:
        await trio.sleep(5)
        wall.step(-20)  # the deadline is now 45 s away, not 25

    async with trio.open_nursery() as nursery:
        nursery.start_soon(correct_later)
        await clock.sleep_until(deadline)
    slept = trio.current_time() - began
    assert clock.now() >= deadline
    assert 50 <= slept <= 50 + REAIM_SECONDS


async def test_a_sleep_until_a_past_time_returns_at_once(autojump_clock: MockClock) -> None:
    clock = Clock(SteppedWall())
    clock.start()
    began = trio.current_time()
    await clock.sleep_until(clock.now() - 1)
    assert trio.current_time() == began


def napper(delay: float) -> Any:
    async def wf(ctx: Context) -> float:
        await ctx.timer("nap", delay)
        return trio.current_time()

    return wf


async def test_a_timer_fires_by_the_corrected_clock_when_it_steps_while_asleep(
    autojump_clock: MockClock,
) -> None:
    wall = SteppedWall()
    engine = memory_engine(clock=Clock(wall), wf=napper(3600))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        deadline = engine.status(iid).deadline
        assert deadline == datetime.fromtimestamp(round(wall() * 1000) / 1000 + 3600, tz=UTC)
        stepped_at = trio.current_time()
        wall.step(3000)  # the deadline is now 600 s away
        with trio.fail_after(3600):
            fired_at = await engine.wait(iid)
    assert 600 <= fired_at - stepped_at <= 600 + REAIM_SECONDS


async def test_a_clock_corrected_after_start_moves_neither_records_nor_deadlines(
    autojump_clock: MockClock,
) -> None:
    # The case: the engine starts on a clock an hour slow; NTP fixes
    # it; a 30 s timer set afterwards is 30 s of corrected time, across a
    # restart too (it used to fire at once at the next start).
    wall = SteppedWall()
    engine = memory_engine(clock=Clock(wall), wf=napper(30))
    async with engine:
        wall.step(3600)
        set_at = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        status = engine.status(iid)
        assert status.deadline is not None
        assert status.deadline.timestamp() == pytest.approx(wall() + 30, abs=0.01)
        await trio.sleep(1)
    async with engine:  # the next start
        with trio.fail_after(3600):
            fired_at = await engine.wait(iid)
    assert fired_at - set_at == pytest.approx(30, abs=0.01)


async def test_the_default_clock_is_virtual_under_mock_clock(autojump_clock: MockClock) -> None:
    clock = Clock()
    clock.start()
    began, wall_began = trio.current_time(), clock.now()
    await clock.sleep_until(wall_began + 86_400)  # a day, in no real time
    assert trio.current_time() - began == pytest.approx(86_400)
    assert clock.now() - wall_began == pytest.approx(86_400)


async def test_the_default_clock_reads_the_system_clock_on_trio_s_own_clock() -> None:
    clock = Clock()
    clock.start()
    before = time.time()
    now = clock.now()
    after = time.time()
    assert before <= now <= after


async def test_a_manual_clock_still_runs_on_trio_s_clock(autojump_clock: MockClock) -> None:
    clock = ManualClock(BOOT)
    clock.start()
    await clock.sleep_until(BOOT + 100)
    assert clock.now() == pytest.approx(BOOT + 100)
    clock.advance(50)
    assert clock.now() == pytest.approx(BOOT + 150)
