"""Compaction in a child process (_compact_process.py).

The child runs the same ``compact_prefix`` as the in-process path; what it
adds is a pipe (the request in, the new locations out), a lock it shares
with the engine, and a watch on its parent. So these tests check that the
child writes what the in-process path writes and hands back the same moves
(locations inside compacted blocks exceed 64 bits), that a live index
re-pointed with them answers as before, that failures come back as
ChildFailed with the child's reason, that an orphan writes nothing, and
that an engine on a real directory compacts through it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from support.compaction import (
    INLINE,
    CompactionWatch,
    answers,
    copy_records,
    history,
    reader,
    stored,
    without,
)

from memable_log import Context, Engine
from memable_log._compaction import child as cp
from memable_log._compaction import service as _maintenance
from memable_log._compaction.compactor import (
    compact_prefix,
    finish,
    moves,
    prefix_state,
)
from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r
from memable_log._core.format import compacted_name
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage import crashpoints as _crashpoints
from memable_log._storage.files import FileStorage
from memable_log._storage.segments import scan
from memable_log._storage.snapshot import SNAPSHOT_NAME

SEGMENT_SIZE = 4096
CREATED = r.make(r.CREATED, 1, "a", "w", b"\x00")


async def write(path: Path, records: list[list[Any]]) -> None:
    async with Journal(FileStorage(path), segment_size=SEGMENT_SIZE) as journal:
        for rec in copy_records(records):
            await journal.append_many([rec])


def sealed_upto(path: Path) -> int:
    return max(seg.number for seg in scan(FileStorage(path)).segments if seg.sealed)


@pytest.fixture
def journal_pair(tmp_path: Path) -> tuple[Path, list[list[Any]]]:
    """A journal on disk whose sealed prefix already holds a compacted segment."""
    rng = random.Random(7)
    ops = [(rng.randrange(108), rng.randrange(6), rng.randrange(8), rng.randrange(4))
           for _ in range(160)]
    records = history(ops).records
    path = tmp_path / "j"
    half = len(records) // 2
    trio.run(write, path, records[:half])
    storage = FileStorage(path)
    first = sealed_upto(path)
    compact_prefix(storage, first, INLINE)
    finish(storage, first)
    trio.run(write, path, records[half:])
    return path, records


def copy(path: Path, name: str) -> Path:
    target = path.parent / name
    shutil.copytree(path, target)
    return target


async def test_the_child_writes_and_moves_what_the_in_process_path_does(
    journal_pair: tuple[Path, list[list[Any]]],
) -> None:
    path, _ = journal_pair
    before = stored(FileStorage(path))
    upto = sealed_upto(path)
    here, there = copy(path, "here"), copy(path, "there")

    fresh, _, next_seq = compact_prefix(FileStorage(here), upto, INLINE)
    done = await cp.compact_in_child(FileStorage(there), upto, INLINE, (), True)

    expected = list(moves(fresh))
    got = list(done.moved)
    assert got == expected
    assert (done.next_seq, done.records) == (next_seq, fresh.records)
    # Some moves point inside compacted blocks: past msgpack's 64-bit integers.
    locs = [v for m in got for v in (m[1], m[2], *m[3].values(), *m[4].values()) if v]
    assert any(v >= 1 << 64 for v in locs)
    assert stored(FileStorage(there)) == before
    assert compacted_name(upto) in FileStorage(there).list()

    # A live index of the old files, re-pointed with the child's moves,
    # answers from the new file once the old ones are gone.
    live = Index(INLINE)
    scan(FileStorage(path), live.apply)
    live.repoint(got, upto)
    storage = FileStorage(there)
    finish(storage, upto)
    assert answers(live, reader(storage, scan(storage))) == before

    # The child wrote the snapshot of the compacted history: a start uses it.
    assert SNAPSHOT_NAME in storage.list()
    index = Index(INLINE)
    async with Journal(storage, index, snapshots=True) as journal:
        assert journal.resumed
        journal.maintenance.keep_snapshot = False
    assert answers(index, reader(storage, scan(storage))) == before


async def test_the_child_leaves_out_the_instances_it_is_told_to_drop(
    journal_pair: tuple[Path, list[list[Any]]],
) -> None:
    path, _ = journal_pair
    before = stored(FileStorage(path))
    upto = sealed_upto(path)
    live = Index(INLINE)
    scan(FileStorage(path), live.apply)
    _, result = prefix_state(FileStorage(path), upto, INLINE)
    # Only instances wholly in the prefix may go (as the engine chooses them).
    whole = sorted(
        iid for iid, e in live.instances.items()
        if e.state in lc.FINISHED and e.last_seq < result.next_seq
    )
    drop = set(whole[:3])
    assert drop
    done = await cp.compact_in_child(FileStorage(path), upto, INLINE, drop, False)
    list(done.moved)
    finish(FileStorage(path), upto)
    assert stored(FileStorage(path)) == without(before, drop)


async def test_a_failing_child_reports_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "j"
    await write(path, [CREATED])
    with pytest.raises(cp.ChildFailed, match=r"exit status 1: .*JournalCorrupt"):
        await cp.compact_in_child(FileStorage(path), 5, INLINE, (), False)
    assert not [n for n in FileStorage(path).list() if n.startswith("cmp-")]


def test_an_orphaned_child_writes_nothing(tmp_path: Path) -> None:
    """Its engine died before it started: it must not touch the journal."""
    path = tmp_path / "j"
    trio.run(write, path, [CREATED])
    names = FileStorage(path).list()
    watch, alive = os.pipe()
    os.close(alive)  # the engine is gone: its end of the watch pipe closed
    request = msgpack.packb({
        "path": str(path), "upto": 1, "inline_limit": INLINE, "drop": [],
        "snapshot": True, "watch": watch,
    })
    try:
        done = subprocess.run(
            [sys.executable, "-m", "memable_log._compaction.child"], input=request,
            capture_output=True, check=False, timeout=60, pass_fds=(watch,),
        )
    finally:
        os.close(watch)
    assert done.returncode == 3, done.stderr
    assert FileStorage(path).list() == names


async def test_the_child_holds_the_engines_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock descriptor goes to the child: the flock lasts while either lives."""
    path = tmp_path / "j"
    await write(path, [CREATED])
    storage = FileStorage(path)
    storage.lock()
    fd = storage.lock_fd
    assert fd is not None
    seen: dict[str, Any] = {}
    run_process = trio.run_process

    async def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return await run_process(*args, **kwargs)

    monkeypatch.setattr(trio, "run_process", spy)
    try:
        with pytest.raises(cp.ChildFailed):  # nothing sealed to compact
            await cp.compact_in_child(storage, 1, INLINE, (), False)
    finally:
        storage.unlock()
    assert seen["pass_fds"][1:] == (fd,)  # after the watch pipe's read end


async def test_an_engine_on_a_directory_compacts_in_a_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = cp.compact_in_child

    async def counted(storage: FileStorage, upto: int, *args: Any) -> cp.Rewritten:
        calls.append(upto)
        return await original(storage, upto, *args)

    monkeypatch.setattr(_maintenance, "compact_in_child", counted)

    async def work(ctx: Context) -> bytes:
        return await ctx.step("blob").run(lambda: bytes(range(256)) * 4)

    path = tmp_path / "j"
    engine = Engine.builder().open(path).segment_size(SEGMENT_SIZE).build()
    engine.register("work", work)
    async with engine:
        watch = CompactionWatch(engine)
        for i in range(12):
            await engine.wait(await engine.invoke("work", instance_id=f"i{i}"))
        upto = await watch.through_sealed()
        assert engine._backend.compaction is not None
        assert engine._backend.compaction.use_child
        # Every large value now lives in the compacted file or later.
        for entry in engine._host.index.instances.values():
            step = entry.steps["blob"]
            assert isinstance(step, int)
            segment = ix.unpack_loc(ix.entry_loc(step))[0]
            assert segment > upto or ix.loc_inner(ix.entry_loc(step))
        results = {f"i{i}": await engine.wait(f"i{i}") for i in range(12)}
    assert calls
    assert calls[-1] == upto
    engine = Engine.builder().open(path).compaction(False).build()
    engine.register("work", work)
    async with engine:
        assert {iid: await engine.wait(iid) for iid in results} == results
        assert all(engine._host.index.instances[i].state == lc.COMPLETED for i in results)


@pytest.mark.parametrize("point", ["compact.after-temp-sync", "compact.after-rename"])
async def test_a_child_killed_at_a_crash_point_leaves_a_journal_that_opens_the_same(
    journal_pair: tuple[Path, list[list[Any]]], point: str, capfd: pytest.CaptureFixture[str],
) -> None:
    """The arming goes to the child, which dies there; its line is relayed."""
    path, _ = journal_pair
    before = stored(FileStorage(path))
    upto = sealed_upto(path)
    _crashpoints.arm(point)  # this process never reaches the point itself
    try:
        with pytest.raises(cp.ChildFailed, match=f"exit status -9: memable crash point {point}"):
            await cp.compact_in_child(FileStorage(path), upto, INLINE, (), True)
    finally:
        _crashpoints.disarm()
    assert f"memable crash point {point}\n" in capfd.readouterr().err
    names = FileStorage(path).list()
    renamed = point == "compact.after-rename"
    assert (compacted_name(upto) in names) is renamed
    assert (compacted_name(upto) + ".tmp" in names) is not renamed
    assert SNAPSHOT_NAME not in names
    index = Index(INLINE)
    storage = FileStorage(path)
    async with Journal(storage, index):  # recovery removes the temp or the leftovers
        pass
    assert answers(index, reader(storage, scan(storage))) == before
    assert not [n for n in storage.list() if n.endswith(".tmp")]
