"""Memory and tasks of sleeping and suspended instances (issue 4).

Run: ``.venv/bin/python bench/bench_suspended.py [--quick]``

10,000 instances (half suspended on a signal, half sleeping on a timer) are
invoked on an in-memory engine and left waiting. Reported: Python heap bytes
per waiting instance (tracemalloc, measured on a restart so it counts what
the engine keeps, not the invocations' garbage) and the engine's task count,
which must not grow with the number of waiting instances (one timer poller
for all of them, no task per instance). Medians of several runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

import trio
import trio.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import Stat, table

from memable_log import Context, Engine, ManualClock, MemoryStorage


async def waits(ctx: Context) -> str:
    await ctx.step("fetch:v1").run(lambda: ctx.input)
    if ctx.input % 2:
        return str(await ctx.suspend("approval:v1", status="Waiting for approval"))
    await ctx.timer("cooldown:v1", 86400)
    return "slept"


def engine_on(storage: MemoryStorage, clock: ManualClock) -> Engine:
    engine = Engine.builder().in_memory(storage).clock(clock).compaction(False).build()
    engine.register("waits", waits)
    return engine


async def fill(storage: MemoryStorage, clock: ManualClock, count: int) -> int:
    engine = engine_on(storage, clock)
    async with engine:
        for n in range(count):
            await engine.invoke("waits", n, instance_id=f"w{n}")
        await trio.testing.wait_all_tasks_blocked()
        assert engine._nursery is not None
        return len(engine._nursery.child_tasks)


async def measure(storage: MemoryStorage, clock: ManualClock) -> tuple[int, int, int]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = engine_on(storage, clock)
    async with engine:
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
        assert engine._nursery is not None
        tasks = len(engine._nursery.child_tasks)
        waiting = len(engine.instances("suspended")) + len(engine.instances("sleeping"))
    tracemalloc.stop()
    return used, tasks, waiting


def run_once(count: int) -> tuple[float, int, int]:
    storage = MemoryStorage()
    clock = ManualClock()
    mock = trio.testing.MockClock
    tasks_small = trio.run(fill, storage, clock, 10, clock=mock(autojump_threshold=0))
    storage = MemoryStorage()
    trio.run(fill, storage, clock, count, clock=trio.testing.MockClock(autojump_threshold=0))
    used, tasks, waiting = trio.run(
        measure, storage, clock, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert waiting == count, waiting
    return used / count, tasks, tasks_small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 1_000 if args.quick else 10_000
    per = Stat()
    tasks = tasks_small = 0
    for _ in range(1 if args.quick else 3):
        bytes_each, tasks, tasks_small = run_once(count)
        per.add(bytes_each)
    rows = [
        ["waiting instances", f"{count:,}"],
        ["heap bytes per waiting instance (median)", f"{per.median:,.0f}"],
        ["engine tasks with 10 waiting", f"{tasks_small}"],
        [f"engine tasks with {count:,} waiting", f"{tasks}"],
    ]
    print(table("Sleeping and suspended instances (in-memory engine: index and engine state)",
                ["", ""], rows))


if __name__ == "__main__":
    main()
