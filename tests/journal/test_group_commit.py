"""Group commit: concurrent appends share fsyncs, and none returns early.

* Many concurrent appenders cause far fewer commits and fsyncs than appends
  (in memory and on a real directory).
* Each append returns only after the fsync that covers its record: checked
  against what a power cut would keep (MemoryStorage) and against the
  highest seq an fsync has covered (an instrumented FileStorage).
* A lone appender pays exactly one fsync per append, with no timer.
* Seqs are distinct, dense and in the order appends were accepted, also for
  appends that arrive while a commit is in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.powerloss import created, read_all

from memable_log._journal.journal import Journal
from memable_log._storage.files import FileHandle, FileStorage
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import scan

TASKS = 200


class _Handle:
    """A file handle that reports each fsync to its Instrumented storage."""

    def __init__(self, inner: FileHandle, storage: Instrumented) -> None:
        self._inner = inner
        self._storage = storage

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def write_at(self, offset: int, data: bytes) -> None:
        self._inner.write_at(offset, data)

    def sync(self) -> None:
        self._storage.before_sync()
        self._inner.sync()
        self._storage.synced(full=True)

    def sync_data(self) -> None:
        self._storage.before_sync()
        self._inner.sync_data()
        self._storage.synced()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def close(self) -> None:
        self._inner.close()


class Instrumented:
    """A Storage that counts fsyncs and, after each, notes the highest seq
    on disk (everything written is fsynced by then: there is one writer)."""

    def __init__(self, inner: FileStorage | MemoryStorage, *, blocking: bool | None = None) -> None:
        self.inner = inner
        self.blocking = inner.blocking if blocking is None else blocking
        self.location = inner.location
        self.syncs = 0
        self.covered = 0  # highest seq made durable by an fsync so far
        self.before_sync: Callable[[], None] = lambda: None

    def synced(self, full: bool = False) -> None:
        """An fsync; ``full``: fsync, not fdatasync (a segment's zeros, a seal)."""
        if full and scan(self.inner).next_seq - 1 == self.covered:
            return  # the zeros of a preallocated segment: no record made durable
        self.syncs += 1
        self.covered = scan(self.inner).next_seq - 1

    def list(self) -> list[str]:
        return self.inner.list()

    def read(self, name: str) -> bytes:
        return self.inner.read(name)

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        return self.inner.read_at(name, offset, size)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def create(self, name: str) -> _Handle:
        return _Handle(self.inner.create(name), self)

    def open_append(self, name: str) -> _Handle:
        return _Handle(self.inner.open_append(name), self)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def remove(self, name: str) -> None:
        self.inner.remove(name)

    def sync_dir(self) -> None:
        self.inner.sync_dir()

    def lock(self) -> None:
        self.inner.lock()

    def unlock(self) -> None:
        self.inner.unlock()


def make_storage(kind: str, tmp_path: Path) -> Instrumented:
    inner = MemoryStorage() if kind == "memory" else FileStorage(tmp_path / "journal")
    return Instrumented(inner)


def durable_seqs(storage: MemoryStorage) -> int:
    """How many records a power cut right now would keep."""
    return scan(storage.crash()).next_seq - 1


async def run_appenders(
    journal: Journal, tasks: int, each: int, on_return: Callable[[int, list[Any]], None]
) -> list[int]:
    """``tasks`` tasks append ``each`` records apiece, staggered by a few
    checkpoints so that some arrive while a commit is in flight."""
    seqs: list[int] = []

    async def appender(i: int) -> None:
        for k in range(each):
            for _ in range((i + k) % 4):
                await trio.lowlevel.checkpoint()
            rec = created(i * each + k)
            seq = await journal.append(rec)
            on_return(seq, rec)
            seqs.append(seq)

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(appender, i)
    return seqs


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_concurrent_appenders_share_fsyncs(kind: str, tmp_path: Path) -> None:
    storage = make_storage(kind, tmp_path)
    async with Journal(storage) as journal:
        syncs_at_open = storage.syncs
        seqs = await run_appenders(journal, TASKS, 3, lambda seq, rec: None)
        appends = len(seqs)
        assert sorted(seqs) == list(range(1, appends + 1))
        assert 1 <= journal.commits * 10 <= appends
        # One fsync per commit: no segment roll-over at the default size.
        assert storage.syncs - syncs_at_open == journal.commits
    records, _ = read_all(storage.inner)
    assert [rec[1] for rec in records] == list(range(1, appends + 1))


async def test_append_returns_after_its_fsync_in_memory() -> None:
    """When an append returns, a power cut keeps its record (and the index
    already has it)."""
    storage = MemoryStorage()
    async with Journal(storage) as journal:

        def on_return(seq: int, rec: list[Any]) -> None:
            assert durable_seqs(storage) >= seq
            assert rec[3] in journal.index.instances

        seqs = await run_appenders(journal, TASKS, 2, on_return)
        assert journal.commits < len(seqs)
    assert durable_seqs(storage) == len(seqs)


async def test_append_returns_after_its_fsync_on_disk(tmp_path: Path) -> None:
    storage = Instrumented(FileStorage(tmp_path / "journal"))
    async with Journal(storage) as journal:

        def on_return(seq: int, rec: list[Any]) -> None:
            assert seq <= storage.covered, f"seq {seq} returned before its fsync"

        seqs = await run_appenders(journal, TASKS, 2, on_return)
        assert journal.commits < len(seqs)
    assert storage.covered == len(seqs)


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_lone_appender_pays_one_fsync_per_append(
    kind: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """No batching delay: with an autojumping clock any timer would show up
    as virtual time passing."""
    storage = make_storage(kind, tmp_path)
    async with Journal(storage) as journal:
        start, syncs_at_open = trio.current_time(), storage.syncs
        for n in range(1, 21):
            assert await journal.append(created(n)) == n
            assert journal.commits == n
            assert storage.syncs - syncs_at_open == n
            assert storage.covered == n
        assert trio.current_time() == start


async def test_seqs_dense_in_order_of_acceptance() -> None:
    """Appends and append_manys from many tasks get dense seqs in the order
    the journal accepted them; each append_many's records are contiguous;
    the journal holds them in that order."""
    storage = MemoryStorage()
    accepted: list[list[Any]] = []
    async with Journal(storage) as journal:

        async def appender(i: int) -> None:
            for k in range(4):
                for _ in range((i * 7 + k) % 3):
                    await trio.lowlevel.checkpoint()
                recs = [created(i * 100 + k * 10 + j) for j in range(1 + (i + k) % 3)]
                # Seqs are given out before the first checkpoint of append_many.
                accepted.extend(recs)
                if len(recs) == 1:
                    await journal.append(recs[0])
                else:
                    await journal.append_many(recs)
                first = recs[0][1]
                assert [rec[1] for rec in recs] == list(range(first, first + len(recs)))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(appender, i)
        assert journal.commits < len(accepted)
    assert [rec[1] for rec in accepted] == list(range(1, len(accepted) + 1))
    records, _ = read_all(storage)
    assert records == accepted


async def test_append_during_inflight_commit_gets_a_fresh_seq() -> None:
    """Regression: an append arriving while a commit was in flight was given
    the in-flight batch's seqs again (the next seq was derived from the
    writer, which counts a batch only once committed), and the journal then
    failed to open with JournalCorrupt."""
    inner = MemoryStorage()
    storage = Instrumented(inner, blocking=True)  # commits run on a worker thread
    async with Journal(storage) as journal:
        in_sync, release = threading.Event(), threading.Event()

        def hold() -> None:
            in_sync.set()
            assert release.wait(timeout=30)

        storage.before_sync = hold
        seqs: dict[str, int] = {}

        async def append(name: str, n: int) -> None:
            seqs[name] = await journal.append(created(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, "first", 1)
            try:
                await trio.to_thread.run_sync(in_sync.wait)  # first's fsync is in flight
                storage.before_sync = lambda: None
                assert journal.next_seq == 2
                nursery.start_soon(append, "second", 2)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                release.set()
        assert seqs == {"first": 1, "second": 2}
    records, _ = read_all(inner)
    assert [(rec[1], rec[3]) for rec in records] == [(1, "i1"), (2, "i2")]
    async with Journal(inner) as journal:
        assert journal.next_seq == 3
