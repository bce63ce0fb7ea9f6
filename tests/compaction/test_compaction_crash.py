"""A power cut at every step of a compaction leaves a journal that answers as before.

Offline: ``compact_offline`` is run once on a rich history to list its
mutating operations (the lock-time recovery, the seal of the active
segment and its roll-over, the temp file's creation, writes and fsync, the
rename, the directory fsync, each removal and the final directory fsync);
then, for every one of them, again on ``MemoryStorage`` stopped there by a
power cut, and every way the unsynced bytes may land gives a post-crash
storage. Each opens, and answers every query exactly as before the
compaction (with retention: as before, or, once the compacted file is
durable, without exactly the expired instances). Opening it for writing
cleans up, and compacting again finishes the job.

The same for the pieces (``write_compacted`` and ``finish`` with a tail of
plain segments after ``upto``), for retention rewriting a compacted journal
in place, and for background compaction inside a running engine (its I/O
inline, or on worker threads concurrently with commits): a power cut at
every operation of a workload whose segments roll and compact while
instances step and suspend. After each, the journal opens (by a full scan,
and from the snapshot written after a compaction) and answers exactly as
the records written up to some point at or after the last acknowledged one
would (whichever way the unacknowledged ones landed), and a new engine
finishes every instance without running an acknowledged step again.

Last, an I/O error at each operation on the compacted file fails that
compaction (the service tries again later: test_compaction_retry.py) and
leaves an engine whose answers are exactly what the journal says when
reopened.
"""

from __future__ import annotations

import errno
import random
from collections import Counter
from typing import Any, TypeVar

import pytest
import trio
from support.compaction import (
    INLINE,
    Answers,
    History,
    answers,
    copy_records,
    expired_ids,
    reader,
    reference,
    step_value,
    stored,
    without,
)
from support.journal import files_of
from support.powerloss import is_power_cut, tears

from memable_log import Context, Engine, ManualClock, UnknownInstance
from memable_log._compaction.compactor import (
    compact_offline,
    finish,
    prefix_state,
    synthesize,
    write_compacted,
)
from memable_log._core import lifecycle as lc
from memable_log._core.format import compacted_name
from memable_log._engine.engine import host_of
from memable_log._journal.journal import Journal
from memable_log._storage.memory import MemoryStorage, PowerCut
from memable_log._storage.segments import read_record_at, scan

SEGMENT_SIZE = 4096
S = TypeVar("S", bound=MemoryStorage)


class Recording(MemoryStorage):
    """A MemoryStorage that names each mutating operation as it counts it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def _op(self, op: str) -> Any:
        self.names.append(op)
        return super()._op(op)


def rich_history(seed: int = 5, length: int = 140) -> History:
    """A history with several sealed segments, finished and live instances
    (its first 40 ops in format version 1's records)."""
    rng = random.Random(seed)
    made = History(legacy=40)
    made.run([
        (rng.randrange(108), rng.randrange(6), rng.randrange(8), rng.randrange(4))
        for _ in range(length)
    ])
    return made


async def write(storage: MemoryStorage, records: list[list[Any]]) -> None:
    async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
        records = copy_records(records)
        for first in range(0, len(records), 3):
            await journal.append_many(records[first : first + 3])


def built(files: dict[str, bytes], storage: S) -> S:
    """``files`` written, fsynced and dir-fsynced into ``storage``.

    Always the same operations, so ``storage.ops`` afterwards is the same too.
    """
    for name, data in files.items():
        handle = storage.create(name)
        handle.write(data)
        handle.sync()
        handle.close()
    storage.sync_dir()
    return storage


def compacted_durable_at(first: int, names: list[str]) -> int:
    """The operation after which the compacted file is in place: the directory
    fsync after its rename, the last rename but one (the last renames the
    index snapshot written after it, a derived file)."""
    renames = [i for i, name in enumerate(names) if name == "rename"]
    assert names[-2:] == ["rename", "sync_dir"]  # the snapshot's
    return first + renames[-2] + 1


async def reopened(storage: MemoryStorage) -> Answers:
    """Open the journal for writing (recovery cleans up), close it, answer."""
    async with Journal(storage, segment_size=SEGMENT_SIZE):
        pass
    leftovers = [n for n in storage.list() if n.endswith(".tmp")]
    assert leftovers == []
    result = scan(storage)
    assert result.superseded == []  # the writer deleted what a compaction replaced
    return stored(storage)


@pytest.mark.parametrize("retention_ms", [None, 0, 60_000])
async def test_a_power_cut_at_any_step_of_offline_compaction_changes_no_answer(
    retention_ms: int | None,
) -> None:
    made = rich_history()
    original = MemoryStorage()
    await write(original, made.records)
    files = files_of(original)
    before = stored(original)
    assert len(scan(original).segments) >= 4
    now = made.now + 30_000
    dropped = set() if retention_ms is None else expired_ids(before, now, retention_ms)
    if retention_ms is not None:
        assert 0 < len(dropped) < len(before)
    expected = without(before, dropped)

    probe = built(files, Recording())
    first = probe.ops + 1
    compact_offline(probe, now_ms=now, retention_ms=retention_ms)
    names = probe.names[first - 1 :]
    assert set(names) == {"create", "write", "sync", "rename", "sync_dir", "remove"}
    durable_at = compacted_durable_at(first, names)
    assert names[durable_at - first] == "sync_dir"
    assert stored(probe) == expected

    rng = random.Random(1)
    for n in range(first, probe.ops + 1):
        storage = built(files, MemoryStorage())
        storage.crash_at = n
        with pytest.raises(PowerCut):
            compact_offline(storage, now_ms=now, retention_ms=retention_ms)
        for name, tear in tears(storage, rng):
            after = storage.crash(tear)
            want = expected if n > durable_at else before
            assert stored(after) == want, (n, names[n - first], name)
            assert await reopened(after) == want, (n, name)
            compact_offline(after, now_ms=now, retention_ms=retention_ms)
            assert stored(after) == expected, (n, name)


async def test_a_power_cut_at_any_step_of_a_partial_compaction_keeps_the_tail() -> None:
    made = rich_history(seed=11)
    original = MemoryStorage()
    await write(original, made.records)
    files = files_of(original)
    before = stored(original)
    sealed = [seg.number for seg in scan(original).segments if seg.sealed]
    assert len(sealed) >= 3
    upto = sealed[len(sealed) // 2]

    def compact(storage: MemoryStorage) -> None:
        prefix, result = prefix_state(storage, upto, INLINE)
        records = synthesize(prefix, reader(storage, result))
        write_compacted(storage, upto, result.next_seq, records, INLINE)
        finish(storage, upto)

    probe = built(files, Recording())
    first = probe.ops + 1
    compact(probe)
    assert probe.list()[0] == compacted_name(upto)
    assert set(probe.names[first - 1 :]) == {"create", "write", "sync", "rename", "sync_dir",
                                             "remove"}
    rng = random.Random(2)
    for n in range(first, probe.ops + 1):
        storage = built(files, MemoryStorage())
        storage.crash_at = n
        with pytest.raises(PowerCut):
            compact(storage)
        for name, tear in tears(storage, rng):
            after = storage.crash(tear)
            assert stored(after) == before, (n, name)
            assert await reopened(after) == before, (n, name)


# -- background compaction in a running engine --------------------------------------

VALUE = 700  # bytes: five fill a 4096-byte segment


def value(key: str) -> str:
    return (key * VALUE)[:VALUE]


class Issued:
    """Every record handed to a journal, in seq order, and how many were acknowledged."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.records: list[list[Any]] = []
        self.acked = 0
        original = Journal.append_many

        async def append_many(journal: Journal, recs: list[list[Any]]) -> None:
            self.records += recs
            end = len(self.records)
            await original(journal, recs)
            self.acked = max(self.acked, end)

        monkeypatch.setattr(Journal, "append_many", append_many)

    def reset(self) -> None:
        self.records, self.acked = [], 0


class Steps:
    """Step bodies that count their calls and note acknowledged results."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.acked: dict[tuple[str, str], str] = {}

    async def run(self, ctx: Context, key: str) -> str:
        def body() -> str:
            self.calls[ctx.instance_id, key] += 1
            return value(key)

        result: str = await ctx.step(key).run(body)
        self.acked[ctx.instance_id, key] = result
        return result


def workflows(steps: Steps) -> dict[str, Any]:
    async def long(ctx: Context) -> int:
        for i in range(10):
            await steps.run(ctx, f"s{i}")
        return 10

    async def short(ctx: Context) -> int:
        await steps.run(ctx, "only")
        return 1

    async def waiter(ctx: Context) -> Any:
        await steps.run(ctx, "before")
        got = await ctx.suspend("go", status="waiting for go")
        await steps.run(ctx, "after")
        return got

    return {"long": long, "short": short, "waiter": waiter}


def engine_on(storage: MemoryStorage, steps: Steps, clock: ManualClock) -> Engine:
    engine = (
        Engine.builder().in_memory(storage).segment_size(SEGMENT_SIZE).clock(clock)
        .retention(None).build()
    )
    for name, fn in workflows(steps).items():
        engine.register(name, fn)
    return engine


async def workload(engine: Engine, compacted: bool = False) -> None:
    """The three instances to their ends; ``compacted``: then until a
    background compaction has finished (the probe run: on a loaded machine
    the workload can end before one does, and its exit cancels it)."""
    async with engine:
        await engine.invoke("short", instance_id="a")
        await engine.invoke("waiter", instance_id="b")
        await engine.invoke("long", instance_id="c")
        assert await engine.wait("a") == 1
        assert await engine.wait("c") == 10
        await engine.signal("waiter", "b", "go", "yes")
        assert await engine.wait("b") == "yes"
        compaction = host_of(engine).backend.compaction  # type: ignore[union-attr]
        while compacted and compaction.runs == 0:
            await compaction.decided.wait()


async def finish_all(storage: MemoryStorage, steps: Steps) -> None:
    """A new engine on the recovered journal drives every instance to its end."""
    engine = engine_on(storage, steps, ManualClock())
    async with engine:
        for iid, name in (("a", "short"), ("b", "waiter"), ("c", "long")):
            await engine.invoke(name, instance_id=iid)  # lost in the cut: invoked again
        assert await engine.wait("a") == 1
        assert await engine.wait("c") == 10
        if engine.status("b").state == "suspended":
            await engine.signal("waiter", "b", "go", "yes")
        assert await engine.wait("b") == "yes"
        for iid, key in (("a", "only"), ("c", "s0"), ("c", "s9"), ("b", "after")):
            assert await step_value(engine, iid, key) == value(key)


class Threaded(MemoryStorage):
    """A MemoryStorage used from worker threads, like a disk: commits and
    compaction I/O run at the same time."""

    blocking = True


async def opened_with_snapshot(storage: MemoryStorage) -> tuple[Answers, bool]:
    """Answers of the journal opened as an engine opens it (from its snapshot, if valid)."""
    async with Journal(storage, segment_size=SEGMENT_SIZE, snapshots=True) as journal:
        salts = journal.writer.salts
        got = answers(journal.index, lambda loc: read_record_at(storage, salts, loc))
        return got, journal.resumed


@pytest.mark.parametrize("kind", [MemoryStorage, Threaded])
async def test_a_power_cut_at_any_step_of_background_compaction_changes_no_answer(
    kind: type[MemoryStorage], monkeypatch: pytest.MonkeyPatch,
) -> None:
    issued = Issued(monkeypatch)
    steps = Steps()
    probe = kind()
    await workload(engine_on(probe, steps, ManualClock()), compacted=True)
    assert any(n.startswith("cmp-") for n in probe.list())
    total = probe.ops
    assert total > 60

    rng = random.Random(3)
    cut_while = Counter[str]()
    for n in range(1, total + 1):
        issued.reset()
        steps = Steps()
        storage = kind(crash_at=n)
        try:
            await workload(engine_on(storage, steps, ManualClock()))
        except BaseException as exc:
            if not is_power_cut(exc):
                raise
        visible = storage.list()
        if any(name.startswith("cmp-") and name.endswith(".tmp") for name in visible):
            cut_while["writing"] += 1
        elif scan(storage).superseded:
            cut_while["leftovers"] += 1
        records, acked = list(issued.records), issued.acked
        modes = tears(storage, rng)
        for name, tear in [modes[0], *rng.sample(modes[1:], min(2, len(modes) - 1))]:
            after = storage.crash(tear)
            got = stored(after)
            candidates = [reference(records[:m]) for m in range(acked, len(records) + 1)]
            assert got in candidates, (n, name)
            from_snapshot, resumed = await opened_with_snapshot(after)
            assert from_snapshot == got, (n, name)
            cut_while["resumed from a snapshot"] += resumed
            calls, acked_steps = steps.calls.copy(), dict(steps.acked)
            await finish_all(after, steps)
            for key in acked_steps:
                # Acknowledged before the cut: never run again after it.
                assert steps.calls[key] == calls[key], (n, name, key)
            steps.calls, steps.acked = calls, acked_steps
    # The cuts fell inside compactions too: while the new file was written,
    # and while the segments it replaced were still there; and some journals
    # opened from the snapshot written after a compaction. With worker
    # threads (Threaded) the n-th storage operation is not the same one from
    # run to run (the threads interleave differently), so which phase a cut
    # lands in varies (seen: 0 to 3 while writing, 16 to 19 among
    # leftovers): there only cuts inside compaction at all are required; the
    # event-loop variant, deterministic, proves each phase.
    if kind is not Threaded:
        assert cut_while["writing"] >= 3, cut_while
        assert cut_while["leftovers"] >= 3, cut_while
    assert cut_while["writing"] + cut_while["leftovers"] >= 3, cut_while
    assert cut_while["resumed from a snapshot"] >= 3, cut_while


async def test_a_power_cut_while_retention_rewrites_a_compacted_journal_changes_no_answer(
) -> None:
    """A journal already compacted (cmp-k, empty tail) is rewritten in place
    when retention drops instances: the new cmp-k replaces the old by rename."""
    made = rich_history(seed=23)
    original = MemoryStorage()
    await write(original, made.records)
    compact_offline(original, now_ms=made.now, retention_ms=None)
    files = files_of(original)
    before = stored(original)
    now = made.now + 1
    dropped = expired_ids(before, now, 0)
    assert dropped
    expected = without(before, dropped)

    probe = built(files, Recording())
    first = probe.ops + 1
    compact_offline(probe, now_ms=now, retention_ms=0)
    assert stored(probe) == expected
    assert [n for n in probe.list() if n.startswith("cmp-")] == [
        n for n in files if n.startswith("cmp-")
    ]
    names = probe.names[first - 1 :]
    assert "rename" in names
    durable_at = compacted_durable_at(first, names)
    rng = random.Random(4)
    for n in range(first, probe.ops + 1):
        storage = built(files, MemoryStorage())
        storage.crash_at = n
        with pytest.raises(PowerCut):
            compact_offline(storage, now_ms=now, retention_ms=0)
        for name, tear in tears(storage, rng):
            after = storage.crash(tear)
            want = expected if n > durable_at else before
            assert stored(after) == want, (n, name)
            assert await reopened(after) == want, (n, name)


class CompactionFaults(MemoryStorage):
    """A MemoryStorage that fails one operation on the compacted file (EIO)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: str | None = None
        self._after_rename = False

    def hit(self, op: str) -> None:
        if self.failing == op:
            self.failing = None
            raise OSError(errno.EIO, f"injected EIO on {op} of the compacted file")

    def create(self, name: str) -> Any:
        if name.startswith("cmp-"):
            self.hit("create")
            return _FaultyHandle(super().create(name), self)
        return super().create(name)

    def rename(self, src: str, dst: str) -> None:
        if src.startswith("cmp-"):
            self.hit("rename")
            self._after_rename = True
        super().rename(src, dst)

    def sync_dir(self) -> None:
        if self._after_rename:
            self._after_rename = False
            self.hit("sync_dir")
        super().sync_dir()


class _FaultyHandle:
    def __init__(self, handle: Any, storage: CompactionFaults) -> None:
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


async def failed_compaction(op: str) -> tuple[set[str], set[str]]:
    """Run an engine whose second compaction fails at ``op`` on the compacted file;
    then write a record for every expired instance it still knows. Checks the
    journal reopens with exactly the engine's answers; returns (expired, known)."""
    storage, steps = CompactionFaults(), Steps()
    engine = (
        Engine.builder().in_memory(storage).segment_size(SEGMENT_SIZE).clock(ManualClock())
        .retention(0).build()
    )
    for name, fn in workflows(steps).items():
        engine.register(name, fn)
    async with engine:
        compaction = engine._backend.compaction
        assert compaction is not None
        original = compaction.compact
        failed = trio.Event()
        expired: set[str] = set()

        async def compact(*args: Any) -> None:
            if compaction.runs == 1:  # the second compaction fails
                expired.update(
                    iid for iid, e in engine._host.index.instances.items()
                    if e.state == lc.COMPLETED
                )
                storage.failing = op
                try:
                    await original(*args)
                finally:
                    failed.set()
            else:
                await original(*args)

        compaction.compact = compact  # type: ignore[method-assign, assignment]
        n = 0
        while not failed.is_set():
            n += 1
            await engine.invoke("long", instance_id=f"c{n}")
            await engine.wait(f"c{n}")
        assert compaction.runs == 1
        # The compaction failed (the service tries again later); the engine goes on.
        await engine.invoke("short", instance_id="later")
        assert await engine.wait("later") == 1
        for iid in sorted(expired):
            if iid in engine._host.index.instances:
                assert engine.status(iid).state == "completed"
                await engine.forget(iid, "only")  # a record of it, after the failure
            else:
                with pytest.raises(UnknownInstance):
                    await engine.forget(iid, "only")
        journal = engine._backend.journal
        live = answers(
            engine._host.index, lambda loc: read_record_at(storage, journal.writer.salts, loc)
        )
    assert await reopened(storage) == live
    return expired, set(live)


@pytest.mark.parametrize("op", ["create", "write", "sync", "rename"])
async def test_a_compaction_failing_before_its_rename_puts_every_instance_back(op: str) -> None:
    """An I/O error inside a compaction fails it; the engine goes on,
    with the expired instances it had taken out back in, and the journal
    opens with exactly the engine's answers."""
    expired, known = await failed_compaction(op)
    assert expired
    assert expired <= known


async def test_a_compaction_failing_after_its_rename_does_not_bring_dropped_instances_back(
) -> None:
    """Regression: when the directory fsync after the rename failed, the
    instances left out of the (visible) compacted file were put back in the
    live index; a record of one appended then made the journal unopenable
    ("record for unknown instance")."""
    expired, known = await failed_compaction("sync_dir")
    assert expired - known  # dropped for good, in memory as in the journal
