"""Journal benchmark: write throughput against the disk, and start-up.

Run from the repository root::

    .venv/bin/python bench/bench_journal.py            # full run, a few minutes
    .venv/bin/python bench/bench_journal.py --quick    # small sizes, a smoke check
    .venv/bin/python bench/bench_journal.py --json bench/results/journal.json

Write throughput is measured in interleaved rounds (raw fsync, journal with
one writer, journal with 64 writers, sqlite3), so every ratio compares
numbers taken seconds apart on the same disk; medians over the rounds are
quoted. Start-up opens a cached journal of a million records (built once,
unmeasured, in bench/.data/) and times entering ``async with Journal(...)``.
See bench/README.md for what each number means and the targets.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from _util import (
    Stat,
    bench_parser,
    fmt_range,
    fmt_rate,
    open_data_dir,
    print_banner,
    progress,
    ratios,
    rss_bytes,
    scratch_dir,
    table,
    warn_if_in_memory,
    write_json,
)

from memable_log._core import records as r
from memable_log._core.format import FORMAT_VERSION
from memable_log._core.index import DEFAULT_INLINE_LIMIT, Index, unpack_steps
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log._storage.segments import scan, segment_numbers
from memable_log._storage.writer import SegmentWriter

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_DATA_VERSION = 1  # bump when the generated start-up journal changes

RAW_RECORD = 128  # bytes per raw append
BLOB = bytes(range(60))  # a ~60-byte value blob for the write benchmarks
TS_MS = 1_760_000_000_000
KEYS = (
    "fetch:v1", "parse:v1", "validate:v1", "enrich:v1", "transform:v1",
    "score:v1", "store:v1", "notify:v1", "audit:v1",
)  # the 9 steps of every start-up instance, shared keys as in real workflows

TARGET_ONE_WRITER_RATIO = 0.40
TARGET_MANY_WRITERS = 30_000.0
TARGET_BYTES_PER_ENTRY = 100.0


@dataclass(frozen=True)
class Sizes:
    runs: int
    raw: int
    one_writer: int
    writers: int
    per_writer: int
    sqlite: int
    instances: int  # start-up journal: instances x (1 CREATED + 9 STEP_DONE)
    open_runs: int


FULL = Sizes(runs=5, raw=3000, one_writer=3000, writers=64, per_writer=250,
             sqlite=3000, instances=100_000, open_runs=3)
QUICK = Sizes(runs=3, raw=100, one_writer=100, writers=64, per_writer=5,
              sqlite=100, instances=1_000, open_runs=2)


# -- write throughput ----------------------------------------------------------


@dataclass
class WriteRun:
    rate: float  # records per second
    fsyncs_per_append: float
    p50_us: float  # median latency of one append (one-writer runs only)


def _p50_us(latencies: list[float]) -> float:
    latencies.sort()
    return latencies[len(latencies) // 2] * 1e6 if latencies else float("nan")


def raw_fsync(path: str, n: int) -> WriteRun:
    """write + fsync of a RAW_RECORD-byte append, n times: one writer's limit."""
    record = b"r" * (RAW_RECORD - 1) + b"\n"
    fd = os.open(os.path.join(path, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(3):  # warm-up: create the file's first blocks
            os.write(fd, record)
            os.fsync(fd)
        lat = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, record)
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return WriteRun(n / elapsed, 1.0, _p50_us(lat))


async def _journal_one_writer(path: str, n: int) -> WriteRun:
    keys = [f"call:{i}:v1" for i in range(n)]
    async with Journal(FileStorage(path)) as journal:
        await journal.append(r.make(r.CREATED, TS_MS, "bench-1", "bench", b"in"))  # warm-up
        commits = journal.commits
        lat = []
        start = time.perf_counter()
        for key in keys:
            t = time.perf_counter()
            await journal.append(r.make(r.STEP_DONE, TS_MS, "bench-1", key, BLOB, TS_MS, 1))
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        commits = journal.commits - commits
    return WriteRun(n / elapsed, commits / n, _p50_us(lat))


def journal_one_writer(path: str, n: int) -> WriteRun:
    """Sequential awaits of journal.append: one fsync per record."""
    return trio.run(_journal_one_writer, path, n)


async def _journal_many_writers(path: str, writers: int, per_writer: int) -> WriteRun:
    keys = [f"call:{i}:v1" for i in range(per_writer)]
    async with Journal(FileStorage(path)) as journal:
        await journal.append_many(
            [r.make(r.CREATED, TS_MS, f"bench-{w}", "bench", b"in") for w in range(writers)]
        )
        commits = journal.commits

        async def writer(instance: str) -> None:
            for key in keys:
                await journal.append(r.make(r.STEP_DONE, TS_MS, instance, key, BLOB, TS_MS, 1))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, f"bench-{w}")
        elapsed = time.perf_counter() - start
        commits = journal.commits - commits
    total = writers * per_writer
    return WriteRun(total / elapsed, commits / total, float("nan"))


def journal_many_writers(path: str, writers: int, per_writer: int) -> WriteRun:
    """``writers`` trio tasks appending concurrently: group commit."""
    return trio.run(_journal_many_writers, path, writers, per_writer)


def sqlite_one_writer(path: str, n: int) -> WriteRun:
    """A hand-written sqlite3 journal: WAL, synchronous=FULL, a transaction per record."""
    db = sqlite3.connect(os.path.join(path, "journal.db"), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE steps (instance TEXT NOT NULL, key TEXT NOT NULL, "
            "ts INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (instance, key)) "
            "WITHOUT ROWID"
        )
        insert = "INSERT INTO steps VALUES (?, ?, ?, ?)"
        for i in range(3):  # warm-up: create the WAL file
            db.execute(insert, ("warm", str(i), TS_MS, BLOB))
        keys = [f"call:{i}:v1" for i in range(n)]
        lat = []
        start = time.perf_counter()
        for key in keys:
            t = time.perf_counter()
            db.execute("BEGIN")
            db.execute(insert, ("bench-1", key, TS_MS, BLOB))
            db.execute("COMMIT")
            lat.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    return WriteRun(n / elapsed, float("nan"), _p50_us(lat))


@dataclass
class WriteResults:
    raw: list[WriteRun]
    one: list[WriteRun]
    many: list[WriteRun]
    sqlite: list[WriteRun]


def run_writes(sizes: Sizes, data_dir: str, progress: Callable[[str], None]) -> WriteResults:
    res = WriteResults([], [], [], [])
    for i in range(sizes.runs):
        progress(f"write round {i + 1}/{sizes.runs}")
        with scratch_dir(data_dir, "raw-") as d:
            res.raw.append(raw_fsync(d, sizes.raw))
        with scratch_dir(data_dir, "j1-") as d:
            res.one.append(journal_one_writer(d, sizes.one_writer))
        with scratch_dir(data_dir, "j64-") as d:
            res.many.append(journal_many_writers(d, sizes.writers, sizes.per_writer))
        with scratch_dir(data_dir, "sqlite-") as d:
            res.sqlite.append(sqlite_one_writer(d, sizes.sqlite))
    return res


# -- the start-up journal -------------------------------------------------------


def _startup_records(instances: int, seq: int, finished: bool = False) -> Any:
    """Yield packed records: groups of 64 instances run side by side (and,
    ``finished``, each group's ``completed`` records after its steps)."""
    ts = TS_MS
    pack = msgpack.packb
    for first in range(0, instances, 64):
        group = [(i, f"order-{i:08d}") for i in range(first, min(first + 64, instances))]
        for i, inst in group:
            blob = pack({"order": i, "customer": f"c{i % 5000}"})
            yield pack([r.CREATED, seq, ts, inst, "etl.pipeline", blob])
            seq, ts = seq + 1, ts + 1
        for k, key in enumerate(KEYS):
            for i, inst in group:
                blob = pack({"ok": True, "rows": (i * 7 + k) % 1000, "etag": f"{i:x}-{k}"})
                yield pack([r.STEP_DONE, seq, ts, inst, key, blob, ts, 1])
                seq, ts = seq + 1, ts + 1
        for i, inst in group if finished else ():
            yield pack([r.COMPLETED, seq, ts, inst, b"\x00" + pack(i)])  # as the codec frames it
            seq, ts = seq + 1, ts + 1


def build_startup_journal(path: str, instances: int, finished: bool = False) -> int:
    """Write the journal with large batches through SegmentWriter (unmeasured)."""
    storage = FileStorage(path)
    writer = SegmentWriter(storage)
    writer.recover(scan(storage))
    batch: list[bytes] = []
    for payload in _startup_records(instances, writer.next_seq, finished):
        batch.append(payload)
        if len(batch) == 50_000:
            writer.commit(batch)
            batch = []
    if batch:
        writer.commit(batch)
    records = writer.next_seq - 1
    writer.close()
    return records


def startup_journal(data_dir: str, instances: int, progress: Callable[[str], None]) -> str:
    """The cached start-up journal's directory, built if missing or stale."""
    path = os.path.join(data_dir, f"startup-{instances}")
    marker = path + ".json"
    want = {"bench_data": BENCH_DATA_VERSION, "format": FORMAT_VERSION,
            "instances": instances, "records": instances * (1 + len(KEYS))}
    try:
        with open(marker) as f:
            if json.load(f) == want:
                return path
    except (OSError, ValueError):
        pass
    progress(f"building the start-up journal ({want['records']:,} records, cached in {path})")
    if os.path.exists(path):
        shutil.rmtree(path)
    records = build_startup_journal(path, instances)
    assert records == want["records"], records
    with open(marker, "w") as f:
        json.dump(want, f)
    return path


# -- start-up measurements ------------------------------------------------------


async def _open_once(path: str, snapshots: bool) -> tuple[float, bool]:
    start = time.perf_counter()
    async with Journal(FileStorage(path, create=False), snapshots=snapshots) as journal:
        elapsed = time.perf_counter() - start
        resumed = journal.resumed
    return elapsed, resumed


def open_time(path: str, gc_enabled: bool = True, snapshots: bool = False) -> float:
    """Seconds to enter ``async with Journal(...)``: lock, scan, index, recover.

    With ``snapshots`` the index comes from the snapshot a previous clean
    close wrote (an error if it was not used); without, from a full scan.
    """
    gc.collect()
    if not gc_enabled:
        gc.disable()
    try:
        elapsed, resumed = trio.run(_open_once, path, snapshots)
    finally:
        gc.enable()
    if resumed != snapshots:
        raise RuntimeError(f"open with snapshots={snapshots} resumed={resumed}")
    gc.collect()
    return elapsed


def _step_entries(index: Index) -> int:
    """Step entries in the index (packed tables counted without unpacking them for good)."""
    return sum(
        len(inst.table if isinstance(inst.table, dict) else unpack_steps(inst.table))
        for inst in index.instances.values()
    )


@dataclass
class IndexMemory:
    inline_limit: int
    entries: int
    instances: int
    traced_bytes: int  # tracemalloc: everything the index holds
    rss_delta: int  # resident memory growth of a fresh process building it

    @property
    def per_entry(self) -> float:
        return self.traced_bytes / self.entries

    @property
    def rss_per_entry(self) -> float:
        return self.rss_delta / self.entries


def index_memory(path: str, inline_limit: int | None = None) -> IndexMemory:
    """Bytes the index takes, by tracemalloc here and by RSS in a fresh process.

    Everything reachable from the index counts, divided by its step entries
    (the per-instance part is shared among each instance's steps).
    """
    limit = DEFAULT_INLINE_LIMIT if inline_limit is None else inline_limit
    storage = FileStorage(path, create=False)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        index = Index(inline_limit=limit)
        scan(storage, index.apply)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    entries = _step_entries(index)
    instances = len(index.instances)
    del index
    gc.collect()
    probe = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--rss-probe", path,
         "--inline-limit", str(limit)],
        check=True, capture_output=True, text=True,
    )
    rss = json.loads(probe.stdout)["rss_delta"]
    return IndexMemory(limit, entries, instances, traced, rss)


def rss_probe(path: str, inline_limit: int) -> None:
    """Child process: resident memory growth from building the index by scan."""
    storage = FileStorage(path, create=False)
    gc.collect()
    before = rss_bytes()
    index = Index(inline_limit=inline_limit)
    scan(storage, index.apply)
    gc.collect()
    print(json.dumps({"rss_delta": rss_bytes() - before, "records": index.records}))


STAGES = ("read files", "reader: frames, crc, decode, check", "apply (index)")


def stage_split(path: str, passes: int) -> dict[str, float]:
    """The scan's stages, per-stage medians, with the garbage collector off.

    Reading the files is timed alone; the reader as ``scan`` with a no-op
    callback less the reading; ``Index.apply`` as a scan into an index less
    the no-op scan. The collector's share is measured apart (open with gc
    off vs on).
    """
    storage = FileStorage(path, create=False)
    runs: dict[str, Stat] = {stage: Stat() for stage in STAGES}
    clock = time.perf_counter

    def noop(rec: Any, loc: int) -> None:
        pass

    for _ in range(passes):
        gc.collect()
        gc.disable()
        try:
            t0 = clock()
            for name in storage.list():
                if name.endswith(".mlog"):
                    storage.read(name)
            t1 = clock()
            scan(storage, noop)
            t2 = clock()
            index = Index()
            scan(storage, index.apply)
            t3 = clock()
        finally:
            gc.enable()
        del index
        gc.collect()
        runs[STAGES[0]].add(t1 - t0)
        runs[STAGES[1]].add(max(0.0, (t2 - t1) - (t1 - t0)))
        runs[STAGES[2]].add(max(0.0, (t3 - t2) - (t2 - t1)))
    return {stage: stat.median for stage, stat in runs.items()}


def profile_open(path: str, top: int) -> str:
    """cProfile of the work one open does on its worker thread: scan into an index.

    The profiler slows every call, small ones most: read the proportions.
    """
    storage = FileStorage(path, create=False)
    index = Index()
    profiler = cProfile.Profile()
    profiler.enable()
    scan(storage, index.apply)
    profiler.disable()
    out = _Sink()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)  # type: ignore[arg-type]
    return out.text


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)


# -- report ---------------------------------------------------------------------


def _stat(values: list[float]) -> Stat:
    return Stat(list(values))


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__, quick="small sizes: a smoke check", runs="write rounds (default 5, quick 3)",
        data_dir="where scratch journals and the cached start-up journal live "
        "(must be on the disk you mean to measure; default bench/.data)",
    )
    parser.add_argument("--skip-writes", action="store_true", help="start-up only")
    parser.add_argument("--skip-startup", action="store_true", help="write throughput only")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also print the top N functions of a cProfile'd open")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    parser.add_argument("--inline-limit", type=int, default=DEFAULT_INLINE_LIMIT,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        rss_probe(args.rss_probe, args.inline_limit)
        return 0

    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("journal", args.quick, data_dir, disk)
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.2f}, {sizes.runs} interleaved write rounds")
    warn_if_in_memory(disk)
    out: dict[str, Any] = {"quick": args.quick, "sizes": sizes.__dict__, "disk": disk.__dict__}

    if not args.skip_writes:
        print()
        print(_report_writes(run_writes(sizes, data_dir, progress), sizes, out))
    if not args.skip_startup:
        print()
        print(_report_startup(sizes, data_dir, progress, out, args.profile))

    if args.json:
        write_json(args.json, out, default=str)
    return 0


def _report_writes(res: WriteResults, sizes: Sizes, out: dict[str, Any]) -> str:
    raw = _stat([w.rate for w in res.raw])
    one = _stat([w.rate for w in res.one])
    many = _stat([w.rate for w in res.many])
    sql = _stat([w.rate for w in res.sqlite])
    one_ratio, many_ratio, sql_ratio = ratios(one, raw), ratios(many, raw), ratios(sql, raw)
    fs_one = _stat([w.fsyncs_per_append for w in res.one])
    fs_many = _stat([w.fsyncs_per_append for w in res.many])
    p50 = {name: _stat([w.p50_us for w in runs])
           for name, runs in (("raw", res.raw), ("one", res.one), ("sqlite", res.sqlite))}
    rows = [
        ["raw write+fsync, 1 writer (128 B)", fmt_rate(raw.median), fmt_range(raw),
         "1.000", f"{p50['raw'].median:,.0f}", "100%", "(baseline)", ""],
        [f"journal, 1 writer ({sizes.one_writer} appends)", fmt_rate(one.median),
         fmt_range(one), f"{fs_one.median:.3f}", f"{p50['one'].median:,.0f}",
         f"{one_ratio.median:.0%}", f">= {TARGET_ONE_WRITER_RATIO:.0%} of raw",
         _ok(one_ratio.median >= TARGET_ONE_WRITER_RATIO)],
        [f"journal, {sizes.writers} writers ({sizes.per_writer} each)", fmt_rate(many.median),
         fmt_range(many), f"{fs_many.median:.3f}", "", f"{many_ratio.median:.0%}",
         f">= {TARGET_MANY_WRITERS:,.0f}/s", _ok(many.median >= TARGET_MANY_WRITERS)],
        ["sqlite3 WAL FULL, 1 writer, txn/record", fmt_rate(sql.median), fmt_range(sql),
         "", f"{p50['sqlite'].median:,.0f}", f"{sql_ratio.median:.0%}", "(context)", ""],
    ]
    out["writes"] = {
        "raw_fsync": {"rate": raw.as_dict(), "p50_us": p50["raw"].as_dict()},
        "journal_1_writer": {"rate": one.as_dict(), "p50_us": p50["one"].as_dict(),
                             "fsyncs_per_append": fs_one.as_dict(),
                             "ratio_to_raw": one_ratio.as_dict(),
                             "target_ratio": TARGET_ONE_WRITER_RATIO},
        f"journal_{sizes.writers}_writers": {
            "rate": many.as_dict(), "fsyncs_per_append": fs_many.as_dict(),
            "ratio_to_raw": many_ratio.as_dict(), "target_rate": TARGET_MANY_WRITERS},
        "sqlite_1_writer": {"rate": sql.as_dict(), "p50_us": p50["sqlite"].as_dict(),
                            "ratio_to_raw": sql_ratio.as_dict()},
    }
    return table(
        f"Write throughput (median of {sizes.runs} interleaved rounds; ratios are medians "
        "of per-round ratios)",
        ["measurement", "records/s", "min..max", "fsyncs/append", "p50 us", "vs raw",
         "target", ""],
        rows,
    )


def _report_startup(
    sizes: Sizes, data_dir: str, progress: Callable[[str], None], out: dict[str, Any],
    profile_top: int,
) -> str:
    path = startup_journal(data_dir, sizes.instances, progress)
    records = sizes.instances * (1 + len(KEYS))
    files = [n for n in os.listdir(path) if segment_numbers([n])]
    size = sum(os.path.getsize(os.path.join(path, n)) for n in files)
    progress("timing start-up")
    open_times, open_nogc, open_snap = Stat(), Stat(), Stat()
    trio.run(_open_once, path, True)  # a clean close writes the index snapshot
    for _ in range(sizes.open_runs):
        open_times.add(open_time(path))
        open_nogc.add(open_time(path, gc_enabled=False))
        open_snap.add(open_time(path, snapshots=True))
    progress("measuring index memory")
    mem = index_memory(path)
    mem0 = index_memory(path, inline_limit=0)
    progress("timing the scan's stages")
    split = stage_split(path, sizes.open_runs)

    rows = [
        [f"open: lock + scan + index + recover ({records:,} records)",
         f"{open_times.median:.3f} s", fmt_range(open_times, "{:.3f}"),
         f"{records / open_times.median:,.0f} records/s"],
        ["  same, garbage collector off (what-if)", f"{open_nogc.median:.3f} s",
         fmt_range(open_nogc, "{:.3f}"), f"{records / open_nogc.median:,.0f} records/s"],
        ["open from the index snapshot (Journal(snapshots=True))", f"{open_snap.median:.3f} s",
         fmt_range(open_snap, "{:.3f}"), f"{open_snap.median / open_times.median:.0%} of the scan"],
    ]
    text = table(
        f"Start-up ({sizes.instances:,} instances x (1 created + {len(KEYS)} step_done), "
        f"{size / 2**20:.0f} MiB in {len(files)} segments, warm page cache, "
        f"median of {sizes.open_runs})",
        ["measurement", "median", "min..max", ""], rows,
    )

    target = f"<= {TARGET_BYTES_PER_ENTRY:.0f}"
    mem_rows = [
        [f"index as built (values <= {mem.inline_limit} B inline), tracemalloc",
         f"{mem.per_entry:.0f}", target, _ok(mem.per_entry <= TARGET_BYTES_PER_ENTRY)],
        ["  RSS growth, fresh process", f"{mem.rss_per_entry:.0f}", "", ""],
        ["what-if inline_limit=0 (positions only), tracemalloc", f"{mem0.per_entry:.0f}", "", ""],
        ["  RSS growth, fresh process", f"{mem0.rss_per_entry:.0f}", "", ""],
    ]
    text += "\n\n" + table(
        f"Index memory (all the index holds / {mem.entries:,} step entries of "
        f"{mem.instances:,} instances)",
        ["measurement", "bytes/entry", "target", ""], mem_rows,
    )

    parts = sum(split.values())
    gc_share = open_times.median - open_nogc.median
    rest = open_nogc.median - parts
    base = open_times.median
    shares: list[tuple[str, float]] = [
        *split.items(),
        ("sum of the stages", parts),
        ("garbage collector (open - open with gc off)", gc_share),
        ("rest: per-record loop glue, thread, lock, recover", rest),
    ]
    split_rows = [[name, f"{t:.3f} s", f"{t / base:.0%}"] for name, t in shares]
    text += "\n\n" + table(
        f"Start-up time split (reading, the reader, apply; gc off, "
        f"median of {sizes.open_runs} passes; shares of the median open)",
        ["stage", "time", "share"], split_rows,
    )
    out["startup"] = {
        "records": records, "instances": sizes.instances, "segments": len(files),
        "bytes_on_disk": size, "open_s": open_times.as_dict(),
        "open_no_gc_s": open_nogc.as_dict(), "open_snapshot_s": open_snap.as_dict(),
        "index": {
            "target_bytes_per_entry": TARGET_BYTES_PER_ENTRY,
            "default": {**mem.__dict__, "bytes_per_entry": mem.per_entry,
                        "rss_bytes_per_entry": mem.rss_per_entry},
            "inline_limit_0": {**mem0.__dict__, "bytes_per_entry": mem0.per_entry,
                               "rss_bytes_per_entry": mem0.rss_per_entry},
        },
        "split_s": {**split, "gc": gc_share, "rest": rest},
    }
    if profile_top:
        progress("profiling one scan")
        text += "\n\ncProfile of scan + index build (the profiler inflates small calls)\n"
        text += profile_open(path, profile_top)
    return text


if __name__ == "__main__":
    sys.exit(main())
