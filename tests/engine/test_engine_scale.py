"""Many instances: the concurrency limit, and a thousand instances at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from support.engine import Home, of_type, wait

from memable_log import Context, Engine


class Occupancy:
    """How many workflows are inside their body right now, and the most ever."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_running_caps_concurrent_instances_and_keeps_order(
    limit: int, autojump_clock: Any
) -> None:
    seen = Occupancy()

    starts: dict[int, float] = {}

    async def job(ctx: Context) -> Any:
        starts[ctx.input] = trio.current_time() - start
        seen.now += 1
        seen.most = max(seen.most, seen.now)
        try:
            await ctx.step("work").run(trio.sleep, 1)
        finally:
            seen.now -= 1
        return ctx.input

    engine = Engine.builder().in_memory().max_running(limit).build()
    engine.register("job", job)
    start = trio.current_time()
    async with engine:
        ids = [await engine.invoke("job", n) for n in range(10)]
        assert [await wait(engine, i, timeout=100) for i in ids] == list(range(10))
    assert seen.most == limit
    # The rest ran in the order they came: instance n in wave n // limit.
    # (Within a wave, trio may schedule the woken tasks in any order.)
    assert starts == {n: n // limit for n in range(10)}
    # Waves of `limit` one-second steps, sleeping on the mock clock.
    assert trio.current_time() - start == pytest.approx(-(-10 // limit))


async def test_without_a_limit_every_instance_runs_at_once(autojump_clock: Any) -> None:
    seen = Occupancy()

    async def job(ctx: Context) -> Any:
        seen.now += 1
        seen.most = max(seen.most, seen.now)
        await ctx.step("work").run(trio.sleep, 1)
        seen.now -= 1

    engine = Engine.builder().in_memory().build()
    engine.register("job", job)
    async with engine:
        ids = [await engine.invoke("job", n) for n in range(20)]
        for instance_id in ids:
            await wait(engine, instance_id, timeout=100)
    assert seen.most == 20


async def test_max_running_applies_to_instances_resumed_at_start(tmp_path: Path) -> None:
    home = Home("disk", tmp_path)
    seen = Occupancy()
    arrived: list[int] = []
    all_arrived = trio.Event()

    async def stuck(ctx: Context) -> Any:
        await ctx.step("first").run(lambda: ctx.input)
        arrived.append(ctx.input)
        if len(arrived) == 6:
            all_arrived.set()
        await trio.sleep_forever()

    engine = home.engine({"job": stuck})
    async with engine:
        ids = [await engine.invoke("job", n, instance_id=f"job-{n}") for n in range(6)]
        with trio.fail_after(10):
            await all_arrived.wait()
        assert len(of_type(home.records(), "step_done")) == 6

    async def job(ctx: Context) -> Any:
        first = await ctx.step("first").run(lambda: -1)
        seen.now += 1
        seen.most = max(seen.most, seen.now)
        await ctx.step("second").run(trio.sleep, 0.001)
        seen.now -= 1
        return first

    engine = home.engine({"job": job}, max_running=2)
    async with engine:
        assert [await wait(engine, i) for i in ids] == list(range(6))
    assert seen.most == 2


@pytest.mark.parametrize("kind", ["memory", "disk"])
async def test_a_thousand_concurrent_instances_complete(kind: str, tmp_path: Path) -> None:
    home = Home(kind, tmp_path)

    async def square_plus(ctx: Context) -> Any:
        n = ctx.input["n"]
        squared = await ctx.step("square").run(lambda: n * n)
        await trio.lowlevel.checkpoint()
        return await ctx.step("plus").run(lambda: squared + ctx.input["plus"])

    count = 1000
    engine = home.engine({"sq": square_plus})
    results: dict[int, Any] = {}
    async with engine:

        async def one(n: int) -> None:
            instance_id = await engine.invoke("sq", {"n": n, "plus": 7}, instance_id=f"sq-{n}")
            results[n] = await wait(engine, instance_id, timeout=60)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for n in range(count):
                    nursery.start_soon(one, n)
        assert len(engine.instances("completed")) == count
    assert results == {n: n * n + 7 for n in range(count)}
    records = home.records()
    assert len(of_type(records, "created")) == count
    assert len(of_type(records, "step_done")) == 2 * count
    assert len(of_type(records, "completed")) == count

    # After a restart every result is read back from the journal.
    engine = home.engine({"sq": square_plus})
    async with engine:
        assert [await engine.wait(f"sq-{n}") for n in range(0, count, 97)] == [
            n * n + 7 for n in range(0, count, 97)
        ]
