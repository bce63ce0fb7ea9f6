"""The Engine's calls: invoke, wait, status, instances, cancel, forget, restart.

Also the lifecycle's edges: the journal lock surfacing as JournalLocked,
registration rules, and log records carrying the instance id.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.engine import KINDS, Calls, Gate, Home, of_type, wait

from memable_log import (
    Context,
    Engine,
    EngineError,
    ErrorInfo,
    InstanceStatus,
    JournalCorrupt,
    JournalLocked,
    ManualClock,
    MemoryStorage,
    NotSerializable,
    StepFailed,
    UnknownInstance,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowFailed,
)


@pytest.fixture(params=KINDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return Home(request.param, tmp_path)


async def echo(ctx: Context) -> Any:
    step = await ctx.step("echo").run(lambda: ctx.input)
    return {"id": ctx.instance_id, "workflow": ctx.workflow, "input": step}


# -- invoke and wait -----------------------------------------------------------


async def test_invoke_runs_the_workflow_and_wait_returns_its_result(home: Home) -> None:
    engine = home.engine({"echo": echo})
    async with engine:
        instance_id = await engine.invoke("echo", {"n": [1, 2]})
        assert await wait(engine, instance_id) == {
            "id": instance_id, "workflow": "echo", "input": {"n": [1, 2]},
        }
        other = await engine.invoke("echo", "x", instance_id="chosen-id")
        assert other == "chosen-id"
        assert (await wait(engine, other))["input"] == "x"
    assert instance_id not in ("", "chosen-id")


async def test_fresh_instance_ids_are_unique() -> None:
    engine = Engine.builder().in_memory().build()
    engine.register("echo", echo)
    async with engine:
        ids = {await engine.invoke("echo") for _ in range(50)}
    assert len(ids) == 50


async def test_unknown_workflow_raises_and_writes_nothing(home: Home) -> None:
    engine = home.engine({"echo": echo})
    async with engine:
        await engine.invoke("echo", instance_id="first")
        before = home.records()
        with pytest.raises(UnknownWorkflow) as info:
            await engine.invoke("ehco", instance_id="second")
        assert home.records() == before
        assert engine.instances()
        assert [s.instance_id for s in engine.instances()] == ["first"]
    assert "'ehco'" in str(info.value)
    assert "echo" in str(info.value)


async def test_unencodable_input_raises_not_serializable_and_writes_nothing(home: Home) -> None:
    engine = home.engine({"echo": echo})
    async with engine:
        before = home.records()
        with pytest.raises(NotSerializable) as info:
            await engine.invoke("echo", {"when": object()}, instance_id="bad")
        assert home.records() == before
        with pytest.raises(UnknownInstance):
            engine.status("bad")
    assert "object" in str(info.value)
    assert "Nothing was written" in str(info.value)


async def test_invoke_is_idempotent_by_instance_id(home: Home) -> None:
    runs = Calls()

    async def counted(ctx: Context) -> Any:
        runs.counts["workflow"] += 1
        return await ctx.step("s").run(lambda: ctx.input)

    engine = home.engine({"counted": counted})
    async with engine:
        assert await engine.invoke("counted", "first", instance_id="order-7") == "order-7"
        assert await engine.invoke("counted", "second", instance_id="order-7") == "order-7"
        assert await wait(engine, "order-7") == "first"
        assert await engine.invoke("counted", "third", instance_id="order-7") == "order-7"
        await trio.testing.wait_all_tasks_blocked()
    assert runs.counts == {"workflow": 1}
    assert len(of_type(home.records(), "created")) == 1

    engine = home.engine({"counted": counted})
    async with engine:  # also across a restart of the engine
        assert await engine.invoke("counted", "fourth", instance_id="order-7") == "order-7"
        assert await wait(engine, "order-7") == "first"
    assert runs.counts == {"workflow": 1}
    assert len(of_type(home.records(), "created")) == 1


async def test_concurrent_invokes_of_one_id_create_it_once(home: Home) -> None:
    runs = Calls()

    async def counted(ctx: Context) -> Any:
        runs.counts["workflow"] += 1
        return ctx.input

    engine = home.engine({"counted": counted})
    returned: list[str] = []
    async with engine:

        async def invoke(n: int) -> None:
            returned.append(await engine.invoke("counted", n, instance_id="same"))

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(invoke, n)
        result = await wait(engine, "same")
    assert returned == ["same"] * 10
    assert result in range(10)
    assert runs.counts == {"workflow": 1}
    assert len(of_type(home.records(), "created")) == 1


async def test_calls_outside_async_with_raise_engine_error() -> None:
    engine = Engine.builder().in_memory().build()
    engine.register("echo", echo)
    with pytest.raises(EngineError, match="async with engine"):
        await engine.invoke("echo")
    async with engine:
        instance_id = await engine.invoke("echo")
        await wait(engine, instance_id)
    with pytest.raises(EngineError, match="async with engine"):
        await engine.wait(instance_id)


async def test_entering_a_running_engine_again_raises() -> None:
    engine = Engine.builder().in_memory().build()
    async with engine:
        with pytest.raises(EngineError, match="already running"):
            async with engine:
                pass  # pragma: no cover


def test_a_name_registers_once() -> None:
    engine = Engine.builder().in_memory().build()
    engine.register("echo", echo)
    with pytest.raises(EngineError, match="already registered"):
        engine.register("echo", echo)


async def test_leaving_the_engine_as_a_step_returns_raises_nothing(home: Home) -> None:
    """Regression: a runner woken just before the engine stopped ran on to its
    next append and raised "the engine is not running" out of ``async with``."""
    gate = Gate()
    calls = Calls()

    def again(value: str) -> str:
        calls.counts["slow"] += 1
        return value

    def workflow(first: bool) -> Any:
        async def job(ctx: Context) -> Any:
            value = await ctx.step("slow").run(gate if first else again, "slow")
            after = await ctx.step("after").run(calls.fn("after", "after"))
            return [value, after]

        return job

    engine = home.engine({"job": workflow(first=True)})
    async with engine:
        instance_id = await engine.invoke("job")
        await gate.entered.wait()
        gate.release.set()  # the step resumes only after the engine starts stopping
    engine = home.engine({"job": workflow(first=False)})
    async with engine:
        assert await wait(engine, instance_id) == ["slow", "after"]
    assert calls.counts["after"] == 1


async def test_leaving_the_engine_with_many_instances_in_flight_raises_nothing() -> None:
    calls = Calls()

    async def job(ctx: Context) -> Any:
        a = await ctx.step("a").run(calls.fn("a", ctx.input))
        b = await ctx.step("b").run(calls.fn("b", 1))
        return a + b

    storage = MemoryStorage()
    for _ in range(2):
        engine = Engine.builder().in_memory(storage).build()
        engine.register("job", job)
        async with engine:
            for i in range(40):
                await engine.invoke("job", i, instance_id=f"job-{i}")
    engine = Engine.builder().in_memory(storage).build()
    engine.register("job", job)
    async with engine:
        assert [await wait(engine, f"job-{i}") for i in range(40)] == list(range(1, 41))


# -- the journal lock ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["disk", "memory"])
async def test_second_engine_on_a_held_journal_raises_journal_locked_itself(
    kind: str, tmp_path: Path
) -> None:
    home = Home(kind, tmp_path)
    first = home.engine({"echo": echo})
    async with first:
        second = home.engine({"echo": echo})
        with pytest.raises(JournalLocked) as info:
            async with second:
                pass  # pragma: no cover
        assert type(info.value) is JournalLocked  # not an exception group
        # The first engine is unaffected.
        instance_id = await first.invoke("echo", 1)
        assert (await wait(first, instance_id))["input"] == 1
    # Once the first lets go, the second opens it and sees its instance.
    async with second:
        assert second.status(instance_id).state == "completed"


async def test_damaged_journal_raises_journal_corrupt_itself(tmp_path: Path) -> None:
    home = Home("disk", tmp_path)
    # Without compaction, so every segment stays live (and damage in it matters).
    engine = home.engine({"echo": echo}, segment_size=4096, compaction=False)
    async with engine:

        async def one(n: int) -> None:
            await wait(engine, await engine.invoke("echo", "x" * 400, instance_id=f"e-{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(one, n)
    segments = sorted(home.path.glob("seg-*.mlog"))
    assert len(segments) > 2
    data = bytearray(segments[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    segments[0].write_bytes(bytes(data))
    engine = home.engine({"echo": echo})
    with pytest.raises(JournalCorrupt) as info:
        async with engine:
            pass  # pragma: no cover
    assert type(info.value) is JournalCorrupt
    assert segments[0].name in info.value.file
    # Nothing was changed, and the lock was let go: the same error again.
    assert segments[0].read_bytes() == bytes(data)
    with pytest.raises(JournalCorrupt):
        async with home.engine({}):
            pass  # pragma: no cover


# -- status and instances -------------------------------------------------------


async def test_status_fields_through_an_instance_life(autojump_clock: Any) -> None:
    clock = ManualClock(start=1_700_000_000.0)
    t0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    gate = Gate()

    async def job(ctx: Context) -> Any:
        await ctx.step("one").run(lambda: 1)
        await trio.sleep(5)
        await ctx.step("two").run(gate, 2)
        if ctx.input == "fail":
            raise LookupError("no such customer")
        return "done"

    engine = Engine.builder().in_memory().clock(clock).build()
    engine.register("job", job)
    async with engine:
        ok = await engine.invoke("job", "ok", instance_id="ok")
        bad = await engine.invoke("job", "fail", instance_id="bad")
        await gate.entered.wait()
        running = engine.status(ok)
        assert running == InstanceStatus(
            instance_id="ok", workflow="job", state="running", status=None, key=None,
            deadline=None, steps=1, error=None, created_at=t0,
            updated_at=t0,  # "one" was recorded at once
        )
        await trio.sleep(10)
        gate.release.set()
        assert await wait(engine, ok) == "done"
        with pytest.raises(WorkflowFailed):
            await wait(engine, bad)
        done, failed = engine.status(ok), engine.status(bad)
        assert (done.state, done.steps, done.error) == ("completed", 2, None)
        assert done.created_at == t0
        assert done.updated_at == t0 + timedelta(seconds=15)
        assert (failed.state, failed.steps) == ("failed", 2)
        assert failed.error == ErrorInfo("LookupError", "no such customer")
        assert failed.error.type == "LookupError"
        assert [s.instance_id for s in engine.instances()] == ["ok", "bad"]
        assert engine.instances("completed") == [done]
        assert engine.instances("failed") == [failed]
        assert engine.instances("suspended") == []
        with pytest.raises(ValueError, match="unknown state"):
            engine.instances("finished")
    clock.advance(3600)
    async with engine:  # the same fields after a restart
        assert engine.status(ok) == done
        assert engine.status(bad) == failed


async def test_unknown_instance_ids_raise_unknown_instance() -> None:
    engine = Engine.builder().in_memory().build()
    engine.register("echo", echo)
    async with engine:
        with pytest.raises(UnknownInstance, match="'nope'"):
            engine.status("nope")
        with pytest.raises(UnknownInstance):
            await engine.wait("nope")
        with pytest.raises(UnknownInstance):
            await engine.cancel("nope")
        with pytest.raises(UnknownInstance):
            await engine.forget("nope", "key")
        with pytest.raises(UnknownInstance):
            await engine.restart("nope")
        with pytest.raises(UnknownInstance):
            await engine.signal("echo", "nope", "key", None)


# -- cancel --------------------------------------------------------------------


async def test_cancel_stops_a_running_step_and_survives_restart(home: Home) -> None:
    entered = trio.Event()
    seen: list[str] = []
    runs = Calls()

    async def slow() -> None:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            seen.append("cancelled")
            raise

    async def job(ctx: Context) -> Any:
        runs.counts["workflow"] += 1
        try:
            await ctx.step("slow").run(slow)
        except Exception:  # cannot swallow a cancellation
            seen.append("swallowed")
        return "finished"

    engine = home.engine({"job": job})
    async with engine:
        instance_id = await engine.invoke("job")
        results: list[BaseException] = []

        async def waiter() -> None:
            try:
                await engine.wait(instance_id)
            except WorkflowCancelled as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            with trio.fail_after(10):
                await entered.wait()
            await engine.cancel(instance_id)
        assert seen == ["cancelled"]
        assert engine.status(instance_id).state == "cancelled"
        assert len(results) == 1
        assert results[0].instance_id == instance_id
        with pytest.raises(WorkflowCancelled, match=instance_id):
            await engine.wait(instance_id)
        await trio.testing.wait_all_tasks_blocked()
    assert of_type(home.records(), "step_done") == []

    engine = home.engine({"job": job})
    async with engine:
        assert engine.status(instance_id).state == "cancelled"
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(WorkflowCancelled):
            await engine.wait(instance_id)
    assert runs.counts == {"workflow": 1}  # it did not resume
    assert len(of_type(home.records(), "cancelled")) == 1


async def test_cancel_of_a_finished_instance_changes_nothing(home: Home) -> None:
    async def job(ctx: Context) -> Any:
        if ctx.input == "fail":
            raise ValueError("nope")
        return ctx.input

    engine = home.engine({"job": job})
    async with engine:
        ok = await engine.invoke("job", "ok")
        bad = await engine.invoke("job", "fail")
        assert await wait(engine, ok) == "ok"
        with pytest.raises(WorkflowFailed):
            await wait(engine, bad)
        before = home.records()
        statuses = [engine.status(ok), engine.status(bad)]
        await engine.cancel(ok)
        await engine.cancel(bad)
        assert home.records() == before
        assert [engine.status(ok), engine.status(bad)] == statuses
        assert await wait(engine, ok) == "ok"


async def test_cancel_of_an_instance_waiting_for_a_slot_means_it_never_runs() -> None:
    runs = Calls()
    gate = Gate()

    async def job(ctx: Context) -> Any:
        runs.counts[ctx.input] += 1
        if ctx.input == "first":
            await gate()
        return ctx.input

    engine = Engine.builder().in_memory().max_running(1).build()
    engine.register("job", job)
    async with engine:
        first = await engine.invoke("job", "first")
        queued = await engine.invoke("job", "queued")
        await gate.entered.wait()
        await engine.cancel(queued)
        gate.release.set()
        assert await wait(engine, first) == "first"
        with pytest.raises(WorkflowCancelled):
            await wait(engine, queued)
        await trio.testing.wait_all_tasks_blocked()
    assert runs.counts == {"first": 1}


async def test_cancel_while_the_runner_reads_the_input_keeps_the_workflow_from_starting() -> None:
    """Regression: cancel() found no scope to cancel while the new runner was
    reading a large input back from the journal, so the workflow then ran
    (side effects included) after cancel had returned.

    The race depends on trio's scheduling order, which it shuffles, so the
    scenario runs many times (each is a few hundred microseconds).
    """
    cancel_returned = False
    effects_after_cancel: list[int] = []

    async def job(ctx: Context) -> Any:
        def charge() -> None:
            if cancel_returned:
                effects_after_cancel.append(1)

        await ctx.step("charge").run(charge)
        return "done"

    for _ in range(60):
        cancel_returned = False
        engine = Engine.builder().in_memory().inline_limit(0).build()
        engine.register("job", job)
        async with engine:
            instance_id = await engine.invoke("job", "x" * 100)  # read back: not inline
            await engine.cancel(instance_id)
            cancel_returned = True
            await trio.testing.wait_all_tasks_blocked()
            assert engine.status(instance_id).state == "cancelled"
    assert effects_after_cancel == []


async def test_cancel_stops_parallel_steps_in_a_workflow_nursery() -> None:
    started = [trio.Event() for _ in range(3)]
    cancelled: list[int] = []

    async def part(i: int) -> None:
        started[i].set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(i)
            raise

    async def fan(ctx: Context) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(ctx.step(f"part:{i}").run, part, i)

    engine = Engine.builder().in_memory().build()
    engine.register("fan", fan)
    async with engine:
        instance_id = await engine.invoke("fan")
        with trio.fail_after(10):
            for event in started:
                await event.wait()
        await engine.cancel(instance_id)
        with pytest.raises(WorkflowCancelled):
            await wait(engine, instance_id)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(cancelled) == [0, 1, 2]
        assert engine.status(instance_id).state == "cancelled"


async def test_restart_runs_a_cancelled_instance_again() -> None:
    gate = Gate()
    calls = Calls()

    async def job(ctx: Context) -> Any:
        first = await ctx.step("first").run(calls.fn("first", 1))
        second = await ctx.step("second").run(gate, 2)
        return first + second

    engine = Engine.builder().in_memory().build()
    engine.register("job", job)
    async with engine:
        instance_id = await engine.invoke("job")
        await gate.entered.wait()
        await engine.cancel(instance_id)
        gate.release.set()
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == 3
        assert engine.status(instance_id).state == "completed"
    assert calls.counts == {"first": 1}


# -- forget and restart ----------------------------------------------------------


async def test_forget_and_restart_after_a_fix(home: Home) -> None:
    calls = Calls()
    fixed = False

    def parse() -> str:
        calls.counts["parse"] += 1
        if not fixed:
            raise UnicodeError("bad byte at 17")
        return "parsed"

    async def job(ctx: Context) -> Any:
        fetched = await ctx.step("fetch").run(calls.fn("fetch", "raw"))
        parsed = await ctx.step("parse").run(parse)
        return [fetched, parsed]

    engine = home.engine({"job": job})
    async with engine:
        instance_id = await engine.invoke("job")
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, instance_id)
        assert info.value.error_type == "StepFailed"
        assert "UnicodeError: bad byte at 17" in info.value.message
        fixed = True
        # The failure is memoised: a plain restart fails the same way.
        await engine.restart(instance_id)
        with pytest.raises(WorkflowFailed):
            await wait(engine, instance_id)
        assert calls.counts == {"fetch": 1, "parse": 1}

    engine = home.engine({"job": job})
    async with engine:
        await engine.forget(instance_id, "parse")
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == ["raw", "parsed"]
        assert engine.status(instance_id).error is None
    assert calls.counts == {"fetch": 1, "parse": 2}


async def test_forget_a_prefix_leaves_other_keys_cached(home: Home) -> None:
    calls = Calls()
    topics = ["trio", "h11"]

    async def research(ctx: Context) -> Any:
        found = [
            await ctx.step(f"search:{t}").run(calls.fn(f"search:{t}", f"{t}@{ctx.input}"))
            for t in topics
        ]
        other = await ctx.step("searcher").run(calls.fn("searcher", f"searcher@{ctx.input}"))
        summary = await ctx.step("summary").run(calls.fn("summary", f"summary@{ctx.input}"))
        return [*found, other, summary]

    engine = home.engine({"research": research})
    async with engine:
        instance_id = await engine.invoke("research", 1)
        assert await wait(engine, instance_id) == ["trio@1", "h11@1", "searcher@1", "summary@1"]
    calls = Calls()

    async def research_2(ctx: Context) -> Any:
        found = [
            await ctx.step(f"search:{t}").run(calls.fn(f"search:{t}", f"{t}@2")) for t in topics
        ]
        other = await ctx.step("searcher").run(calls.fn("searcher", "searcher@2"))
        summary = await ctx.step("summary").run(calls.fn("summary", "summary@2"))
        return [*found, other, summary]

    engine = home.engine({"research": research_2})
    async with engine:
        await engine.forget(instance_id, "search:*")
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == ["trio@2", "h11@2", "searcher@1", "summary@1"]
    assert calls.counts == {"search:trio": 1, "search:h11": 1}


async def test_forget_of_a_completed_step_runs_it_again_with_the_cached_rest() -> None:
    calls = Calls()

    async def job(ctx: Context) -> Any:
        a = await ctx.step("a").run(calls.fn("a", 1))
        b = await ctx.step("b").run(calls.fn("b", 2))
        return a + b

    engine = Engine.builder().in_memory().build()
    engine.register("job", job)
    async with engine:
        instance_id = await engine.invoke("job")
        await wait(engine, instance_id)
        await engine.forget(instance_id, "b")
        assert engine.status(instance_id).steps == 1
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == 3
    assert calls.counts == {"a": 1, "b": 2}


async def test_restart_of_a_live_instance_raises_engine_error(home: Home) -> None:
    gate = Gate()

    async def job(ctx: Context) -> Any:
        return await ctx.step("s").run(gate, "ok")

    engine = home.engine({"job": job})
    async with engine:
        instance_id = await engine.invoke("job")
        await gate.entered.wait()
        before = home.records()
        with pytest.raises(EngineError, match="running") as info:
            await engine.restart(instance_id)
        assert type(info.value) is EngineError
        assert home.records() == before
        gate.release.set()
        assert await wait(engine, instance_id) == "ok"


async def test_memoised_failure_is_kept_by_restart_without_forget() -> None:
    errors: list[StepFailed] = []

    def broken() -> None:
        raise OSError("disk full")

    async def job(ctx: Context) -> Any:
        try:
            await ctx.step("save").run(broken)
        except StepFailed as exc:
            errors.append(exc)
            raise
        return None

    storage = MemoryStorage()
    engine = Engine.builder().in_memory(storage).build()
    engine.register("job", job)
    async with engine:
        instance_id = await engine.invoke("job")
        with pytest.raises(WorkflowFailed):
            await wait(engine, instance_id)
        await engine.restart(instance_id)
        with pytest.raises(WorkflowFailed):
            await wait(engine, instance_id)
    assert [e.message for e in errors] == ["disk full", "disk full"]


# -- logging -------------------------------------------------------------------


async def test_log_records_carry_the_instance_id(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="memable_log")
    flaky = [ConnectionError("reset")]

    def sometimes() -> str:
        if flaky:
            raise flaky.pop()
        return "ok"

    def never() -> None:
        raise ValueError("always")

    async def job(ctx: Context) -> Any:
        await ctx.step("flaky").retry(max_attempts=2).run(sometimes)
        if ctx.input == "fail":
            await ctx.step("never").run(never)
        return "done"

    engine = Engine.builder().in_memory().build()
    engine.register("job", job)
    async with engine:
        ok = await engine.invoke("job", "ok", instance_id="inst-ok")
        await wait(engine, ok)
        bad = await engine.invoke("job", "fail", instance_id="inst-bad")
        with pytest.raises(WorkflowFailed):
            await wait(engine, bad)
    about = [rec for rec in caplog.records if rec.name == "memable_log"]
    for instance_id in (ok, bad):
        mine = [rec for rec in about if instance_id in rec.getMessage()]
        assert len(mine) >= 2
        for rec in mine:
            assert getattr(rec, "instance_id", None) == instance_id, rec.getMessage()
    step_records = [rec for rec in about if "step 'flaky'" in rec.getMessage()]
    assert step_records
    assert all(getattr(rec, "key", None) == "flaky" for rec in step_records)
    messages = [rec.getMessage() for rec in about]
    assert any("completed" in m and ok in m for m in messages)
    assert any("failed" in m and bad in m for m in messages)
    assert any("retrying" in m for m in messages)
