"""An engine process for the takeover tests (test_pg_shared.py): it runs
instance "job" of workflow ``job`` and stalls inside its step "s3". Each
step body appends its key to the ledger file first (what executed,
whatever the journal says). Usage: pg_worker.py DSN LEDGER LEASE [MODE]

* ``kill`` (the default): s3 never ends; the test kills the process.
* ``stop``: s3 blocks the whole process (no trio task runs) until the file
  LEDGER.go exists; the test SIGSTOPs it meanwhile, lets another engine
  take "job" over and finish it, then SIGCONTs it. The process sees "job"
  finished by the other engine, waits until it has rejoined (its lease was
  lost while it was stopped), runs a new instance "after" to show it writes
  again, then prints one JSON line (what became of its write, of "job" and
  of "after") and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import trio

from memable_log import Context, Engine
from memable_log._engine.engine import host_of

STEPS = 6
STALL = "s3"  # the body that stalls in the first engine


def note(ledger: str, key: str) -> None:
    with open(ledger, "a") as out:
        out.write(f"{key}\n")
        out.flush()
        os.fsync(out.fileno())


def job(ledger: str, stall: bool, mode: str = "kill") -> Any:
    async def flow(ctx: Context) -> Any:
        total = 0
        for i in range(STEPS):
            key = f"s{i}"

            async def body(key: str = key, i: int = i) -> int:
                note(ledger, key)
                if stall and key == STALL:
                    if mode == "kill":
                        await trio.sleep_forever()
                    while not os.path.exists(ledger + ".go"):  # noqa: ASYNC240 (blocks, meant)
                        time.sleep(0.01)  # noqa: ASYNC251
                return i

            try:
                total += await ctx.step(key).run(body)
            except BaseException as exc:  # refused: JournalFailed, or cancelled by it
                note(ledger, f"refused:{key}:{type(exc).__name__}")
                raise
        return total

    return flow


async def after(ctx: Context) -> Any:
    return await ctx.step("one").run(lambda: "written after the rejoin")


async def main(dsn: str, ledger: str, lease: float, mode: str) -> None:
    engine = Engine.builder().postgres(dsn, worker="victim", lease=lease).build()
    engine.register("job", job(ledger, stall=True, mode=mode))
    engine.register("after", after)
    async with engine:
        await engine.invoke("job", instance_id="job")
        if mode == "kill":
            await trio.sleep_forever()
        host = host_of(engine)
        with trio.fail_after(20):  # until the other engine's outcome is tailed here
            while engine.status("job").state != "completed" or "job" in host.running:
                await host.changed("job").wait()
        backend: Any = host.backend
        lost = backend.rejoins or backend.out  # the lease lost while stopped
        with trio.fail_after(20):
            await backend.until_rejoined()
        await engine.invoke("after", instance_id="after")
        print(json.dumps({
            "state": engine.status("job").state,
            "running": "job" in host.running,
            "lost": bool(lost),
            "rejoins": backend.rejoins,
            "after": await engine.wait("after"),
        }), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]),
             sys.argv[4] if len(sys.argv) > 4 else "kill")
