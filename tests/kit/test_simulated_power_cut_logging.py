"""A simulated power cut does not look like a disk failure in the log (issue 13 q).

crash_test cuts the power of an in-memory journal at every fsync; each cut
used to log ERROR "journal write failed ... Free space or fix the disk",
so a user's passing test printed a screenful of disk failures. A simulated
cut logs at most INFO, saying it was simulated; a real write failure (an
injected EIO) still logs its ERROR.
"""

from __future__ import annotations

import errno
import logging

import pytest
from trio.testing import MockClock

from memable_log import Context, JournalFailed, MemoryStorage
from memable_log.testing import crash_test, memory_engine


async def two_steps(ctx: Context) -> int:
    a = await ctx.step("a:v1").run(lambda: 1)
    b = await ctx.step("b:v1").run(lambda: 2)
    return a + b


async def test_crash_test_logs_no_error_for_its_power_cuts(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memable_log")
    report = await crash_test(two_steps)
    assert report.result == 3
    loud = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert loud == []
    simulated = [rec for rec in caplog.records if "simulated power cut" in rec.getMessage()]
    assert simulated  # it does say why the instance stopped
    assert all(rec.levelno <= logging.INFO for rec in simulated)
    assert not any("fix the disk" in rec.getMessage() for rec in caplog.records)


async def test_a_power_cut_of_a_memory_engine_logs_it_was_simulated(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memable_log")
    storage = MemoryStorage(crash_after_syncs=4)  # the 4th: the first step's (the 2nd zero-fills)
    engine, _ = memory_engine({"wf": two_steps}, storage=storage)
    cut: BaseException | None = None
    try:
        async with engine:
            await engine.wait(await engine.invoke("wf"))
    except BaseException as exc:  # PowerCut, maybe in trio's exception groups
        cut = exc
    assert "power cut right after fsync 4" in repr(cut)
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == []
    assert any(
        "simulated power cut" in rec.getMessage() and rec.levelno == logging.INFO
        for rec in caplog.records
    )


async def test_a_real_write_failure_still_logs_an_error(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="memable_log")
    storage = MemoryStorage()

    async def fills_the_disk(ctx: Context) -> int:
        return await ctx.step("fill:v1").run(lambda: storage.fail("write", errno.ENOSPC) or 1)

    engine, _ = memory_engine({"wf": fills_the_disk}, storage=storage)
    async with engine:
        iid = await engine.invoke("wf", instance_id="victim")
        with pytest.raises(JournalFailed, match="fix the disk"):
            await engine.wait(iid)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("instance victim stopped: journal write failed")
    assert "fix the disk" in errors[0]
    assert "simulated" not in errors[0]
