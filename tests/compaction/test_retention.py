"""Retention: finished instances past the period leave the journal and memory at compaction.

Every test but the last runs on trio's MockClock (``autojump_clock``) with a
ManualClock for wall time, so hours of ageing take no real time. An
instance is dropped at the first compaction after it has been finished
(completed, failed, cancelled) and unchanged for longer than the retention
period, once all its records are in sealed segments. Live instances
(running, suspended, sleeping) stay whatever their age, and so does an old
instance restarted (live again), also when the restart is still being
written while the compaction decides.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing
from support.compaction import CompactionWatch
from trio.testing import MockClock

from memable_log import (
    Context,
    Engine,
    ManualClock,
    MemoryStorage,
    UnknownInstance,
    WorkflowCancelled,
    WorkflowFailed,
)
from memable_log._compaction import service as _maintenance
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage.segments import scan
from memable_log.testing import wait_for_state

SEGMENT_SIZE = 4096
HOUR = 3600.0
FILL = 1500  # bytes per filler value: a few seal a segment


class Gates:
    """Events that running steps wait on, by instance id."""

    def __init__(self) -> None:
        self.events: dict[str, trio.Event] = {}

    def __getitem__(self, iid: str) -> trio.Event:
        return self.events.setdefault(iid, trio.Event())


def workflows(gates: Gates) -> dict[str, Any]:
    async def done(ctx: Context) -> Any:
        return await ctx.step("value").run(lambda: f"v-{ctx.instance_id}")

    async def fails(ctx: Context) -> Any:
        raise RuntimeError("no")

    async def waits(ctx: Context) -> Any:
        return await ctx.suspend("go", status="waiting")

    async def naps(ctx: Context) -> Any:
        await ctx.timer("nap", timedelta(days=30))
        return "rested"

    async def busy(ctx: Context) -> Any:
        async def gate() -> str:
            await gates[ctx.instance_id].wait()
            return "released"

        return await ctx.step("work").run(gate)

    async def fill(ctx: Context) -> Any:
        return await ctx.step("blob").run(lambda: bytes(range(256)) * (FILL // 256))

    return {"done": done, "fails": fails, "waits": waits, "naps": naps, "busy": busy,
            "fill": fill}


def make_engine(storage: MemoryStorage, clock: ManualClock, gates: Gates,
                retention: Any = HOUR) -> Engine:
    engine = (
        Engine.builder().in_memory(storage).clock(clock).segment_size(SEGMENT_SIZE)
        .retention(retention).build()
    )
    for name, fn in workflows(gates).items():
        engine.register(name, fn)
    return engine


async def compact_now(engine: Engine, watch: CompactionWatch, tag: str) -> None:
    """Seal the active segment with filler instances, then wait for its compaction."""
    journal = engine._backend.journal
    segment, n = journal.writer.segment, 0
    while journal.writer.segment == segment:
        n += 1
        await engine.wait(await engine.invoke("fill", instance_id=f"{tag}-{n}"))
    await watch.through_sealed()


def gone(engine: Engine, iid: str) -> bool:
    try:
        engine.status(iid)
    except UnknownInstance:
        assert iid not in {s.instance_id for s in engine.instances()}
        assert iid not in engine._host.index.instances
        return True
    return False


def in_journal(storage: MemoryStorage) -> set[str]:
    index = Index()
    scan(storage, index.apply)
    return set(index.instances)


async def start_every_kind(engine: Engine, prefix: str) -> dict[str, str]:
    """One instance in each state; returns id -> state."""
    ids = {f"{prefix}-{k}": k for k in
           ("completed", "failed", "cancelled", "suspended", "sleeping", "running")}
    await engine.invoke("done", instance_id=f"{prefix}-completed")
    await engine.invoke("fails", instance_id=f"{prefix}-failed")
    await engine.invoke("waits", instance_id=f"{prefix}-cancelled")
    await engine.invoke("waits", instance_id=f"{prefix}-suspended")
    await engine.invoke("naps", instance_id=f"{prefix}-sleeping")
    await engine.invoke("busy", instance_id=f"{prefix}-running")
    assert await engine.wait(f"{prefix}-completed") == f"v-{prefix}-completed"
    with pytest.raises(WorkflowFailed):
        await engine.wait(f"{prefix}-failed")
    await wait_for_state(engine, f"{prefix}-cancelled", "suspended")
    await engine.cancel(f"{prefix}-cancelled")
    await wait_for_state(engine, f"{prefix}-suspended", "suspended")
    await wait_for_state(engine, f"{prefix}-sleeping", "sleeping")
    for iid, state in ids.items():
        assert engine.status(iid).state == state
    return ids


async def test_finished_instances_past_retention_go_and_the_rest_stay(
    autojump_clock: MockClock,
) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates)
    async with engine:
        watch = CompactionWatch(engine)
        old = await start_every_kind(engine, "old")
        await trio.sleep(2 * HOUR)  # virtual time: they age
        young = await start_every_kind(engine, "young")
        statuses = {iid: engine.status(iid) for iid in {**old, **young}}
        await compact_now(engine, watch, "fill")
        for iid, state in {**old, **young}.items():
            dropped = iid.startswith("old") and state in ("completed", "failed", "cancelled")
            assert gone(engine, iid) == dropped, iid
            if not dropped:
                assert engine.status(iid) == statuses[iid]
        with pytest.raises(UnknownInstance):
            await engine.wait("old-completed")
        assert await engine.wait("young-completed") == "v-young-completed"
        with pytest.raises(WorkflowCancelled):
            await engine.wait("young-cancelled")
        # The live ones still work: signalled, released, they finish.
        await engine.signal("waits", "old-suspended", "go", 7)
        assert await engine.wait("old-suspended") == 7
        gates["old-running"].set()
        assert await engine.wait("old-running") == "released"
        assert engine.status("old-sleeping").state == "sleeping"
    kept = in_journal(storage)
    assert not {"old-completed", "old-failed", "old-cancelled"} & kept
    assert {"old-suspended", "old-sleeping", "old-running", *young} <= kept
    async with make_engine(storage, clock, gates) as engine:
        assert gone(engine, "old-completed")
        assert engine.status("old-sleeping") == statuses["old-sleeping"]
        assert await engine.wait("young-completed") == "v-young-completed"


async def test_live_instances_stay_however_old(autojump_clock: MockClock) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates, retention=timedelta(minutes=1))
    async with engine:
        watch = CompactionWatch(engine)
        for iid in ("s1", "s2"):
            await engine.invoke("waits", instance_id=iid)
            await wait_for_state(engine, iid, "suspended")
        await engine.invoke("naps", instance_id="z")
        await engine.invoke("busy", instance_id="r")
        await wait_for_state(engine, "z", "sleeping")
        await trio.sleep(24 * HOUR)
        await compact_now(engine, watch, "fill-1")
        await trio.sleep(24 * HOUR)
        await compact_now(engine, watch, "fill-2")
        states = {s.instance_id: s.state for s in engine.instances()}
        assert {k: states[k] for k in ("s1", "s2", "z", "r")} == {
            "s1": "suspended", "s2": "suspended", "z": "sleeping", "r": "running",
        }
        # Finished fillers of the first round are older than a minute: gone.
        assert gone(engine, "fill-1-1")
        await engine.signal("waits", "s1", "go", "late")
        assert await engine.wait("s1") == "late"


async def test_an_old_instance_restarted_is_live_again_and_stays(
    autojump_clock: MockClock,
) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates)
    async with engine:
        watch = CompactionWatch(engine)
        await engine.invoke("busy", instance_id="again")
        gates["again"].set()
        assert await engine.wait("again") == "released"
        await engine.invoke("done", instance_id="other")
        await engine.wait("other")
        await trio.sleep(3 * HOUR)
        await engine.forget("again", "work")
        gates.events.pop("again")
        await engine.restart("again")  # it blocks in its step again: running
        await compact_now(engine, watch, "fill")
        assert gone(engine, "other")
        assert engine.status("again").state == "running"
        gates["again"].set()
        assert await engine.wait("again") == "released"
        await compact_now(engine, watch, "fill-2")  # young now: kept
        assert engine.status("again").state == "completed"
    assert "again" in in_journal(storage)


async def test_retention_none_keeps_every_instance(autojump_clock: MockClock) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates, retention=None)
    async with engine:
        watch = CompactionWatch(engine)
        await engine.invoke("done", instance_id="kept")
        await engine.wait("kept")
        await trio.sleep(1000 * 24 * HOUR)
        await compact_now(engine, watch, "fill")
        assert await engine.wait("kept") == "v-kept"
    assert "kept" in in_journal(storage)


async def test_the_memory_index_shrinks_as_finished_instances_expire(
    autojump_clock: MockClock,
) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates)
    async with engine:
        watch = CompactionWatch(engine)
        for n in range(300):
            await engine.invoke("done", instance_id=f"d{n}")
        for n in range(300):
            await engine.wait(f"d{n}")
        await compact_now(engine, watch, "warm")
        assert len(engine.instances()) >= 300
        await trio.sleep(2 * HOUR)
        await compact_now(engine, watch, "fill")
        left = {s.instance_id for s in engine.instances()}
        assert not any(iid.startswith(("d", "warm")) for iid in left)
        assert 0 < len(engine._host.index.instances) < 10
    assert in_journal(storage) == left


class HeldCommit(MemoryStorage):
    """A MemoryStorage on worker threads whose next fsync, once armed, waits for release."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.held = threading.Event()
        self.release = threading.Event()

    def _op(self, op: str) -> Any:
        if op == "sync" and self.armed:
            self.armed = False
            self.held.set()
            self.release.wait()
        return super()._op(op)


async def test_a_restart_in_flight_while_compaction_drops_expired_instances_keeps_the_instance(
) -> None:
    """Regression: the drop decision looked only at applied records, so an
    instance whose restart was being committed was dropped; applying the
    restart then failed the engine and left a journal that would not open."""
    storage, gates = HeldCommit(), Gates()
    engine = make_engine(storage, ManualClock(), gates, retention=0)
    async with engine:
        compaction = engine._backend.compaction
        assert compaction is not None
        original = compaction.compact
        restarted = trio.Event()

        async def compact(*args: Any) -> None:
            if "old" in engine._host.index.instances and not restarted.is_set():
                storage.armed = True  # hold the restart's commit mid-fsync

                async def restart() -> None:
                    await engine.restart("old")
                    restarted.set()

                assert engine._nursery is not None
                engine._nursery.start_soon(restart)
                await trio.to_thread.run_sync(storage.held.wait)
                try:
                    await original(*args)
                finally:
                    storage.release.set()
            else:
                await original(*args)

        compaction.compact = compact  # type: ignore[method-assign, assignment]
        await engine.invoke("done", instance_id="old")
        await engine.wait("old")
        n = 0
        while not restarted.is_set() and not storage.held.is_set():
            n += 1
            await engine.invoke("fill", instance_id=f"f{n}")
            try:
                await engine.wait(f"f{n}")
            except UnknownInstance:
                pass  # finished and already dropped (retention 0)
        with trio.fail_after(30):
            await restarted.wait()
            assert await engine.wait("old") == "v-old"
    async with Journal(storage.crash()) as journal:  # it opens
        assert "old" in journal.index.instances


class HeldRewrite:
    """Holds the compaction's rewrite at a gate (its instances are retiring)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.reached, self.release = trio.Event(), trio.Event()
        original = _maintenance.Compaction._rewrite

        async def held(service: Any, *args: Any) -> Any:
            self.reached.set()
            await self.release.wait()
            if fail:
                raise OSError(28, "No space left on device")
            return await original(service, *args)

        monkeypatch.setattr(_maintenance.Compaction, "_rewrite", held)


@pytest.mark.parametrize("fail", [False, True])
async def test_invoking_an_id_being_compacted_away_waits_for_the_outcome(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, fail: bool,
) -> None:
    """Taken out of the live index while the compaction writes, an expired
    instance's id must not be created anew before it is decided: created
    anew if it went, the old instance again if the compaction failed (a
    second ``created`` for an id the journal still holds would graft the
    new run onto the old instance at the next start)."""
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates)
    held = HeldRewrite(monkeypatch, fail=fail)
    async with engine:
        await engine.wait(await engine.invoke("done", instance_id="x"))
        await trio.sleep(2 * HOUR)  # virtual time: x expires
        async with trio.open_nursery() as nursery:
            journal = engine._backend.journal
            segment, n = journal.writer.segment, 0
            while journal.writer.segment == segment:  # seal: a compaction starts
                n += 1
                await engine.wait(await engine.invoke("fill", instance_id=f"f-{n}"))
            await held.reached.wait()
            assert engine._backend.compaction is not None
            assert "x" in engine._backend.compaction.retiring
            invoked: list[str] = []

            async def invoke_again() -> None:
                invoked.append(await engine.invoke("done", instance_id="x"))

            nursery.start_soon(invoke_again)
            await trio.testing.wait_all_tasks_blocked()
            assert invoked == []  # waiting for the compaction's outcome
            held.release.set()
        assert invoked == ["x"]
        assert await engine.wait("x") == "v-x"
        assert not engine._backend.compaction.retiring
    # Either way the journal holds exactly one instance x, and it is finished.
    creations = []
    scan(storage, lambda rec, loc: creations.append(rec) if rec[3] == "x" and rec[0] == 1 else None)
    assert len(creations) == 1
    async with make_engine(storage, clock, gates) as engine:
        assert engine.status("x").state == "completed"


async def test_an_engine_stopping_during_a_child_compaction_kills_it_and_opens_the_same(
    journal_dir: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = trio.Event()
    outcome: list[str] = []
    run_process = trio.run_process

    async def watched(*args: Any, **kwargs: Any) -> Any:
        started.set()
        try:
            done = await run_process(*args, **kwargs)
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append(f"exit {done.returncode}")
        return done

    monkeypatch.setattr(trio, "run_process", watched)
    clock = ManualClock()
    engine = (
        Engine.builder().open(journal_dir).clock(clock).segment_size(SEGMENT_SIZE)
        .retention(HOUR).build()
    )
    for name, fn in workflows(Gates()).items():
        engine.register(name, fn)
    async with engine:
        await engine.wait(await engine.invoke("done", instance_id="x"))
        clock.advance(2 * HOUR)
        n = 0
        while not started.is_set():  # fill until a roll-over starts a compaction
            n += 1
            await engine.wait(await engine.invoke("fill", instance_id=f"f-{n}"))
        assert engine._backend.compaction is not None
        assert "x" in engine._backend.compaction.retiring
    # The exit did not wait for the child: it killed it, and put x back.
    assert len(outcome) == 1
    assert not outcome[0].startswith("exit")  # cancelled (in trio's group), not finished
    names = os.listdir(journal_dir)
    assert not [name for name in names if name.startswith("cmp-")]
    engine = Engine.builder().open(journal_dir).compaction(False).build()
    for name, fn in workflows(Gates()).items():
        engine.register(name, fn)
    async with engine:
        assert await engine.wait("x") == "v-x"
        assert engine.status("x").state == "completed"
    assert not [name for name in os.listdir(journal_dir) if name.endswith(".tmp")]


async def test_a_workflows_own_retention_overrides_the_builders(autojump_clock: MockClock) -> None:
    storage, clock, gates = MemoryStorage(), ManualClock(), Gates()
    engine = make_engine(storage, clock, gates, retention=None)  # the builder keeps all

    async def short(ctx: Context) -> Any:
        return "brief"

    engine.register("short", short, retention=timedelta(minutes=1))
    async with engine:
        watch = CompactionWatch(engine)
        await engine.invoke("done", instance_id="kept")
        await engine.invoke("short", instance_id="brief")
        await engine.wait("kept")
        await engine.wait("brief")
        await trio.sleep(2 * 60)
        await compact_now(engine, watch, "fill")
        assert gone(engine, "brief")
        assert await engine.wait("kept") == "v-kept"
    assert "kept" in in_journal(storage)
    assert "brief" not in in_journal(storage)
