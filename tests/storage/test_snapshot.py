"""Index snapshots: a valid one speeds the start; any other gives the full scan's index."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from memable_log import Context, Engine
from memable_log._compaction.compactor import compact_offline
from memable_log._core.index import Index
from memable_log._core.records import RESTARTED, STEP_DONE, make
from memable_log._core.rest import REST, MalformedRest
from memable_log._journal.journal import Journal
from memable_log._storage import snapshot as snap
from memable_log._storage.files import FileStorage, Storage
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.snapshot import SNAPSHOT_NAME


def answers(index: Index) -> dict[str, Any]:
    """Everything a query can learn from an index (locations included)."""
    return {
        iid: (
            e.workflow, e.state, e.created_ms, e.updated_ms, e.input, e.outcome, e.error,
            e.pending, e.status, e.deadline_ms, dict(e.steps), e.signals, e.waits,
            e.done_waits, e.last_seq,
        )
        for iid, e in index.instances.items()
    }


async def flow(ctx: Context) -> Any:
    small = await ctx.step("small").run(lambda: ctx.input)
    big = await ctx.step("big").run(lambda: "y" * 2000)  # above the inline limit
    if ctx.input % 4 == 0:
        await ctx.suspend("approval", status="waiting", timeout=3600)
    if ctx.input % 4 == 1:
        await ctx.timer("cooldown", 7200)
    if ctx.input % 4 == 2:
        raise ValueError(f"bad {small}")
    return [small, len(big)]


async def build(storage: Storage, instances: int = 40, segment_size: int = 8192) -> None:
    engine = Engine.builder().in_memory().build()
    engine._backend.make_storage = lambda: storage  # the same storage, memory or disk
    engine._backend.segment_size = segment_size
    engine.register("flow", flow)
    async with engine:
        for n in range(instances):
            await engine.invoke("flow", n, instance_id=f"i{n}")
        for n in range(instances):
            if n % 4 == 3:
                await engine.wait(f"i{n}")
    # The engine writes no snapshot at close while a background compaction is
    # under way: a journal opened alone writes one of the journal as it is.
    async with Journal(storage, Index(), snapshots=True):
        pass


async def open_index(storage: Storage, snapshots: bool) -> tuple[Index, bool]:
    index = Index()
    async with Journal(storage, index, snapshots=snapshots) as journal:
        journal.maintenance.keep_snapshot = False  # look, don't rewrite it
        resumed = journal.resumed
    return index, resumed


@pytest.fixture(params=["memory", "disk"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return MemoryStorage()
    return FileStorage(tmp_path / "journal")


async def test_a_clean_exit_writes_a_snapshot_that_gives_the_full_scans_index(
    storage: Storage,
) -> None:
    await build(storage)
    assert SNAPSHOT_NAME in storage.list()
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, resumed_full = await open_index(storage, snapshots=False)
    assert not resumed_full
    assert answers(fast) == answers(full)
    assert len(full.instances) == 40


async def test_a_stale_snapshot_resumes_and_scans_the_records_after_it(
    storage: Storage,
) -> None:
    await build(storage)
    async with Journal(storage, Index(), snapshots=False) as journal:
        journal.maintenance.keep_snapshot = False
        for n in range(30):
            await journal.append(make(STEP_DONE, 5, "i3", f"later-{n}", b"\x00\x01"))
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)
    assert "later-29" in fast.instances["i3"].steps


def damage_snapshot(storage: Storage, how: str) -> None:
    data = bytearray(storage.read(SNAPSHOT_NAME))
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    elif how == "truncate":
        del data[len(data) // 3 :]
    elif how == "zeros":
        data[:] = bytes(len(data))
    storage.remove(SNAPSHOT_NAME)
    file = storage.create(SNAPSHOT_NAME)
    file.write(bytes(data))
    file.sync()
    file.close()


@pytest.mark.parametrize("how", ["flip", "truncate", "zeros", "missing"])
async def test_corrupt_or_missing_snapshots_fall_back_to_the_full_scan(
    storage: Storage, how: str
) -> None:
    await build(storage)
    full, _ = await open_index(storage, snapshots=False)
    if how == "missing":
        storage.remove(SNAPSHOT_NAME)
    else:
        damage_snapshot(storage, how)
    fast, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    assert answers(fast) == answers(full)


async def test_a_snapshot_taken_before_a_compaction_is_not_used(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "journal")
    await build(storage)
    old = storage.read(SNAPSHOT_NAME)
    compact_offline(storage, now_ms=0, retention_ms=None)
    # Put the pre-compaction snapshot back: it names segments now gone.
    storage.remove(SNAPSHOT_NAME)
    file = storage.create(SNAPSHOT_NAME)
    file.write(old)
    file.sync()
    file.close()
    fast, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)


async def test_the_snapshot_after_an_offline_compaction_is_used(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "journal")
    await build(storage)
    compact_offline(storage, now_ms=0, retention_ms=None)
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)


async def test_damage_in_a_segment_the_snapshot_covers_is_still_reported(
    tmp_path: Path,
) -> None:
    from memable_log import JournalCorrupt

    storage = FileStorage(tmp_path / "journal")
    await build(storage, segment_size=1 << 20)
    segment = next(n for n in storage.list() if n.startswith("seg-"))
    path = tmp_path / "journal" / segment
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside an early record, well before the snapshot's position
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        await open_index(storage, snapshots=True)
    assert segment in info.value.file


async def test_a_snapshot_taken_with_another_inline_limit_is_not_used(
    storage: Storage,
) -> None:
    await build(storage)
    index = Index(inline_limit=8)
    async with Journal(storage, index, snapshots=True) as journal:
        journal.maintenance.keep_snapshot = False
        assert not journal.resumed
    full = Index(inline_limit=8)
    async with Journal(storage, full, snapshots=False) as journal:
        journal.maintenance.keep_snapshot = False
    assert answers(index) == answers(full)


async def test_the_engine_answers_the_same_from_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    await build(FileStorage(path))
    results = []
    for snapshots in (True, False):
        engine = Engine.builder().open(path).snapshots(snapshots).build()
        engine.register("flow", flow)
        async with engine:
            results.append([
                (s.instance_id, s.state, s.status, s.key, s.deadline, s.steps, s.error)
                for s in engine.instances()
            ])
            assert await engine.wait("i3") == [3, 2000]
    assert results[0] == results[1]
    assert SNAPSHOT_NAME in os.listdir(path)


async def test_an_engine_stopped_mid_compaction_writes_no_misleading_snapshot(
    tmp_path: Path,
) -> None:
    # A snapshot is only written when the live index matches the files.
    storage = FileStorage(tmp_path / "journal")
    await build(storage)
    index = Index()
    async with Journal(storage, index, snapshots=True) as journal:
        journal.maintenance.keep_snapshot = False
    storage.remove(SNAPSHOT_NAME)
    async with Journal(storage, Index(), snapshots=True) as journal:
        journal.maintenance.keep_snapshot = False
    assert SNAPSHOT_NAME not in storage.list()
    trio.lowlevel.current_task()  # (keeps this an async test for trio mode)


def craft_snapshot(storage: Storage, change: Any) -> None:
    """Rewrite the snapshot with one instance's fields changed, its crc valid."""
    data = storage.read(SNAPSHOT_NAME)
    head = len(snap.MAGIC) + 4
    body = msgpack.unpackb(data[head:], raw=False, strict_map_key=False)
    change(body[5])
    packed = msgpack.packb(body, use_bin_type=True)
    storage.remove(SNAPSHOT_NAME)
    file = storage.create(SNAPSHOT_NAME)
    file.write(snap.MAGIC + struct.pack("<I", zlib.crc32(packed)) + packed)
    file.sync()
    file.close()


# An instance's fields in the snapshot: a live one has them all; a finished
# one has FLAT, then its rest packed (_core/rest.py).
FULL = ("number", "state", "created_ms", "updated_ms", "input", "outcome", "error", "pending",
        "status", "deadline_ms", "table", "signals", "waits", "done_waits", "last_seq",
        "events", "status_calls", "meta", "tries", "parent", "flow")
FLAT = ("number", "state", "created_ms", "updated_ms", "parent")


def _set(iid: str, field: str, value: Any) -> Any:
    def change(instances: dict[str, list[Any]]) -> None:
        fields = instances[iid]
        if len(fields) == len(FULL):
            fields[FULL.index(field)] = value
        elif field in FLAT:
            fields[FLAT.index(field)] = value
        else:
            rest = msgpack.unpackb(fields[-1], raw=False, strict_map_key=False)
            rest[REST.index(field)] = value
            fields[-1] = msgpack.packb(rest, use_bin_type=True)

    return change


# i0 is live (parked: waiting for approval); i2 failed; i3 completed.
CRAFTED = {
    "state 99": _set("i3", "state", 99),
    "a finished state made live": _set("i3", "state", 0),
    "no such workflow": _set("i3", "number", 7),
    "a time that is text": _set("i3", "created_ms", "noon"),
    "a parent that is an int": _set("i3", "parent", 5),
    "a bool for an int": _set("i0", "last_seq", True),
    "a step table that is a map": _set("i0", "table", {}),
    "a pending key with no wait": _set("i0", "pending", ["ghost"]),
    "a wait of an unknown kind": _set("i0", "waits", {"approval": [5, None, None]}),
    "a signal that is a list": _set("i0", "signals", {"k": [1]}),
    "an error of three parts": _set("i0", "error", ["E", "m", "x"]),
    "a key that is an int": lambda instances: instances.__setitem__(5, instances["i3"]),
}
# The same in a finished instance's rest: checked when it is first read.
CRAFTED_REST = {
    "a bool for an int": _set("i3", "last_seq", True),
    "a step table that is a map": _set("i3", "table", {}),
    "a signal that is a list": _set("i3", "signals", {"k": [1]}),
    "an error of three parts": _set("i2", "error", ["E", "m", "x"]),
    "a rest of the wrong length": lambda instances: instances["i3"].__setitem__(
        -1, msgpack.packb([1, 2])),
}


@pytest.mark.parametrize("how", sorted(CRAFTED))
async def test_a_crafted_snapshot_with_a_valid_crc_falls_back_to_the_full_scan(
    tmp_path: Path, how: str
) -> None:
    storage = MemoryStorage()
    await build(storage, instances=8)
    full, _ = await open_index(storage, snapshots=False)
    assert full.instances["i0"].state == 1
    assert full.instances["i0"].pending == ("approval",)
    craft_snapshot(storage, CRAFTED[how])
    fast, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    assert answers(fast) == answers(full)


@pytest.mark.parametrize("how", sorted(CRAFTED_REST))
async def test_a_crafted_rest_of_a_finished_instance_is_refused_when_first_read(
    tmp_path: Path, how: str
) -> None:
    storage = MemoryStorage()
    await build(storage, instances=8)
    full, _ = await open_index(storage, snapshots=False)
    craft_snapshot(storage, CRAFTED_REST[how])
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    iid = "i2" if how == "an error of three parts" else "i3"
    entry = fast.instances[iid]
    assert (entry.workflow, entry.state) == (full.instances[iid].workflow,
                                             full.instances[iid].state)
    for _ in range(2):  # each read says so, and nothing of it lands in the entry
        with pytest.raises(MalformedRest, match=r"delete index\.snap"):
            _ = entry.outcome
    del fast.instances[iid], full.instances[iid]
    assert answers(fast) == answers(full)


async def test_an_untouched_snapshot_passes_the_same_checks(tmp_path: Path) -> None:
    storage = MemoryStorage()
    await build(storage, instances=8)
    craft_snapshot(storage, lambda instances: None)  # decoded and packed again as it was
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)


async def test_a_finished_instance_loads_packed_and_is_decoded_at_its_first_read(
    storage: Storage,
) -> None:
    await build(storage)
    fast, resumed = await open_index(storage, snapshots=True)
    full, _ = await open_index(storage, snapshots=False)
    assert resumed
    entry = fast.instances["i3"]
    assert entry.rest is not None  # loaded packed
    assert (entry.workflow, entry.state, entry.parent) == ("flow", 3, None)
    assert entry.rest is not None  # those fields are not the rest
    assert entry.outcome == full.instances["i3"].outcome
    assert entry.rest is None  # decoded, once
    assert answers(fast) == answers(full)


async def test_a_record_applied_to_a_packed_entry_and_the_snapshot_written_after(
    storage: Storage,
) -> None:
    await build(storage)
    fast, _ = await open_index(storage, snapshots=True)
    full, _ = await open_index(storage, snapshots=False)
    untouched = fast.instances["i7"].rest
    for index in (fast, full):  # a restart of i3 changes fields of its rest first
        index.apply(make(RESTARTED, 10**13, "i3"), 0)
    assert fast.instances["i3"].rest is None
    assert answers(fast) == answers(full)
    data = snap.encode(fast, ("seg", 0, 1, 0), [])
    again = Index()
    snap.decode_into(again, data)
    assert again.instances["i7"].rest == untouched  # written back as it came
    assert again.instances["i3"].state == 0  # running again: all its fields
    assert answers(again) == answers(full)
