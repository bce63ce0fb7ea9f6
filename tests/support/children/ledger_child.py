"""A child process for the crash tests: an engine on a journal directory.

Usage: ledger_child.py JOURNAL LEDGER [--block-at N] [--at-most-once N]
                       [--forget KEY] [--restart]

Runs (or resumes) instance "order-1" of a five-step workflow. Step ``i``
first appends ``step-i`` to LEDGER and fsyncs it (the external side effect
the parent audits), then returns ``i * 10``. With ``--block-at N`` step N,
after its ledger line, prints ``inside step-N`` on stdout and blocks
forever: the parent kills the process there. ``--at-most-once N`` makes
step N at-most-once. ``--forget KEY`` and ``--restart`` call
``engine.forget`` / ``engine.restart`` on the instance before invoking it.

On completion it prints one JSON line: {"result": ...} or, if the workflow
failed, {"failed": error type, "message": ...}.
"""

from __future__ import annotations

import argparse
import json
import os

import trio

from memable_log import Context, Engine, WorkflowFailed

STEPS = 5
INSTANCE = "order-1"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("ledger")
    parser.add_argument("--block-at", type=int, default=None)
    parser.add_argument("--at-most-once", type=int, default=None)
    parser.add_argument("--forget", default=None)
    parser.add_argument("--restart", action="store_true")
    args = parser.parse_args()
    trio.run(run, args)


def append_ledger(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def run(args: argparse.Namespace) -> None:
    def body(i: int) -> object:
        async def step() -> int:
            append_ledger(args.ledger, f"step-{i}")
            if i == args.block_at:
                print(f"inside step-{i}", flush=True)
                await trio.sleep_forever()
            return i * 10

        return step

    async def ledger(ctx: Context) -> list[int]:
        results = []
        for i in range(1, STEPS + 1):
            step = ctx.step(f"step-{i}")
            if i == args.at_most_once:
                step = step.at_most_once()
            results.append(await step.run(body(i)))
        return results

    engine = Engine.builder().open(args.journal).build()
    engine.register("ledger", ledger)
    async with engine:
        if args.forget is not None:
            await engine.forget(INSTANCE, args.forget)
        if args.restart:
            await engine.restart(INSTANCE)
        instance_id = await engine.invoke("ledger", instance_id=INSTANCE)
        try:
            outcome: dict[str, object] = {"result": await engine.wait(instance_id)}
        except WorkflowFailed as exc:
            outcome = {"failed": exc.error_type, "message": exc.message}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
