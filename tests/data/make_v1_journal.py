"""Writes tests/data/journal-v1/: a journal in format version 1.

Run once, with the library as it was at format version 1 (commit 0872609),
to make the fixture that tests/journal/test_format_v1.py opens with every
later version. Kept for the record; running it with a later version makes a
journal of that version instead.

What it holds (wall clock: ManualClock at 1_700_000_000 s):

* ``done``: completed, two steps, result 42;
* ``approval``: suspended on ``approve`` (status "check it", timeout 2 days);
* ``nap``: sleeping on ``nap`` (1 day), one step before;
* ``early``: suspended on ``go``, with an early signal for ``later``;
* ``pair``: two timers in a nursery (``t1`` 3 days, ``t2`` 1 day): sleeping;
* ``gone``: a timer set, then the instance cancelled;
* the first of two segments compacted, so ``cmp-`` holds state images of
  ``approval`` and ``nap`` and plain segments hold the rest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import trio
from trio.testing import MockClock

from memable_log import Context, Engine, ManualClock, operations

OUT = Path(__file__).parent / "journal-v1"


async def done(ctx: Context) -> int:
    a = await ctx.step("a").run(lambda: 40)
    b = await ctx.step("b").run(lambda: 2)
    return int(a + b)


async def approval(ctx: Context) -> str:
    await ctx.step("draft").run(lambda: "text")
    answer = await ctx.suspend("approve", status="check it", timeout=2 * 86400)
    return str(answer)


async def nap(ctx: Context) -> str:
    await ctx.step("before").run(lambda: 1)
    await ctx.timer("nap", 86400)
    return "rested"


async def early(ctx: Context) -> str:
    first = await ctx.suspend("go")
    second = await ctx.suspend("later")
    return f"{first}-{second}"


async def pair(ctx: Context) -> str:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.timer, "t1", 3 * 86400)
        nursery.start_soon(ctx.timer, "t2", 86400)
    return "both"


async def gone(ctx: Context) -> None:
    await ctx.timer("wait", 86400)


def build(clock: ManualClock) -> Engine:
    engine = Engine.builder().open(OUT).clock(clock).segment_size(4096).compaction(False).build()
    for name, fn in [("done", done), ("approval", approval), ("nap", nap),
                     ("early", early), ("pair", pair), ("gone", gone)]:
        engine.register(name, fn)
    return engine


async def parked(engine: Engine, ids: list[str]) -> None:
    # A generator script, not a test: spin until the suspensions are durable.
    while {engine.status(i).state for i in ids} - {"suspended", "sleeping"}:
        await trio.lowlevel.checkpoint()


async def main() -> None:
    clock = ManualClock(1_700_000_000.0)
    async with build(clock) as engine:
        for name in ["approval", "nap"]:
            await engine.invoke(name, instance_id=name)
        await parked(engine, ["approval", "nap"])
    operations.compact(OUT)
    async with build(clock) as engine:
        for name in ["done", "early", "pair", "gone"]:
            await engine.invoke(name, instance_id=name)
        await engine.signal("early", "early", "later", "L")
        await engine.wait("done")
        await parked(engine, ["early", "pair", "gone"])
        await engine.cancel("gone")
        for iid in ["done", "approval", "nap", "early", "pair", "gone"]:
            print(iid, engine.status(iid), file=sys.stderr)


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    trio.run(main, clock=MockClock())
