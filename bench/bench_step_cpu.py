"""CPU per step, counted in instructions: executed steps, instances, memoised steps.

Run from the repository root::

    .venv/bin/python bench/bench_step_cpu.py                 # this tree
    .venv/bin/python bench/bench_step_cpu.py --base /tmp/main --json bench/results/step_cpu.json
    .venv/bin/python bench/bench_step_cpu.py --values small --only executed

Why instructions and not time: the machine is shared, and timings of the
same tree differ by 2x between rounds, while ``valgrind --tool=callgrind``
counts the instructions a process executes, the same in every run (the
commit thread's included; hashing is seeded alike, PYTHONHASHSEED=0, and
instance ids are fixed). Every figure is a difference of two runs that
differ only in the work counted, so imports, the engine's start and stop
cancel out:

* executed step: 100 workflows of 20 steps started at once (bench_engine
  (b)), less the same 100 workflows with no step, per step;
* instance: those 100 workflows with no step (invoke, run, complete,
  wait), less an engine that runs none, per instance;
* (b) per step: the whole of (b) (steps and instances) per step;
* memoised step: one workflow of 1,000 steps that then waits on signals,
  replayed 5 times (a signal each) less once, per step replayed. Values
  above the inline limit are read back (read-ahead) as well as decoded.

Step values are bench_engine's (bench/peers/values.py): ``realistic``
(dicts of 100 B-4 KB of msgpack) and ``small`` ints. The journal is in
memory by default (no commit thread: its batches, and so the counts, do not
depend on timing); ``--dir`` uses a directory. ``--base PATH`` counts
another source tree beside this one (its ``memable_log`` first on the path).
Under callgrind a run takes about a minute; ``--jobs`` of them run at once.
See docs/performance.md, "CPU per step (session 6)".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))

# name -> (child arguments of the run with the work, of the run without it, units)
WORKFLOWS, STEPS, MEMO_STEPS, REPLAYS = 100, 20, 1000, 5
SCENARIOS: dict[str, tuple[list[str], list[str], int]] = {
    "executed": (["b", str(WORKFLOWS), str(STEPS)], ["b", str(WORKFLOWS), "0"],
                 WORKFLOWS * STEPS),
    "instance": (["b", str(WORKFLOWS), "0"], ["b", "0", "0"], WORKFLOWS),
    "b_total": (["b", str(WORKFLOWS), str(STEPS)], ["b", "0", "0"], WORKFLOWS * STEPS),
    "memoised": (["memo", str(MEMO_STEPS), str(REPLAYS)], ["memo", str(MEMO_STEPS), "1"],
                 MEMO_STEPS * (REPLAYS - 1)),
}


# == the child: one workload, in a fresh process ====================================


def child(argv: list[str]) -> None:
    """``--child TREE VALUES DIR|- b WORKFLOWS STEPS`` or ``... memo STEPS REPLAYS``."""
    tree, values, where, mode, first, second = argv
    if tree != "-":  # that tree's memable_log, not this venv's editable install
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, tree)
    import trio
    from values import KINDS

    from memable_log import Engine

    value = KINDS[values]
    reached: list[trio.Event] = []

    def work(i: int) -> Any:
        return value(i)

    async def steps(ctx: Any) -> None:
        for i in range(ctx.input):
            await ctx.step(f"step-{i}").run(work, i)

    async def memo(ctx: Any) -> None:
        n, replays = ctx.input
        for i in range(n):
            await ctx.step(f"step-{i}").run(work, i)
        for j in range(replays):
            reached[j].set()  # each run of the body gets here: the driver waits for it
            await ctx.suspend(f"go-{j}")

    async def main() -> None:
        builder = Engine.builder()
        builder = builder.in_memory() if where == "-" else builder.open(where)
        engine = builder.build()
        engine.register("steps", steps)
        engine.register("memo", memo)
        async with engine:
            if mode == "b":
                async def one(n: int) -> None:
                    iid = f"wf-{n}"  # not random: the same hashes in every run
                    await engine.wait(await engine.invoke("steps", int(second), instance_id=iid))

                async with trio.open_nursery() as nursery:
                    for n in range(int(first)):
                        nursery.start_soon(one, n)
                return
            replays = int(second)
            reached.extend(trio.Event() for _ in range(replays))
            iid = await engine.invoke("memo", (int(first), replays), instance_id="memo")
            for j in range(replays):
                await reached[j].wait()
                async for status in engine.watch(iid):  # parked: the next run replays
                    if status.state == "suspended" and status.key == f"go-{j}":
                        break
                await engine.signal("memo", iid, f"go-{j}", None)
            await engine.wait(iid)

    trio.run(main)


# == the driver =====================================================================


def instructions(tree: str, values: str, use_dir: bool, args: list[str]) -> int:
    """Instructions of one child run under callgrind."""
    scratch = tempfile.mkdtemp(prefix="step-cpu-")
    try:
        where = os.path.join(scratch, "journal") if use_dir else "-"
        out = os.path.join(scratch, "callgrind.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             os.path.abspath(__file__), "--child", tree, values, where, *args],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"})  # the same dict layouts each run
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind run {args} failed:\n{proc.stderr[-3000:]}")
        return int(found.group(1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(trees: dict[str, str], kinds: list[str], only: list[str], use_dir: bool,
            jobs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Instructions per unit: tree -> value kind -> scenario."""
    runs = {(label, kind, tuple(arg))
            for label in trees for kind in kinds for name in only
            for arg in SCENARIOS[name][:2]}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        counted = dict(zip(runs, pool.map(
            lambda run: instructions(trees[run[0]], run[1], use_dir, list(run[2])), runs),
            strict=True))
    return {
        label: {kind: {name: (counted[label, kind, tuple(SCENARIOS[name][0])]
                              - counted[label, kind, tuple(SCENARIOS[name][1])])
                       / SCENARIOS[name][2] for name in only}
                for kind in kinds}
        for label in trees
    }


def report(result: dict[str, dict[str, dict[str, float]]], kinds: list[str],
           only: list[str]) -> str:
    labels = list(result)
    lines = ["instructions per unit (callgrind):",
             f"{'values':<10} {'scenario':<10} " + " ".join(f"{label:>12}" for label in labels)
             + ("  ratio" if len(labels) == 2 else "")]
    for kind in kinds:
        for name in only:
            row = [result[label][kind][name] for label in labels]
            ratio = f"  {row[0] / row[1]:.3f}" if len(row) == 2 and row[1] else ""
            lines.append(f"{kind:<10} {name:<10} "
                         + " ".join(f"{value:>12,.0f}" for value in row) + ratio)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", metavar="PATH", help="another source tree, counted beside")
    parser.add_argument("--values", choices=["realistic", "small", "both"], default="both")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append")
    parser.add_argument("--dir", action="store_true", help="a directory, not memory")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count", file=sys.stderr)
        return 1
    trees = {"this tree": ROOT}
    if args.base:
        trees["base"] = os.path.abspath(args.base)
    kinds = ["realistic", "small"] if args.values == "both" else [args.values]
    only = args.only or list(SCENARIOS)
    result = measure(trees, kinds, only, args.dir, args.jobs)
    print(report(result, kinds, only))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"trees": trees, "storage": "dir" if args.dir else "memory",
                       "per_unit": result}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
