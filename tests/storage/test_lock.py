"""One writer per journal: the LOCK file's flock, in-process and across processes.

A second writer gets JournalLocked at once (never waits); the lock goes
with the holder (close, failed open, or the process dying); readers take no
lock and work while a writer holds it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from support.journal import read_all, rec, write_records

from memable_log._core.errors import JournalCorrupt, JournalLocked
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import scan

# A second process that opens the journal for writing. With "hold" it prints
# "ready" once open and keeps the lock until its stdin closes.
CHILD = """
import sys, trio
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage

async def main(path, hold):
    async with Journal(FileStorage(path, create=False)) as journal:
        print("ready", journal.index.records, flush=True)
        if hold:
            await trio.to_thread.run_sync(sys.stdin.read)

trio.run(main, sys.argv[1], sys.argv[2] == "hold")
"""


async def run_child(path: Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-c", CHILD, str(path), "once"],
            capture_stdout=True, capture_stderr=True, check=False,
        )


def last_line(data: bytes) -> str:
    return data.decode().strip().splitlines()[-1]


async def test_second_journal_in_the_same_process_is_refused_at_once(journal_dir: Path) -> None:
    written = await write_records(FileStorage(journal_dir), 3)
    files = {n: (journal_dir / n).read_bytes() for n in os.listdir(journal_dir)}
    async with Journal(FileStorage(journal_dir)) as first:
        # Two FileStorage objects: two open file descriptions of LOCK, so
        # flock conflicts even within one process.
        with trio.fail_after(10), pytest.raises(JournalLocked) as info:
            async with Journal(FileStorage(journal_dir)):
                pytest.fail("a second writer opened the journal")
        assert info.value.path == str(journal_dir)
        assert str(journal_dir) in str(info.value)
        assert "read-only" in str(info.value)
        # The refused open changed nothing and did not disturb the holder.
        assert {n: (journal_dir / n).read_bytes() for n in os.listdir(journal_dir)} == files
        more = rec(3)
        assert await first.append(more) == 4
    async with Journal(FileStorage(journal_dir)) as again:
        assert again.index.records == 4
    assert read_all(FileStorage(journal_dir)) == [*written, more]


async def test_the_same_storage_object_cannot_be_opened_twice(journal_dir: Path) -> None:
    storage = FileStorage(journal_dir)
    async with Journal(storage):
        with pytest.raises(JournalLocked):
            async with Journal(storage):
                pytest.fail("opened twice")
    # The refused open did not release the holder's lock nor leave one behind.
    async with Journal(storage):
        pass


async def test_second_journal_on_a_memory_storage_is_refused() -> None:
    storage = MemoryStorage()
    async with Journal(storage):
        with pytest.raises(JournalLocked):
            async with Journal(storage):
                pytest.fail("opened twice")
    async with Journal(storage):
        pass


async def test_another_process_is_refused_while_the_journal_is_held(journal_dir: Path) -> None:
    await write_records(FileStorage(journal_dir), 2)
    async with Journal(FileStorage(journal_dir)):
        refused = await run_child(journal_dir)
    assert refused.returncode == 1
    # Raised as itself, not wrapped in an exception group.
    assert last_line(refused.stderr).startswith("memable_log._core.errors.JournalLocked: ")
    assert refused.stdout == b""
    # Once the holder closed, the other process opens it.
    opened = await run_child(journal_dir)
    assert opened.returncode == 0, opened.stderr.decode()
    assert opened.stdout.decode().split() == ["ready", "2"]


async def start_holder(nursery: trio.Nursery, path: Path) -> trio.Process:
    """A child process holding the journal open; returns once it is open."""
    child: trio.Process = await nursery.start(partial(
        trio.run_process, [sys.executable, "-c", CHILD, str(path), "hold"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False,
    ))
    assert child.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await child.stdout.receive_some(100)
        assert chunk, "the child exited before opening the journal"
        line += chunk
    assert line.split()[0] == b"ready"
    return child


async def test_a_journal_held_by_another_process_is_refused_here(journal_dir: Path) -> None:
    await write_records(FileStorage(journal_dir), 1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            child = await start_holder(nursery, journal_dir)
            with pytest.raises(JournalLocked):
                async with Journal(FileStorage(journal_dir)):
                    pytest.fail("opened a journal another process holds")
            # A reader needs no lock, even across processes.
            assert len(read_all(FileStorage(journal_dir, create=False))) == 1
            assert child.stdin is not None
            await child.stdin.aclose()
            assert await child.wait() == 0
    async with Journal(FileStorage(journal_dir)) as journal:
        assert journal.index.records == 1


async def test_a_killed_holder_leaves_no_lock_behind(journal_dir: Path) -> None:
    await write_records(FileStorage(journal_dir), 1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            child = await start_holder(nursery, journal_dir)
            with pytest.raises(JournalLocked):
                async with Journal(FileStorage(journal_dir)):
                    pytest.fail("opened a journal another process holds")
            child.send_signal(signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
    async with Journal(FileStorage(journal_dir)) as journal:
        assert journal.index.records == 1


async def test_readers_need_no_lock_while_a_writer_appends(journal_dir: Path) -> None:
    written = await write_records(FileStorage(journal_dir), 5)
    async with Journal(FileStorage(journal_dir)) as journal:
        seen: list[list[object]] = []
        result = scan(FileStorage(journal_dir, create=False),
                      lambda record, loc: seen.append(record))
        assert seen == written
        assert result.torn_at is None
        # The reader did not block the writer, nor take its lock away.
        more = rec(5)
        await journal.append(more)
        assert read_all(FileStorage(journal_dir)) == [*written, more]
        with pytest.raises(JournalLocked):
            FileStorage(journal_dir).lock()


async def test_lock_is_released_when_opening_fails(journal_dir: Path) -> None:
    await write_records(FileStorage(journal_dir), 2)
    (journal_dir / "seg-0000000003.mlog").write_bytes(b"not a segment")  # after an unsealed one
    for _ in range(2):
        with pytest.raises(JournalCorrupt, match="without a seal"):
            async with Journal(FileStorage(journal_dir)):
                pass
    (journal_dir / "seg-0000000003.mlog").unlink()
    opened = await run_child(journal_dir)
    assert opened.returncode == 0, opened.stderr.decode()
