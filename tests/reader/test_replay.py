"""JournalReader.replay(): from the index snapshot when the engine would trust it, else the
whole journal; and one instance's values read by location, not by a pass over the journal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from memable_log import Context, Engine, JournalCorrupt, UnknownInstance
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.offline import OfflineJournal
from memable_log._storage.files import FileStorage
from memable_log.reader import decode_value, read_journal

BIG = "y" * 1000  # above the index's inline limit: stored by location


async def shop(ctx: Context) -> Any:
    await ctx.step("small").run(lambda: {"n": 1})
    await ctx.step("big").run(lambda: BIG)
    await ctx.publish("progress", BIG)
    await ctx.publish("tick", 2)
    return {"paid": BIG}


async def engine_journal(path: Path, ids: list[str]) -> None:
    """Instances run by an engine that then closes cleanly: it writes index.snap."""
    engine = Engine.builder().open(path).build()
    engine.register("shop", shop)
    async with engine:
        for iid in ids:
            await engine.invoke("shop", {"in": BIG}, instance_id=iid)
            await engine.wait(iid)


def append_after(path: Path, ids: list[str]) -> None:
    """Finished instances appended after the snapshot's position (no new snapshot)."""
    blob = Codec().encode(1)
    now = int(time.time() * 1000)
    with OfflineJournal(FileStorage(str(path), create=False)) as journal:
        for iid in ids:
            journal.append([r.make(r.CREATED, now, iid, "shop", blob),
                            r.make(r.STEP_DONE, now, iid, "small", blob, now, 1),
                            r.make(r.COMPLETED, now, iid, blob)])


async def test_replay_starts_from_the_snapshot_and_reads_only_what_follows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    await engine_journal(path, ["a", "b"])
    append_after(path, ["c", "d"])
    full = read_journal(path)
    truth = full.instances()
    reader = read_journal(path)
    replay = reader.replay()
    assert replay.resumed
    assert replay.instances() == truth
    assert [st.instance_id for st in truth] == ["a", "b", "c", "d"]
    assert replay.next_seq == full.next_seq
    assert reader.records == full.records
    assert reader.done
    for iid in ["a", "c"]:
        assert replay.steps(iid) == full_steps(path, iid)
        assert replay.status(iid) == next(st for st in truth if st.instance_id == iid)
    assert len(replay) == 4
    assert "c" in replay
    assert "zz" not in replay


def full_steps(path: Path, iid: str) -> Any:
    return read_journal(path).steps(iid)


async def test_a_snapshot_the_engine_would_not_trust_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "j"
    await engine_journal(path, ["a"])
    append_after(path, ["b"])
    truth = read_journal(path).instances()
    snap = path / "index.snap"
    data = bytearray(snap.read_bytes())
    data[-3] ^= 0xFF  # its checksum no longer holds
    snap.write_bytes(bytes(data))
    replay = read_journal(path).replay()
    assert not replay.resumed
    assert replay.instances() == truth


async def test_damage_in_what_the_snapshot_covers_is_found_by_the_full_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    await engine_journal(path, ["a"])
    segment = path / "seg-0000000001.mlog"
    data = bytearray(segment.read_bytes())
    data[80] ^= 0xFF  # inside a record the snapshot covers: it is stale now
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=r"seg-0000000001\.mlog"):
        read_journal(path).replay()


async def test_an_instances_values_by_location(tmp_path: Path) -> None:
    path = tmp_path / "j"
    await engine_journal(path, ["a"])
    append_after(path, ["b"])
    replay = read_journal(path).replay()
    step_value = replay.step_value("a", "big")
    assert step_value is not None
    assert decode_value(step_value) == BIG
    small = replay.step_value("a", "small")
    assert small is not None
    assert decode_value(small) == {"n": 1}
    assert replay.step_value("a", "nope") is None
    assert decode_value(replay.input("a")) == {"in": BIG}
    result = replay.result("a")
    assert result is not None
    assert decode_value(result) == {"paid": BIG}
    assert [(k, decode_value(v)) for k, _, v in replay.events("a")] == [
        ("progress", BIG), ("tick", 2)]
    assert decode_value(replay.input("b")) == 1
    with pytest.raises(UnknownInstance):
        replay.input("zz")
