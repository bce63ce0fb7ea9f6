"""One commit scheduler for both executors: the commit thread and inline commits.

MemoryStorage (the crash-test kit's storage) commits on the event loop, a
directory on the journal's commit thread; the scheduler that batches,
leads, reaps, fails and drains is the same. These tests run the same
scenario on both (``ThreadedMemory`` stands in for a directory, with its
faults) and pin what the inline executor must add:

* a power cut inside a commit run by an appending task (the leader) fails
  that append and every later one, and surfaces from the journal's nursery;
* under MockClock autojump no virtual time passes during commits;
* a leader cancelled before its commit ran leaves it to the reaper.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from support.journal import ThreadedMemory
from support.powerloss import created, is_power_cut, read_all

from memable_log._core.errors import JournalFailed
from memable_log._journal.epochs import ReadEpochs
from memable_log._journal.journal import Journal
from memable_log._storage.memory import MemoryStorage, PowerCut

KINDS = ["inline", "thread"]


def make(kind: str) -> MemoryStorage:
    return MemoryStorage() if kind == "inline" else ThreadedMemory()


class TaskSteps(trio.abc.Instrument):
    """Counts scheduler steps per task name."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_lone_writer_leads_its_own_commit_with_either_executor(kind: str) -> None:
    storage = make(kind)
    async with Journal(storage) as journal:
        await journal.append(created(0))
        await trio.testing.wait_all_tasks_blocked()  # the reaper waits
        me = trio.lowlevel.current_task().name
        counter = TaskSteps()
        trio.lowlevel.add_instrument(counter)
        try:
            for n in range(1, 11):
                syncs = storage.syncs
                await journal.append(created(n))
                assert storage.syncs == syncs + 1
                assert f"i{n}" in journal.index.instances
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert set(counter.steps) == {me}, counter.steps  # the reaper never woke


@pytest.mark.parametrize("kind", KINDS)
async def test_a_burst_of_writers_shares_one_commit_after_the_leaders(kind: str) -> None:
    """The first of a burst on an idle journal leads alone; everyone who
    appended meanwhile goes in the next commit, whole."""
    storage = make(kind)
    async with Journal(storage) as journal:
        await journal.append(created(0))
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            for n in range(1, 21):
                nursery.start_soon(journal.append, created(n))
        assert journal.commits == 3
    records, _ = read_all(storage.crash())
    assert len(records) == 21


@pytest.mark.parametrize("kind", KINDS)
async def test_a_leader_cancelled_before_its_commit_ends_leaves_it_to_the_reaper(
    kind: str,
) -> None:
    storage = make(kind)
    async with Journal(storage) as journal:
        await journal.append(created(1))
        with trio.CancelScope() as scope:
            scope.cancel()
            await journal.append(created(2))  # submitted, then Cancelled at its first wait
        assert scope.cancelled_caught
        with trio.fail_after(30):
            while "i2" not in journal.index.instances:
                await journal.maintenance.between_commits()
        assert await journal.append(created(3)) == 3
    records, _ = read_all(storage.crash())
    assert [rec[3] for rec in records] == ["i1", "i2", "i3"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_power_cut_in_a_leaders_commit_surfaces_from_the_journal(kind: str) -> None:
    storage = make(kind)
    outcomes: list[str] = []

    async def cut() -> None:
        async with Journal(storage) as journal:
            await journal.append(created(1))
            storage.crash_at = storage.ops + 1  # the next write: this leader's commit
            for n in (2, 3):
                try:
                    await journal.append(created(n))
                except JournalFailed as exc:
                    outcomes.append(exc.reason)
            await trio.sleep_forever()  # the reaper's PowerCut cancels the body

    with pytest.raises(BaseExceptionGroup) as raised:
        await cut()
    assert is_power_cut(raised.value)
    assert len(outcomes) == 2
    assert all("PowerCut" in reason for reason in outcomes)
    records, _ = read_all(storage.crash())
    assert [rec[3] for rec in records] == ["i1"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_power_cut_in_the_reapers_commit_fails_every_waiter(kind: str) -> None:
    storage = make(kind)
    outcomes: dict[int, str] = {}

    async def writer(journal: Journal, n: int) -> None:
        try:
            await journal.append(created(n))
        except JournalFailed:
            outcomes[n] = "failed"
        else:
            outcomes[n] = "acknowledged"

    async def cut() -> None:
        async with Journal(storage) as journal, trio.open_nursery() as nursery:
            await journal.append(created(0))
            storage.crash_at = storage.ops + 3  # the second commit: the reaper's
            for n in range(1, 9):
                nursery.start_soon(writer, journal, n)

    with pytest.raises(BaseExceptionGroup) as raised:
        await cut()
    assert raised.group_contains(PowerCut, depth=1)
    assert sorted(outcomes.values()) == ["acknowledged"] + ["failed"] * 7


async def test_inline_commits_let_no_virtual_time_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A thread would: autojump advances the clock whenever every task waits."""
    async with Journal(MemoryStorage()) as journal:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for w in range(8):

                async def writer(w: int) -> None:
                    for k in range(5):
                        await journal.append(created(w * 10 + k))

                nursery.start_soon(writer, w)
        assert journal.next_seq == 41
        assert trio.current_time() == start


async def test_maintenance_is_the_journal_seen_by_compaction() -> None:
    """The compaction hooks on ``journal.maintenance`` and their old names
    on the journal are the same state."""
    async with Journal(MemoryStorage(), segment_size=4096) as journal:
        maintenance = journal.maintenance
        assert maintenance.applied_segment == 1
        rolled = trio.Event()

        async def roll() -> None:
            await maintenance.wait_for_roll()
            rolled.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(roll)
            await trio.testing.wait_all_tasks_blocked()
            n = 0
            while not rolled.is_set():
                await journal.append(created(n, size=200))
                n += 1
        assert maintenance.applied_segment == journal.writer.segment
        assert maintenance.pending_instances() == set()
        maintenance.add_segment("cmp-1.mlog", 7)
        assert journal.writer.salts["cmp-1.mlog"] == 7
        assert maintenance.scan_result is journal.scan_result is not None


async def test_reads_before_an_epoch_are_waited_for_and_later_ones_are_not() -> None:
    epochs = ReadEpochs()
    old = epochs.begin()
    epoch = epochs.new_epoch()
    new = epochs.begin()
    waited: list[str] = []

    async def wait() -> None:
        await epochs.reads_before(epoch)
        waited.append("done")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waited == []  # the read begun in the old epoch still runs
        epochs.end(old)
        await trio.testing.wait_all_tasks_blocked()
        assert waited == ["done"]  # the new epoch's read does not count
    epochs.end(new)
    await epochs.reads_before(epochs.new_epoch())  # none left: at once
