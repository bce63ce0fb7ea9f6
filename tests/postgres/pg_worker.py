"""An engine process for the takeover tests (test_pg_shared.py): it runs
instance "job" of workflow ``job`` and is killed with SIGKILL inside its
step "s3". Each step body appends its key to the ledger file first (what
executed, whatever the journal says). Usage: pg_worker.py DSN LEDGER LEASE
"""

from __future__ import annotations

import os
import sys
from typing import Any

import trio

from memable_log import Context, Engine

STEPS = 6
STALL = "s3"  # the body that never ends in the killed engine


def note(ledger: str, key: str) -> None:
    with open(ledger, "a") as out:
        out.write(f"{key}\n")
        out.flush()
        os.fsync(out.fileno())


def job(ledger: str, stall: bool) -> Any:
    async def flow(ctx: Context) -> Any:
        total = 0
        for i in range(STEPS):
            key = f"s{i}"

            async def body(key: str = key, i: int = i) -> int:
                note(ledger, key)
                if stall and key == STALL:
                    await trio.sleep_forever()
                return i

            total += await ctx.step(key).run(body)
        return total

    return flow


async def main(dsn: str, ledger: str, lease: float) -> None:
    engine = Engine.builder().postgres(dsn, worker="victim", lease=lease).build()
    engine.register("job", job(ledger, stall=True))
    async with engine:
        await engine.invoke("job", instance_id="job")
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
