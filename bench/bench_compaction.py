"""Compaction, compression and fast start: the issue-5 benchmarks.

Run: ``.venv/bin/python bench/bench_compaction.py [--quick] [--json FILE]``

1. Bytes on disk for an LLM-like workload (long, repetitive text results),
   with the codec's zstd compression of large values and without, before
   and after an offline compaction (zstd blocks).
2. Step-commit latency while background compaction runs, against idle, in
   the same run: a lone workflow commits steps one by one; p50/p99 of the
   commits that overlapped a compaction vs those that did not (and vs a run
   with compaction off). Target: p99 during compaction <= 2x idle.
3. Start-up of a journal of 1,000,000 records (100,000 instances x 10): full
   scan vs from the index snapshot, and index bytes per entry. Targets:
   <= 1 s, <= 100 bytes per entry.

Medians of several runs; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import Stat, scratch_dir, table

from memable_log import Context, Engine
from memable_log._compaction.compactor import compact_offline, journal_bytes
from memable_log._compaction.service import Compaction
from memable_log._core.index import Index
from memable_log._core.records import COMPLETED, CREATED, STEP_DONE, make
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log._storage.writer import SegmentWriter

# Where journals live (on the disk being measured); --data-dir sets it.
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data")
WORDS = [
    *("the model considers the request and the context " * 3).split(),
    "revenue", "latency", "customer", "invoice", "pipeline", "report", "summary",
]


def llm_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# -- 1. bytes on disk -------------------------------------------------------------


async def llm_workload(path: str, instances: int, compress: bool) -> None:
    rng = random.Random(7)

    async def agent(ctx: Context) -> int:
        total = 0
        for n in range(5):
            text = await ctx.step(f"llm:{n}:v1").run(llm_text, rng, 900)
            total += len(text)
        return total

    builder = Engine.builder().open(path).compaction(False)
    if not compress:
        builder = builder.codec(compress_threshold=None)
    engine = builder.build()
    engine.register("agent", agent)
    async with engine:
        ids = [await engine.invoke("agent", None) for _ in range(instances)]
        for iid in ids:
            await engine.wait(iid)


def bench_bytes(instances: int) -> list[list[str]]:
    rows = []
    for compress in (False, True):
        with scratch_dir(BASE, "llm-") as tmp:
            path = os.path.join(tmp, "j")
            trio.run(llm_workload, path, instances, compress)
            before = journal_bytes(FileStorage(path))
            stats = compact_offline(FileStorage(path), now_ms=0, retention_ms=None)
            rows.append([
                "zstd values" if compress else "plain values",
                f"{before:,}", f"{stats.bytes_after:,}",
            ])
    return rows


# -- 2. latency during compaction -----------------------------------------------


# The phases of one compaction, timed apart: the engine's share on the event
# loop (picking the expired instances, re-pointing the index) and the child's.
PHASES = {"compact": "whole", "_take_expired": "engine", "_repoint": "engine", "_rewrite": "child"}


async def latency_run(
    path: str, steps: int, compaction: bool, segment_size: int
) -> tuple[list[float], dict[str, list[float]]]:
    """Commit latencies (s) outside compactions, and during them by phase
    ("whole", "engine", "child")."""
    windows: dict[str, list[tuple[float, float]]] = {p: [] for p in PHASES.values()}
    originals = {name: getattr(Compaction, name) for name in PHASES}

    def timed(name: str) -> Any:
        original = originals[name]

        async def run(self: Compaction, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(self, *args)
            finally:
                windows[PHASES[name]].append((start, time.perf_counter()))

        return run

    for name in PHASES:
        setattr(Compaction, name, timed(name))
    latencies: list[tuple[float, float]] = []
    whole = windows["whole"]

    async def writer(ctx: Context) -> None:
        # ``steps`` commits, and on until the first compaction has finished
        # and as many again have followed it: every phase is measured (at
        # most 100 x ``steps``, should no compaction ever run).
        n = after = 0
        while n < steps or (compaction and (not whole or after < steps) and n < 100 * steps):
            start = time.perf_counter()
            await ctx.step(f"s{n}").run(lambda: "x" * 40)
            latencies.append((start, time.perf_counter()))
            n += 1
            after += bool(whole)

    try:
        engine = (
            Engine.builder().open(path).segment_size(segment_size).compaction(compaction).build()
        )
        engine.register("writer", writer)
        engine.register("filler", writer)
        async with engine:
            await engine.wait(await engine.invoke("writer"))
    finally:
        for name, original in originals.items():
            setattr(Compaction, name, original)
    idle: list[float] = []
    during: dict[str, list[float]] = {p: [] for p in windows}
    for start, end in latencies:
        hit = [p for p, ws in windows.items() if any(s < end and start < e for s, e in ws)]
        for p in hit:
            during[p].append(end - start)
        if not hit:
            idle.append(end - start)
    return idle, during


def fill_prefix(path: str, instances: int) -> None:
    """A journal whose sealed segments hold ``instances`` x 10 records
    (created, 8 steps, completed)."""
    storage = FileStorage(path)
    writer = SegmentWriter(storage, 64 * 1024 * 1024)
    from memable_log._storage.segments import scan

    writer.recover(scan(storage))
    import msgpack

    seq = writer.next_seq
    batch = []
    for i in range(instances):
        iid = f"{i:012x}"
        batch.append(make(CREATED, 1, iid, "filler", b"\x00\xc0"))
        batch += [make(STEP_DONE, 1, iid, f"step:{k}:v1", b"\x00\x2a", 1, 1) for k in range(8)]
        batch.append(make(COMPLETED, 1, iid, b"\x00\x08"))
        if len(batch) >= 5000:
            for rec in batch:
                rec[1] = seq
                seq += 1
            writer.commit([msgpack.packb(r) for r in batch])
            batch = []
    for rec in batch:
        rec[1] = seq
        seq += 1
    writer.commit([msgpack.packb(r) for r in batch])
    writer.seal_and_roll()
    writer.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_latency(
    prefix_instances: int, steps: int, runs: int, segment_size: int
) -> tuple[list[list[str]], dict[str, Stat]]:
    keys = ["off_p99", "idle_p50", "idle_p99"] + [
        f"{p}_{q}" for p in ("whole", "engine", "child") for q in ("p50", "p99")
    ]
    stats = {k: Stat() for k in keys}
    counts: dict[str, list[int]] = {"idle": [], "whole": [], "engine": [], "child": []}
    for _ in range(runs):
        with scratch_dir(BASE, "lat-") as tmp:
            path = os.path.join(tmp, "j")
            fill_prefix(path, prefix_instances)
            idle, during = trio.run(latency_run, path, steps, True, segment_size)
        with scratch_dir(BASE, "lat-") as tmp:
            path = os.path.join(tmp, "j")
            fill_prefix(path, prefix_instances)
            off, _ = trio.run(latency_run, path, steps, False, segment_size)
        stats["off_p99"].add(pct(off, 0.99) * 1e3)
        stats["idle_p50"].add(pct(idle, 0.5) * 1e3)
        stats["idle_p99"].add(pct(idle, 0.99) * 1e3)
        counts["idle"].append(len(idle))
        for phase, values in during.items():
            stats[f"{phase}_p50"].add(pct(values, 0.5) * 1e3)
            stats[f"{phase}_p99"].add(pct(values, 0.99) * 1e3)
            counts[phase].append(len(values))

    def med(key: str) -> str:
        return f"{stats[key].median:.3f}"

    idle_p99 = stats["idle_p99"].median
    rows = [
        ["compaction off", "", med("off_p99"), "", ""],
        ["compaction on, idle moments", med("idle_p50"), med("idle_p99"), "1.00x",
         f"{statistics.median(counts['idle']):,.0f}"],
    ]
    labels = {
        "whole": "during compaction (all of it)",
        "engine": "  while the engine picks / re-points",
        "child": "  while the child rewrites",
    }
    for phase, label in labels.items():
        ratio = stats[f"{phase}_p99"].median / idle_p99
        rows.append([label, med(f"{phase}_p50"), med(f"{phase}_p99"), f"{ratio:.2f}x",
                     f"{statistics.median(counts[phase]):,.0f}"])
    ratio = stats["whole_p99"].median / idle_p99
    rows.append(["p99 during / p99 idle", "", "", f"{ratio:.2f}x", "target <= 2x"])
    return rows, stats


# -- 3. start-up --------------------------------------------------------------------


async def open_journal(path: str, snapshots: bool) -> tuple[float, bool]:
    index = Index()
    start = time.perf_counter()
    journal = Journal(FileStorage(path), index, snapshots=snapshots)
    async with journal:
        elapsed = time.perf_counter() - start
        resumed = journal.resumed
        journal.maintenance.keep_snapshot = snapshots
    return elapsed, resumed


def index_bytes(path: str) -> tuple[float, int]:
    """Bytes of Python heap per step entry for the index loaded from the snapshot."""
    gc.collect()
    tracemalloc.start()
    index = Index()

    async def load() -> None:
        async with Journal(FileStorage(path), index, snapshots=True) as journal:
            journal.maintenance.keep_snapshot = False
            assert journal.resumed

    trio.run(load)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    entries = sum(len(e.steps) for e in index.instances.values()) + len(index.instances)
    return current / entries, entries


def bench_startup(instances: int, runs: int) -> tuple[list[list[str]], dict[str, Stat]]:
    path = os.path.join(BASE, f"startup-{instances}")
    if not os.path.isdir(path):
        fill_prefix(path, instances)
    # Take a snapshot with a clean open and close.
    trio.run(open_journal, path, True)
    full, snap = Stat(), Stat()
    for _ in range(runs):
        elapsed, resumed = trio.run(open_journal, path, False)
        full.add(elapsed)
        elapsed, resumed = trio.run(open_journal, path, True)
        assert resumed, "the snapshot was not used"
        snap.add(elapsed)
    per_entry, entries = index_bytes(path)
    rows = [
        ["records", f"{instances * 10:,}"],
        ["open, full scan (s)", f"{full.median:.2f}"],
        ["open, from snapshot (s)", f"{snap.median:.2f}  (target <= 1 s)"],
        ["index bytes per entry", f"{per_entry:.0f}  (target <= 100; {entries:,} entries)"],
    ]
    return rows, {"full_scan_s": full, "snapshot_s": snap}


def main() -> None:
    global BASE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--data-dir", default=BASE,
                        help="where journals live (must be on the disk you mean to measure; "
                             "default bench/.data)")
    args = parser.parse_args()
    BASE = args.data_dir
    quick = args.quick
    results: dict[str, Any] = {}

    rows = bench_bytes(10 if quick else 200)
    print(table("1. Bytes on disk, LLM-like workload (5 steps of ~6 KB text each)",
                ["values", "journal bytes", "after compaction"], rows))
    results["bytes"] = rows
    print()
    lat_rows, lat = bench_latency(
        2_000 if quick else 100_000, 300 if quick else 3_000, 1 if quick else 3,
        8 * 1024 if quick else 64 * 1024,
    )
    print(table("2. Step-commit latency (ms) while compaction runs",
                ["", "p50", "p99", "p99 / idle", "commits"], lat_rows))
    results["latency"] = {k: v.as_dict() for k, v in lat.items()}
    print()
    st_rows, st = bench_startup(10_000 if quick else 100_000, 1 if quick else 5)
    print(table("3. Start-up", ["", ""], st_rows))
    results["startup"] = {k: v.as_dict() for k, v in st.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
