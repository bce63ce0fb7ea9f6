"""Talking to the outside while running (SPEC-NEXT §3): ``ctx.set_status``,
``ctx.publish``, ``engine.event``, ``engine.events`` and ``engine.watch``.

Every test runs under trio's MockClock (``autojump_clock``) with a
ManualClock for wall time. Engines that follow one another on one
MemoryStorage are restarts on one journal. Readers are woken by the engine
(no polling): a test that waited for a change no append announces would
hang, and the MockClock would jump to its fail_after.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio
from support.suspend import finish, records_of, types_of, until_state
from trio.testing import MockClock

from memable_log import (
    Context,
    DuplicateStepKey,
    Engine,
    EngineError,
    Event,
    ManualClock,
    MemoryStorage,
    UnknownInstance,
    WorkflowFailed,
)

START_MS = 1_700_000_000_000


def build(storage: MemoryStorage, clock: ManualClock, **wfs: Any) -> Engine:
    engine = Engine.builder().in_memory(storage).clock(clock).build()
    for name, fn in wfs.items():
        engine.register(name, fn)
    return engine


def count(storage: MemoryStorage, iid: str, name: str) -> int:
    return types_of(storage, iid).count(name)


async def collect(engine: Engine, iid: str, after: int | None = None) -> list[Event]:
    with trio.fail_after(10_000):
        return [ev async for ev in engine.events(iid, after=after)]


# -- set_status ------------------------------------------------------------------------


def statused(ledger: list[str]) -> Any:
    async def note(name: str) -> str:
        ledger.append(name)
        return name

    async def wf(ctx: Context) -> str:
        await ctx.set_status("fetching")
        await ctx.step("fetch").run(note, "fetch")
        await ctx.set_status("fetching")  # the same text: nothing written
        await ctx.set_status("waiting for review")
        await ctx.suspend("review")
        await ctx.set_status("publishing")
        await ctx.step("publish").run(note, "publish")
        return "done"

    return wf


async def test_set_status_is_the_latest_text_in_any_state_and_a_rerun_writes_none_again(
    autojump_clock: MockClock,
) -> None:
    storage, clock, ledger = MemoryStorage(), ManualClock(START_MS / 1000), []
    engine = build(storage, clock, wf=statused(ledger))
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        assert engine.status(iid).status == "waiting for review"
        assert count(storage, iid, "status_set") == 2
    # A restart re-runs it up to the wait: nothing written, the text stays.
    engine = build(storage, clock, wf=statused(ledger))
    async with engine:
        assert engine.status(iid).status == "waiting for review"
        await engine.signal("wf", iid, "review")
        assert await finish(engine, iid) == "done"
        # The re-run passed "fetching" (a call an earlier run made) and the
        # wait; only the call past them wrote. The text stays once finished.
        assert engine.status(iid).status == "publishing"
        assert engine.status(iid).state == "completed"
    assert count(storage, iid, "status_set") == 3
    texts = [rec.fields["text"] for rec in _records(storage, iid, "status_set")]
    assert texts == ["fetching", "waiting for review", "publishing"]
    assert ledger == ["fetch", "publish"]


def _records(storage: MemoryStorage, iid: str, name: str) -> list[Any]:
    return [rec for rec in records_of(storage) if rec.instance == iid and rec.type == name]


async def test_a_suspensions_status_and_set_status_take_turns_and_waits_leave_it(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.suspend("a", status="waiting for a")
        await ctx.timer("nap", 60)  # no text: the last one stays
        await ctx.set_status("after the nap")
        await ctx.suspend("b")

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        assert engine.status(iid).status == "waiting for a"
        await engine.signal("wf", iid, "a")
        await until_state(engine, iid, "sleeping")
        assert engine.status(iid).status == "waiting for a"
        await engine.wake(iid, "nap")
        await until(engine, iid, "suspended", "after the nap")


async def test_a_status_that_is_not_a_str_fails_the_workflow_and_writes_nothing(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.set_status(42)  # type: ignore[arg-type]

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(WorkflowFailed) as caught:
            await finish(engine, iid)
    assert caught.value.error_type == "TypeError"
    assert "42" in caught.value.message
    assert count(storage, iid, "status_set") == 0


async def until(engine: Engine, iid: str, state: str, text: str) -> None:
    await until_state(engine, iid, state)
    assert engine.status(iid).status == text


# -- publish, event, events ----------------------------------------------------------


def streaming(tokens: list[str], ledger: list[str]) -> Any:
    """Each step publishes its token from inside its (async) function."""

    async def wf(ctx: Context) -> int:
        for i, token in enumerate(tokens):
            async def emit(i: int = i, token: str = token) -> str:
                ledger.append(token)
                await ctx.publish(f"tok-{i}", token)
                return token

            await ctx.step(f"step-{i}").run(emit)
            if i == 1:
                await ctx.suspend("go")
        await ctx.publish("done", len(tokens))
        return len(tokens)

    return wf


async def test_events_are_read_live_woken_and_resumed_after_a_seq_across_a_restart(
    autojump_clock: MockClock,
) -> None:
    storage, clock, ledger = MemoryStorage(), ManualClock(START_MS / 1000), []
    tokens = ["The", " cat", " sat", " down"]
    engine = build(storage, clock, wf=streaming(tokens, ledger))
    async with engine:
        iid = await engine.invoke("wf")
        seen: list[Event] = []
        stream = engine.events(iid)
        async for ev in stream:
            seen.append(ev)
            if ev.seq == 2:
                break
        await stream.aclose()
        assert [(e.key, e.value, e.seq) for e in seen] == [
            ("tok-0", "The", 1), ("tok-1", " cat", 2),
        ]
        assert all(e.at.timestamp() * 1000 >= START_MS for e in seen)
        await until_state(engine, iid, "suspended")
    # A restart: the reader comes back with the last seq it saw.
    engine = build(storage, clock, wf=streaming(tokens, ledger))
    async with engine:
        async with trio.open_nursery() as nursery:
            got: list[Event] = []

            async def read() -> None:
                got.extend(await collect(engine, iid, after=2))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await engine.signal("wf", iid, "go")
        assert [(e.key, e.value, e.seq) for e in got] == [
            ("tok-2", " sat", 3), ("tok-3", " down", 4), ("done", 4, 5),
        ]
        assert await engine.event(iid, "tok-2") == " sat"
        # Finished: a reader from the start gets every event once, then ends.
        assert [e.seq for e in await collect(engine, iid)] == [1, 2, 3, 4, 5]
        assert await collect(engine, iid, after=5) == []
    assert ledger == tokens  # each step ran once; the re-run published nothing twice
    assert count(storage, iid, "published") == 5


async def test_engine_event_waits_for_its_key_and_times_out_on_trios_clock(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.timer("nap", 30)
        await ctx.publish("ready", {"url": "https://x"})
        await ctx.suspend("forever")

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        with pytest.raises(TimeoutError, match="ready"):
            await engine.event(iid, "ready", timeout=1)
        async with trio.open_nursery() as nursery:
            got: list[Any] = []

            async def wait() -> None:
                got.append(await engine.event(iid, "ready"))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await engine.wake(iid, "nap")
        assert got == [{"url": "https://x"}]
        with pytest.raises(UnknownInstance):
            await engine.event("nobody", "ready")
        with pytest.raises(UnknownInstance):
            engine.events("nobody")
        with pytest.raises(UnknownInstance):
            engine.watch("nobody")
        with pytest.raises(ValueError, match="after"):
            engine.events(iid, after=-1)
        # It finishes without publishing "never": the waiter is told, not left waiting.
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def never() -> None:
                try:
                    await engine.event(iid, "never")
                except EngineError as exc:
                    errors.append(exc)

            nursery.start_soon(never)
            await trio.testing.wait_all_tasks_blocked()
            await engine.cancel(iid)
        assert len(errors) == 1
        assert "never published event 'never'" in str(errors[0])


async def test_two_publishes_of_one_key_or_a_step_and_a_publish_raise_duplicate_step_key(
    autojump_clock: MockClock,
) -> None:
    async def twice(ctx: Context) -> None:
        await ctx.publish("k", 1)
        await ctx.publish("k", 2)

    async def step_then_publish(ctx: Context) -> None:
        await ctx.step("k").run(lambda: 1)
        await ctx.publish("k", 2)

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, twice=twice, mixed=step_then_publish)
    async with engine:
        for name in ("twice", "mixed"):
            iid = await engine.invoke(name)
            with pytest.raises(WorkflowFailed) as caught:
                await finish(engine, iid)
            assert caught.value.error_type == DuplicateStepKey.__name__
            assert "'k'" in caught.value.message


async def test_a_sync_step_in_a_thread_publishes_through_trio_from_thread() -> None:
    # No autojump clock here: while the worker thread runs, every trio task
    # is blocked, and an autojump clock would jump to the test's deadline.
    async def wf(ctx: Context) -> str:
        def blocking() -> str:
            trio.from_thread.run(ctx.publish, "from-thread", "hello")
            return "ok"

        return str(await ctx.step("thread").in_thread().run(blocking))

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        with trio.fail_after(30):
            assert await engine.wait(iid) == "ok"
            events = [(e.key, e.value) async for e in engine.events(iid)]
    assert events == [("from-thread", "hello")]


async def test_a_retried_step_publishes_once_and_the_first_attempts_value_stands(
    autojump_clock: MockClock,
) -> None:
    attempts: list[int] = []

    async def wf(ctx: Context) -> str:
        async def flaky() -> str:
            attempts.append(ctx.attempt)
            await ctx.publish("progress", f"attempt {ctx.attempt}")
            if ctx.attempt < 3:
                raise ConnectionError("try again")
            return "ok"

        return str(await ctx.step("flaky").retry(3, initial_delay=1).run(flaky))

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        assert await finish(engine, iid) == "ok"
        events = await collect(engine, iid)
    assert attempts == [1, 2, 3]
    assert [(e.key, e.value) for e in events] == [("progress", "attempt 1")]


async def test_a_large_event_value_is_read_back_from_the_journal_also_after_compaction(
    autojump_clock: MockClock,
) -> None:
    big = secrets.token_hex(3000)  # far above the inline limit: the index keeps its location

    async def wf(ctx: Context) -> None:
        await ctx.publish("big", big)
        await ctx.publish("small", 1)
        await ctx.set_status("published")

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await finish(engine, iid)
        entry = engine._host.index.instances[iid]
        assert entry.events is not None
        assert type(entry.events[0][2]) is int
        assert await engine.event(iid, "big") == big
    from memable_log._compaction.compactor import compact_offline

    compact_offline(storage, now_ms=START_MS + 1000, retention_ms=None)
    engine = build(storage, clock, wf=wf)
    async with engine:
        events = await collect(engine, iid)
        assert [(e.key, e.value, e.seq) for e in events] == [("big", big, 1), ("small", 1, 2)]
        assert engine.status(iid).status == "published"


# -- watch ------------------------------------------------------------------------------


async def test_watch_yields_each_change_of_state_text_and_steps_then_ends(
    autojump_clock: MockClock,
) -> None:
    async def wf(ctx: Context) -> str:
        await ctx.set_status("one")
        await ctx.step("a").run(lambda: 1)
        await ctx.suspend("go", status="waiting")
        await ctx.step("b").run(lambda: 2)
        return "ok"

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        seen: list[tuple[str, str | None, int]] = []
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                with trio.fail_after(10_000):
                    async for status in engine.watch(iid):
                        seen.append((status.state, status.status, status.steps))

            nursery.start_soon(watch)
            await until_state(engine, iid, "suspended")
            await engine.signal("wf", iid, "go")
        assert seen == [
            ("running", None, 0), ("running", "one", 0), ("running", "one", 1),
            # the wait's registration and ``parked`` are one batch: one change
            ("suspended", "waiting", 1),
            ("running", "waiting", 1), ("running", "waiting", 2),
            ("completed", "waiting", 2),
        ]
        # A finished instance: its status, at once, and the end.
        assert [s.state async for s in engine.watch(iid)] == ["completed"]


async def test_readers_are_told_when_the_engine_stops(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.suspend("go")

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    errors: list[BaseException] = []

    async def read(it: Any) -> None:
        try:
            async for _ in it:
                pass
        except EngineError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer, engine:
        iid = await engine.invoke("wf")
        await until_state(engine, iid, "suspended")
        outer.start_soon(read, engine.events(iid))
        outer.start_soon(read, engine.watch(iid))
        await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 2
    assert all("not running" in str(e) for e in errors)
    assert not engine._host.listeners


async def test_nobody_reading_leaves_no_listener(autojump_clock: MockClock) -> None:
    async def wf(ctx: Context) -> None:
        await ctx.publish("a", 1)

    storage, clock = MemoryStorage(), ManualClock(START_MS / 1000)
    engine = build(storage, clock, wf=wf)
    async with engine:
        iid = await engine.invoke("wf")
        await finish(engine, iid)
        assert [e.key for e in await collect(engine, iid)] == ["a"]
        stream = engine.events(iid)
        del stream  # dropped unread: its listener goes with it
        import gc

        gc.collect()
        assert not any(engine._host.listeners.values())
