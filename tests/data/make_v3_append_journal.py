"""Writes tests/data/journal-v3-append/: a version 3 journal in the append layout.

Run once, with the library as it was before preallocated segments (commit
c590af7, whose writer appended to each segment and never left a zero
tail), to make the fixture that later versions open
(tests/journal/test_format_v3_append.py):

    PYTHONPATH=<a checkout of c590af7> python tests/data/make_v3_append_journal.py

What it holds (4 KiB segments, so several; no compaction):

* ``done-0`` .. ``done-5``: completed, each after steps ``s0`` .. ``s3``
  returning 1,000-byte strings (they fill segments: roll-overs);
* ``waits``: step ``first`` done, then suspended on ``go``;
* after the last segment's records, 11 bytes of a frame cut short, as a
  crash in the middle of a write leaves them in this layout: a torn tail
  at the end of the file, no zeros after it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from memable_log import Context, Engine

OUT = Path(__file__).parent / "journal-v3-append"


async def steps(ctx: Context) -> int:
    for i in range(4):
        await ctx.step(f"s{i}").run(lambda i=i: str(i) * 1000)
    return 4


async def waits(ctx: Context) -> str:
    await ctx.step("first").run(lambda: "one")
    return str(await ctx.suspend("go"))


async def main() -> None:
    engine = Engine.builder().open(OUT).segment_size(4096).compaction(False).build()
    engine.register("steps", steps)
    engine.register("waits", waits)
    async with engine:
        for n in range(6):
            await engine.wait(await engine.invoke("steps", instance_id=f"done-{n}"))
        await engine.invoke("waits", instance_id="waits")
        while engine.status("waits").state != "suspended":  # a script: spin  # noqa: ASYNC110
            await trio.sleep(0.01)


def tear() -> None:
    last = sorted(OUT.glob("seg-*.mlog"))[-1]
    with open(last, "ab") as f:
        f.write(bytes.fromhex("2a0000807b7b7b7b010203"))  # a frame's head, its payload lost


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    trio.run(main)
    tear()
    for extra in ("index.snap", "LOCK"):  # the fixture is the segments alone
        (OUT / extra).unlink(missing_ok=True)
