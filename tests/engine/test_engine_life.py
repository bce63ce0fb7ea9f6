"""The engine's life (SPEC-NEXT §5b): a graceful stop, a start that resumes
nothing, and ``engine.wake`` for a pending timer.

Every test runs under trio's MockClock (``autojump_clock``) with a
ManualClock for wall time, so hours of steps and timers take no real time;
``trio.current_time()`` tells how long a stop took. Engines that follow one
another on one MemoryStorage are restarts on one journal.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import trio
from support.suspend import finish, types_of, until_state, written
from trio.testing import MockClock

from memable_log import (
    Context,
    Engine,
    EngineError,
    ManualClock,
    MemoryStorage,
    UnknownInstance,
)

HOUR = 3600.0


def build(
    storage: MemoryStorage, clock: ManualClock, wfs: dict[str, Any], **settings: Any
) -> Engine:
    builder = Engine.builder().in_memory(storage).clock(clock)
    for name, value in settings.items():
        builder = getattr(builder, name)(value)
    engine = builder.build()
    for name, fn in wfs.items():
        engine.register(name, fn)
    return engine


def two_steps(calls: list[str], started: trio.Event, first: float) -> Any:
    """A step ``a`` lasting ``first`` seconds, then a step ``b``."""

    async def slow(name: str, seconds: float) -> str:
        calls.append(name)
        started.set()
        await trio.sleep(seconds)
        return name

    async def wf(ctx: Context) -> list[str]:
        a = await ctx.step("a").run(slow, "a", first)
        b = await ctx.step("b").run(slow, "b", 1)
        return [a, b]

    return wf


def noting(ledger: list[str]) -> Any:
    async def note(name: str) -> str:
        ledger.append(name)
        return name

    return note


# -- shutdown_timeout ---------------------------------------------------------------


async def test_a_step_that_finishes_within_the_shutdown_timeout_is_recorded_and_not_run_again(
    autojump_clock: MockClock,
) -> None:
    storage, clock, calls, started = MemoryStorage(), ManualClock(), [], trio.Event()
    wfs = {"wf": two_steps(calls, started, first=5)}
    engine = build(storage, clock, wfs, shutdown_timeout=60)
    async with engine:
        iid = await engine.invoke("wf")
        await started.wait()
        left = trio.current_time()
    # It waited for step a (5 s), not the whole timeout, and began no step b.
    assert trio.current_time() - left == pytest.approx(5)
    assert calls == ["a"]
    assert types_of(storage, iid) == ["created", "step_done"]

    engine = build(storage, clock, wfs)
    async with engine:
        assert await finish(engine, iid) == ["a", "b"]
    assert calls == ["a", "b"]  # a ran once, across the stop


async def test_a_step_still_running_at_the_shutdown_timeout_is_cancelled_and_runs_again(
    autojump_clock: MockClock,
) -> None:
    storage, clock, calls, started = MemoryStorage(), ManualClock(), [], trio.Event()
    wfs = {"wf": two_steps(calls, started, first=100)}
    async with build(storage, clock, wfs, shutdown_timeout=timedelta(seconds=10)) as engine:
        iid = await engine.invoke("wf")
        await started.wait()
        left = trio.current_time()
    assert trio.current_time() - left == pytest.approx(10)
    assert types_of(storage, iid) == ["created"]

    engine = build(storage, clock, wfs)
    async with engine:
        assert await finish(engine, iid) == ["a", "b"]
    assert calls == ["a", "a", "b"]


async def test_nothing_new_starts_while_the_engine_stops(autojump_clock: MockClock) -> None:
    """During the grace period no instance starts (an invoke is recorded and
    runs at the next start), a signal wakes no run, a passed deadline wakes
    none, and no step begins; all of them run at the next start."""
    storage, clock, calls, started = MemoryStorage(), ManualClock(), [], trio.Event()
    ledger: list[str] = []
    note = noting(ledger)

    async def later(ctx: Context) -> str:
        return str(await ctx.step("later").run(note, "later"))

    async def waiter(ctx: Context) -> str:
        await ctx.suspend("go")
        return str(await ctx.step("went").run(note, "went"))

    async def napper(ctx: Context) -> str:
        await ctx.timer("nap", 2)
        return str(await ctx.step("woke").run(note, "woke"))

    wfs = {"wf": two_steps(calls, started, first=5), "later": later, "waiter": waiter,
           "napper": napper}
    engine = build(storage, clock, wfs, shutdown_timeout=60)
    ids: dict[str, str] = {}

    async def during_grace() -> None:
        await trio.sleep(1)  # step a runs until +5: the engine is stopping
        ids["later"] = await engine.invoke("later")
        await engine.signal("waiter", ids["waiter"], "go")

    async with trio.open_nursery() as outer, engine:
        ids["waiter"] = await engine.invoke("waiter")
        await until_state(engine, ids["waiter"], "suspended")
        ids["wf"] = await engine.invoke("wf")
        await started.wait()
        ids["napper"] = await engine.invoke("napper")  # its deadline passes in the grace
        await until_state(engine, ids["napper"], "sleeping")
        outer.start_soon(during_grace)
        left = trio.current_time()
    assert trio.current_time() - left == pytest.approx(5)
    assert calls == ["a"]
    assert ledger == []
    assert types_of(storage, ids["later"]) == ["created"]
    assert types_of(storage, ids["waiter"])[-1] == "signalled"
    assert "timer_fired" not in types_of(storage, ids["napper"])

    engine = build(storage, clock, wfs)
    async with engine:
        for name in ("later", "waiter", "napper"):
            await finish(engine, ids[name])
        assert await finish(engine, ids["wf"]) == ["a", "b"]
    assert sorted(ledger) == ["later", "went", "woke"]
    assert calls == ["a", "b"]


async def test_a_retry_does_not_begin_while_the_engine_stops(autojump_clock: MockClock) -> None:
    storage, clock = MemoryStorage(), ManualClock()
    attempts: list[float] = []
    failed = trio.Event()

    def flaky() -> str:
        attempts.append(trio.current_time())
        failed.set()
        if len(attempts) == 1:
            raise ConnectionError("down")
        return "up"

    async def wf(ctx: Context) -> str:
        return str(await ctx.step("call").retry(max_attempts=3, initial_delay=2, retry_on=(
            ConnectionError,)).run(flaky))

    calls, started = [], trio.Event()
    wfs = {"wf": wf, "slow": two_steps(calls, started, first=10)}  # a grace of 10 s
    async with build(storage, clock, wfs, shutdown_timeout=60) as engine:
        await engine.invoke("slow")
        iid = await engine.invoke("wf")
        await failed.wait()
        await started.wait()
        left = trio.current_time()
    assert trio.current_time() - left == pytest.approx(10)
    assert len(attempts) == 1  # the retry waited 2 s, then did not begin
    async with build(storage, clock, wfs) as engine:
        assert await finish(engine, iid) == "up"


async def test_without_a_shutdown_timeout_leaving_cancels_at_once(
    autojump_clock: MockClock,
) -> None:
    storage, clock, calls, started = MemoryStorage(), ManualClock(), [], trio.Event()
    async with build(storage, clock, {"wf": two_steps(calls, started, first=5)}) as engine:
        iid = await engine.invoke("wf")
        await started.wait()
        left = trio.current_time()
    assert trio.current_time() == left
    assert types_of(storage, iid) == ["created"]


async def test_a_cancelled_caller_stops_at_once_despite_a_shutdown_timeout(
    autojump_clock: MockClock,
) -> None:
    storage, clock, calls, started = MemoryStorage(), ManualClock(), [], trio.Event()
    wfs = {"wf": two_steps(calls, started, first=50)}
    with trio.move_on_after(1):
        async with build(storage, clock, wfs, shutdown_timeout=60) as engine:
            await engine.invoke("wf")
            await trio.sleep_forever()
    assert trio.current_time() == pytest.approx(1)


async def test_a_shutdown_with_no_step_running_is_immediate(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.suspend("never")

    storage, clock = MemoryStorage(), ManualClock()
    async with build(storage, clock, {"wf": wf}, shutdown_timeout=60) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        left = trio.current_time()
    assert trio.current_time() == left


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (-1, ValueError, "non-negative"),
        (math.nan, ValueError, "non-negative"),
        (timedelta(seconds=-3), ValueError, "non-negative"),
        ("10", TypeError, "seconds"),
        (True, TypeError, "seconds"),
    ],
)
def test_shutdown_timeout_refuses_what_is_not_a_duration(
    value: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=f"shutdown_timeout.*{words}"):
        Engine.builder().shutdown_timeout(value)


def test_shutdown_timeout_takes_seconds_a_timedelta_infinity_or_none() -> None:
    for value in (0, 2.5, timedelta(minutes=1), math.inf, None):
        Engine.builder().in_memory().shutdown_timeout(value).build()
    with pytest.raises(TypeError, match="resume_on_start takes True or False"):
        Engine.builder().resume_on_start("no")  # type: ignore[arg-type]


# -- resume_on_start(False) ---------------------------------------------------------


async def interrupted_and_parked(storage: MemoryStorage, clock: ManualClock,
                                 wfs: dict[str, Any]) -> dict[str, str]:
    """A journal with an instance interrupted in a step, one sleeping for
    an hour and one suspended."""
    ids: dict[str, str] = {}
    async with build(storage, clock, wfs) as engine:
        ids["stuck"] = await engine.invoke("stuck")
        ids["napper"] = await engine.invoke("napper")
        ids["waiter"] = await engine.invoke("waiter")
        for name, state in (("napper", "sleeping"), ("waiter", "suspended")):
            await until_state(engine, ids[name], state)
        await trio.sleep(1)  # stuck is in its step
    return ids


def maintenance_workflows(ledger: list[str]) -> dict[str, Any]:
    note = noting(ledger)

    async def stuck(ctx: Context) -> str:
        async def once() -> str:
            ledger.append("stuck")
            if ledger.count("stuck") == 1:
                await trio.sleep_forever()  # the first run is interrupted here
            return "unstuck"

        return str(await ctx.step("s").run(once))

    async def napper(ctx: Context) -> str:
        await ctx.timer("nap", HOUR)
        return str(await ctx.step("woke").run(note, "woke"))

    async def waiter(ctx: Context) -> str:
        await ctx.suspend("go")
        return str(await ctx.step("went").run(note, "went"))

    return {"stuck": stuck, "napper": napper, "waiter": waiter}


async def test_a_start_without_resuming_runs_nothing_until_a_start_that_resumes(
    autojump_clock: MockClock,
) -> None:
    storage, clock, ledger = MemoryStorage(), ManualClock(), []
    wfs = maintenance_workflows(ledger)
    ids = await interrupted_and_parked(storage, clock, wfs)
    before = len(types_of(storage))
    async with build(storage, clock, wfs, resume_on_start=False) as engine:
        await trio.sleep(2 * HOUR)  # the nap's deadline passes: nothing happens
        assert [engine.status(ids[n]).state for n in ("stuck", "napper", "waiter")] == [
            "running", "sleeping", "suspended"]
    assert ledger == ["stuck"]
    assert len(types_of(storage)) == before  # nothing ran, nothing was written

    async with build(storage, clock, wfs) as engine:
        assert await finish(engine, ids["stuck"]) == "unstuck"
        assert await finish(engine, ids["napper"]) == "woke"  # its passed deadline, at once
        assert engine.status(ids["waiter"]).state == "suspended"
    assert ledger == ["stuck", "stuck", "woke"]


async def test_explicit_calls_work_when_the_start_does_not_resume(
    autojump_clock: MockClock,
) -> None:
    storage, clock, ledger = MemoryStorage(), ManualClock(), []
    wfs = maintenance_workflows(ledger)
    ids = await interrupted_and_parked(storage, clock, wfs)
    async with build(storage, clock, wfs, resume_on_start=False) as engine:
        await engine.signal("waiter", ids["waiter"], "go")  # wakes and runs it
        assert await finish(engine, ids["waiter"]) == "went"
        await engine.wake(ids["napper"], "nap")
        assert await finish(engine, ids["napper"]) == "woke"
        await engine.cancel(ids["stuck"])
        assert engine.status(ids["stuck"]).state == "cancelled"
        await engine.restart(ids["waiter"])
        assert await finish(engine, ids["waiter"]) == "went"
        fresh = await engine.invoke("waiter")
        await until_state(engine, fresh, "suspended")
    assert ledger == ["stuck", "went", "woke"]


# -- engine.wake ---------------------------------------------------------------------


async def test_wake_fires_a_parked_instances_timer_now(autojump_clock: MockClock) -> None:
    storage, clock, ledger = MemoryStorage(), ManualClock(), []
    wfs = maintenance_workflows(ledger)
    async with build(storage, clock, wfs) as engine:
        iid = await engine.invoke("napper")
        await until_state(engine, iid, "sleeping")
        began = trio.current_time()
        await engine.wake(iid, "nap")
        assert await finish(engine, iid) == "woke"
        assert trio.current_time() - began < 1
    assert types_of(storage, iid) == [
        "created", "timer_set", "parked", "timer_fired", "step_done", "completed"]


async def test_wake_lets_a_branch_blocked_on_the_timer_in_memory_go_on(
    autojump_clock: MockClock,
) -> None:
    ledger: list[str] = []
    release, woke = trio.Event(), trio.Event()

    def note(name: str) -> str:
        ledger.append(name)
        woke.set()
        return name

    async def hold() -> str:
        await release.wait()
        return "held"

    async def wf(ctx: Context) -> list[str]:
        async with trio.open_nursery() as nursery:
            async def napping() -> None:
                await ctx.timer("nap", HOUR)
                await ctx.step("woke").run(note, "woke")

            nursery.start_soon(napping)
            await ctx.step("hold").run(hold)  # keeps the instance in memory
        return ledger

    storage, clock = MemoryStorage(), ManualClock()
    async with build(storage, clock, {"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await trio.sleep(10)  # both branches block: the timer, the step that holds
        assert types_of(storage, iid) == ["created", "timer_set"]
        began = trio.current_time()
        await engine.wake(iid, "nap")
        await woke.wait()
        assert trio.current_time() == began
        assert engine.status(iid).state == "running"
        release.set()
        assert await finish(engine, iid) == ["woke"]
    assert "parked" not in types_of(storage, iid)


async def test_wake_refuses_what_is_not_a_pending_timer_and_writes_nothing(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.step("s").run(lambda: 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.timer, "nap", HOUR)
            nursery.start_soon(ctx.suspend, "go")
            nursery.start_soon(ctx.timer, "short", 1)

    storage, clock = MemoryStorage(), ManualClock()
    async with build(storage, clock, {"wf": wf}) as engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "waiting")
        await trio.sleep(10)  # "short" fires and is recorded; the instance waits again
        await until_state(engine, iid, "waiting")
        cases = [
            ("nobody", "nap", UnknownInstance, "nobody"),
            (iid, "go", EngineError, "'go' is a suspension"),
            (iid, "s", EngineError, "'s' is a step"),
            (iid, "elsewhere", EngineError, "'elsewhere' is not a timer the instance has reached"),
            (iid, "short", EngineError, "timer 'short' already fired"),
        ]
        for instance_id, key, error, words in cases:
            before = written(engine)
            with pytest.raises(error, match=words):
                await engine.wake(instance_id, key)
            assert written(engine) == before, key
        await engine.wake(iid, "nap")
        with pytest.raises(EngineError, match="timer 'nap' already fired"):
            await engine.wake(iid, "nap")
        await engine.signal("wf", iid, "go")
        await finish(engine, iid)
        before = written(engine)
        with pytest.raises(EngineError, match=f"instance '{iid}' is completed"):
            await engine.wake(iid, "nap")
        assert written(engine) == before
