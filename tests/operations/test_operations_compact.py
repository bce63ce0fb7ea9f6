"""operations.compact: compacts a journal no engine holds, and says what it did."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from memable_log import Context, Engine, JournalLocked, NotAJournal, UnknownInstance, operations
from memable_log.testing import wait_for_state

SEGMENT_SIZE = 4096


async def job(ctx: Context) -> int:
    for i in range(3):
        await ctx.step(f"s{i}").run(lambda: b"x" * 600)
    return int(ctx.input)


async def waiter(ctx: Context) -> Any:
    return await ctx.suspend("go")


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).segment_size(SEGMENT_SIZE).compaction(False).build()
    engine.register("job", job)
    engine.register("waiter", waiter)
    return engine


async def populate(path: Path) -> None:
    engine = make_engine(path)
    async with engine:
        for n in range(6):
            await engine.invoke("job", n, instance_id=f"job{n}")
        for n in range(6):
            await engine.wait(f"job{n}")
        await engine.forget("job0", "s*")
        await engine.restart("job0")
        await engine.wait("job0")
        await engine.invoke("waiter", instance_id="w")
        await wait_for_state(engine, "w", "suspended")


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".mlog"))


async def test_compact_reports_what_it_did_and_changes_no_answer(journal_dir: Path) -> None:
    await populate(journal_dir)
    before = operations.instances(journal_dir)
    result = operations.compact(journal_dir)
    assert result.bytes_after < result.bytes_before
    assert result.records_after < result.records_before
    assert result.instances_dropped == 0
    assert segment_files(journal_dir) == [
        f"cmp-{result.upto:010d}.mlog", f"seg-{result.upto + 1:010d}.mlog"
    ]
    assert operations.instances(journal_dir) == before
    again = operations.compact(journal_dir)
    assert (again.records_before, again.records_after) == (result.records_after,) * 2
    assert operations.instances(journal_dir) == before


@pytest.mark.parametrize("retention", [0, timedelta(0)])
async def test_compact_with_zero_retention_drops_finished_instances(
    journal_dir: Path, retention: float | timedelta
) -> None:
    await populate(journal_dir)
    result = operations.compact(journal_dir, retention=retention)
    assert result.instances_dropped == 6
    assert [st.instance_id for st in operations.instances(journal_dir)] == ["w"]
    with pytest.raises(UnknownInstance):
        operations.status(journal_dir, "job3")


async def test_compact_with_a_long_retention_keeps_recent_instances(journal_dir: Path) -> None:
    await populate(journal_dir)
    result = operations.compact(journal_dir, retention=timedelta(days=30))
    assert result.instances_dropped == 0
    assert len(operations.instances(journal_dir)) == 7


async def test_compact_refuses_while_an_engine_holds_the_journal(journal_dir: Path) -> None:
    await populate(journal_dir)
    names = segment_files(journal_dir)
    engine = make_engine(journal_dir)
    async with engine:
        with pytest.raises(JournalLocked, match="locked by another process"):
            operations.compact(journal_dir)
        await engine.signal("waiter", "w", "go", "still here")
        assert await engine.wait("w") == "still here"
    assert segment_files(journal_dir)[: len(names)] == names


async def test_negative_retention_is_refused_before_anything_is_read(
    journal_dir: Path,
) -> None:
    await populate(journal_dir)
    names = segment_files(journal_dir)
    with pytest.raises(ValueError, match="retention"):
        operations.compact(journal_dir, retention=-1)
    assert segment_files(journal_dir) == names


def test_compact_of_a_path_that_is_not_a_journal_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAJournal, match="no such file"):
        operations.compact(tmp_path / "missing")
    with pytest.raises(NotAJournal, match="no segment files"):
        operations.compact(empty)
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "missing").exists()
