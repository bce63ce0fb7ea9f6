"""The snapshot carries the engine-level tables (schedules, debounce); one
written before them (six items) is refused and the start scans in full."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import trio
from trio.testing import MockClock

from memable_log import Context, Engine, ManualClock, MemoryStorage
from memable_log._compaction.compactor import compact_offline
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage import snapshot as snap
from memable_log._storage.files import Storage
from memable_log._storage.snapshot import SNAPSHOT_NAME

START = 1_700_000_000.0


async def report(ctx: Context) -> Any:
    return ctx.input


async def build(storage: MemoryStorage, clock: ManualClock) -> None:
    """A journal with ticks started, a schedule removed, and debounce keys
    both started and pending (a large input too: kept inline)."""
    engine = Engine.builder().in_memory(storage).clock(clock).build()
    engine.register("report", report)
    async with engine:
        await engine.schedule("every", "report", cron="* * * * *", input="x" * 2000,
                              catch_up=True)
        await engine.schedule("gone", "report", cron="*/2 * * * *")
        await engine.debounce("report", "done", delay=1, input=1)
        await trio.sleep(150)
        await engine.unschedule("gone")
        await engine.debounce("report", "pending", delay=3600, input="y" * 2000)


async def open_index(storage: Storage, snapshots: bool) -> tuple[Index, bool]:
    index = Index()
    async with Journal(storage, index, snapshots=snapshots) as journal:
        journal.maintenance.keep_snapshot = False
        resumed = journal.resumed
    return index, resumed


def tables(index: Index) -> tuple[Any, ...]:
    return dict(index.schedules), dict(index.debounces), list(index.instances), index.records


async def test_a_clean_exit_snapshot_carries_schedules_and_debounce(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    await build(storage, ManualClock(START))
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert tables(fast) == tables(full)
    assert set(fast.schedules) == {"every"}
    assert fast.debounces["report", "done"].due_ms is None
    assert fast.debounces["report", "pending"].input == full.debounces["report", "pending"].input


async def test_compaction_keeps_them_and_its_snapshot_carries_them(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    clock = ManualClock(START)
    await build(storage, clock)
    before, _ = await open_index(storage, snapshots=False)
    # Retention 0: every finished tick and debounce instance is dropped,
    # their schedule's and key's counters stay.
    compact_offline(storage, now_ms=int(clock.now() * 1000) + 1, retention_ms=0)
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert tables(fast) == tables(full)
    assert (full.schedules, full.debounces) == (before.schedules, before.debounces)
    assert full.instances == {}
    # The engine goes on where it was: the next tick, the next n.
    engine = Engine.builder().in_memory(storage).clock(clock).build()
    engine.register("report", report)
    async with engine:
        assert await engine.debounce("report", "done", delay=1) == "report~done~2"
        await trio.sleep(60)
        assert [iid for iid in engine._host.index.instances if "@" in iid] == [
            "every@2023-11-14T22:16:00Z"
        ]


def body_of(data: bytes) -> list[Any]:
    """The snapshot's msgpack body (the finished instances' rests follow it)."""
    head = len(snap.MAGIC) + 4
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data[head:])
    return list(unpacker.unpack())


async def test_a_snapshot_without_the_tables_falls_back_to_the_full_scan(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    await build(storage, ManualClock(START))
    body = body_of(storage.read(SNAPSHOT_NAME))
    assert len(body) == 7
    old = msgpack.packb(body[:6], use_bin_type=True)  # as written before schedules
    snap.write(storage, snap.MAGIC + struct.pack("<I", zlib.crc32(old)) + old)
    index = Index()
    assert snap.load(storage, index) is None
    assert (index.instances, index.schedules, index.debounces) == ({}, {}, {})
    fast, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    full, _ = await open_index(storage, snapshots=False)
    assert tables(fast) == tables(full)
    assert fast.schedules
    assert fast.debounces
