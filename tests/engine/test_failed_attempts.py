"""Each failed attempt of a step is journaled (SPEC-NEXT §5), and
``engine.steps`` answers every memoised step's times, attempts and error (§3).

* an attempt that fails and is tried again is an ``attempt_failed`` record,
  written before the retry's delay;
* a restart continues the count: never more than ``max_attempts`` attempts
  in all, across crashes; an attempt cut by a crash runs again once, with
  the same ``ctx.attempt``;
* ``StepFailed.errors`` lists every attempt's error, also when a memoised
  failure is raised again on replay;
* the outcome's record carries the first attempt's start and the attempts.

Power cuts are MemoryStorage.crash(); wall time is a ManualClock under
trio's MockClock, so retry delays take no real time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
from support.engine import wait

from memable_log import (
    Context,
    Engine,
    ErrorInfo,
    ManualClock,
    MemoryStorage,
    StepFailed,
    StepStatus,
    UnknownInstance,
    WorkflowFailed,
)
from memable_log._engine.engine import host_of
from memable_log.reader import JournalReader

START = 1_700_000_000.0
START_MS = int(START * 1000)


def engine_on(storage: MemoryStorage, clock: ManualClock, workflow: Any) -> Engine:
    engine = Engine.builder().in_memory(storage).clock(clock).build()
    engine.register("wf", workflow)
    return engine


def records(storage: MemoryStorage, rtype: str) -> list[dict[str, Any]]:
    return [
        {"ts_ms": v.ts_ms, **v.fields} for v in JournalReader(storage) if v.type == rtype
    ]


class Flaky:
    """A step function that fails its first ``failures`` calls in all (a
    service that is down for a while), recording ``ctx.attempt`` each call;
    ``block`` makes one call (by number) wait for ever, to be cut by a crash."""

    def __init__(self, ctx_attempts: list[int], failures: int, block: int = 0) -> None:
        self.seen = ctx_attempts
        self.failures = failures
        self.block = block
        self.calls = 0
        self.entered = trio.Event()

    def workflow(self, max_attempts: int = 4) -> Any:
        async def wf(ctx: Context) -> Any:
            async def body() -> str:
                self.calls += 1
                self.seen.append(ctx.attempt)
                if self.calls == self.block:
                    self.entered.set()
                    await trio.sleep_forever()
                if self.calls <= self.failures:
                    raise ConnectionError(f"down #{self.calls}")
                return f"ok after {self.calls}"

            return await ctx.step("fetch").retry(max_attempts=max_attempts,
                                                 initial_delay=10).run(body)

        return wf


async def test_each_failed_attempt_is_journaled_before_the_delay(autojump_clock: Any) -> None:
    storage, clock, seen = MemoryStorage(), ManualClock(START), []
    flaky = Flaky(seen, failures=2)
    async with engine_on(storage, clock, flaky.workflow()) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        assert await wait(engine, iid, timeout=100_000) == "ok after 3"
    failed = records(storage, "attempt_failed")
    assert [(f["key"], f["attempt"], f["error_type"], f["message"]) for f in failed] == [
        ("fetch", 1, "ConnectionError", "down #1"), ("fetch", 2, "ConnectionError", "down #2"),
    ]
    assert {f["started_ms"] for f in failed} == {START_MS}
    # Written at the failure, before the delays of 10 s then 20 s.
    assert [f["ts_ms"] for f in failed] == [START_MS, START_MS + 10_000]
    (done,) = records(storage, "step_done")
    assert (done["started_ms"], done["attempts"], done["ts_ms"]) == (
        START_MS, 3, START_MS + 30_000)
    assert seen == [1, 2, 3]


async def test_a_restart_continues_the_count_and_the_cut_attempt_keeps_its_number(
    autojump_clock: Any,
) -> None:
    storage, clock, seen = MemoryStorage(), ManualClock(START), []
    flaky = Flaky(seen, failures=2, block=3)  # the third call is cut by a power cut
    async with engine_on(storage, clock, flaky.workflow(max_attempts=3)) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        with trio.fail_after(1000):
            await flaky.entered.wait()
        after_cut = storage.crash()
    assert seen == [1, 2, 3]
    clock.advance(3600)
    flaky.block = 0
    async with engine_on(after_cut, clock, flaky.workflow(max_attempts=3)) as engine:
        assert await wait(engine, iid, timeout=100_000) == "ok after 4"
        (step,) = engine.steps(iid)
    # The cut attempt ran again once, as attempt 3 (of 3): 4 calls, 3 attempts.
    assert seen == [1, 2, 3, 3]
    assert step.attempts == 3
    assert step.started_at == datetime.fromtimestamp(START, tz=UTC)
    assert step.finished_at == datetime.fromtimestamp(START + 3600 + 30, tz=UTC)


async def test_a_step_never_gets_more_than_max_attempts_across_crashes(
    autojump_clock: Any,
) -> None:
    storage, clock, seen = MemoryStorage(), ManualClock(START), []
    flaky = Flaky(seen, failures=100, block=3)
    async with engine_on(storage, clock, flaky.workflow(max_attempts=3)) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        with trio.fail_after(1000):
            await flaky.entered.wait()
        after_cut = storage.crash()
    flaky.block = 0
    async with engine_on(after_cut, clock, flaky.workflow(max_attempts=3)) as engine:
        with pytest.raises(WorkflowFailed, match="StepFailed"):
            await wait(engine, iid, timeout=100_000)
        (step,) = engine.steps(iid)
    assert seen == [1, 2, 3, 3]  # 3 attempts in all (the cut one ran again)
    assert step.state == "failed"
    assert step.attempts == 3
    assert step.error == ErrorInfo("ConnectionError", "down #4")
    (failed,) = records(after_cut, "step_failed")
    assert failed["attempts"] == 3
    assert failed["errors"] == [
        ["ConnectionError", "down #1"], ["ConnectionError", "down #2"],
        ["ConnectionError", "down #4"],
    ]


async def test_failures_that_already_used_up_the_attempts_fail_the_step_uncalled(
    autojump_clock: Any,
) -> None:
    storage, clock, seen = MemoryStorage(), ManualClock(START), []
    flaky = Flaky(seen, failures=100, block=4)
    async with engine_on(storage, clock, flaky.workflow(max_attempts=5)) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        with trio.fail_after(1000):
            await flaky.entered.wait()
        after_cut = storage.crash()
    assert seen == [1, 2, 3, 4]
    # The code now allows 2 attempts: the 3 recorded failures are more.
    errors: list[StepFailed] = []

    async def lowered(ctx: Context) -> Any:
        try:
            return await ctx.step("fetch").retry(max_attempts=2).run(lambda: "never")
        except StepFailed as exc:
            errors.append(exc)
            raise

    async with engine_on(after_cut, clock, lowered) as engine:
        with pytest.raises(WorkflowFailed):
            await wait(engine, iid, timeout=100_000)
    (exc,) = errors
    assert exc.errors == tuple(ErrorInfo("ConnectionError", f"down #{n}") for n in (1, 2, 3))
    assert (exc.error_type, exc.message) == ("ConnectionError", "down #3")
    assert "not called again" in exc.traceback


async def test_step_failed_errors_list_every_attempt_also_on_replay(
    autojump_clock: Any,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    caught: list[StepFailed] = []

    async def wf(ctx: Context) -> Any:
        def body() -> None:
            raise ValueError(f"bad #{ctx.attempt}")

        try:
            await ctx.step("parse").retry(max_attempts=3, initial_delay=1).run(body)
        except StepFailed as exc:
            caught.append(exc)
        await ctx.timer("nap", 60)  # the instance leaves memory, then replays
        return "done"

    async with engine_on(storage, clock, wf) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        assert await wait(engine, iid, timeout=100_000) == "done"
    first, replayed = caught
    expected = tuple(ErrorInfo("ValueError", f"bad #{n}") for n in (1, 2, 3))
    assert first.errors == replayed.errors == expected
    assert isinstance(first.errors[0], tuple)
    assert first.errors[0].type == "ValueError"
    assert replayed.traceback == first.traceback


async def test_engine_steps_lists_every_memoised_step_in_order(autojump_clock: Any) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    entered = trio.Event()

    async def wf(ctx: Context) -> Any:
        await ctx.step("one").run(lambda: 1)
        await trio.sleep(2)  # on the engine's clock: the next step starts later

        async def slow() -> int:
            await trio.sleep(5)
            return 2

        await ctx.step("two").run(slow)
        try:
            await ctx.step("three").retry(max_attempts=2, initial_delay=1).run(
                lambda: 1 / 0)
        except StepFailed:
            pass

        async def charge() -> None:
            entered.set()
            await trio.sleep_forever()

        await ctx.step("charge").at_most_once().run(charge)

    async with engine_on(storage, clock, wf) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        with trio.fail_after(1000):
            await entered.wait()
        after_cut = storage.crash()
        running = engine.steps(iid)
    assert [s.key for s in running] == ["one", "two", "three", "charge"]

    async with engine_on(after_cut, clock, wf) as engine:
        with pytest.raises(WorkflowFailed, match="StepInterrupted"):
            await wait(engine, iid, timeout=100_000)
        steps = engine.steps(iid)
        with pytest.raises(UnknownInstance):
            engine.steps("nobody")
    at = lambda s: datetime.fromtimestamp(START + s, tz=UTC)  # noqa: E731
    assert steps == running == [
        StepStatus(key="one", state="done", started_at=at(0), finished_at=at(0), attempts=1,
                   error=None),
        StepStatus(key="two", state="done", started_at=at(2), finished_at=at(7), attempts=1,
                   error=None),
        StepStatus(key="three", state="failed", started_at=at(7), finished_at=at(8),
                   attempts=2, error=ErrorInfo("ZeroDivisionError", "division by zero")),
        StepStatus(key="charge", state="interrupted", started_at=at(8), finished_at=None,
                   attempts=1, error=None),
    ]


async def test_engine_steps_after_a_forget_shows_the_step_run_again(
    autojump_clock: Any,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    runs = {"n": 0}

    async def wf(ctx: Context) -> Any:
        async def body() -> int:
            runs["n"] += 1
            await trio.sleep(runs["n"])
            return runs["n"]

        return await ctx.step("s").run(body)

    async with engine_on(storage, clock, wf) as engine:
        iid = await engine.invoke("wf", instance_id="a")
        assert await wait(engine, iid, timeout=100_000) == 1
        await engine.forget(iid, "s")
        assert engine.steps(iid) == []
        await engine.restart(iid)
        assert await wait(engine, iid, timeout=100_000) == 2
        (step,) = engine.steps(iid)
        assert step.finished_at is not None
        assert step.started_at is not None
        assert (step.finished_at - step.started_at).total_seconds() == 2
        # Answered from memory: no read, no await.
        assert host_of(engine).index.instances[iid].tries is None
