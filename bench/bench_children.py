"""Fan-out benchmark: a workflow runs 1,000 trivial child workflows, 50 at a time.

Run from the repository root::

    .venv/bin/python bench/bench_children.py            # 3 rounds, a few minutes (DBOS)
    .venv/bin/python bench/bench_children.py --quick    # 100 children: a smoke check
    .venv/bin/python bench/bench_children.py --json bench/results/children.json

Measured, each in its own process, in interleaved rounds, from the parent's
start to its last child's result:

* memable_log: ``ctx.fan_out("f", "child", range(1000), concurrency=50)`` in
  a parent workflow, on a journal directory (every child's start and end is
  durable: one fsync per batch, batches shared by group commit);
* DBOS Transact on SQLite (bench/peers/dbos_peer.py ``fanout``): a parent
  workflow enqueues 1,000 child workflows on a queue with ``concurrency=50``
  and awaits every handle; with the queue's default polling (1 s) and with
  polling every 50 ms.

The ratio is the median of per-round ratios (DBOS default / memable_log).
If ``import dbos`` fails, DBOS is reported as unavailable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from _util import (
    Stat,
    bench_parser,
    machine_line,
    open_data_dir,
    print_banner,
    progress,
    ratios,
    scratch_dir,
    table,
    write_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DBOS_PEER = os.path.join(HERE, "peers", "dbos_peer.py")
CONCURRENCY = 50
TARGET_RATIO = 20.0


# == the memable_log side: runs in a child process (``--child``) =====================


async def child(ctx: Any) -> int:
    return int(ctx.input) * 2


async def parent(ctx: Any) -> list[int]:
    return await ctx.fan_out("f", "child", range(ctx.input), concurrency=CONCURRENCY)  # type: ignore[no-any-return]


async def memable_fanout(path: str, children: int) -> dict[str, Any]:
    from memable_log import Engine

    engine = Engine.builder().open(os.path.join(path, "journal")).build()
    engine.register("parent", parent)
    engine.register("child", child)
    async with engine:
        t = time.perf_counter()
        result = await engine.wait(await engine.invoke("parent", children))
        elapsed = time.perf_counter() - t
    assert result == [i * 2 for i in range(children)], result[:5]
    return {"elapsed": elapsed, "children": children}


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_children.py --child")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--children", type=int, default=1000)
    args = parser.parse_args(argv)
    import trio

    print(json.dumps(trio.run(memable_fanout, args.dir, args.children)), flush=True)
    return 0


# == the driver =======================================================================


def _run(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[1:3]} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = bench_parser(
        __doc__, quick="100 children, one round: a smoke check",
        runs="rounds (default 3, quick 1)",
        data_dir="where journals and databases live (default bench/.data)",
    )
    args = parser.parse_args(argv)
    children = 100 if args.quick else 1000
    runs = args.runs or (1 if args.quick else 3)
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("children", args.quick, data_dir, disk)
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
          f"before: {machine_line(data_dir)}")
    series = {"memable": Stat(), "dbos": Stat(), "dbos_fast": Stat()}
    unavailable: str | None = None
    for rnd in range(runs):
        progress(f"round {rnd + 1}/{runs}: memable_log fan_out of {children}")
        with scratch_dir(data_dir, "fan-m-") as d:
            series["memable"].add(_run([sys.executable, os.path.abspath(__file__), "--child",
                                        "--dir", d, "--children", str(children)])["elapsed"])
        for name, poll in (("dbos", None), ("dbos_fast", 0.05)):
            if unavailable is not None:
                continue
            progress(f"round {rnd + 1}/{runs}: DBOS child workflows "
                     f"({'default polling' if poll is None else f'polling {poll} s'})")
            extra = [] if poll is None else ["--poll", str(poll)]
            with scratch_dir(data_dir, "fan-d-") as d:
                res = _run([sys.executable, DBOS_PEER, "fanout", "--dir", d, "--workflows",
                            str(children), "--concurrency", str(CONCURRENCY), *extra])
            if "unavailable" in res:
                unavailable = res["unavailable"]
                progress(f"DBOS unavailable: {unavailable}")
                continue
            series[name].add(res["elapsed"])
    print(f"  after: {machine_line(data_dir)}")
    mem = series["memable"]
    rows = [[f"memable_log: fan_out of {children}, concurrency {CONCURRENCY}",
             f"{mem.median:,.3f}", f"{children / mem.median:,.0f}", "", ""]]
    for name, label in (("dbos", "DBOS: queue of 50 (default polling 1 s)"),
                        ("dbos_fast", "DBOS: same, queue polling 50 ms")):
        stat = series[name]
        if not stat.values:
            rows.append([label, "n/a", "n/a", "n/a", f"unavailable: {unavailable or ''}"])
            continue
        ratio = ratios(stat, mem).median
        verdict = ("ok" if ratio >= TARGET_RATIO else "MISSED") if name == "dbos" else ""
        rows.append([label, f"{stat.median:,.3f}", f"{children / stat.median:,.0f}",
                     f"{ratio:,.1f}x", verdict])
    print(table(f"fan-out, start to last result (target >= {TARGET_RATIO:g}x vs DBOS)",
                ["path", "seconds", "children/s", "memable_log is", "verdict"], rows))
    if args.json:
        write_json(args.json, {
            "children": children, "concurrency": CONCURRENCY,
            **{name: stat.as_dict() for name, stat in series.items()},
            "unavailable": unavailable,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
