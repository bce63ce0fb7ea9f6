"""Two worker processes sharing one PostgreSQL journal; one is killed, the
other finishes its work.

Run it: ``python examples/two_workers.py postgresql://user@host/db`` (an
empty database you may create tables in; ``pip install
'memable-log[postgres]'``). It starts two workers, ``A`` and ``B``, each an
engine on the same database with a 2-second lease. Each invokes its three
orders, then the other's (found if the other made them first: one
instance per id), and waits for all six, wherever they run. When A's
orders are halfway through their steps, A is killed (SIGKILL): B takes A's
orders over once A's lease has run out, and finishes them. A step that had
finished in A comes back from the journal; the one A was in the middle of
runs again in B.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import trio

from memable_log import Context, Engine

ORDERS = {"A": ["order-1", "order-2", "order-3"], "B": ["order-4", "order-5", "order-6"]}
STEPS = ["reserve", "charge", "pack", "ship"]
LEASE = 2.0


def order(name: str) -> Any:
    async def flow(ctx: Context) -> Any:
        for step in STEPS:
            async def body(step: str = step) -> str:
                print(f"  worker {name}: {ctx.instance_id} {step} ran", flush=True)
                await trio.sleep(0.1)  # the work of the step
                return f"{step}ed"

            await ctx.step(step).run(body)
        return f"{ctx.instance_id} done by worker {name}"

    return flow


async def worker(dsn: str, name: str) -> None:
    engine = Engine.builder().postgres(dsn, worker=name, lease=LEASE).build()
    engine.register("order", order(name))
    every = [i for ids in ORDERS.values() for i in ids]
    async with engine:
        # its own orders first, then the other's: an id invoked twice is
        # one instance, run by the engine that created it
        for iid in ORDERS[name] + [i for i in every if i not in ORDERS[name]]:
            await engine.invoke("order", instance_id=iid)
        for iid in every:
            print(f"  worker {name}: {await engine.wait(iid)}", flush=True)
    print(f"worker {name}: all {sum(map(len, ORDERS.values()))} orders finished", flush=True)


def main(dsn: str) -> int:
    procs = {name: subprocess.Popen([sys.executable, __file__, dsn, name],
                                    stdout=subprocess.PIPE, text=True) for name in ORDERS}
    a = procs["A"]
    assert a.stdout is not None
    for line in a.stdout:  # until A is inside its orders' third step
        print(line, end="")
        if " pack ran" in line:
            break
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed = time.monotonic()
    print(f"worker A killed (SIGKILL); B takes its orders over after the {LEASE:g} s lease")
    b = procs["B"]
    out, _ = b.communicate(timeout=60)
    print(out, end="")
    print(f"B finished {time.monotonic() - killed:.1f} s after the kill")
    return b.returncode


if __name__ == "__main__":
    if len(sys.argv) == 3:
        trio.run(worker, sys.argv[1], sys.argv[2])
    elif len(sys.argv) == 2:
        sys.exit(main(sys.argv[1]))
    else:
        sys.exit("usage: python examples/two_workers.py postgresql://user@host/db")
