"""Power-loss campaign at engine level: every crash point of small workloads.

CrashMonkey-style (most crash-consistency bugs need three operations or
fewer): a workload is every sequence of up to ``--max-ops`` operations from
{invoke, step, signal (suspend + signal), timer (on a ManualClock), cancel,
forget (forget + restart), child, schedule (a schedule ticking every minute
and a debounce burst, ``drive_timed``)}, run by an in-memory engine on a MemoryStorage
(see _workload.py for what each operation does). For each workload:

1. a clean run counts its mutating storage operations, N, and must itself
   pass every check;
2. for every crash point n = 1, 2, ... it runs again on ``MemoryStorage(
   crash_at=n)`` until the power cut (a PowerCut raised by the n-th write,
   fsync, create, rename, remove or directory fsync), until a run ends
   before its cut (background compaction makes N vary a little);
3. for every way the bytes written since the last fsync can land (``drop``:
   none of them; ``all``; ``prefixN``: a prefix, at frame boundaries, their
   neighbours and random lengths; ``zeros``, ``zero-tail``: the sectors land
   as zeros) the storage after the cut is checked: the journal reads (a torn
   tail is fine, damage is not), and every acknowledged operation is in it;
4. a new engine opens it (never JournalCorrupt), the workload is run again
   as a client retrying would, to completion, and the invariants are
   checked: acknowledged operations present, the ledger rules (a step
   acknowledged never runs again unless forgotten; an at-most-once step at
   most once between forgets), every instance ending with the right result.

Run from the repository root::

    .venv/bin/python fuzz/powerloss.py                      # every workload of <= 3 ops
    .venv/bin/python fuzz/powerloss.py --sample 20 --seed 7 # 20 random workloads

It prints one line per workload with a failure and a summary; exit 1 on any
violation.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
import trio.testing
from _forking import in_workers
from _ledger import MemoryLedger
from _summary import finish
from _workload import OPS, Acks, check, collect, memory_engine, op_specs, run_ops

from memable_log import ManualClock, MemoryStorage
from memable_log._core.format import FRAME_HEADER_SIZE, FRAME_LENGTH_MASK
from memable_log._storage.memory import TearFn
from memable_log.reader import JournalReader, RecordView
from memable_log.testing import _is_power_cut as is_power_cut

SECTOR = 512
DOWNTIME = 7.0  # seconds of wall time between the cut and the restart
HANG_SECONDS = 60.0  # real seconds a recovery may take before it counts as hung


async def within(seconds: float, work: Awaitable[None]) -> bool:
    """Await ``work``; False if it took ``seconds`` of *real* time (a hang).

    Not ``trio.fail_after``: under MockClock(autojump_threshold=0) virtual
    time jumps to the nearest deadline whenever every task waits, as they
    do while the engine opens its storage on a worker thread; a virtual
    deadline would fire on the first such wait. This watchdog steps virtual
    time in small jumps and looks at the real clock.
    """
    finished = False
    async with trio.open_nursery() as nursery:

        async def watchdog() -> None:
            start = time.monotonic()
            while time.monotonic() - start < seconds:  # noqa: ASYNC110 (real time)
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watchdog)
        await work
        finished = True
        nursery.cancel_scope.cancel()
    return finished


def workloads(max_ops: int = 3) -> list[tuple[str, ...]]:
    return [ops for n in range(1, max_ops + 1) for ops in itertools.product(OPS, repeat=n)]


# -- how unsynced bytes land ---------------------------------------------------


def _frame_ends(data: bytes) -> list[int]:
    ends, pos = [], 0
    while pos + FRAME_HEADER_SIZE <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "little") & FRAME_LENGTH_MASK
        pos += FRAME_HEADER_SIZE + length
        if length == 0 or pos > len(data):
            break
        ends.append(pos)
    return ends


def tears(storage: MemoryStorage, rng: random.Random) -> list[tuple[str, TearFn | None]]:
    """Named ways the bytes written since the last fsync may land after a cut."""
    modes: list[tuple[str, TearFn | None]] = [("drop", None)]
    unsynced = [data for data in storage.unsynced().values() if data]
    if not unsynced:
        return modes
    longest = max(unsynced, key=len)
    size = len(longest)
    keep = {1, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE, size // 2, size - 1}
    for end in _frame_ends(longest):
        keep.update((end - 1, end + 1, end + FRAME_HEADER_SIZE))
    keep.add(rng.randrange(1, size + 1))
    modes.append(("all", lambda name, data: data))
    modes += [(f"prefix{k}", _prefix(k)) for k in sorted(k for k in keep if 0 < k < size)]
    modes.append(("zeros", lambda name, data: bytes(len(data))))
    modes.append(("zero-tail", lambda name, data: data[: len(data) // 2]
                  + bytes(len(data) - len(data) // 2)))
    return modes


def _prefix(k: int) -> TearFn:
    return lambda name, data: data[:k]


# -- one workload ---------------------------------------------------------------


@dataclass
class Result:
    """Counts for a campaign run, and the violations found."""

    workloads: int = 0
    crash_points: int = 0
    cases: int = 0  # post-crash storages checked (distinct states)
    violations: list[str] = field(default_factory=list)

    def add(self, other: Result) -> None:
        self.workloads += other.workloads
        self.crash_points += other.crash_points
        self.cases += other.cases
        self.violations += other.violations


def _records(storage: MemoryStorage) -> list[RecordView]:
    return list(JournalReader(storage))


async def _lifetime(storage: MemoryStorage, clock: ManualClock, ops: tuple[str, ...],
                    acks: Acks, ledger: MemoryLedger, *, redo: bool) -> None:
    engine = memory_engine(storage, clock, ledger, collect(acks))
    async with engine:
        await run_ops(engine, ops, acks, ledger, redo=redo)


async def _clean_run(ops: tuple[str, ...]) -> tuple[int, list[str]]:
    storage = MemoryStorage()
    acks, ledger = Acks(), MemoryLedger()
    await _lifetime(storage, ManualClock(), ops, acks, ledger, redo=False)
    problems = check(_records(storage), acks, ledger.entries, op_specs(ops), final=True)
    return storage.ops, problems


async def _after_cut(
    storage: MemoryStorage, wall: float, ops: tuple[str, ...], acks: Acks,
    ledger: MemoryLedger, where: str,
) -> list[str]:
    """Check a post-crash storage, recover it, finish the work, check again."""
    specs = op_specs(ops)
    try:
        records = _records(storage)
    except Exception as exc:
        return [f"{where}: the journal does not read after the cut: {exc!r}"]
    problems = check(records, acks, ledger.entries, specs, final=False)
    ledger.attempt = "1"
    try:
        finished = await within(
            HANG_SECONDS,
            _lifetime(storage, ManualClock(wall + DOWNTIME), ops, acks, ledger, redo=True),
        )
    except Exception as exc:
        return [*problems, f"{where}: recovery failed: {exc!r}"]
    if not finished:
        return [*problems, f"{where}: recovery hung for {HANG_SECONDS} s"]
    problems += check(_records(storage), acks, ledger.entries, specs, final=True)
    return [f"{where}: {p}" for p in problems]


async def run_workload(ops: tuple[str, ...], seed: int = 0) -> Result:
    """Every crash point of ``ops``, every tear mode (see the module comment)."""
    name = "-".join(ops)
    result = Result(workloads=1)
    total, problems = await _clean_run(ops)
    result.violations += [f"{name} clean run: {p}" for p in problems]
    rng = random.Random(f"{seed}-{name}")
    # Background compaction makes the count vary a little from run to run:
    # go on until a run ends before its cut.
    for n in range(1, 2 * total + 10):
        storage = MemoryStorage(crash_at=n)
        acks, ledger = Acks(), MemoryLedger()
        clock = ManualClock()
        try:
            finished = await within(
                HANG_SECONDS, _lifetime(storage, clock, ops, acks, ledger, redo=False)
            )
        except BaseException as exc:
            if not is_power_cut(exc):
                result.violations.append(f"{name} cut at op {n}: the run raised {exc!r}")
                continue
        else:
            if not finished:
                result.violations.append(f"{name}: the run with a cut at op {n} hung")
            elif n <= total // 2:
                result.violations.append(f"{name}: the run ended before op {n} of {total}")
            break
        result.crash_points += 1
        wall = clock.now()
        seen: set[tuple[tuple[str, bytes], ...]] = set()
        for mode, tear in tears(storage, rng):
            crashed = storage.crash(tear)
            state = tuple((f, crashed.read(f)) for f in crashed.list())
            if state in seen:
                continue  # this tear left the same bytes as an earlier one
            seen.add(state)
            result.cases += 1
            where = f"{name} cut at op {n}/{total} ({mode})"
            result.violations += await _after_cut(
                crashed, wall, ops, copy.deepcopy(acks), copy.deepcopy(ledger), where
            )
    return result


def run_sync(ops: tuple[str, ...], seed: int = 0) -> Result:
    """``run_workload`` in its own trio run, on a clock that skips every sleep."""
    return trio.run(run_workload, ops, seed, clock=trio.testing.MockClock(autojump_threshold=0))


def run_shard(
    chosen: list[tuple[str, ...]], seed: int, progress: Callable[[str], None] | None = None
) -> Result:
    total = Result()
    for ops in chosen:
        result = run_sync(ops, seed)
        total.add(result)
        if progress is not None and result.violations:
            progress(f"{'-'.join(ops)}: {len(result.violations)} violation(s); first: "
                     f"{result.violations[0]}")
    return total


def campaign(
    chosen: list[tuple[str, ...]], seed: int, jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Every workload in ``chosen``, spread over ``jobs`` forked workers."""
    shards = [chosen[j::jobs] for j in range(max(jobs, 1))]
    total = Result()
    for data in in_workers(shards, lambda shard: asdict(run_shard(shard, seed, progress))):
        if "worker_error" in data:
            total.violations.append(data["worker_error"])
        else:
            total.add(Result(**data))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-ops", type=int, default=3)
    parser.add_argument("--sample", type=int, default=None,
                        help="run this many random workloads instead of all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--workload", action="append", default=None,
                        help="run this workload only, its ops joined by '-' "
                        f"(e.g. schedule-invoke; ops: {', '.join(OPS)}); repeatable")
    args = parser.parse_args(argv)
    chosen = workloads(args.max_ops)
    if args.workload:
        chosen = [tuple(name.split("-")) for name in args.workload]
        unknown = sorted({op for ops in chosen for op in ops} - set(OPS))
        if unknown:
            parser.error(f"unknown op(s) {', '.join(unknown)}; ops: {', '.join(OPS)}")
    elif args.sample is not None:
        chosen = random.Random(args.seed).sample(chosen, min(args.sample, len(chosen)))
    started = time.monotonic()
    result = campaign(chosen, args.seed, args.jobs,
                      progress=lambda line: print(line, flush=True))
    elapsed = time.monotonic() - started
    summary: dict[str, Any] = {
        "campaign": "powerloss", "seed": args.seed, "max_ops": args.max_ops,
        "workloads": result.workloads, "crash_points": result.crash_points,
        "cases": result.cases, "violations": len(result.violations),
        "seconds": round(elapsed, 1),
    }
    return finish(summary, result.violations, args.json, show=20)


if __name__ == "__main__":
    sys.exit(main())
