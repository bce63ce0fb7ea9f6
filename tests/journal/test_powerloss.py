"""Power-loss simulation, CrashMonkey style: every crash point of small workloads.

A workload is a sequence of up to three operations: append one record,
append a concurrent batch from several tasks, a concurrent batch of large
records that forces a segment roll-over, and a clean close + reopen. Each is
first run to count its mutating storage operations; then, for every crash
point n, it runs again on ``MemoryStorage(crash_at=n)`` until the power cut,
and every way the unsynced bytes may land (dropped, kept, any prefix, zeroed
sectors, garbage) gives a post-crash storage. On each:

* the journal opens;
* every acknowledged record (its append returned) is there, unchanged, in
  order; nothing appears that was never appended; sequence numbers are
  dense from 1;
* appending more, cutting power again (unsynced bytes dropped) and
  reopening still gives exactly the same history plus the new records.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import trio
import trio.testing
from support.powerloss import created, is_power_cut, read_all, tears

from memable_log._journal.journal import Journal
from memable_log._storage.memory import MemoryStorage, PowerCut
from memable_log._storage.writer import SegmentWriter

SEGMENT_SIZE = 4096
BATCH = 4  # records in a concurrent batch
BIG = 1500  # three of these cannot share a 4096-byte segment
OPS = ("one", "batch", "roll", "reopen")
WORKLOADS = [
    ops for length in (1, 2, 3) for ops in itertools.product(OPS, repeat=length)
]


class Log:
    """What a run appended: every record handed to the journal, and which
    appends returned (acknowledged), by sequence number."""

    def __init__(self, first: int = 0) -> None:
        self.next = first
        self.attempted: list[list[Any]] = []
        self.acked: dict[int, list[Any]] = {}

    def new(self, size: int = 24) -> list[Any]:
        rec = created(self.next, size)
        self.next += 1
        self.attempted.append(rec)
        return rec

    async def append(self, journal: Journal, rec: list[Any]) -> None:
        seq = await journal.append(rec)
        assert seq == rec[1]
        self.acked[seq] = list(rec)  # a copy: what was acknowledged

    def by_seq(self) -> dict[int, list[Any]]:
        """Every record the journal gave a sequence number to."""
        out = {rec[1]: rec for rec in self.attempted if rec[1]}
        assert len(out) == sum(1 for rec in self.attempted if rec[1]), "seq given twice"
        return out


async def concurrently(journal: Journal, log: Log, recs: list[list[Any]]) -> None:
    async with trio.open_nursery() as nursery:
        for rec in recs:
            nursery.start_soon(log.append, journal, rec)


async def run_workload(storage: MemoryStorage, ops: tuple[str, ...], log: Log) -> None:
    """Run ``ops``; "reopen" closes the journal and opens it again."""
    sessions: list[list[str]] = [[]]
    for op in ops:
        if op == "reopen":
            sessions.append([])
        else:
            sessions[-1].append(op)
    for session in sessions:
        async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
            # Let the appender task park first, so a concurrent batch is
            # always committed whole and each run costs the same operations.
            await trio.testing.wait_all_tasks_blocked()
            for op in session:
                if op == "one":
                    await log.append(journal, log.new())
                elif op == "batch":
                    # Same-size records: the batch costs the same operations
                    # whatever order the scheduler runs the tasks in.
                    await concurrently(journal, log, [log.new() for _ in range(BATCH)])
                else:
                    await concurrently(journal, log, [log.new(BIG) for _ in range(3)])


def check_history(records: list[list[Any]], log: Log, where: str) -> None:
    """The recovered history is a prefix of what was appended and holds
    every acknowledged record."""
    seqs = [rec[1] for rec in records]
    assert seqs == list(range(1, len(records) + 1)), f"{where}: seqs not dense: {seqs}"
    appended = log.by_seq()
    for rec in records:
        assert rec == appended.get(rec[1]), f"{where}: seq {rec[1]} was never appended as {rec}"
    for seq, rec in log.acked.items():
        assert seq <= len(records), f"{where}: acknowledged seq {seq} lost"
        assert records[seq - 1] == rec, f"{where}: acknowledged seq {seq} changed"


async def survive(crashed: MemoryStorage, log: Log, where: str) -> None:
    """Open the crashed storage, check it, append more, crash, check again."""
    async with Journal(crashed, segment_size=SEGMENT_SIZE) as journal:
        records, _ = read_all(crashed)
        check_history(records, log, where)
        assert journal.next_seq == len(records) + 1, where
        assert set(journal.index.instances) == {rec[3] for rec in records}, where
        # Later appends: the lost seqs are given out again, to new records.
        after = Log(first=10_000)
        await after.append(journal, after.new())
        await concurrently(journal, after, [after.new(BIG) for _ in range(3)])
        await after.append(journal, after.new())
        again = crashed.crash()
    more = [after.acked[seq] for seq in sorted(after.acked)]
    assert [rec[1] for rec in more] == list(range(len(records) + 1, len(records) + 6)), where
    async with Journal(again, segment_size=SEGMENT_SIZE) as journal:
        final, _ = read_all(again)
        assert final == records + more, f"{where}: second crash lost or changed records"
        assert len(journal.index.instances) == len(final), where


async def count_ops(ops: tuple[str, ...]) -> int:
    storage = MemoryStorage()
    await run_workload(storage, ops, Log())
    return storage.ops


@pytest.mark.parametrize("ops", WORKLOADS, ids="-".join)
async def test_every_crash_point_recovers_acknowledged_prefix(ops: tuple[str, ...]) -> None:
    total = await count_ops(ops)
    assert total == await count_ops(ops), "workload is not deterministic"
    rng = random.Random(f"powerloss-{'-'.join(ops)}")
    cases = 0
    for n in range(1, total + 1):
        storage = MemoryStorage(crash_at=n)
        log = Log()
        try:
            await run_workload(storage, ops, log)
        except BaseException as exc:
            if not is_power_cut(exc):
                raise
        else:
            pytest.fail(f"no power cut at operation {n} of {total}")
        seen: set[tuple[tuple[str, bytes], ...]] = set()
        for mode, tear in tears(storage, rng):
            crashed = storage.crash(tear)
            state = tuple((name, crashed.read(name)) for name in crashed.list())
            if state in seen:
                continue  # this tear left the same bytes as an earlier one
            seen.add(state)
            cases += 1
            await survive(crashed, log, f"{'-'.join(ops)} crash at op {n}/{total}, {mode}")
    # Without a crash point the workload runs to the end.
    await run_workload(MemoryStorage(crash_at=total + 1), ops, Log())
    assert cases >= total


class Recording(MemoryStorage):
    """A MemoryStorage that notes the name of each mutating operation."""

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__(crash_at)
        self.names: list[str] = []

    def _op(self, op: str) -> Any:
        self.names.append(op)
        return super()._op(op)


async def test_crash_points_cover_rollover_steps() -> None:
    """The roll-over workload really rolls, so its crash points include the
    seal, the new segment's temp file, its rename and the directory fsync."""
    storage = Recording()
    await run_workload(storage, ("roll",), Log())
    assert [name for name in storage.list() if name.endswith(".mlog")] == [
        "seg-0000000001.mlog", "seg-0000000002.mlog",
    ]
    # part + seal, the zeros after it cut, fsync; the new segment; its
    # zeros, fsync; the rest, fdatasync; at close the zero tail cut, fsync.
    roll = ["write", "truncate", "sync", "create", "write", "sync", "rename", "sync_dir",
            "write", "sync", "write", "sync", "truncate", "sync"]
    assert storage.names[-len(roll) :] == roll


async def test_crash_during_recovery_of_torn_tail() -> None:
    """A second power cut at any operation of the recovery that cuts a torn
    tail loses nothing and leaves the journal openable."""
    storage = MemoryStorage()
    log = Log()
    await run_workload(storage, ("one", "batch"), log)
    # A third batch written but not fsynced: a torn tail after the cut.

    async def cut_after_write() -> None:
        async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
            await trio.testing.wait_all_tasks_blocked()
            # The segment's zeros are written and fsynced (it was closed
            # without them); the batch's write lands, its fsync does not.
            storage.crash_at = storage.ops + 4
            # One batch for sure: a burst of lone appends on an idle journal
            # commits its first alone (the leader), the rest together.
            await journal.append_many([log.new() for _ in range(BATCH)])

    with pytest.raises(BaseExceptionGroup) as info:
        await cut_after_write()
    assert is_power_cut(info.value)
    torn = storage.crash(lambda name, data: data[: len(data) - 3])
    records, result = read_all(torn)
    # The last record is torn: none of its batch is kept (a batch is whole or absent).
    assert len(records) == 1 + BATCH
    assert result.torn_at is not None
    counting = storage.crash(lambda name, data: data[: len(data) - 3])
    async with Journal(counting, segment_size=SEGMENT_SIZE):
        recovery_ops = counting.ops
    assert recovery_ops >= 2  # at least: truncate, fsync
    for cut in range(1, recovery_ops + 1):
        again = storage.crash(lambda name, data: data[: len(data) - 3])
        again.crash_at = cut
        with pytest.raises(PowerCut):
            async with Journal(again, segment_size=SEGMENT_SIZE):
                pass
        await survive(again.crash(), log, f"second cut at recovery op {cut}")


def test_segment_size_floor() -> None:
    """The tiny segments used above are the smallest the writer allows."""
    with pytest.raises(ValueError, match="at least 4096"):
        SegmentWriter(MemoryStorage(), SEGMENT_SIZE - 1)
