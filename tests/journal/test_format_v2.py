"""A journal written by format version 2 opens, reads and runs as it did.

tests/data/journal-v2/ was written by the library at format version 2
(tests/data/make_v2_journal.py says what it holds): steps done (one after a
failed attempt), a step failed for good, an at-most-once marker, a state
image with two waits in a compacted segment. Version 3 reads every one as
version 2 meant it: its step records (``step_done_v2``, ``step_failed_v2``)
are outcomes of one attempt that started when they were written. Then it
writes only version 3 records, in a new segment.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.suspend import finish, until
from trio.testing import MockClock

from memable_log import (
    Context,
    Engine,
    ErrorInfo,
    ManualClock,
    StepFailed,
    StepStatus,
    SuspendTimedOut,
    Wait,
    read_journal,
)
from memable_log._core import format as fmt

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "journal-v2"
START = 1_700_000_000.0  # the fixture's ManualClock; its records are minutes later
DAY = 86400.0


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


def written(path: Path) -> dict[tuple[str, str], datetime]:
    """When each step record of the fixture was written, by (instance, key)."""
    return {
        (v.instance, v.fields["key"]): datetime.fromtimestamp(v.ts_ms / 1000, tz=UTC)
        for v in read_journal(path) if v.type in ("step_done_v2", "step_failed_v2",
                                                  "step_started")
    }


def engine_for(path: Path, clock: ManualClock, calls: list[str], caught: list[Any]) -> Engine:
    def noted(name: str, value: Any) -> Any:
        calls.append(name)
        return value

    async def done(ctx: Context) -> int:
        a = await ctx.step("a").run(noted, "a", 40)
        b = await ctx.step("b").retry(max_attempts=3, initial_delay=1).run(noted, "b", 2)
        return int(a + b)

    async def broke(ctx: Context) -> int:
        try:
            return int(await ctx.step("bad").retry(max_attempts=2).run(noted, "bad", 0))
        except StepFailed as exc:
            caught.append(exc)
            raise

    async def mixed(ctx: Context) -> str:
        await ctx.step("draft").run(noted, "draft", "text")
        try:
            return str(await ctx.suspend("approve", status="check it", timeout=2 * DAY))
        except SuspendTimedOut:
            return "timed out"

    async def marked(ctx: Context) -> str:
        await ctx.step("once").at_most_once().run(noted, "once", 7)
        return str(await ctx.suspend("go"))

    engine = Engine.builder().open(path).clock(clock).compaction(False).build()
    for name, fn in [("done", done), ("broke", broke), ("mixed", mixed), ("marked", marked)]:
        engine.register(name, fn)  # type: ignore[arg-type]
    return engine


def test_the_fixture_is_version_2_with_a_compacted_segment() -> None:
    assert headers(FIXTURE) == {"cmp-0000000001.mlog": 2, "seg-0000000002.mlog": 2}
    types = {view.type for view in read_journal(FIXTURE)}
    assert {"step_done_v2", "step_failed_v2", "step_started", "state_image"} <= types
    assert not types & {"step_done", "step_failed", "attempt_failed"}


async def test_a_version_2_journal_reads_as_version_2_meant_it(
    journal: Path, mock_clock: MockClock
) -> None:
    # A journal on disk: commits wait for a thread, so trio's clock moves
    # only when the test says (an autojump clock would jump during them).
    calls: list[str] = []
    caught: list[StepFailed] = []
    at = written(journal)
    engine = engine_for(journal, ManualClock(START + 600), calls, caught)
    async with engine:
        got = {s.instance_id: s for s in engine.instances()}
        assert {iid: s.state for iid, s in got.items()} == {
            "mixed": "waiting", "done": "completed", "broke": "failed", "marked": "suspended",
        }
        assert got["broke"].error is not None
        assert got["broke"].error.type == "StepFailed"
        assert [w.key for w in got["mixed"].waits] == ["approve", "remind"]
        assert got["mixed"].status == "check it"
        assert got["marked"].waits == (Wait("signal", "go", None),)
        assert await engine.wait("done") == 42
        # Every step as version 2 wrote it: one attempt (the retried "b" too:
        # version 2 did not record its failed attempt), started when written.
        assert engine.steps("done") == [
            StepStatus(key="a", state="done", started_at=at["done", "a"],
                       finished_at=at["done", "a"], attempts=1, error=None),
            StepStatus(key="b", state="done", started_at=at["done", "b"],
                       finished_at=at["done", "b"], attempts=1, error=None),
        ]
        assert engine.steps("broke") == [
            StepStatus(key="bad", state="failed", started_at=at["broke", "bad"],
                       finished_at=at["broke", "bad"], attempts=1,
                       error=ErrorInfo("ValueError", "no")),
        ]
        # Compacted by version 2: its time is the instance's last record's.
        (draft,) = engine.steps("mixed")
        assert (draft.key, draft.state, draft.attempts) == ("draft", "done", 1)
        assert draft.started_at == draft.finished_at == at["mixed", "draft"]
        assert [(s.key, s.state) for s in engine.steps("marked")] == [("once", "done")]

        # The memoised failure raises again, with its one error.
        await engine.restart("broke")
        await until(engine, "broke", lambda s: s.state == "failed")
        (exc,) = caught
        assert exc.errors == (ErrorInfo("ValueError", "no"),)
        assert "ValueError" in exc.traceback

        # The parked instances wake: on a signal; on a timer, then a timeout.
        await engine.signal("marked", "marked", "go", "went")
        assert await finish(engine, "marked") == "went"
        mock_clock.jump(DAY)  # the reminder fires: it runs, then waits on approve alone
        await until(engine, "mixed", lambda s: [w.key for w in s.waits] == ["approve"])
        mock_clock.jump(DAY)
        assert await finish(engine, "mixed") == "timed out"

        # A new instance writes version 3's step records.
        await engine.invoke("done", instance_id="new")
        assert await engine.wait("new") == 42
        assert [s.attempts for s in engine.steps("new")] == [1, 1]
    assert calls == ["a", "b"]  # the new instance's; every old step replayed
    # Version 2's last segment was sealed; what came after is this version's (4).
    versions = list(headers(journal).items())
    assert versions[:2] == [("cmp-0000000001.mlog", 2), ("seg-0000000002.mlog", 2)]
    assert len(versions) > 2
    assert {version for _, version in versions[2:]} == {fmt.FORMAT_VERSION} == {4}
    new = [v for v in read_journal(journal) if v.segment > 2]
    assert [v.fields["key"] for v in new if v.type == "step_done"] == ["a", "b"]
    assert not {v.type for v in new} & {"step_done_v2", "step_failed_v2"}
