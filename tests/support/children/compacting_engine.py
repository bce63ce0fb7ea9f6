"""Child process for test_child_dies_with_engine: an engine whose compaction child is busy.

Usage: compacting_engine.py JOURNAL_DIR FIFO

Opens an engine on the journal directory (4 KiB segments, background
compaction on) and runs instances one after another, printing ``done ID``
once each has finished, until a roll-over starts a compaction. The
compaction child is the real one (``memable_log._compaction.child``) with
one change: where it would write the compacted file it writes its pid to
FIFO and then computes without end in a single C call, which never lets go
of the GIL (as a long zstd or msgpack call in a real compaction holds it).
The test kills this process with SIGKILL while the child is in that call.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from memable_log import Context, Engine

SEGMENT_SIZE = 4096

BUSY_CHILD = """
import os, sys
from memable_log._compaction import child, compactor

def busy(*args, **kwargs):
    fd = os.open(sys.argv[1], os.O_WRONLY)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)
    sum(range(1 << 62))  # one C call: no Python code runs again

compactor.write_compacted = busy
sys.exit(child.main())
"""


def value(i: int) -> bytes:
    return bytes([i % 251]) * 1024


async def work(ctx: Context) -> bytes:
    return await ctx.step("blob").run(lambda: value(int(ctx.input)))


async def main(journal: str, fifo: str) -> None:
    run_process = trio.run_process

    async def busy_child(command: list[str], **kwargs: Any) -> Any:
        assert command[1:] == ["-m", "memable_log._compaction.child"], command
        return await run_process([command[0], "-c", BUSY_CHILD, fifo], **kwargs)

    trio.run_process = busy_child  # type: ignore[assignment]
    engine = Engine.builder().open(journal).segment_size(SEGMENT_SIZE).build()
    engine.register("work", work)
    async with engine:
        for i in range(10_000):  # the test kills us long before the end
            await engine.wait(await engine.invoke("work", i, instance_id=f"i{i}"))
            print(f"done i{i}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
