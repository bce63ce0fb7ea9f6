"""Packed step tables and snapshot v2: nothing observable depends on the form.

_index.py keeps an instance's step table as a dict or packed into one bytes
object (a log of operations, see its module comment). The same records are
applied to indexes that pack as the code does, that keep every table a
dict, and that pack after every record; every query must answer alike.
Snapshots (format 2) keep packed tables as they are: a load must give the
full scan's answers, locations beyond 64 bits included, and refuse format 1.
Engine-level: a restart or a forget of a packed (finished) instance behaves
as it did before.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.compaction import answers, copy_records, history, reader

from memable_log import Context, Engine
from memable_log._compaction.compactor import compact_offline
from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r
from memable_log._core.index import Index, InstanceEntry
from memable_log._core.status import status_of
from memable_log._journal.journal import Journal
from memable_log._storage import snapshot as snap
from memable_log._storage.files import Storage
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import scan

SEGMENT_SIZE = 4096  # the smallest: histories span several segments
BIG = 1 << 64

OP = st.tuples(  # History.op's choices, as tests/compaction/test_compaction.py draws them
    st.integers(0, 9 * 12 - 1), st.integers(0, 5), st.integers(0, 7), st.integers(0, 3)
)
OPS = st.lists(OP, min_size=1, max_size=70)


# -- what an index answers ------------------------------------------------------------


def step_items(e: InstanceEntry) -> list[tuple[str, ix.Entry]]:
    """The step table in order, without materialising it (no side effect)."""
    table = e.table if isinstance(e.table, dict) else ix.unpack_steps(e.table)
    return list(table.items())


def view(index: Index) -> dict[str, tuple[Any, ...]]:
    """Every answer of every entry, raw locations included; changes nothing
    (the engine-level tables under r.ENGINE)."""
    return {
        iid: (
            e.workflow, e.state, e.created_ms, e.updated_ms, e.input, e.outcome, e.error,
            e.pending, e.status, e.deadline_ms, step_items(e), e.signals, e.waits,
            e.done_waits, e.last_seq, e.memoised_steps(), status_of(iid, e),
        )
        for iid, e in index.instances.items()
    } | {r.ENGINE: (index.schedules, index.debounces, index.handovers)}


def location(n: int) -> int:
    """A record's location for the n-th record: a third inside compacted blocks
    (beyond 64 bits once shifted), the rest in plain segments."""
    return ix.pack_loc(1 + n % 5, 40 + 17 * n, inner=n if n % 3 == 0 else 0)


# -- packed and materialised tables answer alike ---------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    limit=st.sampled_from([0, 24, 200, ix.APPEND_LIMIT]),
    inline=st.sampled_from([0, 16, 256]),
)
def test_packed_and_materialised_tables_answer_every_query_alike(
    ops: list[tuple[int, int, int, int]], limit: int, inline: int
) -> None:
    records = history(ops).records
    with mock.patch.object(ix, "APPEND_LIMIT", limit):
        normal, dicts, packed = Index(inline), Index(inline), Index(inline)
        for n, rec in enumerate(records, 1):
            for index in (normal, dicts, packed):
                index.apply(list(rec), location(n))
            if rec[3] not in dicts.instances:  # an engine-level record (schedules, debounce)
                continue
            dicts.instances[rec[3]].steps  # noqa: B018 (materialise: apply takes the dict path)
            packed.instances[rec[3]].pack()  # apply takes the append path
            assert view(normal) == view(dicts) == view(packed)
            for e in normal.instances.values():
                if e.state in lc.FINISHED:
                    assert e.packed, "a finished instance keeps its table packed"
        # Reading materialises, and leaves every answer as it was.
        before = view(normal)
        for e in normal.instances.values():
            assert e.steps == dict(step_items(e))
            assert not e.packed
        assert view(normal) == before


def test_a_table_past_the_append_limit_materialises_and_packs_again_when_it_finishes() -> None:
    index = Index()
    index.apply(r.make(r.CREATED, 1, "big", "wf", b"in"), 1)
    n = 0
    while index.instances["big"].packed:
        n += 1
        index.apply(r.make(r.STEP_DONE, 2, "big", f"item:{n}", b"v" * 100), 10 + n)
    # It materialised by size (nothing read it): the log it had was full.
    steps = index.instances["big"].steps
    assert len(steps) == n > 1
    assert len(ix.pack_steps(dict(list(steps.items())[:-1]))) >= ix.APPEND_LIMIT
    index.apply(r.make(r.COMPLETED, 3, "big", b"done"), 9999)
    entry = index.instances["big"]
    assert entry.packed
    assert entry.memoised_steps() == n
    assert entry.packed  # counting does not materialise
    assert list(entry.steps) == [f"item:{k}" for k in range(1, n + 1)]


def test_the_packed_log_replays_sets_started_markers_and_forgets_in_order() -> None:
    started = (5 << 66) | ix.STEP_STARTED_AT  # beyond 64 bits: travels as ext BIG_INT
    failed = (3 << 40 | 7) << 2 | ix.STEP_FAILED_AT
    index = Index()
    index.apply(r.make(r.CREATED, 1, "i", "wf", b""), 1)
    entry = index.instances["i"]
    for op in (("a", started), ("a", b"x"), ("a", 1 << 2 | ix.STEP_STARTED_AT),
               ("b:1", failed), ("b:2", b"y"), ("c", b"z")):
        assert index._append(entry, *op)
    assert index._append(entry, "b:*", None)  # a prefix forget
    assert index._append(entry, "c", None)
    assert index._append(entry, "c", started)
    assert entry.packed
    # setdefault for a marker, set for the rest, forgets in their place.
    assert entry.steps == {"a": b"x", "c": started}
    assert list(entry.steps) == ["a", "c"]
    assert ix.unpack_steps(ix.pack_steps(entry.steps)) == entry.steps


def test_a_table_packed_at_rest_is_a_map_and_operations_after_it_replay_in_order() -> None:
    started = (5 << 66) | ix.STEP_STARTED_AT  # beyond 64 bits: travels as ext BIG_INT
    rest = {"a": b"x", "b:1": b"y", "b:2": (3 << 40 | 7) << 2 | ix.STEP_FAILED_AT, "s": started}
    packed = ix.pack_steps(rest)
    assert packed[0] in (0x80 | len(rest), 0xDE)  # one msgpack map: msgpack builds it in C
    assert ix.unpack_steps(packed) == rest
    assert list(ix.unpack_steps(packed)) == list(rest)
    # Operations appended after the map (a small table at rest, then a forget
    # or a restart's new steps) apply on top of it, in order.
    index = Index()
    index.apply(r.make(r.CREATED, 1, "i", "wf", b""), 1)
    entry = index.instances["i"]
    entry.table = packed
    marker = 2 << 2 | ix.STEP_STARTED_AT
    for op in (("b:*", None), ("s", 1 << 2 | ix.STEP_STARTED_AT), ("n", marker), ("a", b"new")):
        assert index._append(entry, *op)
    assert entry.steps == {"a": b"new", "s": started, "n": marker}
    assert list(entry.steps) == ["a", "s", "n"]
    # A version 4 table (operations only, no map) reads as before.
    old = b"".join(msgpack.packb(x) for x in ("a", b"x", "c", b"z", "c", None))
    assert ix.unpack_steps(old) == {"a": b"x"}
    with pytest.raises(ValueError, match="ends after a key"):
        ix.unpack_steps(packed + msgpack.packb("dangling"))


def test_a_version_4_snapshot_is_refused() -> None:
    # Version 4's step tables never begin with a map, and an engine of
    # version 4 would misread a version 5 table: a snapshot of another
    # version is never loaded (that start scans the journal in full).
    index = Index()
    index.apply(r.make(r.CREATED, 1, "i", "wf", b""), 1)
    index.apply(r.make(r.STEP_DONE, 2, "i", "a", b"1"), 2)
    assert index.instances["i"].steps == {"a": b"1"}  # read, as a running instance's are
    index.apply(r.make(r.COMPLETED, 3, "i", b"out"), 3)
    assert index.instances["i"].table[0] == 0x81  # packed again at rest: a map
    with mock.patch.object(snap, "VERSION", 4):
        old = snap.encode(index, ("seg", 40, 4, 3), [])
    with pytest.raises(snap.SnapshotInvalid, match="version 4"):
        snap.decode_into(Index(), old)
    loaded = Index()
    snap.decode_into(loaded, snap.encode(index, ("seg", 40, 4, 3), []))
    assert loaded.instances["i"].steps == {"a": b"1"}


def test_reading_a_status_leaves_a_packed_table_packed() -> None:
    index = Index()
    index.apply(r.make(r.CREATED, 1, "i", "wf", b"in"), 1)
    index.apply(r.make(r.STEP_DONE, 2, "i", "a", b"1"), 2)
    index.apply(r.make(r.STEP_STARTED, 3, "i", "b"), 3)
    index.apply(r.make(r.COMPLETED, 4, "i", b"out"), 4)
    entry = index.instances["i"]
    assert entry.packed
    assert status_of("i", entry).steps == 1
    assert entry.packed


def test_repack_packs_materialised_tables_of_instances_at_rest_only() -> None:
    index = Index()
    for iid, last in (("done", r.COMPLETED), ("live", None), ("waiting", r.SUSPENDED)):
        index.apply(r.make(r.CREATED, 1, iid, "wf", b""), 1)
        index.apply(r.make(r.STEP_DONE, 2, iid, "a", b"1"), 2)
        if last == r.COMPLETED:
            index.apply(r.make(r.COMPLETED, 3, iid, b""), 3)
        elif last == r.SUSPENDED:
            index.apply(r.make(r.SUSPENDED, 3, iid, "k", None, None), 3)
            index.apply(r.make(r.PARKED, 3, iid, ["k"]), 4)
        index.instances[iid].steps  # noqa: B018 (a reader materialises it)
    assert index.repack() == 2
    assert [e.packed for e in index.instances.values()] == [True, False, True]
    assert index.repack(["done", "nobody"]) == 0


# -- snapshots, format 2 ----------------------------------------------------------------


async def append_all(storage: Storage, records: list[list[Any]], snapshots: bool) -> None:
    async with Journal(storage, segment_size=SEGMENT_SIZE, snapshots=snapshots) as journal:
        for rec in copy_records(records):
            await journal.append(rec)


async def open_index(storage: Storage, snapshots: bool) -> tuple[Index, bool]:
    index = Index()
    async with Journal(storage, index, segment_size=SEGMENT_SIZE, snapshots=snapshots) as j:
        j.keep_snapshot = False  # look, don't rewrite it
        resumed = j.resumed
    return index, resumed


def resolved(storage: Storage, index: Index) -> dict[str, dict[str, Any]]:
    """Answers with every location read back (and checked to hold its record)."""
    return answers(index, reader(storage, scan(storage)))


def parked_instances(now: int) -> list[list[Any]]:
    """An instance parked in each parked state (and one by version 1 records)."""
    out = []
    for iid, waits in (("s", "ss"), ("z", "tt"), ("w", "st"), ("v", "1")):
        out.append(r.make(r.CREATED, now, iid, "wf", b""))
        keys = []
        for n, kind in enumerate(waits):
            key = f"{kind}{n}"
            keys.append(key)
            if kind == "s":
                out.append(r.make(r.SUSPENDED, now, iid, key, f"status {n}", None))
            elif kind == "t":
                out.append(r.make(r.TIMER_SET, now, iid, key, now + 1_000 * (n + 1)))
            else:
                out.append(r.make(r.SUSPENDED_V1, now, iid, key, None, now + 5))
        if waits != "1":
            out.append(r.make(r.PARKED, now, iid, keys))
    return out


async def snapshot_round_trip(
    ops: list[Any], more: list[Any], parked: bool = False
) -> tuple[Index, Index]:
    made = history(ops)
    records = list(made.records) + (parked_instances(made.now) if parked else [])
    extra = made.run(more)
    storage = MemoryStorage()
    await append_all(storage, records, snapshots=False)
    # Compacted history: locations inside zstd blocks (beyond 64 bits), and
    # the snapshot that compaction writes.
    compact_offline(storage, now_ms=made.now, retention_ms=None)
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert view(fast) == view(full)
    # Records after it; a clean close writes a snapshot of all of it.
    await append_all(storage, extra, snapshots=True)
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    assert all(e.packed for e in fast.instances.values()), "load decodes no step table"
    full, _ = await open_index(storage, snapshots=False)
    assert view(fast) == view(full)
    assert resolved(storage, fast) == resolved(storage, full)
    return fast, full


@settings(max_examples=25, deadline=None)
@given(ops=OPS, more=st.lists(OP, max_size=20))
def test_a_snapshot_loads_the_full_scans_index(
    ops: list[tuple[int, int, int, int]], more: list[tuple[int, int, int, int]]
) -> None:
    trio.run(snapshot_round_trip, ops, more)


async def test_a_snapshot_keeps_big_locations_signals_timers_and_finished_and_running() -> None:
    # A long fixed history: every kind of entry shows up (checked below).
    rng = random.Random(4)
    ops = [(rng.randrange(108), rng.randrange(6), rng.randrange(8), rng.randrange(4))
           for _ in range(300)]
    more = [(0, 0, 0, 3), (9, 1, 1, 3)]  # after the compaction: two instances, large inputs
    fast, _ = await snapshot_round_trip(ops, more, parked=True)
    entries = list(fast.instances.values())
    states = {e.state for e in entries}
    assert states == {lc.RUNNING, lc.QUEUED, *lc.PARKED, *lc.FINISHED}
    locations = [v for e in entries for _, v in step_items(e) if type(v) is int]
    locations += [v for e in entries for v in (e.signals or {}).values() if type(v) is int]
    locations += [v for e in entries for v in (e.input, e.outcome) if type(v) is int]
    assert any(v >= BIG for v in locations), "no location inside a compacted block"
    assert any(v < BIG for v in locations), "no location in a plain segment"
    assert any(e.signals for e in entries)
    assert any(e.waits for e in entries)
    assert any(e.done_waits for e in entries)
    assert any(e.error for e in entries)


def encode_v1(index: Index, position: snap.Position, segments: list[snap.Covered]) -> bytes:
    """A snapshot as format 1 wrote it (dict tables, [high, low] for big locations)."""
    low = (1 << 64) - 1

    def out(value: Any) -> Any:
        return [value >> 64, value & low] if type(value) is int and value > low else value

    def table(t: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if t is None else {k: out(v) for k, v in t.items()}

    instances = {
        iid: [
            e.workflow, e.state, e.created_ms, e.updated_ms, out(e.input), out(e.outcome),
            list(e.error) if e.error is not None else None, e.pending, e.status,
            e.deadline_ms, table(e.steps), table(e.signals), e.waits, e.done_waits,
            e.last_seq,
        ]
        for iid, e in index.instances.items()
    }
    body = msgpack.packb(
        [1, index.inline_limit, list(position), [list(s) for s in segments], instances],
        use_bin_type=True,
    )
    return framed(body)


async def test_a_format_1_snapshot_is_refused_and_the_full_scan_gives_the_index() -> None:
    made = history([(n * 29 % 108, n % 6, n % 8, n % 4) for n in range(120)])
    storage = MemoryStorage()
    await append_all(storage, made.records, snapshots=True)
    valid = storage.read(snap.SNAPSHOT_NAME)
    position, segments = snap.decode_into(Index(), valid)
    full, _ = await open_index(storage, snapshots=False)
    old = encode_v1(full, position, segments)
    with pytest.raises(snap.SnapshotInvalid, match="version 1"):
        snap.decode_into(Index(), old)
    storage.remove(snap.SNAPSHOT_NAME)
    file = storage.create(snap.SNAPSHOT_NAME)
    file.write(old)
    file.sync()
    file.close()
    loaded, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    assert view(loaded) == view(full)
    # The next clean close replaces it with a format 2 snapshot.
    async with Journal(storage, Index(), segment_size=SEGMENT_SIZE, snapshots=True):
        pass
    again, resumed = await open_index(storage, snapshots=True)
    assert resumed
    assert view(again) == view(full)


def framed(body: bytes) -> bytes:
    return snap.MAGIC + struct.pack("<I", zlib.crc32(body)) + body


@pytest.mark.parametrize("enabled", [True, False])
def test_a_snapshot_load_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    index = Index()
    for n in range(50):
        index.apply(r.make(r.CREATED, 1, f"i{n}", "wf", b""), 1)
    data = snap.encode(index, ("seg", 40, 51, 50), [])
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        loaded = Index()
        snap.decode_into(loaded, data)
        assert gc.isenabled() is enabled
        # Failing inside the pause: undecodable, and an instance of the wrong shape.
        with pytest.raises(snap.SnapshotInvalid):
            snap.decode_into(Index(), framed(b"\xc1"))
        assert gc.isenabled() is enabled
        wrong = [
            snap.VERSION, ix.DEFAULT_INLINE_LIMIT, ["seg", 40, 2, 1], [], ["wf"], {"i": [0, 1]},
            {"schedules": {}, "debounces": [], "handovers": {}},
        ]
        with pytest.raises(snap.SnapshotInvalid, match="nine columns"):
            snap.decode_into(Index(), framed(msgpack.packb(wrong)))
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert view(loaded) == view(index)


# -- memory: the issue-5 budget, in small ----------------------------------------------


def finished_instances(index: Index, count: int) -> None:
    """The start-up benchmark's shape: created, 8 steps, completed, each."""
    loc = 0
    for i in range(count):
        iid = f"{i:012x}"
        recs = [r.make(r.CREATED, 1, iid, "filler", b"\x00\xc0")]
        recs += [r.make(r.STEP_DONE, 1, iid, f"step:{k}:v1", b"\x00\x2a") for k in range(8)]
        recs.append(r.make(r.COMPLETED, 1, iid, b"\x00\x08"))
        for rec in recs:
            loc += 64
            index.apply(rec, loc)


def traced_bytes(build: Any) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        made = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base, made
    finally:
        tracemalloc.stop()


def bytes_per_entry() -> tuple[float, float]:
    """What 3,000 finished instances of 8 steps cost per entry in memory,
    scanned and loaded from a snapshot (the test runs it in a process of
    its own: tracemalloc sees every thread, and a thread an earlier test
    left running would count)."""
    count = 3000
    entries = count * 9  # 8 steps and the instance

    def by_apply() -> Index:
        index = Index()
        finished_instances(index, count)
        return index

    scanned, index = traced_bytes(by_apply)
    data = snap.encode(index, ("seg", 40, 1, count * 10), [])

    def by_load() -> Index:
        index = Index()
        snap.decode_into(index, data)
        return index

    loaded, fresh = traced_bytes(by_load)
    assert view(fresh) == view(index)
    return scanned / entries, loaded / entries


def test_finished_instances_cost_under_100_bytes_per_entry_scanned_or_loaded() -> None:
    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", "import test_index_packing as t; print(*t.bytes_per_entry())"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])},
    )
    assert done.returncode == 0, done.stderr
    scanned, loaded = map(float, done.stdout.split())
    assert scanned <= 100, scanned
    assert loaded <= 100, loaded


# -- engine level ------------------------------------------------------------------------


class Counted:
    """A workflow whose steps count their executions."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def call(self, key: str) -> str:
        self.calls[key] = self.calls.get(key, 0) + 1
        return f"{key}#{self.calls[key]}"

    async def __call__(self, ctx: Context) -> list[str]:
        out = []
        for key in ("a:1", "a:2", "b:1", "big"):
            value = await ctx.step(key).run(self.call, key)
            out.append(value if key != "big" else value[:5])
        big = await ctx.step("big:value").run(lambda: "z" * 1000)  # stored by location
        return [*out, str(len(big))]


def engine_on(path: Path, workflow: Counted) -> Engine:
    engine = Engine.builder().open(path).compaction(False).build()
    engine.register("counted", workflow)
    return engine


async def test_a_restarted_packed_instance_replays_its_memoised_steps(tmp_path: Path) -> None:
    workflow = Counted()
    engine = engine_on(tmp_path / "j", workflow)
    async with engine:
        iid = await engine.invoke("counted", instance_id="x")
        first = await engine.wait(iid)
        assert engine._host.index.instances[iid].packed
    calls = dict(workflow.calls)
    # The next start loads the entry from the snapshot, still packed.
    engine = engine_on(tmp_path / "j", workflow)
    async with engine:
        assert engine._backend.journal is not None
        assert engine._backend.journal.resumed
        entry = engine._host.index.instances[iid]
        assert entry.packed
        assert engine.status(iid).steps == 5
        await engine.restart(iid)
        assert await engine.wait(iid) == first
        assert workflow.calls == calls  # every step replayed from the journal
        assert engine._host.index.instances[iid].packed  # finished again: packed again


async def test_a_forget_on_a_packed_instance_forgets_only_its_keys(tmp_path: Path) -> None:
    workflow = Counted()
    engine = engine_on(tmp_path / "j", workflow)
    async with engine:
        iid = await engine.invoke("counted", instance_id="x")
        await engine.wait(iid)
        entry = engine._host.index.instances[iid]
        assert entry.packed
        await engine.forget(iid, "a:*")
        assert entry.packed  # a finished instance stays packed
        assert list(entry.steps) == ["b:1", "big", "big:value"]
        entry.pack()
        await engine.restart(iid)
        result = await engine.wait(iid)
    assert result == ["a:1#2", "a:2#2", "b:1#1", "big#1", "1000"]
    assert workflow.calls == {"a:1": 2, "a:2": 2, "b:1": 1, "big": 1}
    # And the journal agrees after a restart (snapshot) and a full scan.
    storage_path = tmp_path / "j"
    engine = engine_on(storage_path, workflow)
    async with engine:
        assert engine._backend.journal is not None
        assert engine._backend.journal.resumed
        assert list(engine._host.index.instances[iid].steps) == [
            "b:1", "big", "big:value", "a:1", "a:2"
        ]
