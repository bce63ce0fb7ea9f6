"""Crashes: a real process killed with SIGKILL mid-step, power cuts, engine stops.

The SIGKILL tests run tests/children/ledger_child.py, an engine on a journal
directory whose five steps each append a line to an fsynced ledger file
before doing their work. The child says on stdout when it is blocked inside
step k; the parent kills it there and runs it again. The ledger then shows
what actually executed: steps before k once, step k again, nothing twice
that finished.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.engine import KINDS, Calls, Gate, Home, of_type, wait

from memable_log import (
    Context,
    Engine,
    MemoryStorage,
    StepInterrupted,
    WorkflowFailed,
)

CHILD = Path(__file__).resolve().parent.parent / "support" / "children" / "ledger_child.py"


def child_args(journal: Path, ledger: Path, *extra: str) -> list[str]:
    return [sys.executable, str(CHILD), str(journal), str(ledger), *extra]


async def run_until_killed(args: list[str], expect: str) -> None:
    """Start the child, wait for its line ``expect`` on stdout, SIGKILL it."""
    proc = await trio.lowlevel.open_process(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        seen = b""
        with trio.fail_after(30):
            while b"\n" not in seen:
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    err = await proc.stderr.receive_some()
                    pytest.fail(f"child exited before blocking: {seen!r} {err!r}")
                seen += chunk
        assert seen.decode().strip() == expect
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
        await proc.stderr.aclose()


async def run_to_end(args: list[str]) -> dict[str, Any]:
    """Run the child to completion and return the JSON line it prints."""
    with trio.fail_after(30):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    outcome: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return outcome


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines()


async def test_sigkill_inside_a_step_reruns_only_that_step(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "journal.memable", tmp_path / "ledger.txt"
    await run_until_killed(child_args(journal, ledger, "--block-at", "3"), "inside step-3")
    assert ledger_lines(ledger) == ["step-1", "step-2", "step-3"]

    outcome = await run_to_end(child_args(journal, ledger))
    assert outcome == {"result": [10, 20, 30, 40, 50]}
    # Steps 1 and 2 finished before the kill: never again. Step 3 was
    # running: it executes again (at least once). 4 and 5 once.
    assert ledger_lines(ledger) == ["step-1", "step-2", "step-3", "step-3", "step-4", "step-5"]

    # A third start finds the instance completed and executes nothing.
    assert await run_to_end(child_args(journal, ledger)) == outcome
    assert len(ledger_lines(ledger)) == 6


async def test_sigkill_inside_an_at_most_once_step_is_not_rerun(tmp_path: Path) -> None:
    journal, ledger = tmp_path / "journal.memable", tmp_path / "ledger.txt"
    await run_until_killed(
        child_args(journal, ledger, "--block-at", "2", "--at-most-once", "2"), "inside step-2"
    )
    assert ledger_lines(ledger) == ["step-1", "step-2"]

    outcome = await run_to_end(child_args(journal, ledger, "--at-most-once", "2"))
    assert outcome["failed"] == "StepInterrupted"
    assert "step-2" in outcome["message"]
    assert ledger_lines(ledger) == ["step-1", "step-2"]  # not called again

    # After checking the side effect by hand: forget the marker, run once more.
    outcome = await run_to_end(
        child_args(journal, ledger, "--at-most-once", "2", "--forget", "step-2", "--restart")
    )
    assert outcome == {"result": [10, 20, 30, 40, 50]}
    assert ledger_lines(ledger) == ["step-1", "step-2", "step-2", "step-3", "step-4", "step-5"]


# -- in-process crashes --------------------------------------------------------


def at_most_once_workflow(calls: Calls, gate: Gate | None) -> Any:
    async def charge(ctx: Context) -> Any:
        await ctx.step("reserve").run(calls.fn("reserve"))

        async def charge_card() -> str:
            calls.counts["charge"] += 1
            if gate is not None:
                await gate()
            return "charged"

        try:
            charged = await ctx.step("charge").at_most_once().run(charge_card)
        except StepInterrupted as exc:
            return f"interrupted:{exc.key}"
        return charged

    return charge


@pytest.mark.parametrize("kind", KINDS)
async def test_at_most_once_step_interrupted_by_engine_stop(kind: str, tmp_path: Path) -> None:
    home = Home(kind, tmp_path)
    calls, gate = Calls(), Gate()
    engine = home.engine({"charge": at_most_once_workflow(calls, gate)})
    async with engine:
        instance_id = await engine.invoke("charge")
        with trio.fail_after(10):
            await gate.entered.wait()
        # The start marker is durable before fn runs.
        assert len(of_type(home.records(), "step_started", "charge")) == 1
    assert calls.counts == {"reserve": 1, "charge": 1}

    engine = home.engine({"charge": at_most_once_workflow(calls, None)})
    async with engine:
        assert await wait(engine, instance_id) == "interrupted:charge"
        assert calls.counts == {"reserve": 1, "charge": 1}  # fn not called again
        # A replay takes the same branch.
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == "interrupted:charge"
        assert calls.counts == {"reserve": 1, "charge": 1}
        # forget allows exactly one more run, which is then memoised.
        await engine.forget(instance_id, "charge")
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == "charged"
        await engine.restart(instance_id)
        assert await wait(engine, instance_id) == "charged"
    assert calls.counts == {"reserve": 1, "charge": 2}


async def test_at_most_once_step_interrupted_by_power_cut() -> None:
    storage = MemoryStorage()
    calls, gate = Calls(), Gate()
    engine = Engine.builder().in_memory(storage).build()
    engine.register("charge", at_most_once_workflow(calls, gate))
    async with engine:
        instance_id = await engine.invoke("charge")
        with trio.fail_after(10):
            await gate.entered.wait()
        after_cut = storage.crash()  # power goes out while the card is charged
    assert calls.counts == {"reserve": 1, "charge": 1}

    engine = Engine.builder().in_memory(after_cut).build()
    engine.register("charge", at_most_once_workflow(calls, None))
    async with engine:
        assert await wait(engine, instance_id) == "interrupted:charge"
    assert calls.counts == {"reserve": 1, "charge": 1}


async def test_uncaught_step_interrupted_fails_the_workflow() -> None:
    storage = MemoryStorage()
    gate = Gate()
    calls = Calls()

    async def workflow(ctx: Context) -> Any:
        return await ctx.step("pay").at_most_once().run(gate, "paid")

    engine = Engine.builder().in_memory(storage).build()
    engine.register("pay", workflow)
    async with engine:
        instance_id = await engine.invoke("pay")
        with trio.fail_after(10):
            await gate.entered.wait()

    async def replay(ctx: Context) -> Any:
        return await ctx.step("pay").at_most_once().run(calls.fn("pay"))

    engine = Engine.builder().in_memory(storage).build()
    engine.register("pay", replay)
    async with engine:
        with pytest.raises(WorkflowFailed) as info:
            await wait(engine, instance_id)
    assert info.value.error_type == "StepInterrupted"
    assert "'pay'" in str(info.value)
    assert calls.counts == {}


async def test_power_cut_keeps_every_step_that_returned() -> None:
    storage = MemoryStorage()
    calls, gate = Calls(), Gate()

    def workflow(block: bool) -> Any:
        async def pipeline(ctx: Context) -> Any:
            a = await ctx.step("a").run(calls.fn("a", 1))
            b = await ctx.step("b").run(calls.fn("b", 2))
            if block:
                await ctx.step("c").run(gate)
            c = await ctx.step("c").run(calls.fn("c", 3))
            return [a, b, c]

        return pipeline

    engine = Engine.builder().in_memory(storage).build()
    engine.register("p", workflow(block=True))
    async with engine:
        instance_id = await engine.invoke("p")
        with trio.fail_after(10):
            await gate.entered.wait()
        after_cut = storage.crash()
    assert calls.counts == {"a": 1, "b": 1}

    engine = Engine.builder().in_memory(after_cut).build()
    engine.register("p", workflow(block=False))
    async with engine:
        assert await wait(engine, instance_id) == [1, 2, 3]
    assert calls.counts == {"a": 1, "b": 1, "c": 1}


# -- recovery at start -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_instances_running_at_exit_resume_at_next_start(kind: str, tmp_path: Path) -> None:
    home = Home(kind, tmp_path)
    calls = Calls()
    gates = {i: Gate() for i in range(3)}

    def workflow(blocking: bool) -> Any:
        async def job(ctx: Context) -> Any:
            n = ctx.input
            first = await ctx.step("first").run(calls.fn(f"first-{n}", n))
            if blocking:
                await gates[n]()
            second = await ctx.step("second").run(calls.fn(f"second-{n}", n * 100))
            return first + second

        return job

    engine = home.engine({"job": workflow(blocking=True)})
    async with engine:
        ids = [await engine.invoke("job", i) for i in range(3)]
        with trio.fail_after(10):
            for gate in gates.values():
                await gate.entered.wait()
        assert [s.state for s in engine.instances()] == ["running"] * 3
    assert sum(calls.counts.values()) == 3

    engine = home.engine({"job": workflow(blocking=False)})
    async with engine:
        assert [await wait(engine, i) for i in ids] == [0, 101, 202]
    assert calls.counts == {
        "first-0": 1, "first-1": 1, "first-2": 1, "second-0": 1, "second-1": 1, "second-2": 1,
    }


async def test_instances_of_an_unregistered_workflow_wait_for_it(tmp_path: Path) -> None:
    home = Home("disk", tmp_path)
    calls, gate = Calls(), Gate()

    async def blocked(ctx: Context) -> Any:
        await ctx.step("one").run(calls.fn("one", 1))
        return await ctx.step("two").run(gate)

    engine = home.engine({"late": blocked})
    async with engine:
        instance_id = await engine.invoke("late")
        with trio.fail_after(10):
            await gate.entered.wait()

    async def fixed(ctx: Context) -> Any:
        one = await ctx.step("one").run(calls.fn("one", -1))
        two = await ctx.step("two").run(calls.fn("two", 2))
        return one + two

    engine = home.engine({})  # "late" is not registered at start
    async with engine:
        assert engine.status(instance_id).state == "running"
        await trio.testing.wait_all_tasks_blocked()
        assert engine.status(instance_id).state == "running"  # kept, not failed
        assert calls.counts == {"one": 1}
        engine.register("late", fixed)
        assert await wait(engine, instance_id) == 3
    assert calls.counts == {"one": 1, "two": 1}
    assert len(of_type(home.records(), "completed")) == 1
