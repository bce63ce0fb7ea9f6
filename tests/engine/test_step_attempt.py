"""``ctx.attempt``: the attempt number, from 1, of the step whose function runs.

It is a contextvar: steps running side by side in a nursery each see their
own number, and a step's own tasks and worker threads inherit it.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from support.engine import wait

from memable_log import Context, Engine, EngineError, RetryAfter, WorkflowFailed


async def run_one(workflow: Any, builder: Any = None) -> Any:
    engine = (builder or Engine.builder()).in_memory().build()
    engine.register("wf", workflow)
    async with engine:
        instance_id = await engine.invoke("wf")
        try:
            return await wait(engine, instance_id, timeout=10_000)
        except WorkflowFailed as exc:
            return exc


async def test_attempt_counts_from_one_across_retries(autojump_clock: Any) -> None:
    seen: list[int] = []

    async def wf(ctx: Context) -> Any:
        def body() -> int:
            seen.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError("down")
            return ctx.attempt

        return await ctx.step("s").retry(max_attempts=5).run(body)

    assert await run_one(wf) == 3
    assert seen == [1, 2, 3]


async def test_attempt_counts_timed_out_and_retry_after_attempts(autojump_clock: Any) -> None:
    seen: list[int] = []

    async def wf(ctx: Context) -> Any:
        async def body() -> str:
            seen.append(ctx.attempt)
            if ctx.attempt == 1:
                await trio.sleep(100)  # cut by the timeout
            if ctx.attempt == 2:
                raise RetryAfter(3)
            return "ok"

        return await ctx.step("s").timeout(1).retry(max_attempts=3).run(body)

    assert await run_one(wf) == "ok"
    assert seen == [1, 2, 3]


async def test_steps_side_by_side_each_see_their_own_attempt(autojump_clock: Any) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}

    async def wf(ctx: Context) -> Any:
        def make(name: str, failures: int, pause: float) -> Any:
            async def body() -> int:
                seen[name].append(ctx.attempt)
                await trio.sleep(pause)  # the other step runs meanwhile
                seen[name].append(ctx.attempt)
                if ctx.attempt <= failures:
                    raise OSError(name)
                return ctx.attempt

            return body

        results: dict[str, int] = {}

        async def run(name: str, failures: int, pause: float) -> None:
            step = ctx.step(name).retry(max_attempts=5, initial_delay=0.5)
            results[name] = await step.run(make(name, failures, pause))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "a", 3, 0.3)
            nursery.start_soon(run, "b", 1, 0.7)
        return results

    assert await run_one(wf) == {"a": 4, "b": 2}
    assert seen == {"a": [1, 1, 2, 2, 3, 3, 4, 4], "b": [1, 1, 2, 2]}


async def test_a_steps_tasks_and_threads_inherit_its_attempt() -> None:
    # The real clock: under autojump the clock would jump past wait()'s
    # timeout while the worker thread runs.
    seen: list[tuple[str, int]] = []

    async def wf(ctx: Context) -> Any:
        async def body() -> str:
            async def child() -> None:
                seen.append(("task", ctx.attempt))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
            if ctx.attempt == 1:
                raise OSError("again")
            return "ok"

        def threaded() -> int:
            seen.append(("thread", ctx.attempt))
            return ctx.attempt

        await ctx.step("s").retry(max_attempts=2, initial_delay=0).run(body)
        return await ctx.step("t").in_thread().run(threaded)

    assert await run_one(wf) == 1
    assert seen == [("task", 1), ("task", 2), ("thread", 1)]


async def test_attempt_outside_a_step_function_is_an_error(autojump_clock: Any) -> None:
    errors: list[EngineError] = []

    async def wf(ctx: Context) -> Any:
        for _ in range(2):  # before any step, and after one with retries
            with pytest.raises(EngineError, match="outside a step's function") as info:
                _ = ctx.attempt
            errors.append(info.value)
            await ctx.step(f"s{len(errors)}").retry(max_attempts=2, initial_delay=0).run(
                lambda: ctx.attempt)
        return "ok"

    assert await run_one(wf) == "ok"
    assert len(errors) == 2
