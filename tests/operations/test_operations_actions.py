"""operations.invoke/cancel/restart/forget/steps/wait: appended with no engine,
handed over through the inbox with one running (the engine's own checks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from memable_log import (
    Context,
    Engine,
    EngineError,
    NotAJournal,
    UnknownInstance,
    WorkflowCancelled,
    WorkflowFailed,
    operations,
    read_journal,
)
from memable_log._storage.inbox import pending, rejection
from memable_log.operations import ActionRefused, Delivery
from memable_log.testing import wait_for_state

RUNS: list[str] = []
SECOND_RUN: list[trio.Event] = []  # set as counted runs for the second time


async def double(ctx: Context) -> int:
    return int(await ctx.step("double").run(lambda: 2 * ctx.input))


async def parked(ctx: Context) -> Any:
    await ctx.step("prep").run(lambda: "ready")
    return await ctx.suspend("go")


async def parent(ctx: Context) -> Any:
    await ctx.start_child("kid", "parked")
    return await ctx.wait_child("kid")


async def counted(ctx: Context) -> int:
    RUNS.append(ctx.instance_id)
    if len(RUNS) == 2 and SECOND_RUN:
        SECOND_RUN[0].set()
    return int(await ctx.step("s").run(lambda: len(RUNS)))


async def broken(ctx: Context) -> None:
    raise RuntimeError("broken on purpose")


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    for name, fn in [("double", double), ("parked", parked), ("parent", parent),
                     ("counted", counted), ("broken", broken)]:
        engine.register(name, fn)
    return engine


async def journal_with(path: Path, *invokes: tuple[str, str, Any]) -> None:
    """A journal holding these instances, run as far as they go; no engine left."""
    engine = make_engine(path)
    async with engine:
        for workflow, iid, value in invokes:
            await engine.invoke(workflow, value, instance_id=iid)
        for _, iid, _ in invokes:
            await wait_until_settled(engine, iid)


async def wait_until_settled(engine: Engine, iid: str) -> None:
    with trio.fail_after(10):
        await wait_for_state(engine, iid, "completed", "failed", "cancelled", "suspended",
                             "waiting")


def types(path: Path, iid: str) -> list[str]:
    return [rec.type for rec in read_journal(path) if rec.instance == iid]


async def off_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


# -- no engine: appended -------------------------------------------------------------


async def test_offline_invoke_is_appended_and_runs_at_the_next_start(journal_dir: Path) -> None:
    await journal_with(journal_dir, ("double", "seed", 1))
    got = operations.invoke(journal_dir, "double", 21, instance_id="x")
    assert (got.instance_id, got.delivery, got.handover) == ("x", Delivery.APPENDED, None)
    assert operations.status(journal_dir, "x").state == "running"
    again = operations.invoke(journal_dir, "double", 5, instance_id="x")
    assert again.delivery is None  # idempotent by id: nothing written
    assert types(journal_dir, "x") == ["created"]
    fresh = operations.invoke(journal_dir, "double", 1)
    assert len(fresh.instance_id) == 16
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("x") == 42
    assert operations.wait(journal_dir, "x") == 42


async def test_offline_cancel_cancels_descendants_and_tells_the_parent(
    journal_dir: Path,
) -> None:
    await journal_with(journal_dir, ("parent", "p", None), ("parked", "lone", None))
    assert operations.status(journal_dir, "p/kid").state == "suspended"
    assert operations.cancel(journal_dir, "p/kid") is Delivery.APPENDED
    assert operations.status(journal_dir, "p/kid").state == "cancelled"
    assert "child_ended" in types(journal_dir, "p")
    engine = make_engine(journal_dir)
    async with engine:
        with pytest.raises(WorkflowFailed, match="'p/kid' was cancelled"):
            await engine.wait("p")  # wait_child raised WorkflowCancelled in it
    # a parent cancelled takes its live child with it, in one batch
    await journal_with(journal_dir, ("parent", "q", None))
    assert operations.cancel(journal_dir, "q") is Delivery.APPENDED
    assert operations.status(journal_dir, "q/kid").state == "cancelled"
    assert operations.cancel(journal_dir, "q") is None  # finished: nothing to do
    with pytest.raises(UnknownInstance):
        operations.cancel(journal_dir, "nope")


async def test_offline_restart_and_forget(journal_dir: Path) -> None:
    RUNS.clear()
    await journal_with(journal_dir, ("counted", "c", None), ("parked", "w", None))
    assert operations.wait(journal_dir, "c") == 1
    with pytest.raises(EngineError, match="'w' is suspended; only a completed"):
        operations.restart(journal_dir, "w")
    assert operations.forget(journal_dir, "c", "s") is Delivery.APPENDED
    assert operations.restart(journal_dir, "c") is Delivery.APPENDED
    assert operations.status(journal_dir, "c").state == "running"
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("c") == 2  # the step ran again
    assert types(journal_dir, "c")[-4:] == ["forgot", "restarted", "step_done", "completed"]
    with pytest.raises(UnknownInstance):
        operations.forget(journal_dir, "nope", "s")


async def test_steps_and_status_read_like_the_engine(journal_dir: Path) -> None:
    await journal_with(journal_dir, ("parked", "w", None))
    engine = make_engine(journal_dir)
    async with engine:
        expected = engine.steps("w"), engine.status("w")
        assert operations.steps(journal_dir, "w") == expected[0]  # while it runs
        assert operations.status(journal_dir, "w") == expected[1]
    assert [s.key for s in operations.steps(journal_dir, "w")] == ["prep"]
    with pytest.raises(UnknownInstance):
        operations.steps(journal_dir, "nope")


@pytest.mark.parametrize("call", [
    lambda p: operations.invoke(p, "", None),
    lambda p: operations.invoke(p, "double", None, instance_id=""),
    lambda p: operations.cancel(p, 3),
    lambda p: operations.restart(p, ""),
    lambda p: operations.forget(p, "x", ""),
    lambda p: operations.forget(p, "x", None),
])
async def test_bad_arguments_are_type_errors_and_write_nothing(
    journal_dir: Path, call: Any
) -> None:
    await journal_with(journal_dir, ("double", "x", 1))
    before = os.listdir(journal_dir)
    with pytest.raises(TypeError):
        call(journal_dir)
    assert os.listdir(journal_dir) == before


@pytest.mark.parametrize("call", [
    lambda p: operations.invoke(p, "double", 1),
    lambda p: operations.cancel(p, "x"),
    lambda p: operations.restart(p, "x"),
    lambda p: operations.forget(p, "x", "k"),
    lambda p: operations.steps(p, "x"),
    lambda p: operations.wait(p, "x"),
])
def test_a_path_that_is_not_a_journal_is_refused(tmp_path: Path, call: Any) -> None:
    with pytest.raises(NotAJournal):
        call(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# -- an engine running: handed over ---------------------------------------------------


async def test_actions_are_handed_over_and_applied_by_the_engine(journal_dir: Path) -> None:
    RUNS.clear()
    SECOND_RUN[:] = [trio.Event()]
    await journal_with(journal_dir, ("counted", "c", None), ("parked", "w", None))
    engine = make_engine(journal_dir)
    async with engine:
        got = await off_thread(operations.invoke, journal_dir, "double", 4, instance_id="n")
        assert got.delivery is Delivery.HANDED_OVER
        assert got.handover is not None
        assert got.handover.endswith(".act")
        # the invoke waits in the inbox; wait follows it until the instance ends
        assert await off_thread(operations.wait, journal_dir, "n", handover=got.handover) == 8
        assert await engine.wait("n") == 8
        assert await off_thread(operations.cancel, journal_dir, "w") is Delivery.HANDED_OVER
        with pytest.raises(WorkflowCancelled):
            await off_thread(operations.wait, journal_dir, "w", timeout=10)
        assert await off_thread(operations.forget, journal_dir, "c", "s") is Delivery.HANDED_OVER
        with pytest.raises(EngineError, match="already handed over"):
            operations.restart(journal_dir, "c")  # the forget waits: the engine cannot run
    engine = make_engine(journal_dir)
    async with engine:  # hand-overs left are applied before the start returns
        assert pending(str(journal_dir)) == []
        assert await off_thread(operations.restart, journal_dir, "c") is Delivery.HANDED_OVER
        with trio.fail_after(10):
            await SECOND_RUN[0].wait()
        assert await engine.wait("c") == 2
        # checked before handing over: nothing written
        with pytest.raises(UnknownInstance):
            await off_thread(operations.cancel, journal_dir, "nope")
        assert await off_thread(operations.cancel, journal_dir, "c") is None
    assert pending(str(journal_dir)) == []


async def test_an_unknown_workflow_is_refused_by_the_engine_and_wait_says_why(
    journal_dir: Path,
) -> None:
    await journal_with(journal_dir, ("double", "seed", 1))
    engine = make_engine(journal_dir)
    async with engine:
        got = await off_thread(operations.invoke, journal_dir, "nosuch", None, instance_id="z")
        assert got.delivery is Delivery.HANDED_OVER
        with pytest.raises(ActionRefused, match="unknown workflow 'nosuch'") as caught:
            await off_thread(operations.wait, journal_dir, "z", handover=got.handover,
                             timeout=10)
        assert caught.value.handover == got.handover
        assert got.handover is not None
        assert "unknown workflow" in (rejection(str(journal_dir), got.handover) or "")
        with pytest.raises(UnknownInstance):
            engine.status("z")


async def test_a_restart_applied_twice_runs_once(journal_dir: Path) -> None:
    """The engine applied a restart and died before deleting the hand-over:
    the next start finds it applied (handover_applied) and only deletes it."""
    RUNS.clear()
    SECOND_RUN[:] = [trio.Event()]
    await journal_with(journal_dir, ("counted", "c", None))
    engine = make_engine(journal_dir)
    async with engine:
        operations.restart(journal_dir, "c")  # on this thread: the engine cannot take it yet
        name = pending(str(journal_dir))[0]
        data = (journal_dir / "inbox" / name).read_bytes()
        with trio.fail_after(10):
            await SECOND_RUN[0].wait()
        assert await engine.wait("c") == 1  # its step is memoised
    (journal_dir / "inbox" / name).write_bytes(data)  # as if never deleted
    engine = make_engine(journal_dir)
    async with engine:
        assert engine.status("c").state == "completed"
    assert types(journal_dir, "c").count("restarted") == 1
    assert rejection(str(journal_dir), name) is None
    assert pending(str(journal_dir)) == []
    assert RUNS == ["c", "c"]


async def test_a_second_restart_waiting_in_the_inbox_is_refused(journal_dir: Path) -> None:
    await journal_with(journal_dir, ("double", "x", 1))
    engine = make_engine(journal_dir)
    async with engine:
        # the watcher must not take the first before the second is refused:
        # hand both over before the engine's thread gets to run
        first = operations.restart(journal_dir, "x")
        with pytest.raises(EngineError, match="already handed over"):
            operations.restart(journal_dir, "x")
        assert first is Delivery.HANDED_OVER


async def test_wait_reports_failure_and_timeout(journal_dir: Path) -> None:
    await journal_with(journal_dir, ("broken", "b", None), ("parked", "w", None))
    with pytest.raises(WorkflowFailed, match="broken on purpose"):
        operations.wait(journal_dir, "b")
    with pytest.raises(TimeoutError, match=r"'w' did not finish within 0\.05s"):
        operations.wait(journal_dir, "w", timeout=0.05)
    with pytest.raises(UnknownInstance):
        operations.wait(journal_dir, "nope")
