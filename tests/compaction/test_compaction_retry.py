"""A failed background compaction is tried again, with backoff, and loses nothing.

A compaction may fail (a full disk, an I/O error, its child killed); the
service logs a WARNING naming the failure and when it tries again, waits
1 s, 2 s, 4 s... (at most ``RETRY_MAX_S``) on trio's clock, so these tests
run under MockClock and wait no real time, and a success resets the wait.
Whatever the failure, the engine's answers are exactly what the journal
says when reopened: an attempt that failed before its compacted file
became visible put every instance it had taken out back, one that failed
after left them out for good, and the next attempt starts over from the
files (a temp file the failed one left is removed, a compacted file it
renamed into place is written again).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from support.compaction import Answers, CompactionWatch, answers, patience, stored
from trio.testing import MockClock

from memable_log import Context, Engine, ManualClock
from memable_log._compaction import service
from memable_log._journal.journal import Journal
from memable_log._storage import crashpoints as _crashpoints
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import read_record_at, scan

SEGMENT_SIZE = 4096


class Faulty(MemoryStorage):
    """Fails the given operations on the compacted file (or its temp), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: list[str] = []
        self._renamed = False

    def hit(self, op: str) -> None:
        if self.failing and self.failing[0] == op:
            self.failing.pop(0)
            raise OSError(errno.ENOSPC, f"injected ENOSPC on {op} of the compacted file")

    def create(self, name: str) -> Any:
        if name.startswith("cmp-"):
            self.hit("create")
            return _FaultyHandle(super().create(name), self)
        return super().create(name)

    def rename(self, src: str, dst: str) -> None:
        if src.startswith("cmp-"):
            self.hit("rename")
            self._renamed = True
        super().rename(src, dst)

    def sync_dir(self) -> None:
        if self._renamed:
            self._renamed = False
            self.hit("sync_dir")
        super().sync_dir()


class _FaultyHandle:
    def __init__(self, handle: Any, storage: Faulty) -> None:
        self._handle, self._storage = handle, storage

    def write(self, data: bytes) -> None:
        self._storage.hit("write")
        self._handle.write(data)

    def sync(self) -> None:
        self._storage.hit("sync")
        self._handle.sync()

    def truncate(self, size: int) -> None:
        self._handle.truncate(size)

    def close(self) -> None:
        self._handle.close()


class Attempts:
    """Every compaction the service begins: when, and how it ended."""

    def __init__(self, engine: Engine) -> None:
        compaction = engine._backend.compaction
        assert compaction is not None
        self.log: list[tuple[float, str]] = []
        self.changed = trio.Event()
        original = compaction.compact

        async def compact(*args: Any) -> None:
            began = trio.current_time()
            try:
                await original(*args)
            except Exception as exc:
                self.note(began, type(exc).__name__)
                raise
            self.note(began, "ok")

        compaction.compact = compact  # type: ignore[method-assign]

    def note(self, began: float, outcome: str) -> None:
        self.log.append((began, outcome))
        self.changed, changed = trio.Event(), self.changed
        changed.set()

    async def until(self, outcome: str, count: int = 1) -> None:
        """Wait for the ``count``-th attempt ending in ``outcome`` (at most 12 in all)."""
        with trio.fail_after(patience()):
            while sum(o == outcome for _, o in self.log) < count:
                assert len(self.log) <= 12, self.log
                await self.changed.wait()


async def work(ctx: Context) -> bytes:
    return await ctx.step("blob").run(lambda: ctx.instance_id.encode() * 100)


def engine_on(storage: MemoryStorage, retention_s: float | None) -> Engine:
    builder = Engine.builder().in_memory(storage).segment_size(SEGMENT_SIZE)
    builder = builder.clock(ManualClock()).retention(retention_s)
    engine = builder.build()
    engine.register("work", work)
    return engine


class Filler:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.n = engine, 0

    async def until(self, attempts: Attempts, count: int) -> None:
        """Run instances until the service has begun ``count`` compactions."""
        while len(attempts.log) < count:
            self.n += 1
            iid = await self.engine.invoke("work", instance_id=f"w{self.n}")
            await self.engine.wait(iid)


def live_answers(engine: Engine, storage: MemoryStorage) -> Answers:
    journal = engine._backend.journal
    assert journal is not None
    salts = journal.writer.salts
    return answers(engine._host.index, lambda loc: read_record_at(storage, salts, loc))


async def reopened(storage: MemoryStorage) -> Answers:
    """Open the journal for writing (recovery cleans up), close it, answer."""
    async with Journal(storage, segment_size=SEGMENT_SIZE):
        pass
    assert [n for n in storage.list() if n.endswith(".tmp")] == []
    assert scan(storage).superseded == []
    return stored(storage)


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        rec.getMessage().rsplit("retrying in ", 1)[1]
        for rec in caplog.records
        if rec.levelno == logging.WARNING and "retrying in" in rec.getMessage()
    ]


async def test_a_failing_compaction_is_retried_with_backoff_and_a_success_resets_it(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memable_log")
    storage = Faulty()
    storage.failing = ["create", "create", "create"]  # a full disk, three times
    engine = engine_on(storage, retention_s=None)
    async with engine:
        attempts, filler = Attempts(engine), Filler(engine)
        await filler.until(attempts, 1)
        await attempts.until("ok")
        began = [t for t, _ in attempts.log]
        assert [o for _, o in attempts.log] == ["OSError"] * 3 + ["ok"]
        assert [b - began[0] for b in began] == [0, 1, 3, 7]  # waits of 1, 2 and 4 s
        assert retry_waits(caplog) == ["1 s", "2 s", "4 s"]
        failure = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "injected ENOSPC on create of the compacted file" in failure

        # A later failure waits 1 s again: the success reset the backoff.
        storage.failing = ["write"]
        await filler.until(attempts, 5)
        await attempts.until("ok", 2)
        assert [o for _, o in attempts.log[4:]] == ["OSError", "ok"]
        assert attempts.log[5][0] - attempts.log[4][0] == 1
        assert retry_waits(caplog) == ["1 s", "2 s", "4 s", "1 s"]
        results = {f"w{i}": await engine.wait(f"w{i}") for i in range(1, filler.n + 1)}
        live = live_answers(engine, storage)
    assert await reopened(storage) == live
    engine = engine_on(storage, retention_s=None)
    async with engine:
        assert {iid: await engine.wait(iid) for iid in results} == results


async def test_the_wait_between_attempts_stops_growing_at_its_limit(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memable_log")
    storage = Faulty()
    storage.failing = ["create"] * 9
    engine = engine_on(storage, retention_s=None)
    async with engine:
        attempts, filler = Attempts(engine), Filler(engine)
        await filler.until(attempts, 1)
        await attempts.until("ok")
    waits = [b - a for (a, _), (b, _) in zip(attempts.log, attempts.log[1:], strict=False)]
    assert waits == [min(2.0**i, service.RETRY_MAX_S) for i in range(9)]
    assert waits[-1] == service.RETRY_MAX_S < 2.0**8


@pytest.mark.parametrize("op", ["create", "write", "sync", "rename", "sync_dir"])
async def test_a_retry_after_a_failure_at_any_step_changes_no_answer(
    autojump_clock: MockClock, op: str
) -> None:
    """Retention drops instances: a failure before the rename puts them back,
    one after it (the directory fsync) leaves them out; the retry of the
    same segments then meets the temp file or the compacted file the failed
    attempt left, and writes it anew."""
    storage = Faulty()
    storage.failing = [op]
    engine = engine_on(storage, retention_s=0)
    async with engine:
        attempts, filler = Attempts(engine), Filler(engine)
        await filler.until(attempts, 1)
        failed_at = engine._backend.journal.writer.segment  # type: ignore[union-attr]
        await attempts.until("ok")
        assert [o for _, o in attempts.log] == ["OSError", "ok"]
        # The retry compacted the same segments: no roll-over came between.
        assert engine._backend.journal.writer.segment == failed_at  # type: ignore[union-attr]
        await filler.until(attempts, 3)
        await attempts.until("ok", 2)
        live = live_answers(engine, storage)
    assert await reopened(storage) == live


async def test_a_killed_compaction_child_is_retried(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first child dies by SIGKILL right after fsyncing its temp file;
    the second, after the first wait, compacts the same segments. (Real
    children take real time, which a MockClock would jump over: this one
    runs on the real clock with the first wait made short.)"""
    monkeypatch.setattr(service, "RETRY_FIRST_S", 0.05)
    original = service.compact_in_child
    children: list[str] = []

    async def first_killed(*args: Any) -> Any:
        if not children:
            _crashpoints.arm("compact.after-temp-sync")
        try:
            done = await original(*args)
        except BaseException as exc:
            children.append(type(exc).__name__)
            raise
        finally:
            _crashpoints.disarm()
        children.append("ok")
        return done

    monkeypatch.setattr(service, "compact_in_child", first_killed)
    engine = Engine.builder().open(journal_dir).segment_size(SEGMENT_SIZE).build()
    engine.register("work", work)
    async with engine:
        watch = CompactionWatch(engine)
        attempts, filler = Attempts(engine), Filler(engine)
        await filler.until(attempts, 1)
        await attempts.until("ok")
        await watch.through_sealed()
        results = {f"w{i}": await engine.wait(f"w{i}") for i in range(1, filler.n + 1)}
    assert children[0] == "ChildFailed"
    assert [o for _, o in attempts.log][:2] == ["ChildFailed", "ok"]
    assert attempts.log[1][0] - attempts.log[0][0] >= 0.05
    engine = Engine.builder().open(journal_dir).compaction(False).build()
    engine.register("work", work)
    async with engine:
        assert {iid: await engine.wait(iid) for iid in results} == results
