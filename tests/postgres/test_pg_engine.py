"""The engine over PostgreSQL, one engine at a time (shared: test_pg_shared.py).

Each test runs a workflow on a fresh database of the session's server,
closes the engine (as a stop or a crash leaves it: the database holds the
history), opens a new one on the same database and checks that it replays
what was recorded without running a finished step again.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support.suspend import until_state

from memable_log import Context, Engine
from memable_log._postgres.schema import SchemaMismatch


def engine(dsn: str, **workflows: Any) -> Engine:
    built = Engine.builder().postgres(dsn, worker="test", lease=5.0).build()
    for name, fn in workflows.items():
        built.register(name, fn)
    return built


async def test_a_workflow_replays_without_running_its_steps_again(pg_dsn: str) -> None:
    calls: list[str] = []

    async def flow(ctx: Context) -> Any:
        total = 0
        for i in range(5):
            def body(i: int = i) -> int:
                calls.append(f"s{i}")
                return i * 10
            total += await ctx.step(f"s{i}").run(body)
        return total

    async with engine(pg_dsn, flow=flow) as first:
        iid = await first.invoke("flow", None, instance_id="a")
        assert await first.wait(iid) == 100
    assert calls == [f"s{i}" for i in range(5)]

    async with engine(pg_dsn, flow=flow) as second:
        assert second.status("a").state == "completed"
        assert await second.wait("a") == 100
        assert [s.key for s in second.steps("a")] == [f"s{i}" for i in range(5)]
    assert len(calls) == 5


async def test_suspended_instance_resumes_in_a_new_engine_on_a_signal(pg_dsn: str) -> None:
    calls: list[str] = []

    async def approve(ctx: Context) -> Any:
        data = await ctx.step("fetch").run(lambda: calls.append("fetch") or "data")
        answer = await ctx.suspend("approval", status="waiting")
        return [data, answer]

    async with engine(pg_dsn, approve=approve) as first:
        await first.invoke("approve", instance_id="b")
        await until_state(first, "b", "suspended")

    async with engine(pg_dsn, approve=approve) as second:
        assert second.status("b").state == "suspended"
        await second.signal("approve", "b", "approval", {"ok": True})
        assert await second.wait("b") == ["data", {"ok": True}]
    assert calls == ["fetch"]


async def test_a_timer_set_before_a_restart_fires_after_it(pg_dsn: str) -> None:
    calls: list[str] = []

    async def later(ctx: Context) -> Any:
        await ctx.step("before").run(lambda: calls.append("before"))
        await ctx.timer("nap", 0.3)
        return await ctx.step("after").run(lambda: calls.append("after") or "woke")

    async with engine(pg_dsn, later=later) as first:
        await first.invoke("later", instance_id="c")
        await until_state(first, "c", "sleeping")

    async with engine(pg_dsn, later=later) as second:
        assert await second.wait("c") == "woke"
    assert calls == ["before", "after"]


async def test_a_child_workflow_and_events(pg_dsn: str) -> None:
    async def kid(ctx: Context) -> Any:
        await ctx.publish("progress", ctx.input)
        return ctx.input * 2

    async def parent(ctx: Context) -> Any:
        got = await ctx.child("k", "kid", 21)
        await ctx.publish("done", got)
        return got

    async with engine(pg_dsn, kid=kid, parent=parent) as first:
        await first.invoke("parent", instance_id="p")
        assert await first.wait("p") == 42
        assert await first.event("p/k", "progress") == 21

    async with engine(pg_dsn, kid=kid, parent=parent) as second:
        assert second.status("p/k").state == "completed"
        assert [(e.key, e.value) async for e in second.events("p/k")] == [("progress", 21)]
        assert await second.event("p", "done") == 42
        assert await second.wait("p/k") == 42


async def test_a_newer_schema_is_refused_by_name(pg_dsn: str) -> None:
    async with engine(pg_dsn):
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE ml_meta SET value = 99 WHERE name = 'schema'")
    with pytest.raises(SchemaMismatch, match="schema version 99, newer than this"):
        async with engine(pg_dsn):
            pass


async def test_failed_attempts_and_status_text_survive_a_restart(pg_dsn: str) -> None:
    attempts: list[int] = []

    async def flaky(ctx: Context) -> Any:
        await ctx.set_status("fetching")

        def body() -> str:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ConnectionError("try again")
            return "ok"

        got = await ctx.step("fetch").retry(max_attempts=5, initial_delay=0.01).run(body)
        await ctx.suspend("more")
        return got

    async with engine(pg_dsn, flaky=flaky) as first:
        await first.invoke("flaky", instance_id="r")
        await until_state(first, "r", "suspended")
    assert attempts == [1, 2, 3]

    async with engine(pg_dsn, flaky=flaky) as second:
        status = second.status("r")
        assert status.status == "fetching"
        [step] = [s for s in second.steps("r") if s.key == "fetch"]
        assert step.attempts == 3
        await second.signal("flaky", "r", "more")
        assert await second.wait("r") == "ok"
    assert attempts == [1, 2, 3]


async def test_large_values_replay_read_ahead_in_one_round_trip_a_window(pg_dsn: str) -> None:
    """Values above the inline limit are read back when they replay: the
    read-ahead fetches a window of them in one query, each as recorded."""
    calls: list[int] = []

    def big(i: int) -> str:
        calls.append(i)
        return f"{i:04d}" * 100  # 400 bytes: kept by location

    async def flow(ctx: Context) -> Any:
        return [await ctx.step(f"s{i}").run(big, i) for i in range(150)]

    async with engine(pg_dsn, flow=flow) as first:
        await first.wait(await first.invoke("flow", None, instance_id="a"))
    assert len(calls) == 150
    async with engine(pg_dsn, flow=flow) as second:
        windows: list[int] = []
        read_many = second._backend.read_many

        async def counted(locs: list[int]) -> list[list[Any]]:
            windows.append(len(locs))
            return await read_many(locs)

        second._backend.read_many = counted  # type: ignore[method-assign]
        await second.restart("a")
        assert await second.wait("a") == [big(i) for i in range(150)]
    assert windows == [128, 22]  # the first step read with its next 127, then the rest
    assert len(calls) == 300  # only the check above ran big() again
