"""Injected I/O faults: a failed write or fsync fails the journal for good.

The rules proved here: the appends of the failed batch (and every append
queued behind it) raise JournalFailed with the cause in the message; later
appends raise at once, with no further I/O (a failed fsync is never
retried: the kernel may have dropped the dirty pages); nothing of the failed
batch reaches the index; everything acknowledged before survives a power
cut and a reopen, and the reopened journal takes appends again.
"""

from __future__ import annotations

import errno
from typing import Any

import msgpack
import pytest
import trio
from support.journal import files_of, read_all, rec, storage_from, write_records

from memable_log._core.errors import JournalFailed
from memable_log._core.format import HEADER_SIZE, segment_name
from memable_log._journal.journal import Journal
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.writer import SegmentWriter

SMALL = 4096
# The frame of rec(i) for 0 <= i < 10 with a seq below 128: all one size.
FRAME = 8 + len(msgpack.packb(rec(5)))


def assert_prefix_of(got: list[list[Any]], acked: list[list[Any]], attempted: list[list[Any]]
                     ) -> None:
    """``got`` holds every acknowledged record, then maybe some of the attempted ones."""
    assert got[: len(acked)] == acked
    assert got == attempted[: len(got)]


async def assert_failed_for_good(journal: Journal, storage: MemoryStorage, reason: str) -> None:
    """Later appends raise at once: no write, no fsync, no commit."""
    ops, syncs, commits = storage.ops, storage.syncs, journal.commits
    for i in range(3):
        with pytest.raises(JournalFailed, match=reason):
            await journal.append(rec(900 + i))
        with pytest.raises(JournalFailed, match=reason):
            await journal.append_many([rec(910 + i), rec(920 + i)])
    assert (storage.ops, storage.syncs, journal.commits) == (ops, syncs, commits)
    assert journal.failed is not None
    assert reason in journal.failed
    # The writer refuses too, before any I/O.
    with pytest.raises(JournalFailed):
        journal.writer.commit([b"\x90"])
    assert (storage.ops, storage.syncs) == (ops, syncs)


async def check_reopen(storage: MemoryStorage, acked: list[list[Any]],
                       attempted: list[list[Any]], *, crash: bool) -> None:
    """After the failure: a power cut (or not), then reopen, append, reopen."""
    after = storage.crash() if crash else storage
    got = read_all(after)
    if crash:
        # Nothing of the failed batch was fsynced, so nothing of it survives.
        assert got == acked
    else:
        assert_prefix_of(got, acked, attempted)
    async with Journal(after) as journal:
        assert journal.index.records == len(got)
        more = [rec(700), rec(701)]
        await journal.append_many(more)
    assert [m[1] for m in more] == [len(got) + 1, len(got) + 2]
    assert read_all(after.crash()) == got + more


FAULTS = [
    pytest.param("sync", errno.EIO, None, "injected EIO on fsync", id="EIO-on-fsync"),
    pytest.param("write", errno.ENOSPC, None, "injected ENOSPC on write", id="ENOSPC-on-write"),
    pytest.param("write", errno.EIO, 5, "injected EIO on write", id="short-write-in-a-header"),
    pytest.param("write", errno.ENOSPC, FRAME + 11, "injected ENOSPC on write",
                 id="short-write-after-a-whole-frame"),
    pytest.param("write", errno.EIO, 3 * FRAME - 1, "injected EIO on write",
                 id="short-write-one-byte-short"),
]


@pytest.mark.parametrize("crash", [True, False], ids=["power-cut", "no-power-cut"])
@pytest.mark.parametrize(("op", "err", "partial", "reason"), FAULTS)
async def test_a_failed_commit_fails_its_appends_and_all_later_ones(
    op: str, err: int, partial: int | None, reason: str, crash: bool
) -> None:
    storage = MemoryStorage()
    acked: list[list[Any]] = []
    failed_batch = [rec(i) for i in range(5, 8)]
    async with Journal(storage) as journal:
        for i in range(5):
            record = rec(i)
            await journal.append(record)
            acked.append(record)
        syncs = storage.syncs
        storage.fail(op, err, partial=partial)
        with pytest.raises(JournalFailed) as info:
            await journal.append_many(failed_batch)
        message = str(info.value)
        assert reason in message
        assert "reopen" in message
        assert storage.syncs == syncs  # the failed fsync did not count, none followed
        await assert_failed_for_good(journal, storage, reason)
        # Nothing of the failed batch reached the index.
        assert sorted(journal.index.instances) == sorted(f"inst-{i}" for i in range(5))
        assert journal.index.records == 5
        assert journal.commits == 5
    assert storage.syncs == syncs  # closing did not retry the fsync either
    await check_reopen(storage, acked, acked + failed_batch, crash=crash)


async def test_a_short_write_leaves_a_torn_tail_that_reopening_cuts() -> None:
    storage = MemoryStorage()
    written = await write_records(storage, 4)
    async with Journal(storage) as journal:
        await journal.append(rec(4))  # the segment's zeros are there now
        size = journal.writer.size
        storage.fail("write", errno.EIO, partial=FRAME + 7)
        with pytest.raises(JournalFailed):
            await journal.append_many([rec(7), rec(8)])
    # The page cache shows one whole frame of the failed batch and 7 bytes
    # of the next, over the zeros: reopening keeps none of the batch, whose
    # last frame is not whole (a batch is all or nothing).
    assert storage.read(segment_name(1))[size + FRAME + 7 :].count(0) > 0
    async with Journal(storage) as journal:
        assert journal.scan_result is not None
        assert journal.scan_result.torn_at == size
        assert journal.index.records == 5
    assert storage.size(segment_name(1)) == size
    kept = read_all(storage.crash())
    assert kept[:4] == written
    assert [r[3] for r in kept[4:]] == ["inst-4"]


async def test_every_waiter_queued_behind_a_failed_commit_fails() -> None:
    storage = MemoryStorage()
    outcomes: dict[int, str] = {}
    async with Journal(storage) as journal:
        await journal.append(rec(0))
        storage.fail("sync", errno.EIO)

        async def writer(i: int) -> None:
            try:
                await journal.append(rec(i))
            except JournalFailed as exc:
                outcomes[i] = exc.reason
            else:
                outcomes[i] = "acknowledged"

        async with trio.open_nursery() as nursery:
            for i in range(1, 9):
                nursery.start_soon(writer, i)
        assert journal.commits == 1
    # The first commit after the fault carried some writers; the rest were
    # queued in the next batch, which must fail too, not hang or succeed.
    assert outcomes == dict.fromkeys(range(1, 9), "injected EIO on fsync")
    assert len(read_all(storage.crash())) == 1


async def test_a_failed_commit_mid_stream_keeps_every_earlier_batch() -> None:
    storage = MemoryStorage()
    acked: list[list[Any]] = []
    async with Journal(storage) as journal:
        for first in range(0, 30, 3):
            batch = [rec(i) for i in range(first, first + 3)]
            await journal.append_many(batch)
            acked += batch
        storage.fail("sync", errno.EIO)
        with pytest.raises(JournalFailed):
            await journal.append_many([rec(50), rec(51)])
    assert read_all(storage.crash()) == acked


# -- faults at a roll-over -------------------------------------------------------------


async def appends_before_roll_over() -> int:
    """How many lone appends of rec(i) fill the first SMALL segment."""
    storage = MemoryStorage()
    async with Journal(storage, segment_size=SMALL) as journal:
        n = 0
        while len(storage.list()) == 1:
            await journal.append(rec(n))
            n += 1
    return n - 1


ROLL_FAULTS = [
    pytest.param("write", "injected EIO on write", id="write-of-the-seal"),
    pytest.param("sync", "injected EIO on fsync", id="fsync-of-the-seal"),
    pytest.param("create", "injected EIO on create", id="create-of-the-next-segment"),
    pytest.param("rename", "injected EIO on rename", id="rename-into-place"),
    pytest.param("sync_dir", "injected EIO on sync_dir", id="fsync-of-the-directory"),
]


@pytest.mark.parametrize("crash", [True, False], ids=["power-cut", "no-power-cut"])
@pytest.mark.parametrize(("op", "reason"), ROLL_FAULTS)
async def test_a_fault_during_roll_over_fails_the_journal_and_loses_nothing_acked(
    op: str, reason: str, crash: bool
) -> None:
    n = await appends_before_roll_over()
    storage = MemoryStorage()
    acked: list[list[Any]] = []
    async with Journal(storage, segment_size=SMALL) as journal:
        for i in range(n):
            record = rec(i)
            await journal.append(record)
            acked.append(record)
        assert storage.list() == [segment_name(1)]
        storage.fail(op, errno.EIO)
        syncs = storage.syncs
        with pytest.raises(JournalFailed, match=reason):
            await journal.append(rec(n))
        syncs_after_fault = storage.syncs
        await assert_failed_for_good(journal, storage, reason)
        assert storage.syncs == syncs_after_fault
        assert syncs_after_fault <= syncs + 2  # the seal, maybe the next header
        assert journal.index.records == n
    await check_reopen(storage, acked, [*acked, rec(n)], crash=crash)


async def test_a_fault_while_recovering_a_torn_tail_fails_the_open_and_changes_nothing(
) -> None:
    # Regression: MemoryStorage used to swallow an injected truncate fault.
    written, files = await _journal_with_torn_tail()
    storage = storage_from(files)
    storage.fail("truncate", errno.EIO)
    with pytest.raises(JournalFailed, match="injected EIO on truncate"):
        async with Journal(storage):
            pass
    assert files_of(storage) == files
    # The failed open let go of the lock: the next open recovers.
    async with Journal(storage) as journal:
        assert journal.index.records == len(written)
    assert read_all(storage.crash()) == written


@pytest.mark.parametrize("op", ["sync", "remove", "sync_dir"])
async def test_a_fault_while_cleaning_up_at_open_fails_the_open(op: str) -> None:
    written, files = await _journal_with_torn_tail()
    storage = storage_from({**files, segment_name(2) + ".tmp": b"half a header"})
    storage.fail(op, errno.EIO)
    with pytest.raises(JournalFailed, match=f"on {'fsync' if op == 'sync' else op}"):
        async with Journal(storage):
            pass
    async with Journal(storage) as journal:
        assert journal.index.records == len(written)
    assert storage.list() == [segment_name(1)]
    assert read_all(storage.crash()) == written


@pytest.mark.parametrize("op", ["create", "write", "sync", "rename", "sync_dir"])
async def test_a_fault_creating_the_first_segment_fails_the_open(op: str) -> None:
    storage = MemoryStorage()
    storage.fail(op, errno.ENOSPC)
    with pytest.raises(JournalFailed, match="ENOSPC"):
        async with Journal(storage):
            pass
    written = await write_records(storage, 3)
    assert read_all(storage.crash()) == written
    assert storage.size(segment_name(1)) > HEADER_SIZE


def test_a_broken_writer_refuses_without_io() -> None:
    storage = MemoryStorage()
    writer = SegmentWriter(storage, SMALL)
    storage.fail("create", errno.EROFS)
    with pytest.raises(JournalFailed, match="EROFS"):
        writer.recover(_empty_scan())
    ops = storage.ops
    with pytest.raises(JournalFailed, match="EROFS"):
        writer.commit([b"\x90"])
    assert storage.ops == ops


def _empty_scan() -> Any:
    from memable_log._storage.segments import scan

    return scan(MemoryStorage())


async def _journal_with_torn_tail() -> tuple[list[list[Any]], dict[str, bytes]]:
    storage = MemoryStorage()
    written = await write_records(storage, 6)
    files = files_of(storage)
    name = segment_name(1)
    # Not zeros: zeros after the last frame are a preallocated zero tail.
    return written, {name: files[name] + b"\x07" * 9}


async def test_an_error_in_the_journal_block_propagates_unwrapped() -> None:
    from memable_log._journal.journal import Journal
    from memable_log._storage.memory import MemoryStorage

    with pytest.raises(KeyError):
        async with Journal(MemoryStorage()):
            raise KeyError("from the body")
