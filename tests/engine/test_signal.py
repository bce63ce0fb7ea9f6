"""engine.signal: deliver a payload to a suspension, once, durably.

A signal may come before its suspension is reached (kept, consumed when
reached: the instance never suspends), after it (wakes it), or never. A key
takes one signal; a second one, a signal after the suspension timed out, an
unknown instance or a workflow name that does not match are refused, and a
refused signal writes nothing: the tests compare the journal's record count
and next sequence number before and after.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from support.suspend import finish, memory_engine, records_of, types_of, until_state, written

from memable_log import (
    Context,
    EngineError,
    ManualClock,
    MemoryStorage,
    SignalAlreadyDelivered,
    SuspendTimedOut,
    UnknownInstance,
)
from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r

START = 1_700_000_000.0


async def waits_for(ctx: Context) -> Any:
    """Suspend on the key given as input; return its payload."""
    return await ctx.suspend(ctx.input, status=f"waiting for {ctx.input}")


# -- early signals -----------------------------------------------------------


async def test_early_signal_is_kept_and_consumed_without_suspending() -> None:
    gate, reached = trio.Event(), trio.Event()

    async def wf(ctx: Context) -> Any:
        async def held() -> str:
            reached.set()
            await gate.wait()
            return "data"

        data = await ctx.step("fetch").run(held)
        answer = await ctx.suspend("approval", status="never shown")
        return [data, answer]

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await reached.wait()
        await engine.signal("wf", iid, "approval", {"ok": True})
        assert engine.status(iid).state == "running"
        gate.set()
        assert await finish(engine, iid) == ["data", {"ok": True}]
        storage = engine._backend.make_storage()
        assert types_of(storage, iid) == ["created", "signalled", "step_done", "completed"]


async def test_early_signal_for_a_later_key_keeps_the_current_suspension() -> None:
    async def wf(ctx: Context) -> Any:
        first = await ctx.suspend("first", status="one")
        second = await ctx.suspend("second", status="two")
        return [first, second]

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "second", 2)
        status = engine.status(iid)
        assert (status.state, status.key, status.status) == ("suspended", "first", "one")
        assert not engine._host.running  # the early signal woke nothing
        await engine.signal("wf", iid, "first", 1)
        assert await finish(engine, iid) == [1, 2]
        assert types_of(engine._backend.make_storage(), iid).count("suspended") == 1


async def test_early_signal_is_kept_across_an_engine_restart() -> None:
    storage, gate = MemoryStorage(), trio.Event()

    async def blocked(ctx: Context) -> Any:
        await ctx.step("wait").run(gate.wait)  # never released in this lifetime
        return await ctx.suspend("k")

    async def free(ctx: Context) -> Any:
        await ctx.step("wait").run(lambda: None)
        return await ctx.suspend("k")

    engine = memory_engine(storage, wf=blocked)
    async with engine:
        iid = await engine.invoke("wf")
        await engine.signal("wf", iid, "k", "kept")
    engine = memory_engine(storage, wf=free)
    async with engine:
        with trio.fail_after(10):
            assert await finish(engine, iid) == "kept"
    assert "suspended" not in types_of(storage, iid)


async def test_signal_racing_the_suspension_record_is_never_lost() -> None:
    # The signal and the suspension are appended in the same scheduler
    # batch, in either order (trio randomises it). Signal first: the index
    # ignores the later suspension and the runner runs the workflow again.
    # Keep going until both orders have happened.
    gates: dict[str, trio.Event] = {}

    async def wf(ctx: Context) -> Any:
        await gates[ctx.instance_id].wait()
        return await ctx.suspend("k")

    orders: set[tuple[str, ...]] = set()
    engine = memory_engine(wf=wf)
    async with engine:
        for n in range(200):
            iid = f"race-{n}"
            gates[iid] = trio.Event()
            await engine.invoke("wf", instance_id=iid)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.signal, "wf", iid, "k", n)
                gates[iid].set()
            with trio.fail_after(10):
                assert await finish(engine, iid) == n
            kinds = types_of(engine._backend.make_storage(), iid)
            orders.add(tuple(k for k in kinds if k in ("suspended", "signalled")))
            if len(orders) == 2:
                break
    assert orders == {("suspended", "signalled"), ("signalled", "suspended")}


def test_index_ignores_a_suspension_whose_signal_came_first() -> None:
    index = ix.Index()
    index.apply([r.CREATED, 1, 0, "i", "wf", b"\xc0"], 1)
    index.apply([r.SIGNALLED, 2, 0, "i", "k", b"\x01"], 2)
    index.apply([r.SUSPENDED, 3, 0, "i", "k", "text", None], 3)
    index.apply([r.PARKED, 4, 0, "i", ["k"]], 4)
    entry = index.instances["i"]
    assert (entry.state, entry.pending, entry.status) == (lc.RUNNING, None, None)


# -- refusals write nothing --------------------------------------------------


async def test_duplicate_signal_is_refused_and_writes_nothing() -> None:
    engine = memory_engine(wf=waits_for)
    async with engine:
        iid = await engine.invoke("wf", "k")
        await until_state(engine, iid, "suspended")
        await engine.signal("wf", iid, "k", "first")
        before = written(engine)
        with pytest.raises(SignalAlreadyDelivered, match="already has a signal") as info:
            await engine.signal("wf", iid, "k", "second")
        assert (info.value.instance_id, info.value.key) == (iid, "k")
        assert isinstance(info.value, EngineError)
        assert written(engine) == before
        assert await finish(engine, iid) == "first"
        # Still refused once the instance has finished.
        with pytest.raises(SignalAlreadyDelivered):
            await engine.signal("wf", iid, "k", "third")
        assert written(engine)[1] == before[1] + 1  # only the completion was written


async def test_duplicate_early_signal_is_refused() -> None:
    gate = trio.Event()

    async def wf(ctx: Context) -> Any:
        await ctx.step("hold").run(gate.wait)
        return await ctx.suspend("k")

    engine = memory_engine(wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await engine.signal("wf", iid, "k", 1)
        before = written(engine)
        with pytest.raises(SignalAlreadyDelivered):
            await engine.signal("wf", iid, "k", 2)
        assert written(engine) == before
        gate.set()
        assert await finish(engine, iid) == 1


async def test_signal_after_the_suspension_timed_out_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def wf(ctx: Context) -> Any:
        try:
            return await ctx.suspend("k", timeout=60)
        except SuspendTimedOut:
            return "timed out"

    engine = memory_engine(clock=ManualClock(START), wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == "timed out"
        before = written(engine)
        with pytest.raises(SignalAlreadyDelivered, match="timed out"):
            await engine.signal("wf", iid, "k", "late")
        assert written(engine) == before
        assert "signalled" not in types_of(engine._backend.make_storage(), iid)


async def test_signal_past_the_deadline_is_refused_before_the_poller_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The engine stops while suspended; its timeout passes during the
    # downtime. Right after the next start, before the poller has run, the
    # suspension is already past its deadline: the signal is refused, and
    # the workflow then times out.
    storage, clock = MemoryStorage(), ManualClock(START)

    async def wf(ctx: Context) -> Any:
        try:
            return await ctx.suspend("k", timeout=60)
        except SuspendTimedOut:
            return "timed out"

    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
    clock.advance(61)
    engine = memory_engine(storage, clock, wf=wf)
    async with engine:
        assert engine.status(iid).state == "suspended"
        before = written(engine)
        with pytest.raises(SignalAlreadyDelivered, match="timed out"):
            await engine.signal("wf", iid, "k", "late")
        assert written(engine) == before
        assert await finish(engine, iid) == "timed out"


async def test_unknown_instance_is_refused_and_writes_nothing() -> None:
    engine = memory_engine(wf=waits_for, other=waits_for)
    async with engine:
        iid = await engine.invoke("wf", "k")
        await until_state(engine, iid, "suspended")
        before = written(engine)
        with pytest.raises(UnknownInstance):
            await engine.signal("wf", "no-such-id", "k", 1)
        with pytest.raises(UnknownInstance, match="other"):
            await engine.signal("other", iid, "k", 1)  # the id is a 'wf' instance
        with pytest.raises(UnknownInstance):
            await engine.signal("not-registered", iid, "k", 1)
        assert written(engine) == before
        assert engine.status(iid).state == "suspended"
        await engine.signal("wf", iid, "k", "right")
        assert await finish(engine, iid) == "right"


async def test_signal_with_a_bad_key_or_payload_writes_nothing() -> None:
    engine = memory_engine(wf=waits_for)
    async with engine:
        iid = await engine.invoke("wf", "k")
        await until_state(engine, iid, "suspended")
        before = written(engine)
        with pytest.raises(TypeError):
            await engine.signal("wf", iid, "", 1)
        with pytest.raises(EngineError, match="signal"):
            await engine.signal("wf", iid, "k", object())  # NotSerializable
        assert written(engine) == before
        assert engine.status(iid).state == "suspended"


async def test_signal_needs_a_running_engine() -> None:
    engine = memory_engine(wf=waits_for)
    with pytest.raises(EngineError, match="not running"):
        await engine.signal("wf", "x", "k", 1)


# -- concurrency -------------------------------------------------------------


async def test_two_concurrent_signals_exactly_one_succeeds() -> None:
    engine = memory_engine(wf=waits_for)
    async with engine:
        iid = await engine.invoke("wf", "k")
        await until_state(engine, iid, "suspended")
        outcomes: dict[str, str] = {}

        async def send(payload: str) -> None:
            try:
                await engine.signal("wf", iid, "k", payload)
                outcomes[payload] = "delivered"
            except SignalAlreadyDelivered:
                outcomes[payload] = "refused"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "a")
            nursery.start_soon(send, "b")
        assert sorted(outcomes.values()) == ["delivered", "refused"]
        winner = next(p for p, o in outcomes.items() if o == "delivered")
        assert await finish(engine, iid) == winner
        signals = [
            rec for rec in records_of(engine._backend.make_storage())
            if rec.type == "signalled" and rec.instance == iid
        ]
        assert len(signals) == 1


async def test_many_concurrent_signals_to_many_instances() -> None:
    engine = memory_engine(wf=waits_for)
    async with engine:
        ids = [await engine.invoke("wf", f"k{n}") for n in range(50)]
        for iid in ids:
            await until_state(engine, iid, "suspended")
        refused = 0

        async def send(n: int, attempt: int) -> None:
            nonlocal refused
            try:
                await engine.signal("wf", ids[n], f"k{n}", [n, attempt])
            except SignalAlreadyDelivered:
                refused += 1

        async with trio.open_nursery() as nursery:
            for n in range(50):
                for attempt in range(3):
                    nursery.start_soon(send, n, attempt)
        assert refused == 100
        for n, iid in enumerate(ids):
            result = await finish(engine, iid)
            assert result[0] == n
        assert types_of(engine._backend.make_storage()).count("signalled") == 50
