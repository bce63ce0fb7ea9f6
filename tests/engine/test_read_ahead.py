"""The replay of steps whose values are kept by location reads them ahead.

A value above the index's inline limit is read back from the journal when
its step replays. Reading the instance's next steps' values in one trip
(``read_many``) instead of one trip per step is what makes such a replay
run at memory speed; the values must be exactly those recorded, whatever
the order the workflow asks for them in, and a record that cannot be read
further on must not fail a step whose own record is fine.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from memable_log import Context, Engine
from memable_log._core.errors import JournalCorrupt
from memable_log._engine.read_ahead import WINDOW

STEPS = 300
BIG = 600  # above the inline limit: kept by location


def value(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    return {"i": i, "body": rng.randbytes(BIG).hex()}


def workflow(order: list[int], calls: list[int]) -> Any:
    async def flow(ctx: Context) -> Any:
        got = {}
        for i in order:
            def make(i: int = i) -> dict[str, Any]:
                calls.append(i)
                return value(i)

            got[i] = await ctx.step(f"s{i}").run(make)
        return [got[i]["i"] for i in range(STEPS)] == list(range(STEPS)) and all(
            got[i] == value(i) for i in range(STEPS)
        )

    return flow


class Trips:
    """Counts the engine's trips to its backend for records."""

    def __init__(self, engine: Engine, fail_many: bool = False) -> None:
        backend = engine._backend
        self.single = 0
        self.many: list[int] = []
        read, read_many = backend.read, backend.read_many

        async def counted_read(loc: int) -> list[Any]:
            self.single += 1
            return await read(loc)

        async def counted_many(locs: list[int]) -> list[list[Any]]:
            self.many.append(len(locs))
            if fail_many:
                raise JournalCorrupt("seg", 40, "a damaged record further on")
            return await read_many(locs)

        backend.read = counted_read  # type: ignore[method-assign]
        backend.read_many = counted_many  # type: ignore[method-assign]


async def replay(path: Path, order: list[int], fail_many: bool = False) -> tuple[Trips, list[int]]:
    """Record every step in order, then replay them all (a restart) in ``order``."""
    calls: list[int] = []
    engine = Engine.builder().open(path).build()
    engine.register("flow", workflow(list(range(STEPS)), calls))
    async with engine:
        assert await engine.wait(await engine.invoke("flow", instance_id="x")) is True
    assert calls == list(range(STEPS))
    calls.clear()
    engine = Engine.builder().open(path).build()
    engine.register("flow", workflow(order, calls))
    async with engine:
        trips = Trips(engine, fail_many)
        await engine.restart("x")
        assert await engine.wait("x") is True  # every value as recorded
        assert len(engine._host.ahead) == 0  # forgotten when the run ended
    assert calls == []  # nothing ran again
    return trips, calls


async def test_a_replay_reads_values_a_window_at_a_time(tmp_path: Path) -> None:
    trips, _ = await replay(tmp_path / "j", list(range(STEPS)))
    assert trips.many == [WINDOW, WINDOW, STEPS - 2 * WINDOW]
    assert trips.single == 0


async def test_a_replay_in_another_order_gets_the_same_values(tmp_path: Path) -> None:
    order = list(range(STEPS))
    random.Random(7).shuffle(order)
    trips, _ = await replay(tmp_path / "j", order)
    # More trips than in order (a step outside the window reads the next
    # one from it), never more than one per step.
    assert len(trips.many) + trips.single <= STEPS


async def test_a_window_that_cannot_be_read_falls_back_to_each_steps_own_record(
    tmp_path: Path,
) -> None:
    trips, _ = await replay(tmp_path / "j", list(range(STEPS)), fail_many=True)
    assert trips.single == STEPS  # each step read alone, and replayed as recorded
    assert trips.many == [WINDOW]  # one window tried, then no more for this run


@pytest.mark.parametrize("steps", [1, WINDOW + 1])
async def test_small_values_stay_in_the_index_and_are_never_read(
    tmp_path: Path, steps: int
) -> None:
    async def flow(ctx: Context) -> int:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return steps

    engine = Engine.builder().open(tmp_path / "j").build()
    engine.register("flow", flow)
    async with engine:
        await engine.wait(await engine.invoke("flow", instance_id="x"))
    engine = Engine.builder().open(tmp_path / "j").build()
    engine.register("flow", flow)
    async with engine:
        trips = Trips(engine)
        await engine.restart("x")
        assert await engine.wait("x") == steps
        await trio.lowlevel.checkpoint()
    assert (trips.single, trips.many) == (0, [])
