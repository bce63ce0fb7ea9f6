"""The engine over PostgreSQL (phase 1: one engine at a time per database)."""

from __future__ import annotations

from typing import Any

import trio

from memable_log import Context, Engine


def engine(dsn: str) -> Engine:
    return Engine.builder().postgres(dsn, worker="test").build()


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

    first = engine(pg_dsn)
    first.register("flow", flow)
    async with first:
        iid = await first.invoke("flow", None, instance_id="a")
        assert await first.wait(iid) == 100
    assert calls == [f"s{i}" for i in range(5)]

    second = engine(pg_dsn)
    second.register("flow", flow)
    async with second:
        assert second.status("a").state == "completed"
        assert await second.wait("a") == 100
    assert len(calls) == 5
