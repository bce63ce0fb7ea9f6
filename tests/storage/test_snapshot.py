"""Index snapshots: a valid one speeds the start; any other gives the full scan's index."""

from __future__ import annotations

import os
import struct
import zlib
from array import array
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
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data[head:])
    body = unpacker.unpack()
    rests = data[head + unpacker.tell():]  # the finished instances' rests follow the body
    if isinstance(change, Columns):
        change(body[5])
    else:
        rows = _rows(body[5], rests)
        change(rows)
        body[5], rests = _columns(rows)
    packed = msgpack.packb(body, use_bin_type=True) + rests
    storage.remove(SNAPSHOT_NAME)
    file = storage.create(SNAPSHOT_NAME)
    file.write(snap.MAGIC + struct.pack("<I", zlib.crc32(packed)) + packed)
    file.sync()
    file.close()


# The snapshot's instances (snapshot_instances.py) as rows to change, and
# back: columns for all; a finished one's rest packed, a live one's by id.
FLAT = ("number", "state", "created_ms", "updated_ms", "parent")


def _rows(columns: list[Any], blob: bytes) -> dict[Any, dict[str, Any]]:
    ids, numbers, states, created, updated, parents, ends, _, live = columns
    cols = [array(code, data) for code, data in (("I", numbers), ("q", created),
                                                  ("q", updated), ("Q", ends))]
    rows, start = {}, 0
    for i, iid in enumerate(ids):
        end = cols[3][i]
        rows[iid] = {"number": cols[0][i], "state": states[i], "created_ms": cols[1][i],
                     "updated_ms": cols[2][i], "parent": parents[i],
                     "rest": blob[start:end] if iid not in live else None,
                     "live": live.get(iid)}
        start = end
    return rows


def _columns(rows: dict[Any, dict[str, Any]]) -> tuple[list[Any], bytes]:
    ends, end = array("Q"), 0
    for row in rows.values():
        end += len(row["rest"] or b"")
        ends.append(end)
    col = list(rows.values())
    return [list(rows), array("I", [r["number"] for r in col]).tobytes(),
            bytes(r["state"] for r in col), array("q", [r["created_ms"] for r in col]).tobytes(),
            array("q", [r["updated_ms"] for r in col]).tobytes(), [r["parent"] for r in col],
            ends.tobytes(), end,
            {iid: r["live"] for iid, r in rows.items() if r["live"] is not None}], b"".join(
                r["rest"] or b"" for r in col)


class Columns:
    """A change made to the columns themselves (what rows cannot express)."""

    def __init__(self, column: int, value: Any) -> None:
        self.column, self.value = column, value

    def __call__(self, columns: list[Any]) -> None:
        columns[self.column] = self.value(columns[self.column])


def _set(iid: str, field: str, value: Any) -> Any:
    def change(rows: dict[Any, dict[str, Any]]) -> None:
        row = rows[iid]
        if field in FLAT:
            row[field] = value
        elif row["live"] is not None:
            row["live"][REST.index(field)] = value
        else:
            rest = msgpack.unpackb(row["rest"], raw=False, strict_map_key=False)
            rest[REST.index(field)] = value
            row["rest"] = msgpack.packb(rest, use_bin_type=True)

    return change


# i0 is live (parked: waiting for approval); i2 failed; i3 completed.
CRAFTED = {
    "state 99": _set("i3", "state", 99),
    "a finished state made live": _set("i3", "state", 0),
    "no such workflow": _set("i3", "number", 7),
    "a time column shorter than the ids": Columns(3, lambda data: data[:-8]),
    "a state column of another type": Columns(2, list),
    "a state out of range": Columns(2, lambda data: data[:-1] + b"\x63"),
    "rests of another length than the body says": Columns(7, lambda size: size + 1),
    "a parent that is an int": _set("i3", "parent", 5),
    "a bool for an int": _set("i0", "last_seq", True),
    "a step table that is a map": _set("i0", "table", {}),
    "a pending key with no wait": _set("i0", "pending", ["ghost"]),
    "a wait of an unknown kind": _set("i0", "waits", {"approval": [5, None, None]}),
    "a signal that is a list": _set("i0", "signals", {"k": [1]}),
    "an error of three parts": _set("i0", "error", ["E", "m", "x"]),
    "a key that is an int": lambda rows: rows.__setitem__(5, dict(rows["i3"])),
    "a live one without its fields": lambda rows: rows["i0"].__setitem__("live", None),
    "a workflow number past the names": _set("i0", "number", 99),
}
# The same in a finished instance's rest: checked when it is first read.
CRAFTED_REST = {
    "a bool for an int": _set("i3", "last_seq", True),
    "a step table that is a map": _set("i3", "table", {}),
    "a signal that is a list": _set("i3", "signals", {"k": [1]}),
    "an error of three parts": _set("i2", "error", ["E", "m", "x"]),
    "a rest of the wrong length": lambda rows: rows["i3"].__setitem__(
        "rest", msgpack.packb([1, 2])),
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
    craft_snapshot(storage, lambda rows: None)  # decoded and packed again as it was
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
    untouched = bytes(fast.instances["i7"].rest or b"")
    assert untouched  # i7 finished: loaded packed
    for index in (fast, full):  # a restart of i3 changes fields of its rest first
        index.apply(make(RESTARTED, 10**13, "i3"), 0)
    assert fast.instances["i3"].rest is None
    data = snap.encode(fast, ("seg", 0, 1, 0), [])  # before anything reads i7's rest
    again = Index()
    snap.decode_into(again, data)
    assert bytes(again.instances["i7"].rest or b"") == untouched  # written back as it came
    assert again.instances["i3"].state == 0  # running again: all its fields
    assert answers(again) == answers(full)
    assert answers(fast) == answers(full)
