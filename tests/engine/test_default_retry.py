"""The builder's ``default_retry``: the retry policy of every step that sets none.

A step's own ``.retry()`` replaces it and ``.no_retry()`` opts out. Under
trio's MockClock (``autojump_clock``) the waits between attempts are exact.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from support.engine import wait

from memable_log import Context, Engine, StepFailed, WorkflowFailed


def failing_times(n: int, times: list[float]) -> Any:
    """A step body that fails its first ``n`` calls, then returns "ok"."""

    def body() -> str:
        times.append(trio.current_time())
        if len(times) <= n:
            raise ConnectionError(f"down {len(times)}")
        return "ok"

    return body


async def run_one(builder: Any, workflow: Any) -> Any:
    engine = builder.in_memory().build()
    engine.register("wf", workflow)
    async with engine:
        instance_id = await engine.invoke("wf")
        try:
            return await wait(engine, instance_id, timeout=10_000)
        except WorkflowFailed as exc:
            return exc


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_a_step_without_retry_takes_the_default(autojump_clock: Any) -> None:
    times: list[float] = []

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").run(failing_times(2, times))

    builder = Engine.builder().default_retry(max_attempts=3, initial_delay=2, backoff=3)
    assert await run_one(builder, wf) == "ok"
    assert gaps(times) == [2.0, 6.0]


async def test_the_default_gives_up_after_its_attempts(autojump_clock: Any) -> None:
    times: list[float] = []

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").run(failing_times(10, times))

    result = await run_one(Engine.builder().default_retry(max_attempts=4), wf)
    assert isinstance(result, WorkflowFailed)
    assert "down 4" in result.message
    assert len(times) == 4


async def test_a_steps_own_retry_replaces_the_default(autojump_clock: Any) -> None:
    times: list[float] = []

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").retry(max_attempts=2, initial_delay=7).run(
            failing_times(5, times))

    result = await run_one(Engine.builder().default_retry(max_attempts=10), wf)
    assert isinstance(result, WorkflowFailed)
    assert gaps(times) == [7.0]


async def test_no_retry_opts_a_step_out_of_the_default(autojump_clock: Any) -> None:
    times: list[float] = []
    seen: list[StepFailed] = []

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("s").no_retry().run(failing_times(1, times))
        except StepFailed as exc:
            seen.append(exc)
        return "done"

    assert await run_one(Engine.builder().default_retry(max_attempts=5), wf) == "done"
    assert len(times) == 1
    assert seen[0].message == "down 1"


async def test_the_default_applies_its_should_retry_and_retry_on(autojump_clock: Any) -> None:
    times: list[float] = []

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").run(failing_times(3, times))

    builder = Engine.builder().default_retry(
        max_attempts=5, retry_on=OSError, should_retry=lambda exc: "down 2" not in str(exc)
    )
    result = await run_one(builder, wf)
    assert isinstance(result, WorkflowFailed)
    assert len(times) == 2  # "down 2" refused by should_retry


async def test_without_a_default_a_step_is_tried_once(autojump_clock: Any) -> None:
    times: list[float] = []

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").run(failing_times(1, times))

    assert isinstance(await run_one(Engine.builder(), wf), WorkflowFailed)
    assert len(times) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be at least 1"),
        ({"backoff": 0}, ValueError, "backoff must be >= 1"),
        ({"retry_on": 3}, TypeError, "retry_on must be an exception class"),
        ({"jitter": 2}, ValueError, "jitter must be a fraction"),
        ({"should_retry": "yes"}, TypeError, "should_retry must be a function"),
    ],
)
def test_a_bad_default_retry_is_refused_at_once(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text) as info:
        Engine.builder().default_retry(**kwargs)
    assert str(info.value).startswith("default_retry: ")
