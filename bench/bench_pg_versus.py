"""memable_log on PostgreSQL against DBOS Transact on the SAME server, and
against raw-SQL baselines, in one run: 1 workflow x 1,000 steps, 100 x 20
at once, and the replay of 1,000 cached steps after a takeover.

    .venv/bin/python bench/bench_pg_versus.py [--rounds 3] [--json FILE]

One embedded server (fsync on, loopback TCP) for everything; each round
runs every row once, in the same order, in fresh databases (interleaved
rounds: a slow spell hits every row of a round). Medians over the rounds,
with the range, and per-round ratios to the raw fenced statement.

* ``raw insert``: one ``INSERT`` + commit per step, one connection (the
  engine's driver): the floor of a durable write.
* ``raw fenced``: the keyed step of POSTGRES.md (epoch fence ``FOR SHARE``
  + insert, one statement); for 100 x 20, 16 connections at once.
* ``raw ml_append``: the engine's own write statement, called directly.
* ``memable``: the engine (``Engine.builder().postgres(dsn)``), opened
  before the clock starts; 100 x 20 is 100 invokes then 100 waits.
* ``DBOS``: DBOS Transact on PostgreSQL (``bench/peers/dbos_pg_peer.py``,
  one process per scenario, its start-up not timed); 100 x 20 through
  ``DBOS.start_workflow`` (threads), its fastest form in POSTGRES.md.
* replay: an instance with 1,000 recorded steps whose engine stops (its
  lease released) inside step 1,001; another engine claims it and runs it
  on. Timed from the workflow's first line on the new engine to the body
  of step 1,001 (the 1,000 steps served from the record). DBOS: its
  recovery after a crash right after step 1,000, the same span (the
  workflow's first line to its return).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from _util import Stat, ratios
from bench_pg_steptime import RAW_SCHEMA, raw_append, raw_fenced, raw_insert
from pgserver import PgServer

from memable_log import Context, Engine
from memable_log._postgres import schema
from memable_log._postgres.driver import Conn

HERE = os.path.dirname(os.path.abspath(__file__))

PEER = os.path.join(HERE, "peers", "dbos_pg_peer.py")


def build(dsn: str, flow: Any) -> Engine:
    engine = Engine.builder().postgres(dsn).build()
    engine.register("flow", flow)
    return engine


async def memable_sequential(dsn: str, steps: int) -> float:
    async def flow(ctx: Context) -> Any:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return steps

    async with build(dsn, flow) as engine:
        began = time.perf_counter()
        await engine.wait(await engine.invoke("flow", instance_id="seq"))
        return steps / (time.perf_counter() - began)


async def memable_parallel(dsn: str, workflows: int, steps: int) -> float:
    async def flow(ctx: Context) -> Any:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)

    async with build(dsn, flow) as engine:
        began = time.perf_counter()
        ids = [await engine.invoke("flow", instance_id=f"par-{n}") for n in range(workflows)]
        for iid in ids:
            await engine.wait(iid)
        return workflows * steps / (time.perf_counter() - began)


async def memable_replay(dsn: str, steps: int) -> tuple[float, float]:
    """Seconds of the replay on the new engine, and from the old engine's
    close to the workflow's first line there (the claim)."""
    marks: dict[str, float] = {}
    inside = trio.Event()

    def flow(stays: bool) -> Any:
        async def run(ctx: Context) -> Any:
            marks["entered"] = time.perf_counter()
            for i in range(steps):
                await ctx.step(f"s{i}").run(lambda i=i: i)

            async def last() -> int:
                marks["last"] = time.perf_counter()
                if stays:
                    inside.set()
                    await trio.sleep_forever()
                return steps

            return await ctx.step("last").run(last)

        return run

    async with build(dsn, flow(False)) as b:
        async with build(dsn, flow(True)) as a:
            await a.invoke("flow", instance_id="replay")
            await inside.wait()
            closing = time.perf_counter()
        await b.wait("replay")
    return marks["last"] - marks["entered"], marks["entered"] - closing


async def raw_parallel(dsn: str, conns: int, steps: int, tag: str) -> float:
    links = [await Conn.connect(dsn) for _ in range(conns)]
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n, conn in enumerate(links):
            nursery.start_soon(raw_fenced, conn, steps, f"{tag}-{n}")
    rate = conns * steps / (time.perf_counter() - began)
    for conn in links:
        conn.close()
    return rate


def dbos(scenario: str, dsn: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, PEER, scenario, "--dsn", dsn, *args],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = done.stdout.strip().splitlines()
    if scenario == "prepare":
        return {}
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"dbos_pg_peer {scenario} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


async def timed(fn: Any, *args: Any) -> float:
    began = time.perf_counter()
    await fn(*args)
    return time.perf_counter() - began


async def main(rounds: int, out: str | None) -> None:
    server = PgServer(fsync=True).start()
    rows: dict[str, Stat] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, Stat()).add(value)
        print(f"  {name:<36} {value:>12,.1f}", flush=True)

    load = [os.getloadavg()]
    try:
        admin = await Conn.connect(server.dsn())
        await admin.run("CREATE DATABASE raw")
        raw = await Conn.connect(server.dsn("raw"))
        await raw.run(RAW_SCHEMA)
        await schema.ensure(raw, "raw")
        await raw.run("INSERT INTO ml_workers VALUES ('bench', 'infinity')")
        for n in range(rounds):
            print(f"round {n + 1}/{rounds}, load {os.getloadavg()[0]:.2f}", flush=True)
            for db in (f"m{n}", f"r{n}"):
                await admin.run(f"CREATE DATABASE {db}")
            add("raw insert 1x1000 steps/s", 1000 / await timed(raw_insert, raw, 1000))
            add("raw fenced 1x1000 steps/s",
                1000 / await timed(raw_fenced, raw, 1000, f"f{n}"))
            add("raw ml_append 1x1000 steps/s",
                1000 / await timed(raw_append, raw, 1000, f"a{n}"))
            add("memable 1x1000 steps/s", await memable_sequential(server.dsn(f"m{n}"), 1000))
            got = dbos("steps", server.dsn(f"dbos_s{n}"), "--steps", "1000")
            add("DBOS 1x1000 steps/s", got["steps"] / got["elapsed"])
            add("raw fenced 16 conns x 125 steps/s",
                await raw_parallel(server.dsn("raw"), 16, 125, f"p{n}"))
            add("memable 100x20 steps/s", await memable_parallel(server.dsn(f"m{n}"), 100, 20))
            got = dbos("concurrent", server.dsn(f"dbos_c{n}"), "--workflows", "100",
                       "--steps", "20")
            add("DBOS 100x20 steps/s", got["steps"] / got["elapsed"])
            replay, claim = await memable_replay(server.dsn(f"r{n}"), 1000)
            add("memable replay 1000 cached ms", replay * 1000)
            add("memable close -> resumed ms", claim * 1000)
            dbos("prepare", server.dsn(f"dbos_r{n}"), "--steps", "1000", "--crash-after", "1000")
            got = dbos("recover", server.dsn(f"dbos_r{n}"), "--steps", "1000")
            add("DBOS replay 1000 cached ms", got["replay"] * 1000)
            load.append(os.getloadavg())
        admin.close()
        raw.close()
    finally:
        server.stop()
    print(f"\nload (1/5/15 min) before: {load[0]}, after: {load[-1]}")
    print(f"{'':<36} {'median':>10} {'range':>21} {'vs raw fenced':>14}")
    fenced = rows["raw fenced 1x1000 steps/s"]
    for name, stat in rows.items():
        base = fenced if "1x1000" in name else rows["raw fenced 16 conns x 125 steps/s"]
        ratio = ratios(stat, base).median if "steps/s" in name else float("nan")
        print(f"{name:<36} {stat.median:>10,.1f} {stat.low:>10,.1f}-{stat.high:<10,.1f}"
              f" {ratio:>14.2f}")
    for a, b in (("memable 1x1000 steps/s", "DBOS 1x1000 steps/s"),
                 ("memable 100x20 steps/s", "DBOS 100x20 steps/s"),
                 ("DBOS replay 1000 cached ms", "memable replay 1000 cached ms")):
        print(f"{a} / {b}: {ratios(rows[a], rows[b]).median:.1f}x")
    if out:
        await trio.Path(out).write_text(json.dumps(
            {"load": load, "rows": {k: v.as_dict() for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    trio.run(main, args.rounds, args.json)
