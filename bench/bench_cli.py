"""`memable invoke --wait` from another process with an engine running.

Run from the repository root::

    .venv/bin/python bench/bench_cli.py            # 30 runs of each
    .venv/bin/python bench/bench_cli.py --runs 5   # a smoke check

An engine process holds a journal (on /dev/shm when there is one, else a
temp directory) with the workflow ``echo`` registered (it runs one step and
returns its input). This driver then runs, one after the other and
interleaved, N times each:

* ``python -c pass``: the interpreter's start alone;
* ``python -c "import memable_log"``: the start and the library's import;
* ``memable invoke PATH echo N --wait``: the whole path to the result
  (start, imports, reading the journal's index to check, the hand-over
  written and fsynced, the engine's inbox watcher picking it up, the
  instance run, the follower seeing ``completed``, the result printed).

It prints each one's median and p90 in milliseconds, and the command's
median minus the import's: what the command itself costs. Target
(issue 15): the command's median <= 100 ms, start-up included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ENGINE = r"""
import sys, trio
from memable_log import Engine

async def echo(ctx):
    return await ctx.step("echo").run(lambda: ctx.input)

async def main(path):
    engine = Engine.builder().open(path).build()
    engine.register("echo", echo)
    async with engine:
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""

TARGET_MS = 100.0


def timed(argv: list[str], expect: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or (expect is not None and done.stdout.strip() != expect):
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    memable = shutil.which("memable", path=os.path.dirname(sys.executable))
    if memable is None:
        raise SystemExit("the memable command is not installed next to this python")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="memable-bench-cli-", dir=base)
    path = os.path.join(root, "journal")
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, path], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert engine.stdout is not None
        if engine.stdout.readline().strip() != "ready":
            raise SystemExit("the engine process did not start")
        samples: dict[str, list[float]] = {"python -c pass": [], "import memable_log": [],
                                           "memable invoke --wait": []}
        for n in range(args.runs):
            samples["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
            samples["import memable_log"].append(
                timed([sys.executable, "-c", "import memable_log"]))
            samples["memable invoke --wait"].append(
                timed([memable, "invoke", path, "echo", str(n), "--wait"], expect=str(n)))
    finally:
        engine.terminate()
        engine.wait()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.runs} runs each; journal on {base or tempfile.gettempdir()}; "
          f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'':24} {'median ms':>10} {'p90 ms':>8}")
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        print(f"{name:24} {statistics.median(values):>10.1f} {p90:>8.1f}")
    command = statistics.median(samples["memable invoke --wait"])
    imports = statistics.median(samples["import memable_log"])
    start = statistics.median(samples["python -c pass"])
    print(f"start-up (python -c pass): {start:.1f} ms; the library's import adds "
          f"{imports - start:.1f} ms; the command beyond the import: {command - imports:.1f} ms")
    print(f"target <= {TARGET_MS:.0f} ms: {'met' if command <= TARGET_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
