"""Workflows that start workflows (SPEC-NEXT §2).

``ctx.child``, ``start_child`` / ``wait_child``, ``fan_out``,
``InstanceStatus.parent`` and a cancel that reaches every live descendant.
A parent waiting on children is a wait of §1: it is parked, holds nothing
in memory, and runs again when a child ends. Every test runs under trio's
MockClock (``autojump_clock``).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from support.suspend import finish, memory_engine, records_of, types_of, until_state
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import (
    Context,
    DuplicateStepKey,
    EngineError,
    MemoryStorage,
    UnknownWorkflow,
    Wait,
    WorkflowCancelled,
    WorkflowFailed,
)


async def double(ctx: Context) -> int:
    return await ctx.step("double").run(lambda: ctx.input * 2)  # type: ignore[no-any-return]


async def boom(ctx: Context) -> None:
    raise ValueError(f"boom {ctx.input}")


class Gate:
    """A child workflow that waits for a signal ("go") before returning its input."""

    async def __call__(self, ctx: Context) -> Any:
        await ctx.suspend("go")
        return ctx.input


async def test_child_returns_the_childs_result_and_status_names_the_parent(
    autojump_clock: MockClock,
) -> None:
    async def parent(ctx: Context) -> int:
        return await ctx.child("c", "double", 21) + 1  # type: ignore[no-any-return]

    engine = memory_engine(parent=parent, double=double)
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        assert await finish(engine, pid) == 43
        child = engine.status("p/c")
        assert child.parent == "p"
        assert child.state == "completed"
        assert engine.status("p").parent is None


async def test_a_registered_function_names_its_workflow_and_an_unregistered_one_is_refused(
    autojump_clock: MockClock,
) -> None:
    async def unregistered(ctx: Context) -> None:
        return None

    async def parent(ctx: Context) -> Any:
        first = await ctx.child("by-fn", double, 1)
        with pytest.raises(EngineError, match=r"unregistered.*engine\.register"):
            await ctx.start_child("nope", unregistered)
        with pytest.raises(UnknownWorkflow, match="missing"):
            await ctx.start_child("nope2", "missing")
        return first

    engine = memory_engine(parent=parent, double=double)
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        assert await finish(engine, pid) == 2
        assert engine.status("p/by-fn").workflow == "double"
        assert [s.instance_id for s in engine.instances()] == ["p", "p/by-fn"]


async def test_parent_waiting_on_a_child_is_parked_waiting_and_holds_nothing_in_memory(
    autojump_clock: MockClock,
) -> None:
    async def parent(ctx: Context) -> Any:
        return await ctx.child("c", "gate", "hello")

    engine = memory_engine(parent=parent, gate=Gate())
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await wait_all_tasks_blocked()
        await until_state(engine, "p/c", "suspended")
        await until_state(engine, pid, "waiting")
        status = engine.status(pid)
        assert status.waits == (Wait("child", "c", None),)
        assert pid not in engine._host.running
        assert pid not in engine._host.waits
        await engine.signal("gate", "p/c", "go")
        assert await finish(engine, pid) == "hello"


async def test_start_then_wait_later_and_a_child_already_finished_returns_at_once(
    autojump_clock: MockClock,
) -> None:
    async def parent(ctx: Context) -> Any:
        cid = await ctx.start_child("c", "double", 5)
        await ctx.timer("t", 60)  # the child finishes meanwhile
        return [cid, await ctx.wait_child("c")]

    engine = memory_engine(parent=parent, double=double)
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        assert await finish(engine, pid) == ["p/c", 10]


async def test_a_failed_child_raises_workflow_failed_with_the_childs_id_memoised(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    runs = []

    async def parent(ctx: Context) -> Any:
        runs.append(1)
        try:
            await ctx.child("c", "boom", 7)
        except WorkflowFailed as exc:
            await ctx.timer("after", 10)  # a re-run after a restart
            return [exc.instance_id, exc.error_type, exc.message, "ValueError" in exc.traceback]
        return None

    engine = memory_engine(storage, parent=parent, boom=boom)
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "sleeping")
    engine = memory_engine(storage, parent=parent, boom=boom)
    async with engine:
        assert await finish(engine, "p") == ["p/c", "ValueError", "boom 7", True]
    # one child created, ever
    assert len([r for r in records_of(storage) if r.type == "child_created"]) == 1


async def test_keys_are_shared_with_steps_and_wait_child_needs_a_started_child(
    autojump_clock: MockClock,
) -> None:
    seen: list[str] = []

    async def parent(ctx: Context) -> None:
        await ctx.step("s").run(lambda: 1)
        with pytest.raises(DuplicateStepKey):
            await ctx.start_child("s", "double", 1)
        with pytest.raises(EngineError, match="names no child"):
            await ctx.wait_child("never")
        await ctx.child("c", "double", 1)
        with pytest.raises(DuplicateStepKey):
            await ctx.wait_child("c")
        with pytest.raises(DuplicateStepKey):
            await ctx.start_child("c", "double", 1)
        seen.append("ok")

    engine = memory_engine(parent=parent, double=double)
    async with engine:
        await finish(engine, await engine.invoke("parent"))
    assert seen == ["ok"]


async def test_a_rerun_finds_the_same_child_and_starts_nothing(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        value = await ctx.child("c", "gate", 3)
        return value

    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.signal("gate", "p/c", "go")
        assert await finish(engine, "p") == 3
    types = types_of(storage)
    assert types.count("child_created") == 1
    assert types.count("child_started") == 1
    assert types.count("child_ended") == 1


async def test_start_and_end_are_each_one_batch(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        return await ctx.child("c", "double", 1)

    engine = memory_engine(storage, parent=parent, double=double)
    batches: list[list[str]] = []
    async with engine:
        journal = engine._backend.journal
        original = journal.append_many

        async def spy(recs: list[list[Any]]) -> None:
            from memable_log._core.records import TYPE_NAMES
            batches.append([TYPE_NAMES[rec[0]] for rec in recs])
            await original(recs)

        journal.append_many = spy
        await finish(engine, await engine.invoke("parent", instance_id="p"))
    assert ["child_created", "child_started"] in batches
    assert ["completed", "child_ended"] in batches


# -- fan_out --------------------------------------------------------------------------


async def test_fan_out_returns_results_in_input_order_within_the_limit(
    autojump_clock: MockClock,
) -> None:
    live = 0
    most = 0

    async def slow(ctx: Context) -> int:
        nonlocal live, most
        live += 1
        most = max(most, live)
        await trio.sleep(10 - ctx.input)  # later inputs finish first
        live -= 1
        return ctx.input * ctx.input  # type: ignore[no-any-return]

    async def parent(ctx: Context) -> Any:
        return await ctx.fan_out("sq", "slow", range(10), concurrency=3)

    engine = memory_engine(parent=parent, slow=slow)
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        assert await finish(engine, pid) == [i * i for i in range(10)]
        assert [engine.status(f"p/sq:{i}").parent for i in range(10)] == ["p"] * 10
    assert most == 3


async def test_fan_out_raises_the_first_failure_in_input_order_after_all_finished(
    autojump_clock: MockClock,
) -> None:
    async def maybe(ctx: Context) -> int:
        await trio.sleep(10 - ctx.input)
        if ctx.input in (3, 6):
            raise ValueError(f"bad {ctx.input}")
        return ctx.input  # type: ignore[no-any-return]

    async def parent(ctx: Context) -> Any:
        try:
            await ctx.fan_out("f", maybe, range(8), concurrency=2)
        except WorkflowFailed as exc:
            return exc.instance_id
        return None

    engine = memory_engine(parent=parent, maybe=maybe)
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        assert await finish(engine, pid) == "p/f:3"
        assert all(engine.status(f"p/f:{i}").state in ("completed", "failed") for i in range(8))


async def test_fan_out_parent_is_parked_while_its_children_wait(autojump_clock: MockClock) -> None:
    async def parent(ctx: Context) -> Any:
        return await ctx.fan_out("g", "gate", ["a", "b", "c"], concurrency=2)

    engine = memory_engine(parent=parent, gate=Gate())
    async with engine:
        pid = await engine.invoke("parent", instance_id="p")
        await until_state(engine, pid, "waiting")
        assert [w.key for w in engine.status(pid).waits] == ["g:0", "g:1"]
        assert "p/g:2" not in [s.instance_id for s in engine.instances()]
        await engine.signal("gate", "p/g:1", "go")
        await wait_all_tasks_blocked()
        await until_state(engine, "p/g:2", "suspended")
        await until_state(engine, pid, "waiting")
        for key in ("g:0", "g:2"):
            await engine.signal("gate", f"p/{key}", "go")
        assert await finish(engine, pid) == ["a", "b", "c"]


async def test_fan_out_keeps_its_limit_across_a_restart(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        return await ctx.fan_out("g", "gate", list(range(5)), concurrency=2)

    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
        await engine.signal("gate", "p/g:0", "go")
        await wait_all_tasks_blocked()
        await until_state(engine, "p/g:2", "suspended")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        live = [s.instance_id for s in engine.instances("suspended")]
        assert live == ["p/g:1", "p/g:2"]
        await engine.signal("gate", "p/g:2", "go")
        await wait_all_tasks_blocked()
        await until_state(engine, "p/g:3", "suspended")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
        assert sorted(s.instance_id for s in engine.instances("suspended")) == ["p/g:1", "p/g:3"]
        for i in (1, 3):
            await engine.signal("gate", f"p/g:{i}", "go")
        await wait_all_tasks_blocked()
        await until_state(engine, "p/g:4", "suspended")
        await engine.signal("gate", "p/g:4", "go")
        assert await finish(engine, "p") == [0, 1, 2, 3, 4]
    assert types_of(storage).count("child_created") == 5


# -- cancel ---------------------------------------------------------------------------


async def test_cancel_reaches_every_live_descendant_in_one_batch(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()

    async def middle(ctx: Context) -> Any:
        await ctx.start_child("leaf", "gate", 1)
        return await ctx.child("leaf2", "gate", 2)

    async def top(ctx: Context) -> Any:
        await ctx.child("done", "double", 1)
        return await ctx.child("mid", "middle")

    engine = memory_engine(storage, top=top, middle=middle, gate=Gate(), double=double)
    batches: list[list[tuple[str, str]]] = []
    async with engine:
        journal = engine._backend.journal
        original = journal.append_many

        async def spy(recs: list[list[Any]]) -> None:
            from memable_log._core.records import TYPE_NAMES
            batches.append([(TYPE_NAMES[rec[0]], rec[3]) for rec in recs])
            await original(recs)

        journal.append_many = spy
        await engine.invoke("top", instance_id="t")
        await wait_all_tasks_blocked()
        await until_state(engine, "t/mid/leaf2", "suspended")
        await wait_all_tasks_blocked()
        await until_state(engine, "t", "waiting")
        await engine.cancel("t")
        for iid in ("t", "t/mid", "t/mid/leaf", "t/mid/leaf2"):
            assert engine.status(iid).state == "cancelled", iid
        assert engine.status("t/done").state == "completed"
        with pytest.raises(WorkflowCancelled):
            await engine.wait("t")
    cancel_batch = [b for b in batches if b and b[0][0] == "cancelled"]
    assert len(cancel_batch) == 1
    assert sorted(i for _, i in cancel_batch[0]) == ["t", "t/mid", "t/mid/leaf", "t/mid/leaf2"]


async def test_cancelling_a_child_tells_its_parent_once(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        try:
            await ctx.child("c", "gate", 1)
        except WorkflowCancelled as exc:
            return exc.instance_id
        return None

    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
        await engine.cancel("p/c")
        await engine.cancel("p/c")
        assert await finish(engine, "p") == "p/c"
    assert types_of(storage).count("child_ended") == 1


async def test_a_child_key_is_refused_to_a_signal_and_to_a_step_of_a_later_version(
    autojump_clock: MockClock,
) -> None:
    from memable_log import SignalRefused

    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        return await ctx.child("c", "gate", 1)

    async def changed(ctx: Context) -> Any:
        return await ctx.step("c").run(lambda: 0)

    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p", "waiting")
        with pytest.raises(SignalRefused, match="child"):
            await engine.signal("parent", "p", "c")
        await engine.signal("gate", "p/c", "go")
        await finish(engine, "p")
        with pytest.raises(SignalRefused, match="child"):
            await engine.signal("parent", "p", "c")
    engine = memory_engine(storage, parent=changed, gate=Gate())
    async with engine:
        await engine.restart("p")
        with pytest.raises(WorkflowFailed, match="is a child in the journal"):
            await finish(engine, "p")


async def test_forget_then_restart_reads_the_existing_childs_outcome_again(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    calls: list[int] = []

    async def counted(ctx: Context) -> int:
        calls.append(ctx.input)
        return await double(ctx)

    async def parent(ctx: Context) -> Any:
        return [await ctx.child("kid", "counted", 1),
                await ctx.fan_out("fan", "counted", [2, 3])]

    engine = memory_engine(storage, parent=parent, counted=counted)
    async with engine:
        assert await finish(engine, await engine.invoke("parent", instance_id="p")) == [2, [4, 6]]
        await engine.forget("p", "*")
        await engine.restart("p")
        assert await finish(engine, "p") == [2, [4, 6]]
    assert sorted(calls) == [1, 2, 3]  # the children ran once; the parent read them again


async def test_a_journal_failing_under_a_child_fails_the_wait_on_its_parent(
    autojump_clock: MockClock,
) -> None:
    from memable_log import JournalFailed

    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        return await ctx.child("c", "gate", 1)

    engine = memory_engine(storage, parent=parent, gate=Gate())
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        await until_state(engine, "p/c", "suspended")
        await until_state(engine, "p", "waiting")
        await engine.signal("gate", "p/c", "go")  # the child runs again ...
        storage.fail("write")  # ... and its end cannot be written
        with pytest.raises(JournalFailed):
            await finish(engine, "p")
