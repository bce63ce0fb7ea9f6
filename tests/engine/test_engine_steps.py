"""Steps: retries on the engine clock, memoised failures, keys, values, parallel steps.

Retry tests run under trio's MockClock (the ``autojump_clock`` fixture): the
backoff sleeps take no real time, and ``trio.current_time()`` shows exactly
how long the engine waited between attempts.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from support.engine import KINDS, Calls, Gate, Home, of_type, wait

from memable_log import (
    Context,
    DuplicateStepKey,
    Engine,
    ErrorInfo,
    NotSerializable,
    StepFailed,
    WorkflowFailed,
)


def flaky(failures: list[BaseException], times: list[float], value: Any = "ok") -> Any:
    """A step body that raises ``failures`` in turn, then returns ``value``."""

    def body() -> Any:
        times.append(trio.current_time())
        if failures:
            raise failures.pop(0)
        return value

    return body


async def run_one(workflow: Any, input: Any = None) -> tuple[Engine, Any]:
    """Run ``workflow`` once on a fresh in-memory engine; return (engine, result or error)."""
    engine = Engine.builder().in_memory().build()
    engine.register("wf", workflow)
    async with engine:
        instance_id = await engine.invoke("wf", input)
        try:
            return engine, await wait(engine, instance_id, timeout=1000)
        except WorkflowFailed as exc:
            return engine, exc


# -- retries -------------------------------------------------------------------


async def test_retry_backs_off_exponentially_on_the_engine_clock(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [ConnectionError("a"), ConnectionError("b"), TimeoutError()]

    async def wf(ctx: Context) -> Any:
        return await ctx.step("load").retry(max_attempts=4).run(flaky(failures, times))

    start = trio.current_time()
    _, result = await run_one(wf)
    assert result == "ok"
    assert [t - start for t in times] == [0.0, 1.0, 3.0, 7.0]  # waits of 1, 2, 4 seconds


async def test_retry_delay_is_capped_by_max_delay(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [OSError(), OSError(), OSError()]

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=4, initial_delay=1.0, backoff=10.0, max_delay=5.0)
        return await step.run(flaky(failures, times))

    await run_one(wf)
    assert [b - a for a, b in itertools.pairwise(times)] == [1.0, 5.0, 5.0]


async def test_exhausted_retries_raise_step_failed_after_every_backoff(
    autojump_clock: Any,
) -> None:
    times: list[float] = []
    failures: list[BaseException] = [ValueError(f"bad row {i}") for i in range(4)]
    seen: list[StepFailed] = []

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("load").retry(max_attempts=4).run(flaky(failures, times))
        except StepFailed as exc:
            seen.append(exc)
            return "gave up"
        return "loaded"

    start = trio.current_time()
    _, result = await run_one(wf)
    assert result == "gave up"
    assert [t - start for t in times] == [0.0, 1.0, 3.0, 7.0]
    (failed,) = seen
    assert (failed.key, failed.error_type, failed.message) == ("load", "ValueError", "bad row 3")
    assert "ValueError: bad row 3" in str(failed)
    assert "'load'" in str(failed)
    assert "Traceback" in failed.traceback
    assert "in body" in failed.traceback


async def test_exception_outside_retry_on_fails_at_once(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [KeyError("missing"), ConnectionError()]

    async def wf(ctx: Context) -> Any:
        step = ctx.step("s").retry(max_attempts=5, retry_on=(ConnectionError, TimeoutError))
        return await step.run(flaky(failures, times))

    start = trio.current_time()
    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "StepFailed"
    assert "KeyError" in error.message
    assert times == [start]  # one call, no backoff


async def test_retry_on_a_single_class_retries_only_that_class(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [ConnectionError(), ValueError("schema")]

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("s").retry(retry_on=ConnectionError).run(flaky(failures, times))
        except StepFailed as exc:
            return exc.error_type
        return None

    start = trio.current_time()
    _, result = await run_one(wf)
    assert result == "ValueError"
    assert [t - start for t in times] == [0.0, 1.0]


async def test_step_without_retry_is_tried_once(autojump_clock: Any) -> None:
    times: list[float] = []
    failures: list[BaseException] = [ConnectionError("down")]

    async def wf(ctx: Context) -> Any:
        try:
            return await ctx.step("s").run(flaky(failures, times))
        except StepFailed as exc:
            return exc.error_type

    _, result = await run_one(wf)
    assert result == "ConnectionError"
    assert len(times) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_memoised_step_failure_takes_the_same_branch_after_restart(
    kind: str, tmp_path: Path
) -> None:
    home = Home(kind, tmp_path)
    calls = Calls()

    def charge() -> None:
        calls.counts["charge"] += 1
        raise PermissionError("card declined")

    async def checkout(ctx: Context) -> Any:
        try:
            await ctx.step("charge").retry(max_attempts=2, initial_delay=0).run(charge)
        except StepFailed as exc:
            note = await ctx.step("notify-declined").run(calls.fn("notify", "sent"))
            return [exc.error_type, exc.message, note]
        return "charged"

    expected = ["PermissionError", "card declined", "sent"]
    engine = home.engine({"checkout": checkout})
    async with engine:
        instance_id = await engine.invoke("checkout")
        assert await wait(engine, instance_id) == expected
    assert calls.counts == {"charge": 2, "notify": 1}

    engine = home.engine({"checkout": checkout})
    async with engine:
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == expected
    assert calls.counts == {"charge": 2, "notify": 1}  # neither called again
    assert len(of_type(home.records(), "step_failed", "charge")) == 1


async def test_replayed_step_failed_equals_the_original() -> None:
    errors: list[StepFailed] = []

    def broken() -> None:
        raise ZeroDivisionError("division by zero in totals")

    async def wf(ctx: Context) -> None:
        try:
            await ctx.step("totals").run(broken)
        except StepFailed as exc:
            errors.append(exc)

    engine = Engine.builder().in_memory().build()
    engine.register("wf", wf)
    async with engine:
        instance_id = await engine.invoke("wf")
        await wait(engine, instance_id)
        await engine.restart(instance_id)
        await wait(engine, instance_id)
    first, replayed = errors
    assert str(first) == str(replayed)
    assert (first.key, first.error_type, first.message, first.traceback) == (
        replayed.key, replayed.error_type, replayed.message, replayed.traceback,
    )
    assert "ZeroDivisionError: division by zero in totals" in str(replayed)


# -- workflow failure ----------------------------------------------------------


async def test_wait_raises_workflow_failed_with_type_message_and_traceback(
    tmp_path: Path,
) -> None:
    home = Home("disk", tmp_path)

    async def exploding(ctx: Context) -> None:
        await ctx.step("ok").run(lambda: 1)
        raise RuntimeError(f"boom {ctx.input}")

    engine = home.engine({"explode": exploding})
    async with engine:
        instance_id = await engine.invoke("explode", 42)
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, instance_id)
        assert engine.status(instance_id).error == ErrorInfo("RuntimeError", "boom 42")
    failed = info.value
    assert (failed.instance_id, failed.error_type, failed.message) == (
        instance_id, "RuntimeError", "boom 42",
    )
    assert "RuntimeError: boom 42" in str(failed)
    assert "in exploding" in failed.traceback
    assert failed.traceback.rstrip().endswith("RuntimeError: boom 42")

    # The failure, with its traceback, survives a restart of the engine.
    engine = home.engine({"explode": exploding})
    async with engine:
        with pytest.raises(WorkflowFailed) as again:
            await wait(engine, instance_id)
    assert str(again.value) == str(failed)
    assert again.value.traceback == failed.traceback


async def test_unencodable_workflow_result_fails_the_instance() -> None:
    async def wf(ctx: Context) -> Any:
        return {1, 2}

    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "NotSerializable"
    assert "set" in error.message


# -- keys ----------------------------------------------------------------------


async def test_same_key_twice_in_one_run_raises_duplicate_step_key() -> None:
    calls = Calls()

    async def wf(ctx: Context) -> Any:
        await ctx.step("fetch").run(calls.fn("first"))
        try:
            await ctx.step("fetch").run(calls.fn("second"))
        except DuplicateStepKey as exc:
            return [exc.key, exc.instance_id == ctx.instance_id, "'fetch'" in str(exc)]
        return "no error"

    _, result = await run_one(wf)
    assert result == ["fetch", True, True]
    assert calls.counts == {"first": 1}


async def test_step_and_timer_share_one_key_space() -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.step("wait").run(lambda: None)
        await ctx.timer("wait", 5)

    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "DuplicateStepKey"


async def test_duplicate_key_among_concurrent_steps_fails_the_workflow() -> None:
    calls = Calls()

    async def wf(ctx: Context) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(ctx.step("same").run, calls.fn("same"))

    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "DuplicateStepKey"
    assert "'same'" in error.message
    assert calls.counts == {"same": 1}


async def test_workflow_failure_inside_its_nursery_is_named_by_the_leaf_not_the_group() -> None:
    """Regression: a failure in a workflow's nursery was reported as
    "ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)"."""

    def broken() -> None:
        raise ValueError("bad input row 7")

    async def wf(ctx: Context) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.step("a").run, broken)
            nursery.start_soon(ctx.step("b").run, lambda: 1)

    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "StepFailed"
    assert "ValueError: bad input row 7" in str(error)
    assert "ValueError: bad input row 7" in error.traceback


async def test_workflow_failure_with_several_leaves_names_each() -> None:
    async def fail(message: str) -> None:
        raise LookupError(message)  # before any checkpoint: both fail, neither is cancelled

    async def wf(ctx: Context) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "first")
            nursery.start_soon(fail, "second")

    _, error = await run_one(wf)
    assert isinstance(error, WorkflowFailed)
    assert error.error_type == "ExceptionGroup"
    assert "LookupError: first" in error.message
    assert "LookupError: second" in error.message


async def test_same_key_in_different_instances_is_independent() -> None:
    calls = Calls()

    async def wf(ctx: Context) -> Any:
        return await ctx.step("fetch").run(calls.fn(f"fetch-{ctx.input}", ctx.input * 2))

    engine = Engine.builder().in_memory().build()
    engine.register("wf", wf)
    async with engine:
        ids = [await engine.invoke("wf", i) for i in (1, 2)]
        assert [await wait(engine, i) for i in ids] == [2, 4]
    assert calls.counts == {"fetch-1": 1, "fetch-2": 1}


async def test_unencodable_step_result_raises_not_serializable_and_writes_nothing() -> None:
    home = Home("memory", Path("."))
    calls = Calls()
    errors: list[NotSerializable] = []

    class Opaque:
        pass

    def make() -> Opaque:
        calls.counts["bad"] += 1
        return Opaque()

    async def wf(ctx: Context) -> Any:
        try:
            await ctx.step("bad").run(make)
        except NotSerializable as exc:
            errors.append(exc)
        return await ctx.step("good").run(calls.fn("good", 1))

    engine = home.engine({"wf": wf})
    async with engine:
        instance_id = await engine.invoke("wf")
        assert await wait(engine, instance_id) == 1
        records = home.records()
        assert [rec.fields.get("key") for rec in of_type(records, "step_done")] == ["good"]
        assert [rec for rec in records if rec.fields.get("key") == "bad"] == []
        assert engine.status(instance_id).steps == 1
        # Nothing was memoised, so the next run calls it again.
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == 1
    assert calls.counts == {"bad": 2, "good": 1}
    (error, _) = errors
    assert "'bad'" in str(error)
    assert "Opaque" in str(error)
    assert error.value_type.endswith("Opaque")


# -- how step functions are called ---------------------------------------------


async def test_sync_and_async_functions_get_args_and_kwargs() -> None:
    def add(a: int, b: int, *, scale: int = 1) -> int:
        return (a + b) * scale

    async def greet(name: str, *, punct: str) -> str:
        await trio.lowlevel.checkpoint()
        return f"hello {name}{punct}"

    async def wf(ctx: Context) -> Any:
        total = await ctx.step("add").run(add, 2, 3, scale=10)
        text = await ctx.step("greet").run(greet, "ada", punct="!")
        return [total, text]

    _, result = await run_one(wf)
    assert result == [50, "hello ada!"]


async def test_in_thread_runs_a_blocking_function_off_the_trio_thread() -> None:
    main = threading.get_ident()

    def blocking(x: int) -> list[Any]:
        return [x + 1, threading.get_ident() != main]

    async def wf(ctx: Context) -> Any:
        on_trio = await ctx.step("inline").run(lambda: threading.get_ident() == main)
        off = await ctx.step("thread").in_thread().run(blocking, 41)
        return [on_trio, off]

    _, result = await run_one(wf)
    assert result == [True, [42, True]]


async def test_parallel_steps_finish_in_any_order_and_are_all_memoised(tmp_path: Path) -> None:
    home = Home("disk", tmp_path)
    gates = [Gate() for _ in range(5)]
    finished = [trio.Event() for _ in range(5)]
    calls = Calls()

    def workflow(first: bool) -> Any:
        async def fan_out(ctx: Context) -> Any:
            results: dict[int, Any] = {}

            async def part(i: int) -> None:
                body = gates[i] if first else calls.fn(f"part:{i}")
                results[i] = await ctx.step(f"part:{i}").run(body, i * i)
                finished[i].set()

            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(part, i)
            return [results[i] for i in range(5)]

        return fan_out

    engine = home.engine({"fan": workflow(first=True)})
    async with engine:
        instance_id = await engine.invoke("fan")
        with trio.fail_after(10):
            for gate in gates:
                await gate.entered.wait()  # all five run at once
            for i in (3, 0, 4, 1, 2):
                gates[i].release.set()
                await finished[i].wait()
        assert await wait(engine, instance_id) == [0, 1, 4, 9, 16]
    keys = [rec.fields["key"] for rec in of_type(home.records(), "step_done")]
    assert keys == ["part:3", "part:0", "part:4", "part:1", "part:2"]

    engine = home.engine({"fan": workflow(first=False)})
    async with engine:
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == [0, 1, 4, 9, 16]
    assert calls.counts == {}
