"""A journal written before preallocated segments opens, runs and reads as before.

tests/data/journal-v3-append/ was written by the library at commit c590af7
(tests/data/make_v3_append_journal.py says what it holds): format version
3, segments appended to and never zero-filled, the last one ending in a
torn tail with no zeros after it. This version cuts the torn tail, fills
the last segment's free space with zeros and writes over them; at close
the zeros go, and the journal reads as the old one plus what was added.
Since format version 4 that goes on in a new segment: the version 3 one
is sealed first (its seal without the batch end bit version 3 lacks).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from memable_log import Context, Engine, read_journal
from memable_log._core.format import segment_name
from memable_log._storage.files import FileStorage
from memable_log._storage.segments import scan

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "journal-v3-append"
LAST = segment_name(8)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal"
    shutil.copytree(FIXTURE, path)
    return path


async def steps(ctx: Context) -> int:
    raise AssertionError("every steps instance is finished")


async def waits(ctx: Context) -> str:
    first = await ctx.step("first").run(lambda: "two")  # memoised: "one"
    return f"{first} {await ctx.suspend('go')}"


def engine(path: Path) -> Engine:
    built = Engine.builder().open(path).segment_size(4096).compaction(False).build()
    built.register("steps", steps)
    built.register("waits", waits)
    return built


def test_the_fixture_is_in_the_old_layout() -> None:
    result = scan(FileStorage(FIXTURE, create=False))
    assert result.torn_bytes == 11
    assert result.torn_at == (FIXTURE / LAST).stat().st_size - 11
    assert [seg.sealed for seg in result.segments] == [True] * 7 + [False]


async def test_an_append_layout_journal_opens_and_goes_on_preallocated(journal: Path) -> None:
    before = [(v.seq, v.type, v.instance) for v in read_journal(journal)]
    assert len(before) == 40
    size = (journal / LAST).stat().st_size
    async with engine(journal) as running:
        assert running.status("done-5").state == "completed"
        assert running.status("waits").state == "suspended"
        await running.signal("waits", "waits", "go", "yes")
        assert await running.wait("waits") == "one yes"
        # The old last segment, torn tail cut, has zeros ahead of the new records.
        live = FileStorage(journal, create=False)
        result = scan(live)
        assert result.torn_at is None
        assert live.size(result.segments[-1].name) > result.segments[-1].end
    after = list(read_journal(journal))
    assert [(v.seq, v.type, v.instance) for v in after[:40]] == before
    assert [v.type for v in after[40:]][-1] == "completed"
    result = scan(FileStorage(journal, create=False))
    assert result.torn_at is None
    last = result.segments[-1]
    assert (journal / last.name).stat().st_size == last.end  # at rest: no zero tail
    old = (FIXTURE / LAST).read_bytes()[: size - 11]  # all but the torn tail, kept as it was
    assert (journal / LAST).read_bytes()[: size - 11] == old
    # Version 4 never appends to a version 3 segment: it sealed the old last
    # one (a seal version 3 reads: no batch end bit) and went on in version 4.
    versions = {seg.name: (seg.header.version, seg.sealed) for seg in result.segments}
    assert versions[LAST] == (3, True)
    later = [v for name, v in sorted(versions.items()) if name > LAST]
    assert {version for version, _ in later} == {4}
    assert later[-1] == (4, False)
