"""Several waits at once (SPEC-NEXT §1).

A workflow waits in several branches of a nursery, as agents do: an
approval beside a reminder timer, two approvals, a tool call beside an
approval. Each wait keeps its own durable deadline, any one wakes the
instance, a wait never cancels another branch's work, and the instance
leaves memory only once every branch waits. The first four tests are the
four failures measured in issue 13, each of which they reproduced.

Every test runs under trio's MockClock (``autojump_clock``) with a
ManualClock for wall time, so days take no real time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from support.suspend import (
    DAY,
    finish,
    memory_engine,
    records_of,
    types_of,
    until,
    until_state,
)
from trio.testing import MockClock

from memable_log import (
    Context,
    EngineError,
    ManualClock,
    MemoryStorage,
    SignalAlreadyDelivered,
    SignalRefused,
    SuspendTimedOut,
    Wait,
)
from memable_log._engine.waits import at_nursery_exit

START = 1_700_000_000.0
HOUR = 3600.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(START + seconds, tz=UTC)


# -- the four failures of issue 13 ----------------------------------------------------


async def test_a_timer_beside_a_pending_suspension_fires_on_time(
    autojump_clock: MockClock,
) -> None:
    sent: list[float] = []

    async def wf(ctx: Context) -> Any:
        answer: list[Any] = []

        async def approval() -> None:
            answer.append(await ctx.suspend("approve", status="waiting for Ann"))

        async def reminder() -> None:
            await ctx.timer("remind", DAY)
            await ctx.step("send-reminder").run(lambda: sent.append(trio.current_time()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(approval)
            nursery.start_soon(reminder)
        return answer[0]

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "waiting")
        status = engine.status(iid)
        assert set(status.waits) == {
            Wait("signal", "approve", None), Wait("timer", "remind", at(DAY)),
        }
        assert (status.status, status.deadline) == ("waiting for Ann", at(DAY))
        await trio.sleep(1.5 * DAY)
        assert sent == [pytest.approx(began + DAY, abs=0.01)]  # the reminder went out
        status = engine.status(iid)
        assert (status.state, status.waits) == ("suspended", (Wait("signal", "approve", None),))
        await engine.signal("wf", iid, "approve", "yes")
        assert await finish(engine, iid) == "yes"
    assert len(sent) == 1


async def test_two_suspensions_keep_their_own_deadlines_across_re_runs(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> Any:
        got: dict[str, Any] = {}

        async def ask(key: str, within: float) -> None:
            try:
                got[key] = await ctx.suspend(key, timeout=within)
            except SuspendTimedOut:
                got[key] = "timed out"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "legal", HOUR)
            nursery.start_soon(ask, "finance", 2 * HOUR)
        return got

    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        assert set(engine.status(iid).waits) == {
            Wait("signal", "legal", at(HOUR)), Wait("signal", "finance", at(2 * HOUR)),
        }
        assert engine.status(iid).deadline == at(HOUR)  # the earliest
        await trio.sleep(10)
        await engine.signal("wf", iid, "legal", "ok")  # a re-run 10 s in
        await until(engine, iid, lambda s: s.waits == (Wait("signal", "finance", at(2 * HOUR)),))
    clock.advance(600)  # and a restart 10 minutes later
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        assert engine.status(iid).deadline == at(2 * HOUR)
        assert await finish(engine, iid) == {"legal": "ok", "finance": "timed out"}
        timed_out = [rec for rec in records_of(storage) if rec.type == "suspend_timed_out"]
        assert [rec.ts_ms for rec in timed_out] == [round((START + 2 * HOUR) * 1000)]
    sets = [rec for rec in records_of(storage) if rec.type == "suspended"]
    assert sorted((rec.fields["key"], rec.fields["deadline_ms"]) for rec in sets) == [
        ("finance", round((START + 2 * HOUR) * 1000)), ("legal", round((START + HOUR) * 1000)),
    ]  # each registered once, never again


async def test_a_timer_first_does_not_move_a_later_suspensions_timeout(
    autojump_clock: MockClock,
) -> None:
    fired: list[float] = []

    async def wf(ctx: Context) -> Any:
        await ctx.timer("cool-off", HOUR)
        try:
            return await ctx.suspend("approve", timeout=2 * DAY)
        except SuspendTimedOut:
            fired.append(trio.current_time())
            return "expired"

    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until(engine, iid, lambda s: s.key == "approve")
        assert engine.status(iid).deadline == at(HOUR + 2 * DAY)
        await engine.cancel(iid)
        await engine.restart(iid)  # cancel then restart: the deadline stays
        await until(engine, iid, lambda s: s.key == "approve")
        assert engine.status(iid).deadline == at(HOUR + 2 * DAY)
        assert await finish(engine, iid) == "expired"
        assert fired == [pytest.approx(began + HOUR + 2 * DAY, abs=0.01)]


async def test_a_suspension_never_cancels_a_step_running_in_another_branch(
    autojump_clock: MockClock,
) -> None:
    calls: list[str] = []
    llm_entered = trio.Event()

    async def llm() -> str:
        calls.append("llm")
        llm_entered.set()
        await trio.sleep(30)  # a slow model call
        return "answer"

    async def wf(ctx: Context) -> Any:
        out: dict[str, Any] = {}

        async def think() -> None:
            out["llm"] = await ctx.step("llm").run(llm)

        async def approve() -> None:
            out["ok"] = await ctx.suspend("approve")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(think)
            nursery.start_soon(approve)
        return out

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await llm_entered.wait()
        await trio.sleep(5)
        # The approval is registered; the model call goes on, in memory.
        assert engine.status(iid).state == "running"
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "approve", True)
        assert await finish(engine, iid) == {"llm": "answer", "ok": True}
    assert calls == ["llm"]


# -- the model ------------------------------------------------------------------------


async def test_a_wait_resolved_in_memory_goes_on_in_place(autojump_clock: MockClock) -> None:
    runs: list[int] = []

    async def wf(ctx: Context) -> Any:
        runs.append(1)
        out: dict[str, Any] = {}

        async def approve() -> None:
            out["ok"] = await ctx.suspend("approve")

        async def work() -> None:
            await trio.sleep(100)  # not a durable wait: the instance stays in memory

        async with trio.open_nursery() as nursery:
            nursery.start_soon(approve)
            nursery.start_soon(work)
        return out

    storage = MemoryStorage()
    engine = memory_engine(storage, ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await trio.sleep(10)
        await engine.signal("wf", iid, "approve", "yes")
        assert await finish(engine, iid) == {"ok": "yes"}
    assert runs == [1]  # never dropped, never re-run
    assert "parked" not in types_of(storage, iid)


async def test_a_branch_that_returns_leaves_the_others_to_park(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> Any:
        async def quick() -> None:
            await ctx.step("quick").run(lambda: 1)
            await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.suspend, "approve")
            nursery.start_soon(quick)
        return "done"

    storage = MemoryStorage()
    engine = memory_engine(storage, ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")  # parked once `quick` returned
        assert iid not in engine._host.running
        await engine.signal("wf", iid, "approve", None)
        assert await finish(engine, iid) == "done"
    assert types_of(storage, iid).count("parked") == 1


async def test_a_mix_of_waits_is_waiting_and_any_one_wakes_it(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        got: list[str] = []

        async def signal_branch() -> None:
            got.append(await ctx.suspend("a"))

        async def timer_branch() -> None:
            await ctx.timer("t", DAY)
            got.append("t")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(signal_branch)
            nursery.start_soon(timer_branch)
        return got

    storage = MemoryStorage()
    engine = memory_engine(storage, ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "waiting")
        assert engine.instances("waiting")[0].instance_id == iid
        await engine.signal("wf", iid, "a", "A")
        # Woken, re-run: the signal's branch is done, the timer's waits again.
        await until(engine, iid, lambda s: s.waits == (Wait("timer", "t", at(DAY)),))
        assert engine.status(iid).state == "sleeping"
        assert sorted(await finish(engine, iid)) == ["A", "t"]
    types = types_of(storage, iid)
    assert sorted(types[1:3]) == ["suspended", "timer_set"]  # in the branches' order
    assert types[:1] + types[3:] == [
        "created", "parked", "signalled", "parked", "timer_fired", "completed",
    ]


async def test_parked_waits_survive_a_restart(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.suspend, "a")
            nursery.start_soon(ctx.timer, "t", timedelta(hours=5))
            nursery.start_soon(ctx.suspend, "b")
        return "all"

    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "waiting")
        before = engine.status(iid)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        assert engine.status(iid) == before
        # In the order first reached: the order of their registrations.
        registered = [rec.fields["key"] for rec in records_of(storage)
                      if rec.type in ("suspended", "timer_set")]
        assert [w.key for w in before.waits] == registered
        assert sorted(w.kind for w in before.waits) == ["signal", "signal", "timer"]
        assert before.key == registered[0]
        await engine.signal("wf", iid, "a", None)
        await engine.signal("wf", iid, "b", None)
        assert await finish(engine, iid) == "all"


async def test_a_signal_racing_the_park_is_never_lost(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        got: dict[str, Any] = {}

        async def ask(key: str) -> None:
            got[key] = await ctx.suspend(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "a")
            nursery.start_soon(ask, "b")
        return got

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        for n in range(40):
            iid = await engine.invoke("wf", instance_id=f"race-{n}")
            for _ in range(n % 8):
                await trio.lowlevel.checkpoint()
            await engine.signal("wf", iid, "a", n)
            await engine.signal("wf", iid, "b", -n)
            assert await finish(engine, iid) == {"a": n, "b": -n}


async def test_a_task_at_a_nursery_exit_is_seen_as_waiting_there() -> None:
    # Pins the one thing read from trio's internals (waits.py): if a trio
    # release renames its nursery exit, instances with nurseries would never
    # leave memory; this fails first.
    seen: list[bool] = []

    async def parent() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            task = trio.lowlevel.current_task()
            seen.append(at_nursery_exit(task))  # in the body: not at the exit
            nursery.start_soon(check, task, nursery)

    async def check(task: trio.lowlevel.Task, nursery: trio.Nursery) -> None:
        await trio.testing.wait_all_tasks_blocked()
        seen.append(at_nursery_exit(task))
        nursery.cancel_scope.cancel()

    await parent()
    assert seen == [False, True]


# -- signals that can never be consumed ------------------------------------------------


async def test_signals_that_can_never_be_consumed_are_refused_and_write_nothing(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.step("fetch").run(lambda: 1)
        await ctx.timer("nap", HOUR)
        return await ctx.suspend("approve")

    storage = MemoryStorage()
    engine = memory_engine(storage, ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
        before = len(records_of(storage))
        with pytest.raises(SignalRefused, match="the key is a timer's") as info:
            await engine.signal("wf", iid, "nap", 1)
        assert isinstance(info.value, EngineError)
        with pytest.raises(SignalRefused, match="the key is a step's"):
            await engine.signal("wf", iid, "fetch", 1)
        assert len(records_of(storage)) == before
        await engine.signal("wf", iid, "approve", "early")  # not reached yet: kept
        assert await finish(engine, iid) == "early"
        with pytest.raises(SignalRefused, match="the instance is completed"):
            await engine.signal("wf", iid, "other", 1)
        with pytest.raises(SignalAlreadyDelivered):
            await engine.signal("wf", iid, "approve", 1)


async def test_a_key_used_as_a_timer_then_as_a_suspension_is_an_error(
    autojump_clock: MockClock,
) -> None:
    version = {"n": 1}

    async def wf(ctx: Context) -> Any:
        if version["n"] == 1:
            await ctx.timer("k", HOUR)
        return await ctx.suspend("k")

    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "sleeping")
    version["n"] = 2
    clock.advance(2 * HOUR)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        with pytest.raises(Exception, match="is a timer in the journal, not a suspension"):
            await finish(engine, iid)


async def test_a_key_with_a_signal_cannot_become_a_timer(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.step("gate").run(lambda: 1)
        await ctx.timer("k", HOUR)
        return "slept"

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf", instance_id="x")
        await engine.signal("wf", iid, "k", "early")  # before the key is reached: kept
        with pytest.raises(Exception, match="is a suspension in the journal, not a timer"):
            await finish(engine, iid)


async def test_leaving_the_engine_as_an_instance_parks_raises_nothing(
    autojump_clock: MockClock,
) -> None:
    # The parked record is applied, one branch has unwound and the other is
    # still to run when the engine's exit cancels the run: the run ends with
    # Unwind beside Cancelled, which is a park, not an error of the engine.
    async def wf(ctx: Context) -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.timer, "remind", DAY)
            answer = await ctx.suspend("approve", timeout=2 * DAY)
            nursery.cancel_scope.cancel()
        return answer

    storage = MemoryStorage()
    async with memory_engine(storage, ManualClock(START), wf=wf) as engine:
        iid = await engine.invoke("wf")
        while engine.status(iid).state != "waiting":
            await trio.lowlevel.checkpoint()
    async with memory_engine(storage, ManualClock(START), wf=wf) as engine:
        assert engine.status(iid).state == "waiting"
        await engine.signal("wf", iid, "approve", "yes")
        assert await finish(engine, iid) == "yes"
