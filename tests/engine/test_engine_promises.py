"""The article's promises: keys, not positions, across a code change.

Each test runs version 1 of a workflow in one engine lifetime and a changed
version 2 in the next, on the same journal (on disk, on a shared
MemoryStorage, and with one in-memory engine entered twice), counting the
calls of every step body. Lifetime-1 bodies return values marked ``v1`` and
lifetime-2 bodies values marked ``v2``, so a result shows where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from support.engine import KINDS, Calls, Gate, Home, of_type, wait

from memable_log import Context


@pytest.fixture(params=KINDS)
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Home:
    return Home(request.param, tmp_path)


def version_1(calls: Calls) -> Any:
    async def pipeline(ctx: Context) -> list[Any]:
        extract = await ctx.step("extract").run(calls.fn("extract", "extract@v1"))
        enrich = await ctx.step("enrich").run(calls.fn("enrich", "enrich@v1"))
        transform = await ctx.step("transform:v1").run(calls.fn("transform:v1", "transform@v1"))
        notify = await ctx.step("notify").run(calls.fn("notify", "notify@v1"))
        return [extract, enrich, transform, notify]

    return pipeline


async def first_lifetime(home: Home) -> str:
    """Run version 1 of instance "A" to completion; return its id."""
    calls = Calls()
    engine = home.engine({"pipeline": version_1(calls)})
    async with engine:
        instance_id = await engine.invoke("pipeline", instance_id="A")
        assert await wait(engine, instance_id) == [
            "extract@v1", "enrich@v1", "transform@v1", "notify@v1",
        ]
    assert calls.counts == {"extract": 1, "enrich": 1, "transform:v1": 1, "notify": 1}
    return instance_id


async def second_lifetime(home: Home, instance_id: str, workflow: Any) -> Any:
    engine = home.engine({"pipeline": workflow})
    async with engine:
        await engine.restart(instance_id)
        return await wait(engine, instance_id)


async def test_reordered_steps_return_their_cached_results(home: Home) -> None:
    instance_id = await first_lifetime(home)
    calls = Calls()

    async def reordered(ctx: Context) -> list[Any]:
        notify = await ctx.step("notify").run(calls.fn("notify", "notify@v2"))
        transform = await ctx.step("transform:v1").run(calls.fn("transform:v1", "transform@v2"))
        extract = await ctx.step("extract").run(calls.fn("extract", "extract@v2"))
        enrich = await ctx.step("enrich").run(calls.fn("enrich", "enrich@v2"))
        return [notify, transform, extract, enrich]

    result = await second_lifetime(home, instance_id, reordered)
    assert result == ["notify@v1", "transform@v1", "extract@v1", "enrich@v1"]
    assert calls.counts == {}


async def test_inserted_step_runs_and_the_others_stay_cached(home: Home) -> None:
    instance_id = await first_lifetime(home)
    calls = Calls()

    async def inserted(ctx: Context) -> list[Any]:
        extract = await ctx.step("extract").run(calls.fn("extract", "extract@v2"))
        audit = await ctx.step("audit").run(calls.fn("audit", "audit@v2"))
        enrich = await ctx.step("enrich").run(calls.fn("enrich", "enrich@v2"))
        transform = await ctx.step("transform:v1").run(calls.fn("transform:v1", "transform@v2"))
        notify = await ctx.step("notify").run(calls.fn("notify", "notify@v2"))
        return [extract, audit, enrich, transform, notify]

    result = await second_lifetime(home, instance_id, inserted)
    assert result == ["extract@v1", "audit@v2", "enrich@v1", "transform@v1", "notify@v1"]
    assert calls.counts == {"audit": 1}
    assert len(of_type(home.records(), "step_done", "audit")) == 1


async def test_bumped_version_key_runs_again(home: Home) -> None:
    instance_id = await first_lifetime(home)
    calls = Calls()

    async def bumped(ctx: Context) -> list[Any]:
        extract = await ctx.step("extract").run(calls.fn("extract", "extract@v2"))
        enrich = await ctx.step("enrich").run(calls.fn("enrich", "enrich@v2"))
        transform = await ctx.step("transform:v2").run(calls.fn("transform:v2", "transform@v2"))
        notify = await ctx.step("notify").run(calls.fn("notify", "notify@v2"))
        return [extract, enrich, transform, notify]

    result = await second_lifetime(home, instance_id, bumped)
    assert result == ["extract@v1", "enrich@v1", "transform@v2", "notify@v1"]
    assert calls.counts == {"transform:v2": 1}
    records = home.records()
    # The old result is still in the journal, just no longer asked for.
    assert len(of_type(records, "step_done", "transform:v1")) == 1
    assert len(of_type(records, "step_done", "transform:v2")) == 1


async def test_removed_step_is_ignored_and_the_instance_completes(home: Home) -> None:
    instance_id = await first_lifetime(home)
    calls = Calls()

    async def removed(ctx: Context) -> list[Any]:
        extract = await ctx.step("extract").run(calls.fn("extract", "extract@v2"))
        transform = await ctx.step("transform:v1").run(calls.fn("transform:v1", "transform@v2"))
        notify = await ctx.step("notify").run(calls.fn("notify", "notify@v2"))
        return [extract, transform, notify]

    result = await second_lifetime(home, instance_id, removed)
    assert result == ["extract@v1", "transform@v1", "notify@v1"]
    assert calls.counts == {}
    engine = home.engine({})
    async with engine:
        assert engine.status(instance_id).state == "completed"
        assert await engine.wait(instance_id) == result


async def test_in_flight_instance_resumes_under_changed_code(home: Home) -> None:
    """All four changes at once, to an instance interrupted inside a step."""
    calls_1 = Calls()
    gate = Gate()

    async def old(ctx: Context) -> list[Any]:
        extract = await ctx.step("extract").run(calls_1.fn("extract", "extract@v1"))
        enrich = await ctx.step("enrich").run(calls_1.fn("enrich", "enrich@v1"))
        old_note = await ctx.step("old-note").run(calls_1.fn("old-note", "old-note@v1"))
        transform = await ctx.step("transform:v1").run(gate, "transform@v1")
        return [extract, enrich, old_note, transform]

    engine = home.engine({"pipeline": old})
    async with engine:
        instance_id = await engine.invoke("pipeline", instance_id="in-flight")
        with trio.fail_after(10):
            await gate.entered.wait()
        # Leaving the block stops the engine with the instance mid-step.
    assert calls_1.counts == {"extract": 1, "enrich": 1, "old-note": 1}

    calls_2 = Calls()
    checked = trio.Event()  # holds the resumed instance, so it is seen in flight

    async def new(ctx: Context) -> list[Any]:
        enrich = await ctx.step("enrich").run(calls_2.fn("enrich", "enrich@v2"))  # reordered
        extract = await ctx.step("extract").run(calls_2.fn("extract", "extract@v2"))
        await checked.wait()
        check = await ctx.step("check").run(calls_2.fn("check", "check@v2"))  # inserted
        # bumped; "old-note" removed
        transform = await ctx.step("transform:v2").run(calls_2.fn("transform:v2", "t@v2"))
        return [enrich, extract, check, transform]

    engine = home.engine({"pipeline": new})
    async with engine:
        assert engine.status(instance_id).state == "running"
        checked.set()
        result = await wait(engine, instance_id)
    assert result == ["enrich@v1", "extract@v1", "check@v2", "t@v2"]
    assert calls_2.counts == {"check": 1, "transform:v2": 1}
    records = home.records()
    assert of_type(records, "step_done", "transform:v1") == []  # interrupted, never finished
    assert len(of_type(records, "completed")) == 1
