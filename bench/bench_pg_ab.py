"""A/B of two memable_log source trees on PostgreSQL: 1 x 1,000 sequential
steps and 100 x 20 at once, interleaved, on one server.

    git archive BASE_COMMIT | tar -x -C /tmp/base
    .venv/bin/python bench/bench_pg_ab.py --a /tmp/base --b . [--rounds 7]

Each measurement is a child process that imports one tree's
``memable_log`` (it says which it imported), on a fresh database; rounds
alternate A, B, B, A, ... so a drift of the machine hits both alike.
Medians, ranges and the median of per-round B/A ratios; CPU per step of the
engine's process + its server sessions (less noisy than the rate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

CHILD = r"""
import sys
# The tree named by argv[4] first (and not the current directory, '' in sys.path).
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[4])
import json, os, time, psycopg, trio, memable_log
from memable_log import Context, Engine

def server_cpu(dsn):
    # CPU seconds of the engine's sessions' server processes (writer, tailer, ...)
    with psycopg.connect(dsn, autocommit=True) as c:
        pids = [p for (p,) in c.execute("SELECT pid FROM pg_stat_activity "
                                        "WHERE application_name LIKE 'memable_log %'")]
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

async def main(dsn, workflows, steps):
    async def flow(ctx: Context):
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
    engine = Engine.builder().postgres(dsn).build()
    engine.register("flow", flow)
    async with engine:
        await trio.sleep(0.3)  # its tailer's and lease's sessions are up
        server = await trio.to_thread.run_sync(server_cpu, dsn)
        cpu, began = time.process_time(), time.perf_counter()
        ids = [await engine.invoke("flow", instance_id=f"i{n}") for n in range(workflows)]
        for iid in ids:
            await engine.wait(iid)
        took = time.perf_counter() - began
        cpu = time.process_time() - cpu
        server = await trio.to_thread.run_sync(server_cpu, dsn) - server
    n = workflows * steps
    print(json.dumps({"rate": n / took, "cpu_us": cpu / n * 1e6, "server_us": server / n * 1e6,
                      "tree": memable_log.__file__}))

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""


def child(tree: str, dsn: str, workflows: int, steps: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, dsn, str(workflows), str(steps),
                           os.path.abspath(tree)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not got["tree"].startswith(os.path.abspath(tree)):
        raise RuntimeError(f"the child imported {got['tree']}, not the tree {tree}")
    return got


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="source tree A (the base)")
    parser.add_argument("--b", required=True, help="source tree B (the change)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", default="1x1000,100x20")
    args = parser.parse_args()
    server = PgServer(fsync=True).start()
    shapes = {shape: (int(shape.split("x")[0]), int(shape.split("x")[1]))
              for shape in args.shapes.split(",")}
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load = [os.getloadavg()]
    try:
        db = 0
        for n in range(args.rounds):
            order = ("a", "b") if n % 2 == 0 else ("b", "a")
            for shape, (workflows, steps) in shapes.items():
                for side in order:
                    db += 1
                    subprocess.run(
                        [str(server.binaries / "psql"), "-h", "127.0.0.1", "-p",
                         str(server.port), "-U", "postgres", "-q", "-c",
                         f"CREATE DATABASE ab{db}"], capture_output=True, check=True)
                    tree = args.a if side == "a" else args.b
                    got.setdefault((shape, side), []).append(
                        child(tree, server.dsn(f"ab{db}"), workflows, steps))
            print(f"round {n + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
        load.append(os.getloadavg())
    finally:
        server.stop()
    print(f"load before {load[0]}, after {load[-1]}")
    for shape in shapes:
        a, b = got[(shape, "a")], got[(shape, "b")]
        ra, rb = [x["rate"] for x in a], [x["rate"] for x in b]
        ratio = statistics.median(y / x for x, y in zip(ra, rb, strict=True))
        print(f"{shape}: A {statistics.median(ra):,.0f} ({min(ra):,.0f}-{max(ra):,.0f}) "
              f"cpu {med(a, 'cpu_us'):.0f}+{med(a, 'server_us'):.0f} us/step | "
              f"B {statistics.median(rb):,.0f} ({min(rb):,.0f}-{max(rb):,.0f}) "
              f"cpu {med(b, 'cpu_us'):.0f}+{med(b, 'server_us'):.0f} us/step | B/A {ratio:.3f}")


if __name__ == "__main__":
    main()
