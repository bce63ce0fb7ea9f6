"""Faults the crash-fuzzing campaigns (fuzz/) found, one test each.

Each test is named after the fault, reproduces it in the smallest setting,
and says which campaign found it.
"""

from __future__ import annotations

import errno
import logging
import threading
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from support.fuzz import ledger as fuzz_ledger
from support.fuzz import workload

from memable_log import (
    Context,
    Engine,
    JournalCorrupt,
    JournalFailed,
    ManualClock,
    MemoryStorage,
)
from memable_log._compaction import service as _maintenance
from memable_log._compaction.service import Compaction
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._core.format import HEADER_SIZE, parse_compacted_name, parse_segment_name
from memable_log._core.framing import decode_block, encode_block
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._journal.offline import OfflineJournal, read_index
from memable_log._storage.files import FileStorage
from memable_log._storage.inbox import encode_handover, write_handover
from memable_log._storage.memory import _MemHandle
from memable_log._storage.segments import scan
from memable_log.reader import JournalReader


async def compacted_journal(**failing: Any) -> MemoryStorage:
    """A journal the engine compacted: ``cmp-<k>`` and the active segment."""
    storage = FailingStorage(**failing)
    acks, ledger = workload.Acks(), fuzz_ledger.MemoryLedger()
    engine = workload.memory_engine(storage, ManualClock(), ledger, workload.collect(acks))
    async with engine:
        await workload.run_ops(engine, ("invoke", "step"), acks, ledger)
        # Background compaction runs inline on a MemoryStorage: once every
        # task waits, it is done, and the exit has leftovers to delete.
        await trio.testing.wait_all_tasks_blocked()
        assert engine._backend.compaction is not None
        assert engine._backend.compaction.leftovers_upto
        storage.armed = True  # only what the engine does on its way out fails
    storage.armed = False
    return storage


def reopened(storage: MemoryStorage) -> Any:
    """A new engine on the same storage (the restart after the fault)."""
    return workload.memory_engine(
        storage, ManualClock(), fuzz_ledger.MemoryLedger(), workload.collect(workload.Acks())
    )


class FailingStorage(MemoryStorage):
    """Fails, once armed, ``create`` of ``create`` and ``remove`` of names
    starting with ``remove`` (ENOSPC, EIO)."""

    def __init__(self, create: str | None = None, remove: str | None = None) -> None:
        super().__init__()
        self.armed = False
        self._create, self._remove = create, remove

    def create(self, name: str) -> _MemHandle:
        if self.armed and name == self._create:
            raise OSError(errno.ENOSPC, "injected ENOSPC on create", name)
        return super().create(name)

    def remove(self, name: str) -> None:
        if self.armed and self._remove is not None and name.startswith(self._remove):
            raise OSError(errno.EIO, "injected EIO on remove", name)
        super().remove(name)


def names(storage: MemoryStorage) -> tuple[list[str], list[str]]:
    """(compacted segments, plain segments) of a storage."""
    listing = storage.list()
    return ([n for n in listing if parse_compacted_name(n) is not None],
            [n for n in listing if parse_segment_name(n) is not None])


def only_the_compacted_segment(storage: MemoryStorage) -> str:
    """Delete every file but the newest compacted segment; its name."""
    compacted, _ = names(storage)
    assert compacted
    for name in storage.list():
        if name != compacted[-1]:
            storage.remove(name)
    storage.sync_dir()
    return compacted[-1]


def test_decoding_a_compacted_block_does_not_allocate_its_64_mib_cap() -> None:
    """Found by fuzz/mutate.py (memory bound): ``read(cap + 1)`` on the zstd
    stream allocated the whole cap, 64 MiB, for every block of a compacted
    segment, however small, at every start-up."""
    payloads = [f"record {i}".encode() * 10 for i in range(50)]
    frame = encode_block(payloads, salt=7)
    tracemalloc.start()
    try:
        decoded = decode_block(frame[8:], salt=7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == payloads
    assert peak < 2 * 1024 * 1024


async def test_a_journal_ending_in_its_compacted_segment_opens_and_appends() -> None:
    """Found by fuzz/mutate.py (a segment file deleted): with the compacted
    segment as the last one, recovery opened ``seg-<k>`` instead of
    ``cmp-<k>`` to fsync it and failed with JournalFailed (no such file)."""
    storage = await compacted_journal()
    only_the_compacted_segment(storage)
    before = list(JournalReader(storage))
    with OfflineJournal(storage) as journal:
        journal.append([[11, 0, 1, "invoke0", b"\x00\xc0"]])  # a `completed` record
    after = list(JournalReader(storage))
    assert [(v.type, v.instance) for v in after] == [
        *[(v.type, v.instance) for v in before], ("completed", "invoke0"),
    ]


@pytest.mark.parametrize("damage", ["flip-a-block-byte", "cut-the-seal"])
async def test_damage_in_a_last_compacted_segment_is_corruption_not_a_torn_tail(
    damage: str,
) -> None:
    """Found by fuzz/mutate.py: when the compacted segment was the last one,
    damage in it was taken for a torn tail and cut, and appending went on
    into a file that was written whole before it was renamed into place."""
    storage = await compacted_journal()
    name = only_the_compacted_segment(storage)
    data = bytearray(storage.read(name))
    if damage == "flip-a-block-byte":
        data[HEADER_SIZE + 20] ^= 0x10
    else:
        del data[-3:]
    storage.remove(name)
    handle = storage.create(name)
    handle.write(bytes(data))
    handle.sync()
    storage.sync_dir()
    with pytest.raises(JournalCorrupt):
        scan(storage)
    with pytest.raises(JournalCorrupt):
        list(JournalReader(storage))
    with pytest.raises(JournalCorrupt), OfflineJournal(storage):
        pass
    assert storage.read(name) == bytes(data)  # nothing was cut


async def test_a_failed_index_snapshot_write_at_exit_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by fuzz/faults.py (EIO on the last fsync): an OSError writing the
    index snapshot when the engine stopped escaped ``async with engine``; the
    snapshot only speeds up the next start."""
    caplog.set_level(logging.WARNING, logger="memable_log")
    storage = await compacted_journal(create="index.snap.tmp")
    assert "index snapshot not written" in caplog.text
    engine = reopened(storage)
    async with engine:  # opens with a full scan
        assert engine.status("step1").state == "completed"


async def test_a_failed_delete_of_compacted_away_segments_at_exit_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by fuzz/faults.py (EIO on remove): deleting the segments the last
    compaction replaced, when the engine stopped, raised OSError out of
    ``async with engine``. The next start deletes them."""
    caplog.set_level(logging.WARNING, logger="memable_log")
    storage = await compacted_journal(remove="seg-")
    assert "not deleted" in caplog.text
    compacted, plain = names(storage)
    assert compacted
    leftovers = [n for n in plain if parse_segment_name(n) <= parse_compacted_name(compacted[-1])]
    assert leftovers
    engine = reopened(storage)
    async with engine:
        await trio.lowlevel.checkpoint()
    assert not set(leftovers) & set(storage.list())


class FullDisk(FileStorage):
    """A journal directory whose segment appends fail with ENOSPC."""

    def open_append(self, name: str) -> Any:
        file = super().open_append(name)

        class Full:
            def write(self, data: bytes) -> None:
                raise OSError(errno.ENOSPC, "injected ENOSPC on write", name)

            def write_at(self, offset: int, data: bytes) -> None:
                raise OSError(errno.ENOSPC, "injected ENOSPC on write", name)

            def sync(self) -> None:
                file.sync()

            def sync_data(self) -> None:
                file.sync_data()

            def truncate(self, size: int) -> None:
                file.truncate(size)

            def close(self) -> None:
                file.close()

        return Full()


async def test_a_failure_while_the_engine_starts_closes_it_and_leaves_trio_intact(
    tmp_path: Path,
) -> None:
    """Found by fuzz/mutate.py (an engine started on a hostile index
    snapshot): an exception raised in ``async with engine`` after the
    engine's nursery was opened (here: the disk full while a signal handed
    over by memable-signal is applied) left that nursery open, and trio
    reported its nursery stack corrupt. Now the engine closes and the error
    surfaces as itself."""
    path = tmp_path / "journal"

    async def waits(ctx: Context) -> Any:
        return await ctx.suspend("go")

    def engine() -> Engine:
        built = Engine.builder().open(path).build()
        built.register("waits", waits)
        return built

    first = engine()
    async with first:
        await first.invoke("waits", instance_id="a")
        assert await workload.until_settled(first, "a") == "suspended"
    write_handover(str(path), encode_handover("waits", "a", "go", Codec().encode("yes")))
    failing = engine()
    failing._backend.make_storage = lambda: FullDisk(path, create=False)
    with pytest.raises(JournalFailed, match="ENOSPC"):
        async with failing:
            pytest.fail("the engine started on a full disk")
    # Trio is intact, the lock released, the hand-over kept for the next start.
    again = engine()
    async with again:
        assert await again.wait("a") == "yes"


class HeldCommitStorage(MemoryStorage):
    """Blocking (so commits run on a worker thread); the first write to
    ``held`` waits until ``release`` is set, after ``reached`` is set."""

    blocking = True

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.reached = threading.Event()
        self.release = threading.Event()

    def open_append(self, name: str) -> Any:
        handle = super().open_append(name)
        if name != self.held:
            return handle
        storage = self

        class Held:
            def write(self, data: bytes) -> None:
                if not storage.reached.is_set():
                    storage.reached.set()
                    storage.release.wait(30)
                handle.write(data)

            def write_at(self, offset: int, data: bytes) -> None:
                if not storage.reached.is_set():
                    storage.reached.set()
                    storage.release.wait(30)
                handle.write_at(offset, data)

            def sync(self) -> None:
                handle.sync()

            def sync_data(self) -> None:
                handle.sync_data()

            def truncate(self, size: int) -> None:
                handle.truncate(size)

            def close(self) -> None:
                handle.close()

        return Held()


def big_created(n: int) -> list[Any]:
    return r.make(r.CREATED, 1, f"big{n}", "w", bytes(1900))


async def test_a_commit_in_flight_past_a_roll_over_does_not_count_as_applied() -> None:
    """Found by fuzz/killnine.py (a workflow failed with FileNotFoundError on
    a deleted segment): a commit moves ``writer.segment`` on its worker
    thread as it rolls over, before its records reach the index. The
    compaction service read ``writer.segment``, so it could compact the
    just-sealed segment, remap the index without those records, and delete
    that segment a cycle later while the index, once they were applied,
    pointed into it. ``applied_segment`` moves only with the index."""
    storage = HeldCommitStorage(held="seg-0000000002.mlog")
    async with Journal(storage, segment_size=4096) as journal:
        await journal.append_many([big_created(1)])
        assert journal.maintenance.applied_segment == journal.writer.segment == 1

        async with trio.open_nursery() as nursery:
            # Two records: the first fits in segment 1, the second rolls over.
            nursery.start_soon(journal.append_many, [big_created(2), big_created(3)])
            await trio.to_thread.run_sync(storage.reached.wait, 30)
            assert journal.writer.segment == 2  # the worker thread rolled over...
            assert journal.maintenance.applied_segment == 1  # ...but nothing of it is applied yet
            assert "big2" not in journal.index.instances
            storage.release.set()
        assert journal.maintenance.applied_segment == journal.writer.segment == 2
        assert {"big1", "big2", "big3"} <= set(journal.index.instances)


class RolledJournal:
    """Enough of a Journal for the compaction service: a roll-over happened,
    and a commit in flight has already moved the writer one segment on."""

    def __init__(self) -> None:
        self.writer = SimpleNamespace(segment=3)
        self.applied_segment = 2
        self.rolls = 0
        self.storage = MemoryStorage()
        self.index = Index()
        self.scan_result = None
        self.maintenance = self  # the hooks compaction uses, on the same fake

    async def wait_for_roll(self) -> None:
        self.rolls += 1
        if self.rolls > 1:
            await trio.sleep_forever()


async def test_the_compaction_service_compacts_only_applied_segments(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    """The same fault, at the service: with segment 1 compacted and a commit
    in flight past the roll-over into segment 3, it must not compact
    segment 2 yet (its last records are not in the index)."""
    compacted: list[int] = []

    async def compact(self: Compaction, upto: int) -> None:
        compacted.append(upto)
        self.compacted_upto = upto

    monkeypatch.setattr(Compaction, "compact", compact)
    journal = RolledJournal()
    service = Compaction(journal, lambda: 0, None)  # type: ignore[arg-type]
    service.compacted_upto = 1
    with trio.move_on_after(1):  # virtual time: over once the service waits
        await service.run()
    assert journal.rolls == 2  # it went back to waiting for a roll-over
    assert compacted == []
    journal.maintenance.applied_segment = 3  # the commit is applied: now segment 2 may go
    journal.rolls = 0
    with trio.move_on_after(1):
        await service.run()
    assert compacted == [2]


class QuietJournal(RolledJournal):
    """A journal that rolls over no more: waiting for a roll-over is forever."""

    async def wait_for_roll(self) -> None:
        await trio.sleep_forever()


async def test_a_roll_over_before_the_compaction_service_waits_is_not_missed(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    """Found while chasing why fuzz/killnine.py rarely reached the compaction
    crash points (that was timing: a compaction child takes ~0.4 s to start
    here): the engine's services start after its runners, so a roll-over can
    come before the service waits for one, and it waited for the next, which
    with 64 MiB segments can be hours away."""
    compacted: list[int] = []

    async def compact(self: Compaction, upto: int) -> None:
        compacted.append(upto)
        self.compacted_upto = upto

    monkeypatch.setattr(Compaction, "compact", compact)
    journal = QuietJournal()
    service = Compaction(journal, lambda: 0, None)  # type: ignore[arg-type]
    service.compacted_upto = 1
    journal.applied_segment = 3  # a roll-over while the engine was starting
    with trio.move_on_after(1):
        await service.run()
    assert compacted == [2]
    # With no roll-over since the open, it waits for one, as ever.
    journal, compacted[:] = QuietJournal(), []
    service = Compaction(journal, lambda: 0, None)  # type: ignore[arg-type]
    with trio.move_on_after(1):
        await service.run()
    assert compacted == []


class VanishingOnce(FileStorage):
    """The first segment read finds the file gone, as when a running
    engine's compaction deletes it between the listing and the read."""

    vanished = False

    def read(self, name: str) -> bytes:
        if not self.vanished and name.startswith("seg-"):
            self.vanished = True
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
        return super().read(name)


async def test_memable_signal_reads_the_journal_again_when_compaction_deletes_a_segment(
    tmp_path: Path,
) -> None:
    """Found by fuzz/killnine.py: memable-signal, handing a signal over to a
    running engine, reads the journal without the lock; a segment that the
    engine's compaction deleted meanwhile made it fail with "cannot write
    the signal: No such file". It now reads again from a new listing (the
    read is memable_log._journal.offline.read_index, which
    operations.signal uses when an engine holds the lock)."""
    path = tmp_path / "journal"
    engine = Engine.builder().open(path).build()

    async def waits(ctx: Context) -> Any:
        return await ctx.suspend("go")

    engine.register("waits", waits)
    async with engine:
        await engine.invoke("waits", instance_id="a")
    index = read_index(VanishingOnce(path, create=False))
    assert "a" in index.instances


class HeldReadStorage(MemoryStorage):
    """Blocking (reads run on worker threads); the first ``read_at`` waits
    until ``release`` is set, after setting ``reached``."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        if not self.reached.is_set():
            self.reached.set()
            self.release.wait(30)
        return super().read_at(name, offset, size)


class Stop(Exception):
    """Ends a compaction once it reaches its deletion."""


async def test_compacted_away_segments_wait_for_reads_that_may_name_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzz/killnine.py (a workflow failed with FileNotFoundError on
    a deleted cmp- segment, its index already re-pointed): a read looks its
    location up, then waits for a worker thread; compactions can follow each
    other within that wait, and the next one deleted the files the read
    named. Deletion now waits for reads begun before the re-pointing."""
    storage = HeldReadStorage()
    deleted_under_read: list[bool] = []

    def finish(storage_: Any, upto: int) -> list[str]:
        deleted_under_read.append(not storage.release.is_set())
        raise Stop

    monkeypatch.setattr(_maintenance, "finish", finish)
    async with Journal(storage) as journal:
        await journal.append_many([big_created(1)])
        loc = journal.index.instances["big1"].input
        assert type(loc) is int  # a location: reading it goes to the file
        service = Compaction(journal, lambda: 0, None)
        # Its own deletions go through a storage that is not blocking, so
        # they happen inline, before the test goes on.
        service.storage = MemoryStorage()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.read, loc)  # looks up before the re-pointing...
            await trio.to_thread.run_sync(storage.reached.wait, 30)
            service.leftovers_upto = 1  # ...which a compaction then does
            service.leftovers_epoch = journal.maintenance.new_epoch()

            async def next_compaction() -> None:
                with pytest.raises(Stop):
                    await service.compact(2)

            nursery.start_soon(next_compaction)
            await trio.testing.wait_all_tasks_blocked()
            storage.release.set()
    assert deleted_under_read == [False]
