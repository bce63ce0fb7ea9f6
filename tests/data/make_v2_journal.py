"""Writes tests/data/journal-v2/: a journal in format version 2.

Run once, with the library as it was at format version 2 (commit 6b507a5),
to make the fixture that later versions open (tests/journal/test_format_v2.py).
Kept for the record; running it with a later version makes a journal of
that version instead.

What it holds (wall clock: ManualClock at 1_700_000_000 s):

* ``done``: completed, steps ``a`` (40) and ``b`` (2, after one failed
  attempt), result 42;
* ``broke``: failed; its step ``bad`` failed for good (ValueError "no")
  after two attempts;
* ``mixed``: step ``draft`` done, then waiting on the suspension
  ``approve`` (status "check it", timeout 2 days) beside the timer
  ``remind`` (1 day): state ``waiting``;
* ``marked``: an at-most-once step ``once`` done, then suspended on ``go``;
* the first of two segments compacted, so ``cmp-`` holds the state image of
  ``mixed`` and plain segments hold the rest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import trio
from trio.testing import MockClock

from memable_log import Context, Engine, ManualClock, operations

OUT = Path(__file__).parent / "journal-v2"
_tries: dict[str, int] = {}


def flaky(name: str, value: int) -> int:
    _tries[name] = _tries.get(name, 0) + 1
    if _tries[name] == 1:
        raise ConnectionError(f"{name}: first try")
    return value


def bad() -> int:
    raise ValueError("no")


async def done(ctx: Context) -> int:
    a = await ctx.step("a").run(lambda: 40)
    b = await ctx.step("b").retry(max_attempts=3, initial_delay=1).run(flaky, "b", 2)
    return int(a + b)


async def broke(ctx: Context) -> int:
    return int(await ctx.step("bad").retry(max_attempts=2, initial_delay=1).run(bad))


async def mixed(ctx: Context) -> str:
    await ctx.step("draft").run(lambda: "text")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.timer, "remind", 86400)
        answer = await ctx.suspend("approve", status="check it", timeout=2 * 86400)
        nursery.cancel_scope.cancel()
    return str(answer)


async def marked(ctx: Context) -> str:
    await ctx.step("once").at_most_once().run(lambda: 7)
    return str(await ctx.suspend("go"))


def build(clock: ManualClock) -> Engine:
    engine = Engine.builder().open(OUT).clock(clock).segment_size(4096).compaction(False).build()
    for name, fn in [("done", done), ("broke", broke), ("mixed", mixed), ("marked", marked)]:
        engine.register(name, fn)
    return engine


async def parked(engine: Engine, ids: list[str]) -> None:
    # A generator script, not a test: spin until the waits are durable.
    while {engine.status(i).state for i in ids} - {"suspended", "sleeping", "waiting"}:
        await trio.lowlevel.checkpoint()


async def main() -> None:
    clock = ManualClock(1_700_000_000.0)
    async with build(clock) as engine:
        await engine.invoke("mixed", instance_id="mixed")
        await parked(engine, ["mixed"])
    operations.compact(OUT)
    async with build(clock) as engine:
        for name in ["done", "broke", "marked"]:
            await engine.invoke(name, instance_id=name)
        await engine.wait("done")
        try:
            await engine.wait("broke")
        except Exception as exc:
            print("broke:", exc, file=sys.stderr)
        await parked(engine, ["marked"])
        for iid in ["done", "broke", "mixed", "marked"]:
            print(iid, engine.status(iid), file=sys.stderr)


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    trio.run(main, clock=MockClock(rate=1000))  # retries wait 1 ms, days never pass
