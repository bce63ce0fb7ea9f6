"""Retry options: ``should_retry``, ``jitter``, ``RetryAfter``, and bad arguments.

Under trio's MockClock (``autojump_clock``) the backoff sleeps are virtual and
``trio.current_time()`` shows exactly how long the engine waited. Jitter draws
from ``memable_log._engine.retry.RANDOM``; tests that need exact waits replace
it with a stub, the others check the bounds.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
from support.engine import wait

from memable_log import (
    Context,
    Engine,
    EngineError,
    RetryAfter,
    StepFailed,
    WorkflowFailed,
)
from memable_log._engine import retry


def flaky(failures: list[BaseException], times: list[float], value: Any = "ok") -> Any:
    """A step body that raises ``failures`` in turn, then returns ``value``."""

    def body() -> Any:
        times.append(trio.current_time())
        if failures:
            raise failures.pop(0)
        return value

    return body


async def run_one(workflow: Any) -> Any:
    engine = Engine.builder().in_memory().build()
    engine.register("wf", workflow)
    async with engine:
        instance_id = await engine.invoke("wf")
        try:
            return await wait(engine, instance_id, timeout=100_000)
        except WorkflowFailed as exc:
            return exc


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- should_retry --------------------------------------------------------------


async def test_should_retry_decides_per_exception(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [OSError("busy"), OSError("busy"), OSError("gone")]
    asked: list[str] = []

    def transient(exc: BaseException) -> bool:
        asked.append(str(exc))
        return str(exc) == "busy"

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=10, should_retry=transient)
        return await step.run(flaky(failures, times))

    result = await run_one(wf)
    assert isinstance(result, WorkflowFailed)
    assert "OSError: gone" in result.message
    assert len(times) == 3  # two retried, the third refused by should_retry
    assert asked == ["busy", "busy", "gone"]


async def test_should_retry_is_asked_only_after_retry_on_matches(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [KeyError("k")]
    asked: list[BaseException] = []

    def always(exc: BaseException) -> bool:
        asked.append(exc)
        return True

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=3, retry_on=OSError, should_retry=always)
        return await step.run(flaky(failures, times))

    result = await run_one(wf)
    assert isinstance(result, WorkflowFailed)
    assert len(times) == 1
    assert asked == []


# -- jitter --------------------------------------------------------------------


async def test_jitter_shortens_each_wait_by_the_drawn_fraction(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter([0.5, 0.0, 1.0])

    class Stub:
        def random(self) -> float:
            return next(draws)

    monkeypatch.setattr(retry, "RANDOM", Stub())
    times: list[float] = []
    failures: list[BaseException] = [OSError(), OSError(), OSError()]

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=4, initial_delay=4, jitter=0.5)
        return await step.run(flaky(failures, times))

    assert await run_one(wf) == "ok"
    # backoff 4, 8, 16, each less jitter * draw of itself: 4*0.75, 8*1, 16*0.5.
    assert gaps(times) == [3.0, 8.0, 8.0]


async def test_jittered_waits_stay_within_their_bounds(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retry, "RANDOM", random.Random(1234))
    times: list[float] = []
    failures: list[BaseException] = [OSError() for _ in range(7)]

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=8, initial_delay=1, max_delay=10, jitter=0.3)
        return await step.run(flaky(failures, times))

    assert await run_one(wf) == "ok"
    unjittered = [1, 2, 4, 8, 10, 10, 10]
    waited = gaps(times)
    for wait_s, full in zip(waited, unjittered, strict=True):
        assert full * 0.7 - 1e-9 <= wait_s <= full + 1e-9
    assert waited != unjittered  # the draws did spread them


# -- RetryAfter ----------------------------------------------------------------


def test_retry_after_is_an_exception_not_an_engine_error() -> None:
    cause = ConnectionError("429 Too Many Requests")
    exc = RetryAfter(30, cause)
    assert isinstance(exc, Exception)
    assert not isinstance(exc, EngineError)
    assert (exc.seconds, exc.cause, exc.__cause__) == (30.0, cause, cause)
    assert "30s" in str(exc)
    assert "429 Too Many Requests" in str(exc)


async def test_retry_after_sets_the_next_wait_whatever_the_backoff(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [OSError(), RetryAfter(30), OSError()]

    async def wf(ctx: Context) -> Any:
        return await ctx.step("s").retry(max_attempts=4).run(flaky(failures, times))

    assert await run_one(wf) == "ok"
    assert gaps(times) == [1.0, 30.0, 4.0]  # backoff 1, asked 30, backoff goes on: 4


async def test_retry_after_retries_even_outside_retry_on_and_should_retry(
    autojump_clock: Any,
) -> None:
    times: list[float] = []
    failures: list[BaseException] = [RetryAfter(5)]

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=2, retry_on=KeyError, should_retry=lambda e: False)
        return await step.run(flaky(failures, times))

    assert await run_one(wf) == "ok"
    assert gaps(times) == [5.0]


async def test_retry_after_without_attempts_left_fails_the_step(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [RetryAfter(5, ConnectionError("429"))]
    seen: list[StepFailed] = []

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("s").run(flaky(failures, times))
        except StepFailed as exc:
            seen.append(exc)
        return "done"

    assert await run_one(wf) == "done"
    assert len(times) == 1
    (failed,) = seen
    assert failed.error_type == "RetryAfter"
    assert "ConnectionError: 429" in failed.message


@pytest.mark.parametrize(
    ("args", "error"),
    [((-1,), ValueError), ((float("nan"),), ValueError), ((float("inf"),), ValueError),
     (("5",), TypeError), ((True,), TypeError), ((5, "cause"), TypeError)],
)
def test_a_bad_retry_after_is_refused(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error, match="RetryAfter"):
        RetryAfter(*args)


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be at least 1"),
        ({"max_attempts": 2.5}, TypeError, "max_attempts must be an int"),
        ({"max_attempts": True}, TypeError, "max_attempts must be an int"),
        ({"initial_delay": -1}, ValueError, "initial_delay must be a finite number >= 0"),
        ({"initial_delay": float("nan")}, ValueError, "initial_delay"),
        ({"initial_delay": "1"}, TypeError, "initial_delay must be a number"),
        ({"max_delay": float("inf")}, ValueError, "max_delay"),
        ({"backoff": 0.5}, ValueError, "backoff must be >= 1"),
        ({"retry_on": ValueError("x")}, TypeError, "retry_on must be an exception class"),
        ({"retry_on": (OSError, int)}, TypeError, "retry_on must be an exception class"),
        ({"should_retry": True}, TypeError, "should_retry must be a function"),
        ({"jitter": 1.5}, ValueError, "jitter must be a fraction from 0 to 1"),
        ({"jitter": -0.1}, ValueError, "jitter must be a finite number >= 0"),
    ],
)
async def test_bad_retry_arguments_are_refused_naming_the_step_and_argument(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    raised: list[BaseException] = []

    async def wf(ctx: Context) -> None:
        try:
            ctx.step("fetch").retry(**kwargs)
        except Exception as exc:
            raised.append(exc)

    await run_one(wf)
    (exc,) = raised
    assert isinstance(exc, error)
    assert text in str(exc)
    assert "'fetch'" in str(exc)
