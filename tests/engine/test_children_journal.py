"""Children in the journal's derived forms: the snapshot and compaction.

A parent's memo of its children (``child_started``, ``child_ended``), its
child waits and a child's parent must come back the same from a snapshot
and from a compacted journal as from a full scan; a compacted parent parked
on a child keeps its wait, and runs on when the child ends.
"""

from __future__ import annotations

from typing import Any

import trio
from support.compaction import stored
from support.suspend import finish, memory_engine, until_state
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import Context, MemoryStorage, WorkflowFailed
from memable_log._compaction.compactor import compact_offline
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage.snapshot import SNAPSHOT_NAME


async def gate(ctx: Context) -> Any:
    return await ctx.suspend("go")


async def child(ctx: Context) -> Any:
    value = await ctx.step("work").run(lambda: ctx.input * 10)
    if ctx.input == 3:
        raise ValueError("three")
    return value


async def parent(ctx: Context) -> Any:
    done = await ctx.child("one", "child", 1)
    try:
        await ctx.child("three", "child", 3)
    except WorkflowFailed as exc:
        failed = exc.instance_id
    waited = await ctx.fan_out("g", "gate", ["x", "y"], concurrency=2)
    return [done, failed, waited]


WORKFLOWS = {"parent": parent, "child": child, "gate": gate}


async def parked_parents(storage: MemoryStorage) -> None:
    """Two parents, each parked on its two gate children."""
    engine = memory_engine(storage, **WORKFLOWS)
    async with engine:
        for pid in ("p", "q"):
            await engine.invoke("parent", instance_id=pid)
        await wait_all_tasks_blocked()
        for pid in ("p", "q"):
            await until_state(engine, pid, "waiting")
        assert [w.kind for w in engine.status("p").waits] == ["child", "child"]


def view(index: Index) -> dict[str, Any]:
    return {
        iid: (e.workflow, e.state, e.pending, dict(e.steps), e.waits, e.done_waits, e.parent,
              e.input, e.outcome, e.last_seq)
        for iid, e in index.instances.items()
    }


async def open_index(storage: MemoryStorage, snapshots: bool) -> tuple[Index, bool]:
    index = Index()
    async with Journal(storage, index, snapshots=snapshots) as journal:
        journal.maintenance.keep_snapshot = False
        resumed = journal.resumed
    return index, resumed


async def test_a_snapshot_gives_the_full_scans_children_and_parents(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    await parked_parents(storage)
    assert SNAPSHOT_NAME in storage.list()
    fast, resumed = await open_index(storage, snapshots=True)
    full, _ = await open_index(storage, snapshots=False)
    assert resumed
    assert view(fast) == view(full)
    assert fast.instances["p/g:0"].parent == "p"
    assert fast.instances["p"].parent is None


async def test_compaction_keeps_the_memo_and_a_parked_parents_child_wait(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    await parked_parents(storage)
    before = stored(storage)
    compact_offline(storage, now_ms=0, retention_ms=None)
    assert any(name.startswith("cmp-") for name in storage.list())
    assert stored(storage) == before
    runs: list[int] = []

    async def counting(ctx: Context) -> Any:
        runs.append(ctx.input)
        return await child(ctx)

    engine = memory_engine(storage, parent=parent, child=counting, gate=gate)
    async with engine:
        assert engine.status("p").state == "waiting"
        for pid in ("p", "q"):
            for i in (0, 1):
                await engine.signal("gate", f"{pid}/g:{i}", "go", f"{pid}{i}")
        for pid in ("p", "q"):
            assert await finish(engine, pid) == [10, f"{pid}/three", [f"{pid}0", f"{pid}1"]]
    assert runs == []  # the children's outcomes came from the parents' memo


async def test_retention_may_drop_finished_children_the_parent_reads_its_memo(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    await parked_parents(storage)
    compact_offline(storage, now_ms=10**15, retention_ms=0)  # every finished instance goes
    engine = memory_engine(storage, **WORKFLOWS)
    async with engine:
        ids = {s.instance_id for s in engine.instances()}
        assert "p/one" not in ids
        assert "p/g:0" in ids
        for i in (0, 1):
            await engine.signal("gate", f"p/g:{i}", "go", i)
        with trio.fail_after(10**6):
            assert await finish(engine, "p") == [10, "p/three", [0, 1]]
