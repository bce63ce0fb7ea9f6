"""Hand-overs the engine cannot apply: moved aside, logged by name, never fatal.

Issue 13 c: a poison hand-over (a valid frame with an empty key, a zstd
blob of garbage, a directory named ``*.sig``, ``inbox`` itself a file)
stopped the engine from opening, or left ``async with engine:`` with an
ExceptionGroup while it ran, and the error named no file. A journal that
fails while a hand-over is applied is the engine's documented failed
journal, not an ExceptionGroup: the hand-over stays for the next start.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from memable_log import Context, Engine, operations
from memable_log._core.codec import Codec
from memable_log._storage.files import FileStorage
from memable_log._storage.inbox import encode_handover, pending, write_handover
from memable_log.testing import wait_for_state


async def approval(ctx: Context) -> list[Any]:
    count = await ctx.step("fetch-data:v1").run(lambda: 3)
    approved = await ctx.suspend("approval:v1")
    return [count, approved]


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    engine.register("approval", approval)
    return engine


async def suspended(path: Path, *ids: str) -> None:
    engine = make_engine(path)
    async with engine:
        for instance_id in ids:
            await engine.invoke("approval", instance_id=instance_id)
        for instance_id in ids:
            await wait_for_state(engine, instance_id, "suspended")


def _name() -> str:
    return f"{time.time_ns():020d}-1-0badf00d.sig"


def _handover(path: Path, data: bytes) -> str:
    return write_handover(str(path), data)


def empty_key(path: Path) -> str:
    return _handover(path, encode_handover("approval", "a1", "", Codec().encode("x")))


def zstd_garbage(path: Path) -> str:
    return _handover(path, encode_handover("approval", "a1", "approval:v1", b"\x01garbage!"))


def damaged(path: Path) -> str:
    return _handover(path, b"MMBLSIG1\x00\x00\x00\x00not a body")


def directory(path: Path) -> str:
    name = _name()
    (path / "inbox").mkdir(exist_ok=True)
    (path / "inbox" / name).mkdir()
    return name


POISONS: dict[str, Callable[[Path], str]] = {
    "empty key": empty_key,
    "zstd garbage": zstd_garbage,
    "damaged": damaged,
    "directory": directory,
}


class Logged(logging.Handler):
    """Records of the memable_log logger; ``seen(text)`` waits for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def seen(self, text: str) -> str:
        def wait() -> str | None:
            with self._changed:
                self._changed.wait_for(lambda: any(text in m for m in self.messages()), 30)
            return next((m for m in self.messages() if text in m), None)

        found = await trio.to_thread.run_sync(wait)
        assert found is not None, f"no log record with {text!r}: {self.messages()}"
        return found


@pytest.fixture
def logged() -> Iterator[Logged]:
    handler = Logged()
    logger = logging.getLogger("memable_log")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def rejected(path: Path) -> list[str]:
    return sorted(os.listdir(path / "inbox" / "rejected"))


@pytest.mark.parametrize("kind", POISONS)
async def test_poison_handover_at_start_is_moved_aside_and_the_good_one_after_it_applied(
    journal_dir: Path, logged: Logged, kind: str
) -> None:
    await suspended(journal_dir, "a1")
    poison = POISONS[kind](journal_dir)
    good = _handover(
        journal_dir, encode_handover("approval", "a1", "approval:v1", Codec().encode("yes"))
    )
    assert sorted([poison, good]) == [poison, good]
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, "yes"]
    assert rejected(journal_dir) == [poison]
    assert pending(str(journal_dir)) == []
    errors = logged.messages(logging.ERROR)
    assert any(poison in m and "inbox/rejected" in m for m in errors), errors


@pytest.mark.parametrize("kind", POISONS)
async def test_poison_handover_while_running_is_moved_aside_and_the_engine_goes_on(
    journal_dir: Path, logged: Logged, kind: str
) -> None:
    await suspended(journal_dir, "a1")
    engine = make_engine(journal_dir)
    async with engine:
        poison = POISONS[kind](journal_dir)
        # Written as memable-signal does (which would refuse it while the zstd
        # poison, for the same key, waits), named after the poison: applied after it.
        _handover(
            journal_dir, encode_handover("approval", "a1", "approval:v1", Codec().encode("yes"))
        )
        assert await engine.wait("a1") == [3, "yes"]
        assert rejected(journal_dir) == [poison]
    assert pending(str(journal_dir)) == []
    assert any(poison in m for m in logged.messages(logging.ERROR))


async def test_inbox_that_is_a_file_at_start_is_moved_aside(
    journal_dir: Path, logged: Logged
) -> None:
    await suspended(journal_dir, "a1")
    (journal_dir / "inbox").write_bytes(b"not a directory")
    engine = make_engine(journal_dir)
    async with engine:
        aside = [n for n in os.listdir(journal_dir) if n.startswith("inbox.rejected-")]
        assert len(aside) == 1
        assert (journal_dir / aside[0]).read_bytes() == b"not a directory"
        assert any(aside[0] in m for m in logged.messages(logging.ERROR))
        how = await trio.to_thread.run_sync(
            operations.signal, journal_dir, "approval", "a1", "approval:v1", "yes"
        )
        assert how is operations.Delivery.HANDED_OVER
        assert await engine.wait("a1") == [3, "yes"]


async def test_inbox_that_becomes_a_file_while_running_is_moved_aside(
    journal_dir: Path, logged: Logged
) -> None:
    await suspended(journal_dir, "a1")
    engine = make_engine(journal_dir)
    async with engine:
        (journal_dir / "inbox").write_bytes(b"not a directory")
        message = await logged.seen("inbox.rejected-")
        assert "not a directory" in message
        how = await trio.to_thread.run_sync(
            operations.signal, journal_dir, "approval", "a1", "approval:v1", "yes"
        )
        assert how is operations.Delivery.HANDED_OVER
        assert await engine.wait("a1") == [3, "yes"]


async def test_refused_handover_is_still_logged_and_deleted(
    journal_dir: Path, logged: Logged
) -> None:
    await suspended(journal_dir, "a1")
    unknown = _handover(
        journal_dir, encode_handover("approval", "nobody", "approval:v1", Codec().encode(1))
    )
    engine = make_engine(journal_dir)
    async with engine:
        twice = _handover(
            journal_dir, encode_handover("approval", "a1", "approval:v1", Codec().encode(2))
        )
        again = _handover(
            journal_dir, encode_handover("approval", "a1", "approval:v1", Codec().encode(3))
        )
        assert await engine.wait("a1") == [3, 2]
        await logged.seen(again)
    assert os.listdir(journal_dir / "inbox") == []
    warnings = [m for m in logged.messages(logging.WARNING) if "not applied" in m]
    assert any(unknown in m and "unknown instance" in m for m in warnings), warnings
    assert any(again in m and "already has a signal" in m for m in warnings), warnings
    assert not any(twice in m for m in warnings)


class FillingDisk(FileStorage):
    """A journal directory whose segment writes fail with ENOSPC once ``full`` is set."""

    full = threading.Event()

    def open_append(self, name: str) -> Any:
        file = super().open_append(name)
        full = self.full

        class Appending:
            def write(self, data: bytes) -> None:
                if full.is_set():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                file.write(data)

            def write_at(self, offset: int, data: bytes) -> None:
                if full.is_set():
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                file.write_at(offset, data)

            def sync(self) -> None:
                file.sync()

            def sync_data(self) -> None:
                file.sync_data()

            def truncate(self, size: int) -> None:
                file.truncate(size)

            def close(self) -> None:
                file.close()

        return Appending()


async def test_journal_failing_while_a_handover_is_applied_is_no_exception_group(
    journal_dir: Path, logged: Logged
) -> None:
    """The failed journal is the engine's (runners log and stop, calls raise
    JournalFailed); the hand-over stays in the inbox for the next start."""
    await suspended(journal_dir, "a1")
    engine = make_engine(journal_dir)
    full = threading.Event()
    disk = type("Disk", (FillingDisk,), {"full": full})
    engine._backend.make_storage = lambda: disk(journal_dir, create=False)  # type: ignore[attr-defined]
    async with engine:
        full.set()
        name = _handover(
            journal_dir, encode_handover("approval", "a1", "approval:v1", Codec().encode("yes"))
        )
        message = await logged.seen(name)
        assert "No space left on device" in message
        assert "stays in the inbox" in message
        assert pending(str(journal_dir)) == [name]
    assert pending(str(journal_dir)) == [name]
    again = make_engine(journal_dir)
    async with again:
        assert await again.wait("a1") == [3, "yes"]
    assert pending(str(journal_dir)) == []
