"""This tree against an earlier commit, side by side: bench_engine's scenarios.

A change is judged against the commit before it, in one run, on one machine
(which is shared and noisy): each round runs every scenario once with the
earlier commit's code and once with this tree's, in alternating order, and
the table gives the medians and the median of the per-round ratios.

    .venv/bin/python bench/bench_versus.py --base b80d412 --runs 5

The earlier commit is checked out into a temporary git worktree; each
side's own ``bench/bench_engine.py --child`` runs with that side's
``memable_log`` first on the import path. Scenarios (bench_engine.py's):

* (a) one workflow of 1,000 steps, steps/s;
* (b) 100 workflows x 20 steps at once, steps/s;
* (c) replay of 1,000 memoised steps in a fresh engine, steps/s (the
  workflow body's own time, as bench_engine reports it);
* (e) start with 10,000 x 10 finished steps (a journal each side builds
  once, then reopens every round), ms.

Ratios are this / base, so above 1 is faster for (a)-(c) and slower for (e).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(tree: str, scenario: str, path: str, *extra: str) -> dict[str, Any]:
    """One run of ``tree``'s bench_engine child; its JSON answer."""
    env = dict(os.environ, PYTHONPATH=tree)
    argv = [sys.executable, os.path.join(tree, "bench", "bench_engine.py"), "--child",
            scenario, "--dir", path, *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stdout[-2000:] + proc.stderr[-4000:]
        raise RuntimeError(f"{tree}: {scenario} failed:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def fresh(base: str, name: str) -> str:
    path = os.path.join(base, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def scenarios(tree: str, work: str, built: str) -> dict[str, Callable[[], float]]:
    def a() -> float:
        r = child(tree, "steps", fresh(work, "a"), "--steps", "1000")
        return float(r["steps"] / r["elapsed"])

    def b() -> float:
        r = child(tree, "concurrent", fresh(work, "b"), "--workflows", "100", "--steps", "20")
        return float(r["steps"] / r["elapsed"])

    def c() -> float:
        path = fresh(work, "c")
        child(tree, "prepare", path, "--steps", "1000", "--crash-after", "1000")
        r = child(tree, "recover", path, "--steps", "1000")
        return float(r["steps"] / r["replay"])

    def e() -> float:
        return float(child(tree, "startup-measure", built)["start_s"] * 1000)

    return {"a": a, "b": b, "c": c, "e": e}


LABELS = {
    "a": "(a) 1 x 1,000 steps, steps/s",
    "b": "(b) 100 x 20 steps at once, steps/s",
    "c": "(c) replay of 1,000 memoised steps, steps/s",
    "e": "(e) start with 10,000 x 10 steps done, ms",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--only", default="abce", help="scenarios to run (default abce)")
    parser.add_argument("--data-dir", default=os.path.join(HERE, ".data"),
                        help="where journals live (on the disk you mean to measure)")
    args = parser.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    top = tempfile.mkdtemp(prefix="versus-", dir=args.data_dir)
    base_tree = os.path.join(top, "base-tree")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", base_tree, args.base],
                   check=True)
    try:
        trees = {"base": base_tree, "this": ROOT}
        runs: dict[str, dict[str, Callable[[], float]]] = {}
        for side, tree in trees.items():
            work = os.path.join(top, side)
            os.makedirs(work)
            built = os.path.join(work, "e-built")
            if "e" in args.only:
                child(tree, "startup-build", built, "--instances", "10000", "--steps", "10")
            runs[side] = scenarios(tree, work, built)
        results = {s: {side: [] for side in trees} for s in args.only}  # type: dict[str, dict[str, list[float]]]
        for rnd in range(args.runs):
            order = ("base", "this") if rnd % 2 == 0 else ("this", "base")
            for s in args.only:
                for side in order:
                    results[s][side].append(runs[side][s]())
            print(f"round {rnd + 1}/{args.runs} done", file=sys.stderr, flush=True)
        print(f"this tree vs {args.base}, {args.runs} interleaved rounds, load "
              f"{os.getloadavg()[0]:.1f}")
        print("| scenario | base (median) | this (median) | this / base, median of rounds |")
        print("|---|---:|---:|---:|")
        for s in args.only:
            base, this = results[s]["base"], results[s]["this"]
            ratio = statistics.median(t / b for t, b in zip(this, base, strict=True))
            print(f"| {LABELS[s]} | {statistics.median(base):,.1f} | "
                  f"{statistics.median(this):,.1f} | {ratio:.3f} |")
        print(json.dumps(results), file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_tree],
                       check=False)
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
