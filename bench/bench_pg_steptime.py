"""Where one step's time goes on PostgreSQL: round trips per step, the
server's time (its backend's CPU, the commit's WAL flush) against the
client's CPU, for the engine's sequential step and for raw-SQL baselines
on the same server, in one run.

    .venv/bin/python bench/bench_pg_steptime.py [--steps 1000] [--rounds 5]

Each round runs, on one embedded server (fsync on, loopback TCP), one
after the other (interleaved across rounds):

* ``insert``: a bare ``INSERT`` of one row, autocommit (one round trip,
  one commit): the floor for a durable write from one connection.
* ``fenced``: the keyed step of POSTGRES.md, fence and insert in one
  statement (a ``FOR SHARE`` CTE on the instance's epoch, then
  ``INSERT ... ON CONFLICT DO NOTHING``).
* ``ml_append``: the engine's own statement (schema.py), called directly
  with the arrays one step's record makes.
* ``engine``: one workflow of ``--steps`` sequential steps.

All four go through the engine's driver (``_postgres/driver.py``), so
they differ only in what they send. Per step: wall time, the client
process's CPU, round trips (queries sent, counted at ``Conn.query``/
``Conn.run``), the server backends' CPU (``/proc/<pid>/stat`` of the
sessions, so 10 ms ticks: totals over the whole run), WAL flushed and
WAL bytes (the insert position's move). Two more rows bound the commit's
flush: ``insert nosync`` (the bare insert, ``synchronous_commit=off``) and
``fdatasync`` (``os.write`` of 300 bytes + ``os.fdatasync`` on a file beside
the server's data: the disk's flush alone). And ``plain SQL`` is the
engine's step write as one plain statement instead of ``ml_append``'s
plpgsql (the same arrays, a ``FOR SHARE`` CTE): what the function costs.
Medians over the rounds; the load is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

from memable_log import Context, Engine
from memable_log._core import records as r
from memable_log._postgres import driver, schema
from memable_log._postgres.driver import BYTEA, INT8, TEXT, Conn, array, int8

HERE = os.path.dirname(os.path.abspath(__file__))

TICK = os.sysconf("SC_CLK_TCK")
SENT: Counter[bytes] = Counter()  # queries sent, by prepared statement name
UNCOUNTED: set[int] = set()  # id() of the probe's own connection


def count_queries() -> None:
    """Count every query the driver sends (both entry points)."""
    query, run = Conn.query, Conn.run

    async def counted_query(self: Conn, name: bytes, *args: Any) -> Any:
        if id(self) not in UNCOUNTED:
            SENT[name] += 1
        return await query(self, name, *args)

    async def counted_run(self: Conn, sql: str) -> Any:
        if id(self) not in UNCOUNTED:
            SENT[b"(plain) " + sql.split()[0].encode()] += 1
        return await run(self, sql)

    Conn.query = counted_query  # type: ignore[method-assign]
    Conn.run = counted_run  # type: ignore[method-assign]


def cpu_of(pid: int) -> float:
    """A process's user + system CPU seconds (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Probe:
    """The server's counters around one measurement, read on ``stats``."""

    def __init__(self, stats: Conn) -> None:
        self.stats = stats

    async def wal(self) -> int:
        """The WAL's insert position, in bytes (whole server)."""
        got = await self.stats.run("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
        return int(float(got[0].get_value(0, 0) or 0))

    async def backends(self) -> list[int]:
        got = await self.stats.run(
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN"
            " ('client backend', 'walwriter') AND pid <> pg_backend_pid()")
        return [int(got[0].get_value(i, 0) or 0) for i in range(got[0].ntuples)]

    async def measure(self, ops: int, run: Callable[[], Awaitable[None]],
                      pids: Callable[[], Awaitable[list[int]]]) -> dict[str, float]:
        SENT.clear()
        wal0 = await self.wal()
        cpu0 = time.process_time()
        began = time.perf_counter()
        server0: dict[int, float] = {}
        done = trio.Event()

        async def watch() -> None:  # sessions come and go: sample their CPU
            while not done.is_set():
                for pid in await pids():
                    server0.setdefault(pid, cpu_of(pid))
                    last[pid] = cpu_of(pid)
                with trio.move_on_after(0.05):
                    await done.wait()

        last: dict[int, float] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await run()
            wall = time.perf_counter() - began
            cpu = time.process_time() - cpu0
            for pid in list(last):
                last[pid] = max(last[pid], cpu_of(pid))
            done.set()
        wal1 = await self.wal()
        server = sum(last[p] - server0[p] for p in last)
        sent = sum(SENT.values())
        return {
            "us/step": wall / ops * 1e6,
            "steps/s": ops / wall,
            "client cpu us": cpu / ops * 1e6,
            "server cpu us": server / ops * 1e6,
            "round trips": sent / ops,
            "wal B/step": (wal1 - wal0) / ops,
        }


RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS bare (id bigserial PRIMARY KEY, v bytea);
CREATE TABLE IF NOT EXISTS inst (instance_id text PRIMARY KEY, lease_epoch bigint NOT NULL);
CREATE TABLE IF NOT EXISTS steps (instance_id text, key text, value bytea, epoch bigint,
    PRIMARY KEY (instance_id, key));
"""
_BARE = "INSERT INTO bare (v) VALUES ($1)"
_FENCED = ("WITH f AS (SELECT 1 FROM inst WHERE instance_id = $1 AND lease_epoch = $2 FOR SHARE)"
           " INSERT INTO steps SELECT $1, $3, $4, $2 FROM f"
           " ON CONFLICT (instance_id, key) DO NOTHING RETURNING 1")
_APPEND = "SELECT * FROM ml_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_APPEND_TYPES = [TEXT, driver.TEXT_ARRAY, driver.TEXT_ARRAY, driver.BYTEA_ARRAY,
                 driver.TEXT_ARRAY, driver.TEXT_ARRAY, driver.INT8_ARRAY, driver.BOOL,
                 driver.TEXT_ARRAY, driver.TEXT_ARRAY]
VALUE = msgpack.packb(7)


async def raw_insert(conn: Conn, steps: int) -> None:
    for _ in range(steps):
        await conn.query(b"bare", _BARE, [BYTEA], [VALUE])


async def raw_fenced(conn: Conn, steps: int, iid: str) -> None:
    await conn.run(f"INSERT INTO inst VALUES ('{iid}', 1)")
    for i in range(steps):
        got = await conn.query(b"fenced", _FENCED, [TEXT, INT8, TEXT, BYTEA],
                               [iid.encode(), int8(1), f"s{i}".encode(), VALUE])
        assert got.ntuples == 1


async def _appends(conn: Conn, steps: int, iid: str, name: bytes, sql: str) -> None:
    """One step record a statement, sent as the engine's writer sends a batch of one."""
    await conn.run(f"INSERT INTO ml_instances VALUES ('{iid}', 'bench', 1)")
    pack = msgpack.Packer().pack
    for i in range(steps):
        rec = [r.STEP_DONE, 0, 1, iid, f"s{i}", VALUE, 1, 1]
        params = [b"bench", array(TEXT, [iid.encode()]), array(TEXT, [f"0:s{i}".encode()]),
                  array(BYTEA, [pack(rec)]), array(TEXT, []), array(TEXT, [iid.encode()]),
                  array(INT8, [int8(1)]), b"\x00", array(TEXT, []), array(TEXT, [])]
        got = await conn.query(name, sql, _APPEND_TYPES, params)
        assert got.ntuples == 1


async def raw_append(conn: Conn, steps: int, iid: str) -> None:
    await _appends(conn, steps, iid, b"ml_append", _APPEND)


_PLAIN = ("WITH f AS (SELECT 1 FROM ml_instances WHERE instance_id = $6[1]"
          " AND lease_epoch = $7[1] FOR SHARE)"
          " INSERT INTO ml_log (instance_id, step_key, writer, rec)"
          " SELECT $2[1], $3[1], $1, $4[1] FROM f RETURNING seq")


async def raw_plain(conn: Conn, steps: int, iid: str) -> None:
    await _appends(conn, steps, iid, b"plain", _PLAIN)


async def disk_flush(path: str, steps: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(steps):
            os.write(fd, b"x" * 300)
            os.fdatasync(fd)
    finally:
        os.close(fd)


async def engine_steps(dsn: str, steps: int, iid: str) -> Callable[[], Awaitable[None]]:
    """The engine, opened (not timed), and a run of one workflow to time."""

    async def flow(ctx: Context) -> Any:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return steps

    engine = Engine.builder().postgres(dsn).build()
    engine.register("flow", flow)

    async def run() -> None:
        await engine.wait(await engine.invoke("flow", instance_id=iid))

    run.engine = engine  # type: ignore[attr-defined]
    return run


async def main(steps: int, rounds: int) -> None:
    server = PgServer(fsync=True).start()
    count_queries()
    try:
        admin = await Conn.connect(server.dsn())
        await admin.run("ALTER SYSTEM SET track_wal_io_timing = on")
        await admin.run("SELECT pg_reload_conf()")
        await admin.run("CREATE DATABASE raw")
        await admin.run("CREATE DATABASE eng")
        admin.close()
        raw = await Conn.connect(server.dsn("raw"))
        await raw.run(RAW_SCHEMA)
        await schema.ensure(raw, "raw")
        await raw.run("INSERT INTO ml_workers VALUES ('bench', 'infinity')")
        nosync = await Conn.connect(server.dsn("raw") + "?options=-c%20synchronous_commit%3Doff")
        flush_file = os.path.join(str(server.base), "flush.bench")
        stats = await Conn.connect(server.dsn("raw"), application_name="stats")
        UNCOUNTED.add(id(stats))
        probe = Probe(stats)
        print(f"load before: {os.getloadavg()}", flush=True)
        results: dict[str, list[dict[str, float]]] = {}
        for n in range(rounds):
            runs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("insert", lambda: raw_insert(raw, steps)),
                ("fenced", lambda n=n: raw_fenced(raw, steps, f"f{n}")),  # type: ignore[misc]
                ("ml_append", lambda n=n: raw_append(raw, steps, f"a{n}")),  # type: ignore[misc]
                ("plain SQL", lambda n=n: raw_plain(raw, steps, f"p{n}")),  # type: ignore[misc]
                ("insert nosync", lambda: raw_insert(nosync, steps)),
                ("fdatasync", lambda: disk_flush(flush_file, steps)),
            ]
            for name, run in runs:
                results.setdefault(name, []).append(
                    await probe.measure(steps, run, probe.backends))
            flow = await engine_steps(server.dsn("eng"), steps, f"e{n}")
            async with flow.engine:  # type: ignore[attr-defined]
                results.setdefault("engine", []).append(
                    await probe.measure(steps, flow, probe.backends))
                if n == rounds - 1:
                    print("engine queries in its last round:", dict(SENT.most_common()))
        print(f"load after: {os.getloadavg()}")
        cols = list(next(iter(results.values()))[0])
        print(f"{'':<14}" + "".join(f"{c:>15}" for c in cols))
        for name, rows in results.items():
            print(f"{name:<14}" + "".join(
                f"{statistics.median(row[c] for row in rows):>15,.1f}" for c in cols))
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trio.run(main, args.steps, args.rounds)
