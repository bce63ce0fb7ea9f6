"""The quick look from the SPEC, made to crash and come back.

Run it: ``python examples/quickstart.py``. It runs a three-step pipeline in
a child process that is killed (SIGKILL) in the middle of the last step,
then runs it again in this process: the finished steps come back from the
journal without running, only the interrupted one runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import trio

from memable_log import Context, Engine

CRASH = "--crash-in-load"


async def fetch_from_api() -> list[dict[str, object]]:
    print("  extract:v1    ran: fetched 3 records from the (pretend) API")
    await trio.lowlevel.checkpoint()  # a real client would await the network here
    return [{"id": 1, "name": " Ada "}, {"id": 2, "name": "Grace"}, {"id": 3, "name": "Linus "}]


def normalise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    print("  transform:v1  ran: trimmed names")
    return [{**row, "name": str(row["name"]).strip()} for row in rows]


def load(rows: list[dict[str, object]]) -> int:
    if CRASH in sys.argv:
        print("  load:v1       started... and the process is killed (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    print(f"  load:v1       ran: loaded {len(rows)} rows")
    return len(rows)


async def sync_pipeline(ctx: Context) -> int:
    data = await ctx.step("extract:v1").run(fetch_from_api)
    cleaned = await ctx.step("transform:v1").run(normalise, data)
    await ctx.step("load:v1").retry(max_attempts=5).run(load, cleaned)
    return len(cleaned)


async def run(path: str) -> None:
    engine = Engine.builder().open(path).build()
    engine.register("sync-pipeline", sync_pipeline)
    async with engine:  # recovery: an interrupted instance resumes here
        instance_id = await engine.invoke("sync-pipeline", instance_id="demo")
        result = await engine.wait(instance_id)
        status = engine.status(instance_id)
        print(f"  -> instance {instance_id!r} {status.state}: result {result}, "
              f"{status.steps} steps in the journal")


def main() -> None:
    if CRASH in sys.argv:
        trio.run(run, sys.argv[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "workflows.memable")
        print("Run 1 (a child process, killed during the last step):")
        child = subprocess.run([sys.executable, __file__, path, CRASH], check=False)
        print(f"  (child exited with {child.returncode})")
        print("Run 2 (this process, same journal):")
        trio.run(run, path)
        print("extract and transform did not run again: their results came from the journal.")


if __name__ == "__main__":
    main()
