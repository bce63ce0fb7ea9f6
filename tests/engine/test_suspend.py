"""ctx.suspend: wait for a signal with nothing in memory, across restarts.

The approval workflow of the article runs end to end across a real process
restart: a child process invokes it and exits once it is suspended; this
process opens the same journal, sees the suspension in ``status()``, signals
it, and the workflow finishes without fetching the data again (an fsynced
ledger file says what ran).

The rest run on the in-memory engine, most under trio's MockClock (the
``autojump_clock`` fixture) with a ManualClock, so a days-long timeout takes
no real time and downtime between engine lifetimes is simulated.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.suspend import (
    APPROVAL_KEY,
    APPROVAL_STATUS,
    DAY,
    approval,
    finish,
    ledger_lines,
    limit_writes,
    memory_engine,
    types_of,
    until,
    until_state,
    written,
)

from memable_log import (
    Context,
    DuplicateStepKey,
    Engine,
    EngineError,
    ManualClock,
    MemoryStorage,
    SignalAlreadyDelivered,
    SuspendTimedOut,
    WorkflowCancelled,
    WorkflowFailed,
)

CHILD = Path(__file__).resolve().parent.parent / "support" / "children" / "approval_child.py"
START = 1_700_000_000.0  # the ManualClock's wall time at the first start


# -- the article's approval workflow, across a process restart --------------


async def run_child_until_suspended(journal: Path, ledger: Path, instance_id: str) -> Any:
    args = [sys.executable, str(CHILD), str(journal), str(ledger), instance_id]
    with trio.fail_after(60):
        done = await trio.run_process(args, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


async def test_approval_survives_a_process_restart_between_suspend_and_signal(
    tmp_path: Path,
) -> None:
    journal, ledger = tmp_path / "journal.memable", tmp_path / "ledger.txt"
    seen = await run_child_until_suspended(journal, ledger, "order-42")
    assert seen == {"state": "suspended", "key": APPROVAL_KEY, "status": APPROVAL_STATUS}
    assert ledger_lines(ledger) == ["fetch-data"]

    engine = Engine.builder().open(journal).build()
    engine.register("approval", approval(ledger))
    async with engine:
        status = engine.status("order-42")
        assert (status.state, status.key, status.status) == (
            "suspended", APPROVAL_KEY, APPROVAL_STATUS
        )
        assert status.deadline is None  # no timeout
        assert status.steps == 1
        assert [s.instance_id for s in engine.instances("suspended")] == ["order-42"]
        # Nothing of the workflow runs in this process until the signal.
        assert not engine._host.running
        await engine.signal("approval", "order-42", APPROVAL_KEY, True)
        with trio.fail_after(30):
            result = await finish(engine, "order-42")
        assert result == {"approved": True, "receipt": "order 42 paid"}
        after = engine.status("order-42")
        # The status text stays the latest recorded (SPEC-NEXT §3), in any state.
        assert (after.state, after.key, after.steps) == ("completed", None, 2)
        assert after.status == status.status
    assert ledger_lines(ledger) == ["fetch-data", "process"]


async def test_approval_rejected_takes_the_other_branch() -> None:
    ledger: list[str] = []

    async def approval_in_memory(ctx: Context) -> Any:
        await ctx.step("fetch-data").run(ledger.append, "fetch-data")
        if not await ctx.suspend(APPROVAL_KEY, status=APPROVAL_STATUS):
            return "rejected"
        await ctx.step("process").run(ledger.append, "process")
        return "processed"

    engine = memory_engine(approval=approval_in_memory)
    async with engine:
        iid = await engine.invoke("approval")
        await until_state(engine, iid, "suspended")
        await engine.signal("approval", iid, APPROVAL_KEY, False)
        assert await finish(engine, iid) == "rejected"
    assert ledger == ["fetch-data"]


async def test_suspended_instance_resumes_in_a_later_engine_lifetime() -> None:
    storage = MemoryStorage()
    ledger: list[str] = []

    async def wf(ctx: Context) -> Any:
        await ctx.step("before").run(ledger.append, "before")
        payload = await ctx.suspend("go")
        await ctx.step("after").run(ledger.append, "after")
        return payload

    engine = memory_engine(storage, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    engine = memory_engine(storage, wf=wf)
    async with engine:
        assert engine.status(iid).state == "suspended"
        assert not engine._host.running  # a suspended instance is not resumed at start
        await engine.signal("wf", iid, "go", {"n": [1, 2]})
        assert await finish(engine, iid) == {"n": [1, 2]}
    assert ledger == ["before", "after"]


async def test_signalled_but_not_yet_run_instance_resumes_at_start() -> None:
    storage = MemoryStorage()
    hold = trio.Event()  # never set: the first lifetime stops inside "after"

    async def blocked(ctx: Context) -> Any:
        payload = await ctx.suspend("go")
        await ctx.step("after").run(hold.wait)
        return payload

    async def free(ctx: Context) -> Any:
        payload = await ctx.suspend("go")
        await ctx.step("after").run(lambda: None)
        return payload

    engine = memory_engine(storage, wf=blocked)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "go", "yes")
        assert engine.status(iid).state == "running"
    engine = memory_engine(storage, wf=free)
    async with engine:
        assert engine.status(iid).state == "running"
        with trio.fail_after(10):
            assert await finish(engine, iid) == "yes"


# -- status -----------------------------------------------------------------


async def test_status_of_a_suspension_with_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.step("a").run(lambda: 1)
        await ctx.step("b").run(lambda: 2)
        return await ctx.suspend("review:v1", status="Waiting for review", timeout=3600)

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        status = engine.status(iid)
        assert status.state == "suspended"
        assert status.status == "Waiting for review"
        assert status.key == "review:v1"
        assert status.deadline == datetime.fromtimestamp(START + 3600, tz=UTC)
        assert status.deadline.tzinfo is UTC
        assert status.steps == 2
        assert status.error is None
        assert engine.instances("suspended") == [status]
        assert engine.instances("sleeping") == []
        assert engine.instances("running") == []
        await engine.signal("wf", iid, "review:v1", "ok")
        assert await finish(engine, iid) == "ok"
        done = engine.status(iid)
        assert (done.state, done.status, done.key, done.deadline) == (
            "completed", status.status, None, None  # the latest text stays
        )
        assert engine.instances("suspended") == []


# -- timeouts ---------------------------------------------------------------


def escalating(ledger: list[str], timeout: float | timedelta) -> Any:
    async def wf(ctx: Context) -> Any:
        try:
            answer = await ctx.suspend("approval:v1", status="waiting", timeout=timeout)
        except SuspendTimedOut as exc:
            right = (exc.instance_id, exc.key) == (ctx.instance_id, "approval:v1")
            ledger.append("timed out" if right else f"wrong error {exc!r}")
            await ctx.step("escalate").run(ledger.append, "escalate")
            return "escalated"
        return f"answered {answer}"

    return wf


async def test_three_day_timeout_takes_no_real_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=escalating(ledger, 3 * DAY))
    real = time.monotonic()
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == "escalated"
        assert trio.current_time() - began == pytest.approx(3 * DAY, abs=1.0)
    assert time.monotonic() - real < 10
    assert ledger == ["timed out", "escalate"]


async def test_timeout_as_a_timedelta(autojump_clock: trio.testing.MockClock) -> None:
    engine = memory_engine(
        clock=ManualClock(START), wf=escalating([], timedelta(hours=5, minutes=30))
    )
    async with engine:
        began = trio.current_time()
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        deadline = engine.status(iid).deadline
        assert deadline == datetime.fromtimestamp(START + 5.5 * 3600, tz=UTC)
        assert await finish(engine, iid) == "escalated"
        assert trio.current_time() - began == pytest.approx(5.5 * 3600, abs=1.0)


async def test_signal_before_the_timeout_wins(autojump_clock: trio.testing.MockClock) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=escalating(ledger, DAY))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await trio.sleep(DAY / 2)
        await engine.signal("wf", iid, "approval:v1", "yes")
        assert await finish(engine, iid) == "answered yes"
        # The stale deadline passes later and changes nothing.
        before = written(engine)
        await trio.sleep(DAY)
        assert written(engine) == before
        assert engine.status(iid).state == "completed"
    assert ledger == []


async def test_timed_out_branch_is_memoised_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    ledger: list[str] = []
    engine = memory_engine(storage, clock, wf=escalating(ledger, 60))
    async with engine:
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == "escalated"
        await engine.restart(iid)
        assert await finish(engine, iid) == "escalated"
    assert ledger == ["timed out", "escalate", "timed out"]  # escalate ran once
    # A new lifetime, a later clock: the branch is still the timed-out one,
    # at once (no new wait), and a late signal is refused.
    clock.advance(DAY)
    engine = memory_engine(storage, clock, wf=escalating(ledger, 60))
    async with engine:
        with pytest.raises(SignalAlreadyDelivered, match="timed out"):
            await engine.signal("wf", iid, "approval:v1", "late")
        began = trio.current_time()
        await engine.restart(iid)
        assert await finish(engine, iid) == "escalated"
        assert trio.current_time() == began
    assert ledger == ["timed out", "escalate", "timed out", "timed out"]
    assert types_of(storage, iid).count("suspend_timed_out") == 1


async def test_uncaught_timeout_fails_the_workflow(autojump_clock: trio.testing.MockClock) -> None:
    async def wf(ctx: Context) -> Any:
        return await ctx.suspend("k", timeout=10)

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed, match="SuspendTimedOut"):
            await finish(engine, iid)
        error = engine.status(iid).error
        assert error is not None
        assert error.type == "SuspendTimedOut"


async def test_timeout_expired_while_the_engine_was_down_fires_at_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    ledger: list[str] = []
    engine = memory_engine(storage, clock, wf=escalating(ledger, 3600))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    clock.advance(2 * 3600)
    engine = memory_engine(storage, clock, wf=escalating(ledger, 3600))
    async with engine:
        began = trio.current_time()
        assert await finish(engine, iid) == "escalated"
        assert trio.current_time() == began
    assert ledger == ["timed out", "escalate"]


async def test_timeout_keeps_running_across_an_engine_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    engine = memory_engine(storage, clock, wf=escalating([], 3600))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        deadline = engine.status(iid).deadline
    clock.advance(1000)
    engine = memory_engine(storage, clock, wf=escalating([], 3600))
    async with engine:
        assert engine.status(iid).deadline == deadline
        began = trio.current_time()
        assert await finish(engine, iid) == "escalated"
        assert trio.current_time() - began == pytest.approx(2600, abs=1.0)


async def test_bumped_suspend_key_after_a_timeout_does_not_spin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: a suspension woken by its deadline re-ran while still
    # marked suspended on the old key; the new key's suspension changed
    # nothing, the passed deadline was armed again, and the poller woke the
    # instance over and over. Now the wake records the timeout first.
    storage, clock = MemoryStorage(), ManualClock(START)

    async def v1(ctx: Context) -> Any:
        return await ctx.suspend("approval:v1", timeout=60)

    async def v2(ctx: Context) -> Any:
        return await ctx.suspend("approval:v2", status="v2 waiting")

    engine = memory_engine(storage, clock, wf=v1)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    clock.advance(120)
    engine = memory_engine(storage, clock, wf=v2)
    async with engine:
        limit_writes(engine, 50)
        with trio.fail_after(DAY):
            await until(engine, iid, lambda s: s.key == "approval:v2")
        assert engine.status(iid).status == "v2 waiting"
        assert engine.status(iid).deadline is None
        before = written(engine)
        await trio.sleep(DAY)
        assert written(engine) == before  # nothing wakes it again
        await engine.signal("wf", iid, "approval:v2", "ok")
        assert await finish(engine, iid) == "ok"
    assert types_of(storage, iid) == [
        "created", "suspended", "parked", "suspend_timed_out", "suspended", "parked",
        "signalled", "completed",
    ]


# -- what suspension is not -------------------------------------------------


async def test_except_exception_cannot_swallow_a_suspension() -> None:
    swallowed: list[BaseException] = []

    async def wf(ctx: Context) -> Any:
        try:
            return await ctx.suspend("k")
        except Exception as exc:  # must not see the unwinding
            swallowed.append(exc)
            return "swallowed"

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "k", 5)
        assert await finish(engine, iid) == 5
    assert swallowed == []


async def test_suspend_inside_a_nursery_suspends_the_instance() -> None:
    ran: list[str] = []

    async def wf(ctx: Context) -> Any:
        answers: dict[str, Any] = {}

        async def branch(key: str) -> None:
            answers[key] = await ctx.suspend(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.step("side").run, ran.append, "side")
            nursery.start_soon(branch, "a")
        return answers

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        assert engine.status(iid).key == "a"
        assert not engine._host.running
        await engine.signal("wf", iid, "a", 1)
        assert await finish(engine, iid) == {"a": 1}
    assert ran == ["side"]


async def test_suspend_key_shares_the_step_key_space() -> None:
    async def wf(ctx: Context) -> Any:
        await ctx.step("k").run(lambda: 1)
        return await ctx.suspend("k")

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed, match="DuplicateStepKey"):
            await finish(engine, iid)
        assert issubclass(DuplicateStepKey, EngineError)


async def test_suspend_rejects_bad_arguments_and_writes_nothing() -> None:
    errors: list[str] = []

    async def wf(ctx: Context) -> Any:
        for kwargs in ({"timeout": -1}, {"timeout": float("nan")}, {"status": 5}):
            try:
                await ctx.suspend(f"k{len(errors)}", **kwargs)
            except (TypeError, ValueError) as exc:
                errors.append(type(exc).__name__)
        return errors

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == ["ValueError", "ValueError", "TypeError"]
    assert "suspended" not in types_of(engine._backend.make_storage(), iid)


# -- cancel and restart -----------------------------------------------------


async def test_cancel_a_suspended_instance(autojump_clock: trio.testing.MockClock) -> None:
    ledger: list[str] = []
    engine = memory_engine(clock=ManualClock(START), wf=escalating(ledger, 3600))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.cancel(iid)
        status = engine.status(iid)
        assert (status.state, status.key, status.deadline) == ("cancelled", None, None)
        assert status.status is not None  # the latest text stays (SPEC-NEXT §3)
        with pytest.raises(WorkflowCancelled):
            await finish(engine, iid)
        # Its timeout passes and nothing runs; cancelling again changes nothing.
        before = written(engine)
        await trio.sleep(2 * 3600)
        await engine.cancel(iid)
        assert written(engine) == before
        assert not engine._host.running
    assert ledger == []


async def test_restart_after_cancel_suspends_again_and_takes_a_signal() -> None:
    async def wf(ctx: Context) -> Any:
        return await ctx.suspend("k", status="again")

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        with pytest.raises(EngineError, match="suspended"):
            await engine.restart(iid)
        await engine.cancel(iid)
        await engine.restart(iid)
        await until_state(engine, iid, "suspended")
        assert engine.status(iid).status == "again"
        await engine.signal("wf", iid, "k", "late")
        assert await finish(engine, iid) == "late"


async def test_restart_after_a_signal_returns_the_same_payload() -> None:
    ran: list[str] = []

    async def wf(ctx: Context) -> Any:
        payload = await ctx.suspend("k")
        await ctx.step("use").run(ran.append, payload)
        return payload

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "k", "first")
        assert await finish(engine, iid) == "first"
        await engine.restart(iid)
        assert await finish(engine, iid) == "first"
        with pytest.raises(SignalAlreadyDelivered):
            await engine.signal("wf", iid, "k", "second")
    assert ran == ["first"]

