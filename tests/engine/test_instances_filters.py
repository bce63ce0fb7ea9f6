"""engine.instances(state, *, workflow, prefix, since, until, limit, newest_first),
and the same filters read from the files (operations.instances, JournalReader)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from memable_log import Context, Engine, operations, read_journal
from memable_log.testing import wait_for_state


async def quick(ctx: Context) -> int:
    return 1


async def parked(ctx: Context) -> Any:
    return await ctx.suspend("go")


async def populate(engine: Engine) -> list[datetime]:
    """a0..a3 of quick and p0..p2 of parked, ten seconds apart; their creation times."""
    times = []
    for n in range(4):
        await engine.invoke("quick", instance_id=f"a{n}")
        times.append(engine.status(f"a{n}").created_at)
        await trio.sleep(10)
        if n < 3:
            await engine.invoke("parked", instance_id=f"p{n}")
            times.append(engine.status(f"p{n}").created_at)
            await trio.sleep(10)
    for n in range(4):
        await engine.wait(f"a{n}")
    return times


def make(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    engine.register("quick", quick)
    engine.register("parked", parked)
    return engine


def ids(found: list[Any]) -> list[str]:
    return [st.instance_id for st in found]


async def test_every_filter_alone_and_together(journal_dir: Path, autojump_clock: Any) -> None:
    engine = make(journal_dir)
    async with engine:
        times = await populate(engine)
        for n in range(3):
            await wait_for_state(engine, f"p{n}", "suspended")
        assert ids(engine.instances()) == ["a0", "p0", "a1", "p1", "a2", "p2", "a3"]
        assert ids(engine.instances("completed")) == ["a0", "a1", "a2", "a3"]
        assert ids(engine.instances(workflow="parked")) == ["p0", "p1", "p2"]
        assert ids(engine.instances(prefix="a")) == ["a0", "a1", "a2", "a3"]
        assert ids(engine.instances(since=times[2])) == ["a1", "p1", "a2", "p2", "a3"]
        assert ids(engine.instances(until=times[2])) == ["a0", "p0"]  # until is exclusive
        assert ids(engine.instances(since=times[1], until=times[4])) == ["p0", "a1", "p1"]
        assert ids(engine.instances(limit=2)) == ["a0", "p0"]
        assert ids(engine.instances(newest_first=True, limit=3)) == ["a3", "p2", "a2"]
        assert ids(engine.instances("suspended", newest_first=True)) == ["p2", "p1", "p0"]
        assert ids(engine.instances("completed", prefix="a", since=times[2], limit=2,
                                    newest_first=True)) == ["a3", "a2"]
        assert engine.instances(limit=0) == []
        assert ids(engine.instances(workflow="nope")) == []
        # another timezone is the same instant
        plus2 = times[2].astimezone(datetime.now(UTC).astimezone().tzinfo)
        assert ids(engine.instances(since=plus2)) == ids(engine.instances(since=times[2]))
        expected = {
            "all": engine.instances(),
            "mixed": engine.instances("completed", since=times[1], newest_first=True),
        }
    # the same answers read from the files, without an engine
    assert operations.instances(journal_dir) == expected["all"]
    assert operations.instances(journal_dir, "completed", since=times[1],
                                newest_first=True) == expected["mixed"]
    assert read_journal(journal_dir).instances(
        "completed", since=times[1], newest_first=True) == expected["mixed"]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"state": "sleepy"}, ValueError, "unknown state 'sleepy'"),
    ({"since": datetime(2024, 1, 1)}, ValueError, "since must be timezone-aware"),
    ({"until": datetime(2024, 1, 1)}, ValueError, "until must be timezone-aware"),
    ({"since": "2024-01-01"}, TypeError, "since must be a datetime"),
    ({"limit": -1}, ValueError, "limit must be an int >= 0"),
    ({"limit": True}, ValueError, "limit must be an int >= 0"),
    ({"workflow": 3}, TypeError, "workflow must be a str"),
    ({"prefix": b"a"}, TypeError, "prefix must be a str"),
])
async def test_bad_filters_are_refused_by_name(
    journal_dir: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    engine = make(journal_dir)
    async with engine:
        await engine.invoke("quick", instance_id="x")
        with pytest.raises(error, match=match):
            engine.instances(**kwargs)
    with pytest.raises(error, match=match):
        operations.instances(journal_dir, **kwargs)


async def test_a_window_with_no_instances(journal_dir: Path, autojump_clock: Any) -> None:
    engine = make(journal_dir)
    async with engine:
        await engine.invoke("quick", instance_id="x")
        later = engine.status("x").created_at + timedelta(days=1)
        assert engine.instances(since=later) == []
        assert operations.instances(journal_dir, since=later) == []
