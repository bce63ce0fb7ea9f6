"""Commits on the journal's commit thread (blocking storage): results, failures, cancellation.

The scheduler hands ``SegmentWriter.commit`` to the commit thread through a
pipe and takes the result back through another (executors.py). These tests
pin what the hand-off must keep: each batch's locations come back in order,
a failure in the thread fails the batch, and a commit in flight is never
abandoned on cancellation.
"""

from __future__ import annotations

import errno
import threading

import pytest
import trio
import trio.testing
from support.journal import ThreadedMemory
from support.powerloss import created, read_all

from memable_log._core.errors import JournalFailed
from memable_log._journal.journal import Journal


async def test_threaded_commits_return_each_records_location_in_order() -> None:
    storage = ThreadedMemory()
    async with Journal(storage) as journal:
        seqs: dict[int, int] = {}

        async def append(n: int) -> None:
            seqs[n] = await journal.append(created(n))

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(append, n)
        assert sorted(seqs.values()) == list(range(1, 21))
        for n in seqs:
            inst = journal.index.instances[f"i{n}"]
            assert inst.input == created(n)[5]
            assert inst.created_ms == 1_000 + n
        assert journal.commits < 20  # they shared fsyncs
    records, _ = read_all(storage)
    assert {rec[3]: rec[1] for rec in records} == {f"i{n}": seq for n, seq in seqs.items()}


async def test_fsync_failure_on_the_worker_thread_fails_the_batch_and_the_journal() -> None:
    storage = ThreadedMemory()
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.fail("sync", errno.EIO)
        with pytest.raises(JournalFailed, match="EIO"):
            await journal.append(created(2))
        assert journal.failed is not None
        with pytest.raises(JournalFailed):
            await journal.append(created(3))
    records, _ = read_all(storage.crash())
    assert [rec[3] for rec in records] == ["i1"]


async def test_cancel_while_a_threaded_commit_is_in_flight_waits_for_its_fsync() -> None:
    """The journal must not close (and close the segment) under a running commit."""
    storage = ThreadedMemory()
    in_sync, release = threading.Event(), threading.Event()
    closed_before_release: list[bool] = []
    exited = False

    def hold() -> None:
        in_sync.set()
        assert release.wait(timeout=30)

    async def run_journal(scope: trio.CancelScope) -> None:
        nonlocal exited
        with scope:
            async with Journal(storage) as journal:
                await journal.append(created(1))
                storage.before_sync = hold
                await journal.append(created(2))  # cancelled while its fsync runs
        exited = True

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_journal, scope)
        await trio.to_thread.run_sync(in_sync.wait)
        storage.before_sync = lambda: None
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        closed_before_release.append(exited)
        release.set()
    assert closed_before_release == [False]
    assert exited
    records, _ = read_all(storage.crash())
    assert [rec[3] for rec in records] == ["i1", "i2"]
