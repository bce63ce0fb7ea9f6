"""Capacity benchmark: 10,000 instances queued behind max_running_per_key=2.

Run from the repository root::

    .venv/bin/python bench/bench_capacity.py            # 10,000 instances, 5 runs
    .venv/bin/python bench/bench_capacity.py --quick    # 2,000 instances, 2 runs

An engine on a journal directory in /dev/shm (tmpfs: an fsync costs next
to nothing, so what is measured is the engine's CPU, not the disk; the
in-memory journal copies its whole segment at each sync, which would
charge the bigger records to the wrong place). Each run invokes N
instances over 100 keys, all held at a gate until every invoke returned,
then opens the gate and waits for all.

* plain: a workflow with no limits: N invokes, N runs at once;
* limited: ``register(..., key=lambda x: x["k"], max_running_per_key=2)``:
  200 run, the rest are queued (``queued`` in the batch of their
  ``created``) and start as slots free (their ``dequeued`` in the batch of
  the ``completed`` that freed the slot: no append of their own).

Quoted: per instance, the whole (invoke to finished) of each, and the
added cost per start (limited - plain), the median over runs. Target
(issue 15): <= 20 us. The bench asserts that each key ran at most two at
once, and that every key reached two: the per-key limit held exactly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from typing import Any

import trio

from memable_log import Context, Engine

KEYS = 100
# tmpfs where there is one: fsync there costs next to nothing, so what is
# measured is the engine's CPU per start, not the disk.
DATA_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


async def one_run(n: int, limited: bool) -> tuple[float, Counter[str]]:
    now: Counter[str] = Counter()
    most: Counter[str] = Counter()
    gate = trio.Event()

    async def job(ctx: Context) -> None:
        key = ctx.input["k"]
        now[key] += 1
        if now[key] > most[key]:
            most[key] = now[key]
        await gate.wait()
        now[key] -= 1

    with tempfile.TemporaryDirectory(dir=DATA_DIR) as path:
        return await _run(n, limited, Engine.builder().open(path).build(), job, now, most, gate)


async def _run(
    n: int, limited: bool, engine: Engine, job: Any, now: Counter[str], most: Counter[str],
    gate: trio.Event,
) -> tuple[float, Counter[str]]:
    if limited:
        engine.register("job", job, key=lambda x: x["k"], max_running_per_key=2)
    else:
        engine.register("job", job)
    async with engine:
        start = time.perf_counter()
        ids = [await engine.invoke("job", {"k": f"tenant-{i % KEYS}"}) for i in range(n)]
        gate.set()
        for iid in ids:
            await engine.wait(iid)
        took = time.perf_counter() - start
        if limited:
            assert len(engine.instances("completed")) == n
    return took / n, most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 instances, 2 runs")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("-n", type=int, default=None, help="instances per run")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 10_000)
    runs = args.runs or (2 if args.quick else 5)
    plain: list[float] = []
    limited: list[float] = []
    for _ in range(runs):
        per, _ = trio.run(one_run, n, False)
        plain.append(per)
        per, most = trio.run(one_run, n, True)
        limited.append(per)
        # The per-key limit held exactly: never more than two, and two reached.
        assert max(most.values()) == 2, most
        assert min(most.values()) == 2, most
        assert len(most) == KEYS
    added = [lim - pl for lim, pl in zip(limited, plain, strict=True)]
    print(f"{n:,} instances over {KEYS} keys, max_running_per_key=2, {runs} runs "
          "(journal on tmpfs)")
    print(f"  plain invoke + run:     {statistics.median(plain) * 1e6:7.1f} us per instance")
    print(f"  limited invoke + run:   {statistics.median(limited) * 1e6:7.1f} us per instance")
    print(f"  added cost per start:   {statistics.median(added) * 1e6:7.1f} us "
          f"(runs: {', '.join(f'{a * 1e6:.1f}' for a in added)}; target <= 20 us)")
    print("  per-key concurrency:    max 2 on every key (asserted)")



if __name__ == "__main__":
    main()
