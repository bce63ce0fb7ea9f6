"""A journal written by format version 1 opens, reads and runs as it did.

tests/data/journal-v1/ was written by the library at format version 1
(tests/data/make_v1_journal.py says what it holds): instances suspended,
sleeping, on two concurrent timers, with an early signal, some of them in a
compacted segment as version 1 state images. Version 2 reads every one of
them as version 1 meant it, then writes only version 2 records, in a new
segment: a version 1 reader stops at that segment's header with a clear
message instead of misreading it.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from support.suspend import finish, until
from trio.testing import MockClock

from memable_log import Context, Engine, ManualClock, Wait, read_journal
from memable_log._core import format as fmt
from memable_log._core.format import NewerFormatError

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "journal-v1"
START = 1_700_000_000.0  # the fixture's ManualClock
DAY = 86400.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(START + seconds, tz=UTC)


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal"
    shutil.copytree(FIXTURE, path)
    return path


def headers(path: Path) -> dict[str, int]:
    return {
        p.name: fmt.unpack_header(p.read_bytes()[: fmt.HEADER_SIZE]).version
        for p in sorted(path.glob("*.mlog"))
    }


def engine_for(path: Path, clock: ManualClock, calls: list[str]) -> Engine:
    def noted(name: str, value: Any) -> Any:
        calls.append(name)
        return value

    async def approval(ctx: Context) -> str:
        await ctx.step("draft").run(noted, "draft", "text")
        return str(await ctx.suspend("approve", status="check it", timeout=2 * DAY))

    async def nap(ctx: Context) -> str:
        await ctx.step("before").run(noted, "before", 1)
        await ctx.timer("nap", DAY)
        return "rested"

    async def early(ctx: Context) -> str:
        first = await ctx.suspend("go")
        second = await ctx.suspend("later")
        return f"{first}-{second}"

    async def pair(ctx: Context) -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.timer, "t1", 3 * DAY)
            nursery.start_soon(ctx.timer, "t2", DAY)
        return "both"

    async def done(ctx: Context) -> int:
        return 42

    async def gone(ctx: Context) -> None:
        await ctx.timer("wait", DAY)

    engine = Engine.builder().open(path).clock(clock).compaction(False).build()
    for name, fn in [("approval", approval), ("nap", nap), ("early", early), ("pair", pair),
                     ("done", done), ("gone", gone)]:
        engine.register(name, fn)  # type: ignore[arg-type]
    return engine


def test_the_fixture_is_version_1_with_a_compacted_segment() -> None:
    assert headers(FIXTURE) == {"cmp-0000000001.mlog": 1, "seg-0000000002.mlog": 1}
    types = {view.type for view in read_journal(FIXTURE)}
    assert {"suspended_v1", "timer_set_v1", "state_image_v1"} <= types
    assert not types & {"suspended", "timer_set", "parked", "state_image"}


async def test_a_version_1_journal_reads_as_version_1_meant_it(
    journal: Path, mock_clock: MockClock
) -> None:
    # A journal on disk: commits wait for a thread, so trio's clock moves
    # only when the test says (an autojump clock would jump during them).
    calls: list[str] = []
    engine = engine_for(journal, ManualClock(START), calls)
    async with engine:
        got = {s.instance_id: s for s in engine.instances()}
        assert {iid: s.state for iid, s in got.items()} == {
            "approval": "suspended", "nap": "sleeping", "done": "completed",
            "early": "suspended", "pair": "sleeping", "gone": "cancelled",
        }
        assert got["approval"].waits == (Wait("signal", "approve", at(2 * DAY)),)
        assert got["approval"].status == "check it"
        assert got["nap"].waits == (Wait("timer", "nap", at(DAY)),)
        # Version 1 slept until the earliest of its concurrent timers.
        assert got["pair"].waits == (Wait("timer", "t1", at(3 * DAY)), Wait("timer", "t2", at(DAY)))
        assert got["pair"].deadline == at(DAY)
        assert await engine.wait("done") == 42
        await engine.signal("approval", "approval", "approve", "ok")
        await engine.signal("early", "early", "go", "G")
        assert await finish(engine, "approval") == "ok"
        assert await finish(engine, "early") == "G-L"  # its early signal was kept
        assert engine.status("nap").state == "sleeping"
        mock_clock.jump(DAY)
        assert await finish(engine, "nap") == "rested"  # at its version 1 deadline
        await until(engine, "pair", lambda s: s.waits == (Wait("timer", "t1", at(3 * DAY)),))
        mock_clock.jump(2 * DAY)
        assert await finish(engine, "pair") == "both"
    assert calls == []  # every step replayed, none ran again
    # Version 1's last segment was sealed; what came after is version 2.
    versions = list(headers(journal).items())
    assert versions[:2] == [("cmp-0000000001.mlog", 1), ("seg-0000000002.mlog", 1)]
    assert len(versions) > 2
    assert {version for _, version in versions[2:]} == {fmt.FORMAT_VERSION}


async def test_a_version_1_reader_refuses_what_version_2_wrote(
    journal: Path, mock_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(journal, ManualClock(START), [])
    async with engine:
        await engine.signal("early", "early", "go", "G")
        await finish(engine, "early")
    newest = max(name for name in headers(journal) if name.startswith("seg-"))
    header = (journal / newest).read_bytes()[: fmt.HEADER_SIZE]
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 1)
    with pytest.raises(NewerFormatError, match="upgrade memable_log"):
        fmt.unpack_header(header)


def test_memable_dump_reads_a_version_1_journal(journal: Path) -> None:
    views = list(read_journal(journal))
    assert [v.type for v in views if v.instance == "approval"] == [
        "created", "step_done_v2", "state_image_v1",
    ]
    image = next(v for v in views if v.type == "state_image_v1" and v.instance == "nap")
    assert image.fields["wait_key"] == "nap"
