"""Flow control (SPEC-NEXT §4): rate=(n, seconds), instance timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from support.engine import Home, of_type, wait

from memable_log import Context, Engine, WorkflowCancelled


async def test_a_rate_of_50_a_second_holds_within_2_percent_over_60_seconds(
    autojump_clock: Any,
) -> None:
    began: list[float] = []

    async def job(ctx: Context) -> None:
        began.append(trio.current_time())

    engine = Engine.builder().in_memory().build()
    engine.register("job", job, rate=(50, 1.0))
    async with engine:
        start = trio.current_time()
        for n in range(3300):
            await engine.invoke("job", n)
        await trio.sleep(60)
    within = [t - start for t in began if t - start < 60]
    assert abs(len(within) - 3000) <= 60  # 50/s for 60 s, within 2%
    # No interval of one second holds more than 50 starts.
    assert all(began[i + 50] - began[i] >= 0.999 for i in range(len(began) - 50))


async def test_a_rate_limited_instance_is_queued_until_its_window_opens(
    autojump_clock: Any,
) -> None:
    engine = Engine.builder().in_memory().build()

    async def job(ctx: Context) -> float:
        return trio.current_time()

    engine.register("job", job, rate=(2, 10.0))
    async with engine:
        start = trio.current_time()
        ids = [await engine.invoke("job", n) for n in range(5)]
        assert [engine.status(i).state for i in ids[2:]] == ["queued"] * 3
        times = [await wait(engine, i, timeout=100) - start for i in ids]
    assert times == pytest.approx([0, 0, 10, 10, 20], abs=0.01)


async def test_a_workflow_timeout_cancels_an_instance_with_reason_timeout(
    autojump_clock: Any,
) -> None:
    async def slow(ctx: Context) -> None:
        await ctx.step("long").run(trio.sleep, 100)

    engine = Engine.builder().in_memory().build()
    engine.register("slow", slow, timeout=5)
    async with engine:
        start = trio.current_time()
        iid = await engine.invoke("slow")
        with pytest.raises(WorkflowCancelled) as caught:
            await wait(engine, iid, timeout=50)
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
        assert caught.value.reason == "timeout"
        assert "timeout" in str(caught.value)
        status = engine.status(iid)
        assert status.state == "cancelled"
        assert status.error is not None
        assert status.error.message == "timeout"


async def test_an_invoke_timeout_overrides_the_workflows(autojump_clock: Any) -> None:
    async def slow(ctx: Context) -> None:
        await trio.sleep(100)

    engine = Engine.builder().in_memory().build()
    engine.register("slow", slow, timeout=50)
    async with engine:
        start = trio.current_time()
        iid = await engine.invoke("slow", timeout=2)
        with pytest.raises(WorkflowCancelled, match="timeout"):
            await wait(engine, iid, timeout=100)
        assert trio.current_time() - start == pytest.approx(2, abs=0.01)


async def test_engine_cancel_has_no_reason(autojump_clock: Any) -> None:
    async def slow(ctx: Context) -> None:
        await trio.sleep(100)

    engine = Engine.builder().in_memory().build()
    engine.register("slow", slow, timeout=50)
    async with engine:
        iid = await engine.invoke("slow")
        await trio.testing.wait_all_tasks_blocked()
        await engine.cancel(iid)
        with pytest.raises(WorkflowCancelled) as caught:
            await wait(engine, iid)
        assert caught.value.reason is None
        assert "(timeout)" not in str(caught.value)


async def test_a_queued_or_suspended_instance_times_out_too(autojump_clock: Any) -> None:
    async def job(ctx: Context) -> Any:
        if ctx.input == "approval":
            return await ctx.suspend("ok")
        await trio.sleep(100)

    engine = Engine.builder().in_memory().build()
    engine.register("job", job, max_running=1)
    async with engine:
        await engine.invoke("job", "busy", instance_id="busy")
        await engine.invoke("job", "queued", instance_id="q", timeout=3)
        await trio.testing.wait_all_tasks_blocked()
        assert engine.status("q").state == "queued"
        with pytest.raises(WorkflowCancelled, match="timeout"):
            await wait(engine, "q", timeout=10)
        await engine.cancel("busy")
        await engine.invoke("job", "approval", instance_id="s", timeout=3)
        await trio.testing.wait_all_tasks_blocked()
        assert engine.status("s").state == "suspended"
        with pytest.raises(WorkflowCancelled, match="timeout"):
            await wait(engine, "s", timeout=10)


async def test_a_timed_out_child_raises_in_its_parent_with_the_reason(
    autojump_clock: Any,
) -> None:
    async def child(ctx: Context) -> None:
        await trio.sleep(100)

    async def parent(ctx: Context) -> Any:
        try:
            await ctx.child("c", "child")
        except WorkflowCancelled as exc:
            return exc.reason
        return "finished"

    engine = Engine.builder().in_memory().build()
    engine.register("child", child, timeout=4)
    engine.register("parent", parent)
    async with engine:
        iid = await engine.invoke("parent")
        assert await wait(engine, iid, timeout=50) == "timeout"


async def test_an_invoke_timeout_survives_a_restart(tmp_path: Path, autojump_clock: Any) -> None:
    # A memory journal: its commits run inline, so virtual time cannot run
    # ahead of them (a directory's commit thread works in real time).
    home = Home("memory", tmp_path)

    async def slow(ctx: Context) -> None:
        await trio.sleep(100)

    engine = home.builder().build()
    engine.register("slow", slow)
    async with engine:
        iid = await engine.invoke("slow", timeout=5)
    engine = home.builder().build()
    engine.register("slow", slow)
    async with engine:
        # Virtual time is free; each start anchors the wall clock anew (and
        # a disk engine's first lifetime may have jumped ahead meanwhile).
        with pytest.raises(WorkflowCancelled, match="timeout"):
            await wait(engine, iid, timeout=10_000)
    assert [r.fields for r in of_type(home.records(), "cancelled_for")] == [
        {"reason": "timeout"}]
    assert of_type(home.records(), "options")[0].fields["deadline_ms"] is not None
