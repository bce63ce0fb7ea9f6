"""The commit path on blocking storage: a commit thread of the journal's own.

An append that finds no commit in flight hands its batch straight to the
journal's commit thread and waits for the result itself (the *leader*);
the reaper task takes over commits nobody waits for. These tests pin what
that must keep:

* a lone writer's append runs no other task (no hop through the reaper)
  and still pays exactly one fsync, with the index updated on return;
* the event loop runs other tasks while a commit's fsync is in flight;
* a leader cancelled mid-commit raises Cancelled at once; its record is
  applied only once durable, by the reaper, and appends go on;
* writers woken together by one commit are committed together: an early
  lone append must not split them into two half batches for good;
* closing commits every append it accepted, and ends the commit thread;
* ``between_commits`` (background work's pause) returns as the commit in
  flight begins its fsync, not after it, and never hangs on a commit that
  fails before its fsync.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from support.journal import ThreadedMemory
from support.powerloss import created, read_all

from memable_log._core.errors import JournalClosed
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log._storage.memory import MemoryStorage, PowerCut

THREAD_NAME = "memable_log commit"



class Holder:
    """Holds the next fsync on the commit thread until released."""

    def __init__(self) -> None:
        self.in_sync = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.in_sync.set()
        assert self.release.wait(timeout=30)

    async def reached(self) -> None:
        await trio.to_thread.run_sync(self.in_sync.wait, 30)


class TaskSteps(trio.abc.Instrument):
    """Counts scheduler steps per task name."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


async def test_lone_writer_append_runs_no_other_task() -> None:
    storage = ThreadedMemory()
    async with Journal(storage) as journal:
        await journal.append(created(0))
        await trio.testing.wait_all_tasks_blocked()  # the reaper has started and waits
        me = trio.lowlevel.current_task().name
        counter = TaskSteps()
        trio.lowlevel.add_instrument(counter)
        try:
            for n in range(1, 21):
                syncs = storage.syncs
                assert await journal.append(created(n)) == n + 1
                assert storage.syncs == syncs + 1
                assert f"i{n}" in journal.index.instances
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert set(counter.steps) == {me}, counter.steps  # no reaper, no appender task
        assert journal.commits == 21


async def test_event_loop_runs_other_tasks_while_an_fsync_is_in_flight() -> None:
    storage = ThreadedMemory()
    holder = Holder()
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.before_sync = holder
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.append, created(2))
            await holder.reached()
            storage.before_sync = lambda: None
            for _ in range(100):  # the loop is not blocked by the held fsync
                await trio.lowlevel.checkpoint()
            assert "i2" not in journal.index.instances
            holder.release.set()
        assert "i2" in journal.index.instances


async def test_cancelled_leader_raises_at_once_and_the_reaper_applies_its_record() -> None:
    storage = ThreadedMemory()
    holder = Holder()
    outcome: list[str] = []
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.before_sync = holder
        scope = trio.CancelScope()

        async def leader() -> None:
            with scope:
                await journal.append(created(2))  # finds the journal idle: leads
                outcome.append("returned")
            outcome.append("cancelled" if scope.cancelled_caught else "left")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await holder.reached()
            storage.before_sync = lambda: None
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # Cancelled while its fsync still runs; nothing applied before it is durable.
            assert outcome == ["cancelled"]
            assert "i2" not in journal.index.instances
            holder.release.set()
        assert await journal.append(created(3)) == 3
        assert {"i1", "i2", "i3"} <= set(journal.index.instances)
    records, _ = read_all(storage.crash())
    assert [rec[3] for rec in records] == ["i1", "i2", "i3"]


@pytest.mark.parametrize("kind", ["threaded-memory", "file"])
async def test_an_early_lone_append_does_not_split_a_group_into_half_batches(
    kind: str, tmp_path: Any
) -> None:
    """Regression: all writers started at once, the first found the journal
    idle and committed alone; the rest formed a second batch; from then on
    the two halves took turns, one fsync per half a group (twice the
    fsyncs of one batch per round)."""
    storage = ThreadedMemory() if kind == "threaded-memory" else FileStorage(tmp_path / "j")
    writers, rounds = 32, 12
    async with Journal(storage) as journal:
        await journal.append(created(0))
        start = journal.commits

        async def writer(w: int) -> None:
            for k in range(rounds):
                await journal.append(created(1 + w * rounds + k))

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)
        # The first round may take two commits (the early one and the rest);
        # after that, one commit per round for the whole group.
        assert journal.commits - start <= rounds + 2
        assert journal.next_seq == 2 + writers * rounds


async def race_close(storage: ThreadedMemory, trial: int) -> tuple[list[str], int]:
    """Eight writers outside the journal's block append while it exits
    after ``trial`` checkpoints; the names of appends that returned, and
    how many were refused."""
    returned: list[str] = []
    refused = 0
    async with trio.open_nursery() as nursery, Journal(storage) as journal:

        async def writer(w: int) -> None:
            nonlocal refused
            for k in range(6):
                for _ in range((w + k + trial) % 3):
                    await trio.lowlevel.checkpoint()
                rec = created(w * 10 + k)
                try:
                    await journal.append(rec)
                except JournalClosed:
                    refused += 1
                    return
                returned.append(rec[3])

        for w in range(8):
            nursery.start_soon(writer, w)
        for _ in range(trial):
            await trio.lowlevel.checkpoint()
    return returned, refused


async def test_close_commits_every_append_it_accepted() -> None:
    """Every append that returned is durable, nothing else is, and no
    append is left waiting (fail_after would trip)."""
    refusals = 0
    for trial in range(12):
        storage = ThreadedMemory()
        with trio.fail_after(30):
            returned, refused = await race_close(storage, trial)
        refusals += refused
        records, _ = read_all(storage.crash())
        assert sorted(rec[3] for rec in records) == sorted(returned), trial
    assert refusals > 0  # some appends did race the exit


async def test_closing_ends_the_commit_thread() -> None:
    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == THREAD_NAME]

    def join_all() -> None:
        for thread in ours():
            thread.join(timeout=30)

    await trio.to_thread.run_sync(join_all)
    before = len(ours())
    for n in range(5):
        async with Journal(ThreadedMemory()) as journal:
            await journal.append(created(n))
            assert len(ours()) == before + 1
    await trio.to_thread.run_sync(join_all)
    assert ours() == []


async def test_memory_storage_commits_without_a_thread() -> None:
    """Storage that does not block keeps committing on the event loop (so a
    simulated power cut surfaces from the journal), with no thread started."""
    before = threading.active_count()
    async with Journal(MemoryStorage()) as journal:
        await journal.append(created(1))
        assert journal.commits == 1
        assert threading.active_count() == before
        assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]


async def test_between_commits_returns_as_the_commit_in_flight_begins_its_fsync() -> None:
    """Background work may run while the commit thread is inside fsync (it
    holds no GIL then); it must not wait for the commit to end."""
    storage = ThreadedMemory()
    hold = Holder()
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.before_sync = hold
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.append, created(2))
            await trio.testing.wait_all_tasks_blocked()
            assert journal.commit_in_flight
            with trio.fail_after(30):  # the old pause waited for the commit: stuck here
                await journal.maintenance.between_commits()
            assert journal.commit_in_flight  # still in its fsync
            await hold.reached()
            storage.before_sync = lambda: None
            hold.release.set()
        assert journal.index.instances["i2"].created_ms == 1_002


async def test_between_commits_returns_at_once_with_no_commit_in_flight() -> None:
    async with Journal(ThreadedMemory()) as journal:
        await journal.append(created(1))
        steps = TaskSteps()
        trio.lowlevel.add_instrument(steps)
        try:
            await journal.maintenance.between_commits()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert not journal.commit_in_flight
        assert sum(steps.steps.values()) <= 3  # a checkpoint, no waiting


class HeldWrite(ThreadedMemory):
    """Holds the next segment write on the commit thread, then fails it."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: Holder | None = None

    def _op(self, op: str) -> Any:
        if op == "write" and self.hold is not None:
            self.hold()
        return super()._op(op)


async def test_between_commits_is_woken_by_a_commit_that_fails_before_its_fsync() -> None:
    storage = HeldWrite()
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.hold = hold = Holder()
        storage.fail("write", 5)
        failures: list[str] = []

        async def doomed() -> None:
            try:
                await journal.append(created(2))
            except Exception as exc:
                failures.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed)
            await hold.reached()

            async def let_go() -> None:
                await trio.testing.wait_all_tasks_blocked()
                hold.release.set()

            nursery.start_soon(let_go)
            with trio.fail_after(30):
                await journal.maintenance.between_commits()
        assert failures == ["JournalFailed"]
        assert not journal.commit_in_flight


async def test_between_commits_returns_once_a_commit_ends_and_no_other_follows() -> None:
    """A commit's fsync gives one moment; the next pause waits for the next
    fsync, or (none coming) for the commit to end with no other after it."""
    storage = ThreadedMemory()
    hold = Holder()
    async with Journal(storage) as journal:
        await journal.append(created(1))
        storage.before_sync = hold
        returned = trio.Event()

        async def pause() -> None:
            with trio.fail_after(30):
                await journal.maintenance.between_commits()
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.append, created(2))
            await hold.reached()  # in its fsync before anyone waits for one
            with trio.fail_after(30):
                await journal.maintenance.between_commits()  # at once: it is in its fsync
            nursery.start_soon(pause)  # one moment per fsync: this one waits
            await trio.testing.wait_all_tasks_blocked()
            assert not returned.is_set()  # the commit is still in flight
            storage.before_sync = lambda: None
            hold.release.set()
        assert returned.is_set()
        assert not journal.commit_in_flight


async def test_a_power_cut_on_the_event_loop_wakes_a_shielded_pause() -> None:
    """A commit that dies of a (simulated) power cut must not leave a task in
    between_commits waiting for it: compaction pauses there in a shielded
    scope, which the engine's exit cannot cancel (the power-loss campaign
    hung on this)."""
    storage = MemoryStorage()
    outcome: list[str] = []

    async def pause(journal: Journal) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 30) as scope:
            for _ in range(10_000):  # until the appender holds the doomed batch
                if journal.commit_in_flight:
                    break
                await trio.lowlevel.checkpoint()
            await journal.maintenance.between_commits()
        outcome.append("timed out" if scope.cancelled_caught else "returned")

    async def cut() -> None:
        async with Journal(storage) as journal, trio.open_nursery() as nursery:
            await journal.append(created(1))
            storage.crash_at = storage.ops + 1  # the next write
            nursery.start_soon(pause, journal)
            await journal.append(created(2))

    with pytest.raises(BaseExceptionGroup) as raised:
        await cut()
    assert outcome == ["returned"]
    assert raised.group_contains(PowerCut)
