"""`memable invoke --wait` from another process with an engine running.

Run from the repository root::

    .venv/bin/python bench/bench_cli.py            # 30 runs of each
    .venv/bin/python bench/bench_cli.py --runs 5   # a smoke check
    .venv/bin/python bench/bench_cli.py --baseline HEAD~3   # side by side with a commit

An engine process holds a journal (on /dev/shm when there is one, else a
temp directory) with the workflow ``echo`` registered (it runs one step and
returns its input). This driver then runs, one after the other and
interleaved, N times each:

* ``python -c pass``: the interpreter's start alone;
* ``python -c "from memable_log import operations"``: the start and the
  import of what ``memable invoke`` loads of the library (its package
  loads the rest on first use);
* ``memable invoke PATH echo N --wait``: the whole path to the result
  (start, imports, reading the journal's index to check, the hand-over
  written and fsynced, the engine's inbox watcher picking it up, the
  instance run, the follower seeing ``completed``, the result printed).

* ``memable --help``: the command's own start-up (argparse only).

It prints each one's median and p90 in milliseconds, and the command's
median minus the import's: what the command itself costs. Target
(issue 15): the command's median <= 100 ms, start-up included.

With ``--baseline REV`` the two ``memable`` rows are also run, interleaved,
with the library and tools of git revision REV (extracted to a temp
directory and put first on ``sys.path``), and the ratios printed: on a
machine other work loads, only such side-by-side ratios mean anything.
Both trees' commands start the same way (``python -c`` importing the
tools' ``main``, as the installed script does); the engine is this tree's.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = ("import sys; sys.path.insert(0, {pkgs!r}); "
          "from memable_log_tools.memable import main; sys.exit(main())")

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
IMPORT = "from memable_log import operations"

# As a user's installed package runs: with its bytecode cached. A shell that
# sets PYTHONDONTWRITEBYTECODE (this project's machines do) would otherwise
# compile every module from source on every run, ~2x the import's time.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], expect: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=ENV)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or (expect is not None and done.stdout.strip() != expect):
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed


def tree(root: str, name: str, rev: str | None) -> list[str]:
    """A ``python -c`` command running ``memable`` from this tree (None) or
    from git revision ``rev``, both as packages on sys.path under ``root``."""
    pkgs = os.path.join(root, name)
    os.makedirs(pkgs)
    source = HERE
    if rev is not None:
        source = os.path.join(root, name + "-src")
        archive = subprocess.run(["git", "-C", HERE, "archive", rev, "memable_log", "tools"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(source, filter="data")
    os.symlink(os.path.join(source, "memable_log"), os.path.join(pkgs, "memable_log"))
    os.symlink(os.path.join(source, "tools"), os.path.join(pkgs, "memable_log_tools"))
    return [sys.executable, "-c", LAUNCH.format(pkgs=pkgs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--baseline", metavar="REV", help="also run REV's command, interleaved")
    args = parser.parse_args()
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    root = tempfile.mkdtemp(prefix="memable-bench-cli-", dir=base)
    path = os.path.join(root, "journal")
    trees = {"": tree(root, "this", None)}
    if args.baseline is not None:
        trees[f" ({args.baseline})"] = tree(root, "baseline", args.baseline)
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, path], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert engine.stdout is not None
        if engine.stdout.readline().strip() != "ready":
            raise SystemExit("the engine process did not start")
        samples: dict[str, list[float]] = {"python -c pass": [], IMPORT: []}
        for memable in trees.values():  # once, unmeasured: writes the bytecode caches
            timed([*memable, "invoke", path, "echo", "-1", "--wait"], expect="-1")
        for n in range(args.runs):
            samples["python -c pass"].append(timed([sys.executable, "-c", "pass"]))
            samples[IMPORT].append(timed([sys.executable, "-c", IMPORT]))
            for tag, memable in trees.items():
                samples.setdefault(f"memable --help{tag}", []).append(
                    timed([*memable, "--help"]))
                samples.setdefault(f"memable invoke --wait{tag}", []).append(timed(
                    [*memable, "invoke", path, "echo", str(n), "--wait"], expect=str(n)))
    finally:
        engine.terminate()
        engine.wait()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.runs} runs each; journal on {base or tempfile.gettempdir()}; "
          f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'':36} {'median ms':>10} {'p90 ms':>8}")
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        print(f"{name:36} {statistics.median(values):>10.1f} {p90:>8.1f}")
    for tag in list(trees)[1:]:
        for row in ("memable --help", "memable invoke --wait"):
            ratio = statistics.median(samples[row]) / statistics.median(samples[row + tag])
            print(f"{row}: this tree / baseline = {ratio:.2f}")
    command = statistics.median(samples["memable invoke --wait"])
    imports = statistics.median(samples[IMPORT])
    start = statistics.median(samples["python -c pass"])
    print(f"start-up (python -c pass): {start:.1f} ms; the library's import adds "
          f"{imports - start:.1f} ms; the command beyond the import: {command - imports:.1f} ms")
    print(f"target <= {TARGET_MS:.0f} ms: {'met' if command <= TARGET_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
