"""operations.status and operations.instances: what the engine would say, read unlocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import memable_log.operations
from memable_log import (
    Context,
    Engine,
    InstanceStatus,
    JournalCorrupt,
    JournalReader,
    NotAJournal,
    UnknownInstance,
    WorkflowFailed,
    operations,
)
from memable_log._storage.files import FileStorage
from memable_log.testing import wait_for_state


async def waiter(ctx: Context) -> Any:
    await ctx.step("prep").run(lambda: "ready")
    return await ctx.suspend("go", status="waiting for go")


async def sleeper(ctx: Context) -> None:
    await ctx.timer("nap", 3600)


async def broken(ctx: Context) -> None:
    raise RuntimeError("broken")


async def done(ctx: Context) -> int:
    return int(await ctx.step("one").run(lambda: 1))


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    for name, fn in [("waiter", waiter), ("sleeper", sleeper), ("broken", broken),
                     ("done", done)]:
        engine.register(name, fn)
    return engine


async def populate(path: Path) -> list[InstanceStatus]:
    """One instance in each of several states; returns what the engine says."""
    engine = make_engine(path)
    async with engine:
        await engine.invoke("done", instance_id="d")
        await engine.invoke("broken", instance_id="b")
        await engine.invoke("waiter", instance_id="w")
        await engine.invoke("sleeper", instance_id="s")
        await engine.wait("d")
        with pytest.raises(WorkflowFailed):
            await engine.wait("b")
        await wait_for_state(engine, "w", "suspended")
        await wait_for_state(engine, "s", "sleeping")
        return engine.instances()


async def test_instances_and_status_are_what_the_engine_says(journal_dir: Path) -> None:
    expected = await populate(journal_dir)
    assert [st.state for st in expected] == ["completed", "failed", "suspended", "sleeping"]
    assert operations.instances(journal_dir) == expected
    assert operations.instances(journal_dir, state="suspended") == [expected[2]]
    assert operations.instances(journal_dir, state="cancelled") == []
    for st in expected:
        assert operations.status(journal_dir, st.instance_id) == st


async def test_reads_while_an_engine_runs_see_its_writes(journal_dir: Path) -> None:
    await populate(journal_dir)
    engine = make_engine(journal_dir)
    async with engine:
        await engine.signal("waiter", "w", "go", "now")
        await engine.wait("w")
        read = await trio.to_thread.run_sync(operations.status, journal_dir, "w")
        assert read == engine.status("w")
        assert read.state == "completed"
        listed = await trio.to_thread.run_sync(operations.instances, journal_dir)
        assert listed == engine.instances()


async def test_unknown_instance_and_unknown_state_are_refused(journal_dir: Path) -> None:
    await populate(journal_dir)
    with pytest.raises(UnknownInstance, match="'nope'"):
        operations.status(journal_dir, "nope")
    with pytest.raises(ValueError, match="unknown state 'asleep'"):
        operations.instances(journal_dir, state="asleep")


def test_reads_of_a_path_that_is_not_a_journal_raise_not_a_journal(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "missing", empty):
        with pytest.raises(NotAJournal):
            operations.instances(path)
        with pytest.raises(NotAJournal):
            operations.status(path, "a1")


def test_a_journal_with_only_its_lock_file_is_empty(tmp_path: Path) -> None:
    (tmp_path / "LOCK").touch()
    assert operations.instances(tmp_path) == []
    with pytest.raises(UnknownInstance):
        operations.status(tmp_path, "a1")


async def test_reads_of_a_damaged_journal_raise_journal_corrupt(journal_dir: Path) -> None:
    await populate(journal_dir)
    segment = journal_dir / "seg-0000000001.mlog"
    data = bytearray(segment.read_bytes())
    data[60] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=r"seg-0000000001\.mlog"):
        operations.instances(journal_dir)


class _CompactedUnderfoot(FileStorage):
    """Storage whose first segment read comes after a compaction deleted it."""

    def read(self, name: str) -> bytes:
        operations.compact(self.path)
        return super().read(name)


async def test_read_that_a_compaction_disturbs_is_read_again(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await populate(journal_dir)
    # Without the index snapshot the read scans every segment (with it, it
    # would read only what follows the snapshot, and seg-1 not at all).
    (journal_dir / "index.snap").unlink()
    readers: list[JournalReader] = []

    def read_journal(path: Path) -> JournalReader:
        # The first read lists seg-1, then a compaction replaces and deletes
        # it before it is read: FileNotFoundError, as under a running engine.
        storage = FileStorage(str(path), create=False)
        if not readers:
            storage = _CompactedUnderfoot(str(path), create=False)
        readers.append(JournalReader(storage))
        return readers[-1]

    monkeypatch.setattr(memable_log.operations, "read_journal", read_journal)
    assert operations.instances(journal_dir) == expected
    assert len(readers) == 2
    assert (journal_dir / "cmp-0000000001.mlog").exists()
