"""Children across power cuts: a torn start, end or cancel batch (SPEC-NEXT §2).

A batch is durable as a whole or survives as a prefix of its records
(Backend.append_many): a power cut between a child's ``child_created`` and
its parent's ``child_started``, or between a child's outcome and its
parent's ``child_ended``, or inside a cancel's batch, may keep the first
records and lose the rest. Each test cuts the power while that batch is
written (its write lands, its fsync does not), then opens the journal as the
cut left it, in every way the unsynced bytes may land (nothing, all, every
prefix, garbage: ``support.powerloss.tears``), and checks the outcome: each
child created once, its step run to completion once, the parent's result
built from the children's.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from support import cuts
from support.powerloss import is_power_cut, tears
from support.suspend import finish, memory_engine, records_of, until_state
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import Context, Engine, MemoryStorage, WorkflowCancelled

Batch = list[str]


def counted() -> tuple[Counter[str], Any, Any]:
    """A child workflow whose one step counts its runs, and a parent of two children."""
    runs: Counter[str] = Counter()

    async def child(ctx: Context) -> int:
        def work() -> int:
            runs[ctx.instance_id] += 1
            return ctx.input * 10  # type: ignore[no-any-return]

        return await ctx.step("work").run(work)  # type: ignore[no-any-return]

    async def parent(ctx: Context) -> Any:
        first = await ctx.child("a", "child", 1)
        return [first, *await ctx.fan_out("f", "child", [2, 3], concurrency=1)]

    return runs, child, parent


async def cut_at_batch(storage: MemoryStorage, workflows: dict[str, Any], batch: Batch,
                       nth: int = 1) -> None:
    """Run ``parent`` until the ``nth`` batch of record types ``batch`` is
    written, and cut the power before its fsync."""
    async def drive(engine: Engine) -> None:
        await engine.invoke("parent", instance_id="p")

    engine = memory_engine(storage, **workflows)
    assert await cuts.cut_at_batch(storage, engine, drive, batch, nth) >= nth


@pytest.mark.parametrize(("batch", "nth"), [
    (["child_created", "child_started"], 1),
    (["child_created", "child_started"], 3),  # the fan-out's second child
    (["completed", "child_ended"], 1),
    (["completed", "child_ended"], 2),
])
async def test_a_power_cut_in_a_start_or_end_batch_loses_no_child_and_runs_none_twice(
    autojump_clock: MockClock, batch: Batch, nth: int
) -> None:
    runs, child, parent = counted()
    storage = MemoryStorage()
    await cut_at_batch(storage, {"parent": parent, "child": child}, batch, nth)
    before = dict(runs)
    assert all(count == 1 for count in before.values())
    for mode, tear in tears(storage, random.Random(nth)):
        runs.clear()
        runs.update(before)
        after = storage.crash(tear)
        engine = memory_engine(after, parent=parent, child=child)
        async with engine:
            assert await finish(engine, "p") == [10, 20, 30], mode
            assert engine.status("p/a").parent == "p"
        created = [rec.instance for rec in records_of(after) if rec.type == "child_created"]
        assert sorted(created) == ["p/a", "p/f:0", "p/f:1"], mode
        ended = Counter(rec.fields["key"] for rec in records_of(after) if rec.type == "child_ended")
        assert ended == {"a": 1, "f:0": 1, "f:1": 1}, mode
        # A child's step runs again only if its result was lost with the cut.
        assert all(count <= 2 for count in runs.values()), (mode, runs)


async def test_a_power_cut_in_a_cancel_batch_cancels_every_descendant_at_the_next_start(
    autojump_clock: MockClock,
) -> None:
    async def gate(ctx: Context) -> Any:
        return await ctx.suspend("go")

    async def middle(ctx: Context) -> Any:
        return await ctx.fan_out("g", "gate", [1, 2])

    async def parent(ctx: Context) -> Any:
        return await ctx.child("m", "middle")

    workflows = {"parent": parent, "middle": middle, "gate": gate}
    storage = MemoryStorage()
    engine = memory_engine(storage, **workflows)

    async def run() -> None:
        async with engine:
            await engine.invoke("parent", instance_id="p")
            await wait_all_tasks_blocked()
            await until_state(engine, "p/m/g:1", "suspended")
            storage.crash_at = storage.ops + 2
            await engine.cancel("p")

    with pytest.raises(BaseException) as info:  # noqa: PT011 (a PowerCut, in groups)
        await run()
    assert is_power_cut(info.value)
    for mode, tear in tears(storage, random.Random(7)):
        engine = memory_engine(storage.crash(tear), **workflows)
        async with engine:
            states = {s.instance_id: s.state for s in engine.instances()}
            if states["p"] == "cancelled":  # the batch's first record landed: all of it counts
                assert set(states.values()) == {"cancelled"}, (mode, states)
                with pytest.raises(WorkflowCancelled):
                    await engine.wait("p")
            else:
                assert "cancelled" not in states.values(), (mode, states)
