"""Fault-injection campaign at engine level: failing writes, fsyncs and renames.

The in-memory engine runs the six operations of _workload.py in one
sequence (every kind of record, roll-overs, background compaction) on a
MemoryStorage that fails the k-th call of one storage operation: EIO or
ENOSPC on a write, a short write (some bytes land, then EIO), EIO on an
fsync, and EIO or ENOSPC on the create, rename, remove and directory fsync
of roll-overs and compaction. Every k from the first call to the last is
tried, for every fault. Checked:

* the run either ends normally (the fault hit background work, which may
  give up but must not lose anything) or the engine calls affected raise
  ``JournalFailed`` (an engine that cannot open raises it from ``async
  with``); never another exception, never a hang;
* once a call has failed, the engine refuses every write: a new invoke, a
  signal, a forget raise ``JournalFailed`` at once (no retried fsync);
* leaving the engine raises nothing;
* after reopening (the storage as the fault left it, and after a power cut
  that drops what was not fsynced) nothing acknowledged is lost, the
  ledger rules hold, and driven to completion every instance ends with the
  right result.

Run from the repository root::

    .venv/bin/python fuzz/faults.py

It prints a JSON summary (cases by outcome, violations) and exits 1 on any
violation.
"""

from __future__ import annotations

import argparse
import copy
import errno
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import powerloss
import trio
import trio.testing
from _ledger import MemoryLedger
from _summary import finish
from _workload import (
    OPS,
    WORKFLOW,
    Acks,
    check,
    collect,
    memory_engine,
    op_specs,
    payload_for,
    run_ops,
)
from powerloss import within

from memable_log import JournalFailed, ManualClock, MemoryStorage
from memable_log.reader import JournalReader

WORKLOAD = OPS  # every operation once, in order
# (name, storage operation, errno, bytes of a write that land first)
FAULTS: list[tuple[str, str, int, int | None]] = [
    ("EIO-on-write", "write", errno.EIO, None),
    ("ENOSPC-on-write", "write", errno.ENOSPC, None),
    ("short-write-in-a-frame-header", "write", errno.EIO, 5),
    ("short-write-after-a-frame", "write", errno.ENOSPC, 60),
    ("EIO-on-fsync", "sync", errno.EIO, None),
    ("ENOSPC-on-create", "create", errno.ENOSPC, None),
    ("EIO-on-rename", "rename", errno.EIO, None),
    ("EIO-on-remove", "remove", errno.EIO, None),
    ("EIO-on-directory-fsync", "sync_dir", errno.EIO, None),
    ("EIO-on-truncate", "truncate", errno.EIO, None),
]


class FaultyStorage(MemoryStorage):
    """A MemoryStorage whose ``target`` operation fails at its ``nth`` call."""

    def __init__(self, target: str = "", nth: int = 0, err: int = errno.EIO,
                 partial: int | None = None) -> None:
        super().__init__()
        self.target, self.nth, self.err, self.partial = target, nth, err, partial
        self.calls: Counter[str] = Counter()
        self.fired = False

    def _op(self, op: str) -> Any:
        self.calls[op] += 1
        if op == self.target and self.calls[op] == self.nth:
            self.fired = True
            self.fail(op, self.err, partial=self.partial)
        return super()._op(op)

    def disarm(self) -> None:
        self.target = ""


@dataclass
class Result:
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


def _records(storage: MemoryStorage) -> list[Any]:
    return list(JournalReader(storage))


async def _refuses_writes(engine: Any, acks: Acks) -> list[str]:
    """Every write must raise JournalFailed once the journal has failed."""
    known = sorted(acks.invokes)
    probes: list[tuple[str, Any]] = [
        ("invoke", lambda: engine.invoke(WORKFLOW, {"steps": 1}, instance_id="probe")),
    ]
    if known:
        iid = known[0]
        probes += [
            ("signal", lambda: engine.signal(WORKFLOW, iid, "probe-key", payload_for(iid))),
            ("forget", lambda: engine.forget(iid, "probe-key")),
        ]
    problems = []
    for name, call in probes:
        try:
            await call()
        except JournalFailed:
            continue
        except Exception as exc:
            problems.append(f"after the failure, {name} raised {exc!r}, not JournalFailed")
            continue
        problems.append(f"after the failure, {name} was accepted")
    return problems


async def _faulty_run(storage: FaultyStorage, acks: Acks, ledger: MemoryLedger,
                      clock: ManualClock) -> tuple[str, list[str]]:
    """Run the workload under the fault: (outcome, problems)."""
    problems: list[str] = []
    outcome = "completed"
    engine = memory_engine(storage, clock, ledger, collect(acks))
    try:
        async with engine:
            try:
                await run_ops(engine, WORKLOAD, acks, ledger)
            except JournalFailed:
                outcome = "call-failed"
                problems += await _refuses_writes(engine, acks)
    except JournalFailed:
        outcome = "open-failed"
    return outcome, problems


async def _reopen(storage: MemoryStorage, acks: Acks, ledger: MemoryLedger, wall: float,
                  where: str) -> list[str]:
    specs = op_specs(WORKLOAD)
    try:
        problems = check(_records(storage), acks, ledger.entries, specs, final=False)
    except Exception as exc:
        return [f"{where}: the journal does not read: {exc!r}"]
    ledger.attempt = "1"
    engine = memory_engine(storage, ManualClock(wall + 5.0), ledger, collect(acks))

    async def finish() -> None:
        async with engine:
            await run_ops(engine, WORKLOAD, acks, ledger, redo=True)

    try:
        if not await within(powerloss.HANG_SECONDS, finish()):
            return [f"{where}: the reopened engine hung"]
    except Exception as exc:
        return [*problems, f"{where}: the reopened engine raised {exc!r}"]
    problems += check(_records(storage), acks, ledger.entries, specs, final=True)
    return [f"{where}: {p}" for p in problems]


async def run_fault(name: str, target: str, err: int, partial: int | None, nth: int) -> Result:
    """One fault at one call; both reopenings."""
    result = Result(cases=1)
    where = f"{name} at call {nth} of {target}"
    storage = FaultyStorage(target, nth, err, partial)
    acks, ledger, clock = Acks(), MemoryLedger(), ManualClock()
    try:
        work = _run_into(storage, acks, ledger, clock, result)
        finished = await within(powerloss.HANG_SECONDS, work)
    except Exception as exc:
        result.violations.append(f"{where}: raised {exc!r}")
        return result
    if not finished:
        result.violations.append(f"{where}: hung")
        return result
    storage.disarm()
    wall = clock.now()
    for label, after in (("as left", copy.deepcopy(storage)), ("power cut", storage.crash())):
        result.violations += await _reopen(
            after, copy.deepcopy(acks), copy.deepcopy(ledger), wall, f"{where}, {label}"
        )
    return result


async def _run_into(storage: FaultyStorage, acks: Acks, ledger: MemoryLedger,
                    clock: ManualClock, result: Result) -> None:
    outcome, problems = await _faulty_run(storage, acks, ledger, clock)
    result.outcomes[outcome if storage.fired else "not-reached"] += 1
    result.violations += problems


async def run_all(only: str | None = None, stride: int = 1) -> Result:
    """Every fault at every call (``stride`` 1), or at every ``stride``-th
    call from the first (a sample: the test suite's, to keep it short)."""
    clean = FaultyStorage()
    acks, ledger = Acks(), MemoryLedger()
    engine = memory_engine(clean, ManualClock(), ledger, collect(acks))
    async with engine:
        await run_ops(engine, WORKLOAD, acks, ledger)
    total = Result()
    total.violations += [f"clean run: {p}" for p in check(
        _records(clean), acks, ledger.entries, op_specs(WORKLOAD), final=True)]
    for name, target, err, partial in FAULTS:
        if only is not None and only != name:
            continue
        # Background work makes the count vary a little: try a few more.
        for nth in range(1, clean.calls[target] + 3, stride):
            one = await run_fault(name, target, err, partial, nth)
            total.cases += one.cases
            total.outcomes.update(one.outcomes)
            total.violations += one.violations
    return total


def run_sync(only: str | None = None, stride: int = 1) -> Result:
    return trio.run(run_all, only, stride, clock=trio.testing.MockClock(autojump_threshold=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", default=None, choices=[f[0] for f in FAULTS],
                        help="only this fault")
    parser.add_argument("--stride", type=int, default=1,
                        help="try every N-th call of each operation (default: every call)")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be 1 or more")
    started = time.monotonic()
    result = run_sync(args.fault, args.stride)
    summary = {
        "campaign": "faults", "cases": result.cases,
        "outcomes": dict(sorted(result.outcomes.items())),
        "violations": len(result.violations), "seconds": round(time.monotonic() - started, 1),
    }
    return finish(summary, result.violations, args.json, show=30)


if __name__ == "__main__":
    sys.exit(main())
