"""Compaction changes no answer: journal-level equivalence, and the engine's background service.

Journal level (hypothesis): histories an engine could write (see
compaction_helpers.History) go through ``Journal`` on a ``MemoryStorage``
with small segments, so several seal. Then every query (each instance's
fields, input and outcome, each memoised step outcome read back from its
location, each signal) must answer the same:

* after ``compact_offline`` (everything, up to the live end);
* after the pieces (``prefix_state``, ``synthesize``, ``write_compacted``,
  ``finish``) with ``upto`` in the middle, so a tail of plain segments
  follows the compacted one, with the old segments still there (leftovers)
  and after they are gone; a live index re-pointed with ``Index.repoint`` answers
  the same from the new file;
* after reopening and appending more records: the compacted journal and an
  uncompacted copy given the same records answer alike;
* with retention: exactly the finished instances unchanged for longer than
  the period disappear, the rest answer as before.

Engine level: a running engine with small segments compacts in the
background while instances step, suspend, sleep, get signals, fail, get
cancelled, forgotten and restarted; every answer (wait, status, memoised
values, large ones read from compacted blocks) is what it would be without
compaction, also after a restart of the engine, in memory and on disk.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.compaction import (
    INLINE,
    CompactionWatch,
    answers,
    copy_records,
    expired_ids,
    history,
    reader,
    reference,
    step_value,
    stored,
    without,
)
from support.journal import files_of, storage_from
from trio.testing import MockClock

from memable_log import (
    Context,
    Engine,
    ManualClock,
    MemoryStorage,
    StepFailed,
    SuspendTimedOut,
    WorkflowCancelled,
    WorkflowFailed,
)
from memable_log._compaction.compactor import (
    compact_offline,
    finish,
    moves,
    prefix_state,
    synthesize,
    write_compacted,
)
from memable_log._core import index as ix
from memable_log._core import records as r
from memable_log._core.format import compacted_name, segment_name
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage.segments import scan
from memable_log._storage.snapshot import SNAPSHOT_NAME
from memable_log.testing import wait_for_state

SEGMENT_SIZE = 4096

OP = st.tuples(
    st.integers(0, 9 * 12 - 1), st.integers(0, 5), st.integers(0, 7), st.integers(0, 3)
)
OPS = st.lists(OP, min_size=1, max_size=70)


async def write(storage: MemoryStorage, records: list[list[Any]], batch: int = 1) -> None:
    """Append ``records`` (copies) through a Journal, ``batch`` per commit, and close."""
    async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
        records = copy_records(records)
        for first in range(0, len(records), batch):
            await journal.append_many(records[first : first + batch])


def sealed_segments(storage: MemoryStorage) -> list[int]:
    result = scan(storage)
    return [seg.number for seg in result.segments if seg.sealed]


def old_locations(index: Index, upto: int) -> list[tuple[str, str]]:
    """Entries that still point into a plain segment up to ``upto``."""
    out = []
    for iid, entry in index.instances.items():
        where: list[tuple[str, Any]] = [("input", entry.input), ("outcome", entry.outcome)]
        where += [(key, ix.entry_loc(v) if isinstance(v, int) else v)
                  for key, v in entry.steps.items()]
        where += [(key, v) for key, v in (entry.signals or {}).items()]
        for what, value in where:
            plain = isinstance(value, int) and not ix.loc_inner(value)
            if plain and ix.unpack_loc(value)[0] <= upto:
                out.append((iid, what))
    return out


# -- journal level -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(ops=OPS, more=st.lists(OP, max_size=20), batch=st.integers(1, 4), cut=st.integers(0, 99),
       legacy=st.sampled_from([0, 0, 30, 10_000]))
# A version 1 suspension written again after a cancel and a restart, now
# with no timeout: the scan and the state image must both take the later.
@example(ops=[(0, 0, 0, 0), (100, 0, 0, 0), (100, 0, 0, 0), (1, 0, 0, 0), (37, 0, 0, 0)],
         more=[], batch=1, cut=0, legacy=30)
def test_compaction_answers_every_query_as_before(
    ops: list[tuple[int, int, int, int]],
    more: list[tuple[int, int, int, int]],
    batch: int,
    cut: int,
    legacy: int,
) -> None:
    # ``legacy``: that many first ops write format version 1's records.
    trio.run(_equivalence, ops, more, batch, cut, legacy)


async def _equivalence(
    ops: list[tuple[int, int, int, int]],
    more: list[tuple[int, int, int, int]],
    batch: int,
    cut: int,
    legacy: int,
) -> None:
    made = history(ops, legacy)
    records = list(made.records)
    original = MemoryStorage()
    await write(original, records, batch)
    before = stored(original)
    assert before == reference(records)  # the journal itself answers right
    files = files_of(original)

    # Offline: everything, up to the live end.
    offline = storage_from(files)
    stats = compact_offline(offline, now_ms=made.now, retention_ms=None)
    assert stored(offline) == before
    assert stats.instances_dropped == 0
    assert stats.records_before == len(records)
    names = [name for name in offline.list() if name != SNAPSHOT_NAME]
    assert names == [compacted_name(stats.upto), segment_name(stats.upto + 1)]

    # The pieces, with a tail of plain segments after the compacted one.
    pieces = storage_from(files)
    sealed = sealed_segments(pieces)
    if sealed:
        upto = sealed[cut % len(sealed)]
        live = Index(INLINE)
        scan(pieces, live.apply)
        prefix, result = prefix_state(pieces, upto, INLINE)
        prefix_answers = answers(prefix, reader(pieces, result))
        fresh, _ = write_compacted(
            pieces, upto, result.next_seq, synthesize(prefix, reader(pieces, result)), INLINE
        )
        assert stored(pieces) == before  # old segments are leftovers now: ignored
        deleted = finish(pieces, upto)
        assert sorted(deleted) == [segment_name(n) for n in range(1, upto + 1)]
        assert stored(pieces) == before
        after = scan(pieces)
        assert after.segments[0].name == compacted_name(upto)
        # A live index re-pointed at the new file answers the same from it.
        live.repoint(moves(fresh), upto)
        assert answers(live, reader(pieces, after)) == before
        assert old_locations(live, upto) == []
        assert answers(fresh, reader(pieces, after)) == prefix_answers

    # Reopened and appended to, compacted and uncompacted copies stay alike.
    extra = made.run(more)
    plain = storage_from(files)
    for storage in (plain, offline, pieces):
        async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
            if extra:
                await journal.append_many(copy_records(extra))
    assert stored(offline) == stored(plain) == stored(pieces) == reference(records + extra)

    # Retention: exactly the finished instances unchanged for longer go.
    retention_ms = (made.now - records[0][2]) * cut // 100
    kept = storage_from(files)
    dropped = expired_ids(before, made.now, retention_ms)
    stats = compact_offline(kept, now_ms=made.now, retention_ms=retention_ms)
    assert stats.instances_dropped == len(dropped)
    assert stored(kept) == without(before, dropped)


def test_compaction_keeps_updated_ms_of_an_instance_changed_only_by_a_forget_or_restart() -> None:
    """Regression: ``created`` alone was synthesised, so updated_ms fell back to created_ms."""

    async def main() -> None:
        records = [
            r.make(r.CREATED, 1_000, "forgot", "wf", b"in"),
            r.make(r.FORGOT, 2_000, "forgot", "nothing"),
            r.make(r.CREATED, 1_000, "restarted", "wf", b"in"),
            r.make(r.CANCELLED, 3_000, "restarted"),
            r.make(r.RESTARTED, 4_000, "restarted"),
        ]
        storage = MemoryStorage()
        await write(storage, records)
        before = stored(storage)
        assert before["forgot"]["updated_ms"] == 2_000
        assert before["restarted"]["updated_ms"] == 4_000
        compact_offline(storage, now_ms=5_000, retention_ms=None)
        assert stored(storage) == before

    trio.run(main)


# -- the engine's background compaction ----------------------------------------------

BIG = 1500  # bytes, incompressible: above the inline limit, a few fill a segment


def big(n: int) -> bytes:
    return random.Random(n).randbytes(BIG)


class World:
    """The workflows' outside world: step bodies that count their calls."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: Counter[tuple[str, str]] = Counter()

    async def step(self, ctx: Context, key: str, value: Any) -> Any:
        def body() -> Any:
            self.calls[ctx.instance_id, key] += 1
            return value

        return await ctx.step(key).run(body)

    def workflows(self) -> dict[str, Any]:
        async def job(ctx: Context) -> Any:
            n = ctx.input
            small = await self.step(ctx, "small", n)
            blob = await self.step(ctx, "big", big(n))

            def flaky() -> None:
                self.calls[ctx.instance_id, "flaky"] += 1
                raise ValueError(f"flaky {n}")

            try:
                await ctx.step("flaky").run(flaky)
            except StepFailed as exc:
                return [small, blob, exc.message]
            raise AssertionError("unreachable")

        async def approval(ctx: Context) -> Any:
            n = ctx.input
            prep = await self.step(ctx, "prepare", n)
            timeout = self.delay if n % 3 == 0 else None
            try:
                got = await ctx.suspend("approve", status=f"approval {n}", timeout=timeout)
            except SuspendTimedOut:
                got = "timed out"
            return [prep, got]

        async def sleeper(ctx: Context) -> Any:
            n = ctx.input
            first = await self.step(ctx, "a", n)
            await ctx.timer("nap", self.delay)
            blob = await self.step(ctx, "b", big(1000 + n))
            return [first, blob]

        async def failing(ctx: Context) -> Any:
            await self.step(ctx, "x", ctx.input)
            raise RuntimeError(f"boom {ctx.input}")

        async def blocked(ctx: Context) -> Any:
            return await ctx.suspend("never")

        return {
            "job": job, "approval": approval, "sleeper": sleeper, "failing": failing,
            "blocked": blocked,
        }


def expected_results() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in range(12):
        out[f"job{n}"] = ("completed", [n, big(n), f"flaky {n}"])
    for n in range(6):
        got = "timed out" if n % 3 == 0 else {"ok": n}
        out[f"approval{n}"] = ("completed", [n, got])
    for n in range(3):
        out[f"sleeper{n}"] = ("completed", [n, big(1000 + n)])
        out[f"failing{n}"] = ("failed", "RuntimeError", f"boom {n}")
    out["blocked"] = ("cancelled",)
    return out


async def outcome(engine: Engine, iid: str) -> tuple[Any, ...]:
    try:
        return ("completed", await engine.wait(iid))
    except WorkflowFailed as exc:
        return ("failed", exc.error_type, exc.message)
    except WorkflowCancelled:
        return ("cancelled",)


async def engine_view(engine: Engine) -> dict[str, Any]:
    """Every answer the engine gives about every instance, values decoded."""
    view: dict[str, Any] = {}
    journal = engine._backend.journal
    for status in engine.instances():
        iid = status.instance_id
        entry = engine._host.index.instances[iid]
        steps: dict[str, Any] = {}
        for key, step in entry.steps.items():
            kind = ix.entry_kind(step)
            if kind == ix.STEP_DONE_AT:
                steps[key] = await step_value(engine, iid, key)
            elif kind == ix.STEP_FAILED_AT:
                rec = await journal.read(ix.entry_loc(step))  # type: ignore[arg-type]
                steps[key] = ("failed", rec[5], rec[6])
            else:
                steps[key] = ("started",)
        signals = {k: await engine._host.value(v, 5) for k, v in (entry.signals or {}).items()}
        finished = status.state in ("completed", "failed", "cancelled")
        view[iid] = {
            "status": status, "input": await engine._host.value(entry.input, 5), "steps": steps,
            "signals": signals, "outcome": await outcome(engine, iid) if finished else None,
        }
    return view


async def roll(engine: Engine, watch: CompactionWatch, tag: str) -> None:
    """Write until the active segment is sealed, then wait until it is compacted."""
    journal = engine._backend.journal
    segment = journal.writer.segment
    n = 0
    while journal.writer.segment == segment:
        n += 1
        await engine.wait(await engine.invoke("job", 500 + n, instance_id=f"{tag}-{n}"))
    await watch.through_sealed()


def in_blocks(engine: Engine) -> int:
    """How many locations of the live index point inside compacted blocks."""
    count = 0
    for entry in engine._host.index.instances.values():
        for value in (entry.input, entry.outcome, *entry.steps.values()):
            if isinstance(value, int):
                loc = ix.entry_loc(value) if value in entry.steps.values() else value
                count += ix.loc_inner(loc) > 0
    return count


async def lifetime_one(engine: Engine, world: World) -> dict[str, Any]:
    """Run every kind of instance while segments roll and compact; check every answer."""
    watch = CompactionWatch(engine)
    for n in range(12):
        await engine.invoke("job", n, instance_id=f"job{n}")
    for n in range(6):
        await engine.invoke("approval", n, instance_id=f"approval{n}")
    for n in range(3):
        await engine.invoke("sleeper", n, instance_id=f"sleeper{n}")
        await engine.invoke("failing", n, instance_id=f"failing{n}")
    await engine.invoke("blocked", instance_id="blocked")
    for n in range(6):
        if n % 3:
            await wait_for_state(engine, f"approval{n}", "suspended")
            await engine.signal("approval", f"approval{n}", "approve", {"ok": n})
    await wait_for_state(engine, "blocked", "suspended")
    await engine.cancel("blocked")
    expected = expected_results()
    for iid, want in expected.items():
        assert await outcome(engine, iid) == want, iid
    await roll(engine, watch, "fill-a")
    assert watch.done > 0
    assert engine._backend.compaction is not None
    assert engine._backend.compaction.runs >= watch.done
    assert any(name.startswith("cmp-") for name in engine._backend.journal.storage.list())

    # Every answer, large values read back from compacted blocks included.
    view = await engine_view(engine)
    assert in_blocks(engine) > 20
    for iid, want in expected.items():
        assert view[iid]["outcome"] == want, iid
    for n in range(12):
        steps = view[f"job{n}"]["steps"]
        assert steps["small"] == n
        assert steps["big"] == big(n)
        assert steps["flaky"][:2] == ("failed", "ValueError")
        assert view[f"job{n}"]["status"].steps == 3
    assert view["approval1"]["signals"] == {"approve": {"ok": 1}}
    assert view["approval1"]["status"].workflow == "approval"
    assert view["sleeper2"]["steps"]["b"] == big(1002)
    assert view["failing0"]["status"].error == ("RuntimeError", "boom 0")

    # A restart after compaction keeps the cached steps; a forgotten one runs again.
    calls = world.calls.copy()
    await engine.restart("job0")
    assert await engine.wait("job0") == [0, big(0), "flaky 0"]
    await engine.forget("job1", "big")
    await engine.restart("job1")
    assert await engine.wait("job1") == [1, big(1), "flaky 1"]
    await engine.forget("sleeper0", "*")
    await engine.restart("sleeper0")
    assert await engine.wait("sleeper0") == [0, big(1000)]
    ran = world.calls - calls
    assert ran == Counter({("job1", "big"): 1, ("sleeper0", "a"): 1, ("sleeper0", "b"): 1})
    await roll(engine, watch, "fill-b")
    return await engine_view(engine)


async def check_background_compaction(make: Any, world: World) -> None:
    engine = make()
    async with engine:
        view = await lifetime_one(engine, world)
    calls = world.calls.copy()
    engine = make()
    async with engine:
        assert await engine_view(engine) == view
    assert world.calls == calls  # answering ran nothing


def build(builder: Any, world: World) -> Engine:
    engine: Engine = builder.segment_size(SEGMENT_SIZE).retention(None).build()
    for name, fn in world.workflows().items():
        engine.register(name, fn)
    return engine


async def test_background_compaction_in_memory_changes_no_answer(
    autojump_clock: MockClock,
) -> None:
    world = World(delay=600)
    storage, clock = MemoryStorage(), ManualClock()
    await check_background_compaction(
        lambda: build(Engine.builder().in_memory(storage).clock(clock), world), world
    )


async def test_background_compaction_on_disk_changes_no_answer(journal_dir: Path) -> None:
    world = World(delay=0.05)
    await check_background_compaction(
        lambda: build(Engine.builder().open(journal_dir), world), world
    )
    names = sorted(os.listdir(journal_dir))
    segments = [n for n in names if n.endswith(".mlog")]
    assert [n for n in names if n.startswith("cmp-")] == segments[:1]  # leftovers gone
    assert not [n for n in names if n.endswith(".tmp")]


async def test_a_roll_over_during_a_compaction_is_compacted_without_waiting_for_the_next(
    autojump_clock: MockClock,
) -> None:
    """Regression: the service only waited for the next roll-over event, so a
    segment sealed while a compaction ran stayed uncompacted until then."""
    world = World(delay=1)
    engine = build(Engine.builder().in_memory(MemoryStorage()).clock(ManualClock()), world)
    async with engine:
        compaction = engine._backend.compaction
        assert compaction is not None
        journal = engine._backend.journal
        original = compaction.compact
        started: list[int] = []

        async def compact(*args: Any) -> None:
            started.append(args[-1])
            if len(started) == 1:  # seal another segment while this one runs
                segment, n = journal.writer.segment, 0
                while journal.writer.segment == segment:
                    n += 1
                    await engine.invoke("job", n, instance_id=f"during-{n}")
                    await engine.wait(f"during-{n}")
            await original(*args)

        compaction.compact = compact  # type: ignore[method-assign, assignment]
        n = 0
        while not started:
            n += 1
            await engine.wait(await engine.invoke("job", n, instance_id=f"before-{n}"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(started) == 2
        assert compaction.compacted_upto == journal.writer.segment - 1 == started[1]
