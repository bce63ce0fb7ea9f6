"""Step timeouts: ``.timeout(seconds)`` cancels a slow attempt with StepTimedOut.

Under trio's MockClock (``autojump_clock``) the engine's sleeps and the
timeout's deadline are virtual: ``trio.current_time()`` shows exactly when
each attempt started and was cut off.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import trio
from support.engine import wait

from memable_log import (
    Context,
    Engine,
    EngineError,
    StepFailed,
    StepTimedOut,
    WorkflowFailed,
)


async def run_one(workflow: Any, **settings: Any) -> Any:
    """Run ``workflow`` on a fresh in-memory engine; its result or WorkflowFailed."""
    engine = Engine.builder().in_memory().build()
    engine.register("wf", workflow)
    async with engine:
        instance_id = await engine.invoke("wf")
        try:
            return await wait(engine, instance_id, timeout=10_000)
        except WorkflowFailed as exc:
            return exc


def test_step_timed_out_is_an_engine_error_naming_the_step() -> None:
    exc = StepTimedOut("order-1", "charge", 2.5)
    assert isinstance(exc, EngineError)
    assert (exc.instance_id, exc.key, exc.seconds) == ("order-1", "charge", 2.5)
    assert "'charge'" in str(exc)
    assert "'order-1'" in str(exc)
    assert "2.5s" in str(exc)


async def test_an_attempt_longer_than_the_timeout_fails_with_step_timed_out(
    autojump_clock: Any,
) -> None:
    seen: list[StepFailed] = []
    ended: list[float] = []

    async def slow() -> str:
        await trio.sleep(100)
        return "late"

    async def wf(ctx: Context) -> Any:
        start = trio.current_time()
        try:
            await ctx.step("slow").timeout(5).run(slow)
        except StepFailed as exc:
            ended.append(trio.current_time() - start)
            seen.append(exc)
            return "gave up"
        return "finished"

    assert await run_one(wf) == "gave up"
    (failed,) = seen
    assert failed.error_type == "StepTimedOut"
    assert "timeout of 5s" in failed.message
    assert ended == [5.0]  # cut off at the deadline, not after the 100 s sleep


async def test_a_timed_out_attempt_is_retried_when_retry_on_covers_it(
    autojump_clock: Any,
) -> None:
    starts: list[float] = []

    async def sometimes_slow() -> str:
        starts.append(trio.current_time())
        if len(starts) < 3:
            await trio.sleep(100)
        return "ok"

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").timeout(timedelta(seconds=2)).retry(max_attempts=3)
        return await step.run(sometimes_slow)

    start = trio.current_time()
    assert await run_one(wf) == "ok"
    # attempt 1 cut at 2, waits 1; attempt 2 at 3 cut at 5, waits 2; attempt 3 at 7.
    assert [t - start for t in starts] == [0.0, 3.0, 7.0]


async def test_a_timed_out_attempt_is_not_retried_outside_retry_on(autojump_clock: Any) -> None:
    calls: list[float] = []

    async def slow() -> None:
        calls.append(trio.current_time())
        await trio.sleep(100)

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").timeout(1).retry(max_attempts=5, retry_on=ConnectionError)
        await step.run(slow)

    result = await run_one(wf)
    assert isinstance(result, WorkflowFailed)
    assert result.error_type == "StepFailed"
    assert "StepTimedOut" in result.message
    assert len(calls) == 1


async def test_a_fast_attempt_is_not_affected_by_its_timeout(autojump_clock: Any) -> None:
    async def quick() -> int:
        await trio.sleep(1)
        return 7

    async def wf(ctx: Context) -> Any:
        return [await ctx.step("a").timeout(5).run(quick),
                await ctx.step("b").timeout(5).run(lambda: 8)]

    assert await run_one(wf) == [7, 8]


async def test_a_thread_step_past_its_timeout_is_abandoned(autojump_clock: Any) -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> str:
        release.wait(30)
        finished.set()
        return "late"

    seen: list[StepFailed] = []

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("t").in_thread().timeout(3).run(blocking)
        except StepFailed as exc:
            seen.append(exc)
        return "went on"

    try:
        assert await run_one(wf) == "went on"
    finally:
        release.set()
    assert seen[0].error_type == "StepTimedOut"
    assert finished.wait(10)  # the abandoned thread ran on to its end


async def test_a_timed_out_failure_is_memoised(autojump_clock: Any) -> None:
    calls: list[int] = []

    async def slow() -> None:
        calls.append(1)
        await trio.sleep(100)

    async def wf(ctx: Context) -> Any:
        await ctx.step("s").timeout(1).run(slow)

    engine = Engine.builder().in_memory().build()
    engine.register("wf", wf)
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed):
            await wait(engine, iid, timeout=1000)
        await engine.restart(iid)
        with pytest.raises(WorkflowFailed, match="StepTimedOut"):
            await wait(engine, iid, timeout=1000)
    assert calls == [1]


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        (0, ValueError, "> 0"),
        (-1, ValueError, "> 0"),
        (float("nan"), ValueError, "> 0"),
        (float("inf"), ValueError, "finite"),
        (timedelta(0), ValueError, "> 0"),
        ("5", TypeError, "seconds or a timedelta"),
        (True, TypeError, "seconds or a timedelta"),
        (None, TypeError, "seconds or a timedelta"),
    ],
)
async def test_a_bad_timeout_is_refused_naming_the_step(
    value: Any, error: type[Exception], text: str
) -> None:
    raised: list[BaseException] = []

    async def wf(ctx: Context) -> None:
        try:
            ctx.step("fetch").timeout(value)
        except Exception as exc:
            raised.append(exc)

    await run_one(wf)
    (exc,) = raised
    assert isinstance(exc, error)
    assert text in str(exc)
    assert "'fetch'" in str(exc)
