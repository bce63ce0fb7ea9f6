"""Engine benchmark: memable_log against DBOS on SQLite and a hand-written sqlite3 journal.

Run from the repository root::

    .venv/bin/python bench/bench_engine.py            # full run, a few minutes
    .venv/bin/python bench/bench_engine.py --quick    # small sizes, a smoke check
    .venv/bin/python bench/bench_engine.py --json bench/results/engine.json
    .venv/bin/python bench/bench_engine.py --profile  # + cProfile of memable_log (a), (c)
    .venv/bin/python bench/bench_engine.py --only-a --skip-dbos --vs-tree /tmp/main
        # (a) rows only, with another tree's memable_log (PYTHONPATH) side by side

Scenarios, each run by all three systems:

(a) one workflow of 1,000 steps, start to result: steps/s. Steps return
    realistic values (bench/peers/values.py: dicts like API payloads, 100 B
    to 4 KB of msgpack) in (a)-(d); the older small-int steps are kept as a
    row of their own, and so is the disk's raw rate for one writer with
    records of the same sizes (append + fsync; overwrite + fdatasync of
    preallocated, synced space), measured in the same rounds;
(b) 100 workflows of 20 steps started at once, until all are done: steps/s;
(c) a workflow whose 1,000 steps are all recorded is interrupted after the
    last one (memable_log: the engine block exits while it waits on an
    event; DBOS and sqlite3: the process calls ``os._exit``); a new process
    recovers it. Cached steps/s is 1,000 over the workflow body's run (its
    first line to its return); launch -> result is reported too;
(d) the same with 10 steps of which 9 are recorded: launch (entering
    ``async with engine:``, ``DBOS.launch()``, opening the database) to
    the recovered result, in ms;
(e) with 10,000 completed instances of 10 steps on disk: the time to start
    (enter ``async with engine:`` / ``DBOS.launch()`` / open the database
    and find unfinished work) and the resident memory, in a fresh process.

Every measurement runs in a fresh process (DBOS has global state and
threads; all three are treated alike), in interleaved rounds so each ratio
compares numbers taken seconds apart on the same disk; medians over the
rounds are quoted, ratios are medians of per-round ratios. Journals live
under ``--data-dir`` (default bench/.data/, on the disk being measured).
If ``import dbos`` fails, DBOS is reported as unavailable and the rest runs.
See docs/performance.md for results and analysis.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _util import (
    Stat,
    bench_parser,
    fmt_range,
    machine_line,
    open_data_dir,
    print_banner,
    progress,
    ratios_if_paired,
    scratch_dir,
    table,
    warn_if_in_memory,
    write_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS)
from values import KINDS, weight  # noqa: E402

STARTUP_DATA_VERSION = 1  # bump when the generated start-up data changes

SYSTEMS = ["memable_log", "sqlite3", "DBOS"]
BASE = "memable_log@base"  # another tree's memable_log (--vs-tree), (a) rows only
ENVS: dict[str, dict[str, str]] = {}  # per system, extra environment for its child
SCRIPTS = {
    "memable_log": [os.path.abspath(__file__), "--child"],
    "sqlite3": [os.path.join(PEERS, "sqlite_peer.py")],
    "DBOS": [os.path.join(PEERS, "dbos_peer.py")],
    BASE: [os.path.abspath(__file__), "--child"],
}

TARGET_A_VS_SQLITE = 1.0
TARGET_B_VS_DBOS = 75.0
TARGET_C_VS_DBOS = 100.0
TARGET_D_MS = 50.0


@dataclass(frozen=True)
class Sizes:
    runs: int
    a_steps: int
    b_workflows: int
    b_steps: int
    c_steps: int
    d_steps: int
    d_cached: int
    e_instances: int
    e_steps: int
    e_runs: int


FULL = Sizes(runs=5, a_steps=1000, b_workflows=100, b_steps=20, c_steps=1000,
             d_steps=10, d_cached=9, e_instances=10_000, e_steps=10, e_runs=5)
QUICK = Sizes(runs=1, a_steps=20, b_workflows=5, b_steps=4, c_steps=20,
              d_steps=10, d_cached=9, e_instances=20, e_steps=10, e_runs=1)


# == the memable_log side: runs in a child process (``--child SCENARIO``) ===========

INSTANCE_ID = "bench-recover-1"
_IMPORT_S = 0.0
_crash_after = 0  # prepare: block after this many steps
_body_entered = _body_done = 0.0


def _import_engine() -> Any:
    """Import trio and memable_log, timing it (the cost a program pays to start)."""
    global _IMPORT_S
    t = time.perf_counter()
    import trio

    import memable_log

    memable_log.Engine  # noqa: B018 (the engine's names load on first use)
    _IMPORT_S = time.perf_counter() - t
    return trio


_value: Callable[[int], Any] = lambda i: i * 2  # noqa: E731 (set by --values)


def work(i: int) -> Any:
    """A step returning the run's kind of value (the same in every system)."""
    return _value(i)


async def steps_workflow(ctx: Any) -> int:
    import trio

    global _body_entered, _body_done
    _body_entered = time.perf_counter()
    total = 0
    for i in range(ctx.input):
        total += weight(await ctx.step(f"step-{i}").run(work, i))
        if _crash_after and i + 1 == _crash_after:
            _reached.set()
            await trio.Event().wait()  # forever: interrupted when the engine block exits
    _body_done = time.perf_counter()
    return total


_reached: Any = None


def _engine(path: str) -> Any:
    from memable_log import Engine

    engine = Engine.builder().open(path).build()
    engine.register("steps", steps_workflow)
    return engine


async def child_steps(path: str, steps: int) -> dict[str, Any]:
    async with _engine(path) as engine:
        t = time.perf_counter()
        iid = await engine.invoke("steps", steps)
        await engine.wait(iid)
        elapsed = time.perf_counter() - t
    return {"elapsed": elapsed, "steps": steps}


async def child_concurrent(path: str, workflows: int, steps: int) -> dict[str, Any]:
    import trio

    async with _engine(path) as engine:

        async def one() -> None:
            await engine.wait(await engine.invoke("steps", steps))

        t, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(workflows):
                nursery.start_soon(one)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    # cpu: the process's (the commit thread's too), for CPU per step
    return {"elapsed": elapsed, "steps": workflows * steps, "cpu": cpu}


async def child_prepare(path: str, steps: int, crash_after: int) -> dict[str, Any]:
    import trio

    global _crash_after, _reached
    _crash_after, _reached = crash_after, trio.Event()
    async with _engine(path) as engine:
        await engine.invoke("steps", steps, instance_id=INSTANCE_ID)
        await _reached.wait()
    # Leaving the block cancelled the runner mid-workflow: the journal
    # shows the instance running, with crash_after steps recorded.
    return {"prepared": crash_after}


async def child_recover(path: str, steps: int) -> dict[str, Any]:
    engine = _engine(path)
    t0 = time.perf_counter()
    async with engine:  # resumes the interrupted instance
        launch = time.perf_counter() - t0
        result = await engine.wait(INSTANCE_ID)
        t1 = time.perf_counter()
    assert result == sum(i * 2 for i in range(steps)), result
    return {"total": t1 - t0, "launch": launch, "replay": _body_done - _body_entered,
            "steps": steps}


async def child_startup_build(path: str, instances: int, steps: int) -> dict[str, Any]:
    import trio

    t = time.perf_counter()
    async with _engine(path) as engine:

        async def one(i: int) -> None:
            await engine.wait(await engine.invoke("steps", steps, instance_id=f"wf-{i:06d}"))

        async with trio.open_nursery() as nursery:
            for i in range(instances):
                nursery.start_soon(one, i)
    return {"elapsed": time.perf_counter() - t, "instances": instances, "steps": steps}


async def child_startup_measure(path: str) -> dict[str, Any]:
    from _util import rss_bytes

    engine = _engine(path)
    rss_before = rss_bytes()
    t = time.perf_counter()
    async with engine:
        start_s = time.perf_counter() - t
        rss_after = rss_bytes()
        completed = len(engine.instances("completed"))
    return {"import_s": _IMPORT_S, "start_s": start_s, "rss_before": rss_before,
            "rss_after": rss_after, "completed": completed}


async def child_breakdown(path: str, steps: int) -> dict[str, Any]:
    """Per-step costs behind (a), measured side by side in one process, in us.

    raw: write + fsync on this thread (what sqlite3 pays per commit, plus its
    own CPU); hop: the same write + fsync handed to a worker thread and back
    through trio's thread cache (``start_thread_soon``; the journal did so
    before it had a commit thread of its own), from an otherwise idle loop;
    noop_hop: a hand-off that does nothing; cpu: one engine step on
    in-memory storage (engine, codec, journal, index, the trio scheduling;
    no disk).
    """
    import trio

    from memable_log import Engine

    record = b"b" * 127 + b"\n"
    fd = os.open(os.path.join(path, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write_sync() -> None:
        os.write(fd, record)
        os.fsync(fd)

    async def hop(fn: Callable[[], None]) -> None:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: Any) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    try:
        write_sync()
        t = time.perf_counter()
        for _ in range(steps):
            write_sync()
        raw = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            await hop(write_sync)
        hopped = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            await hop(lambda: None)
        noop = time.perf_counter() - t
    finally:
        os.close(fd)
    engine = Engine.builder().in_memory().build()
    engine.register("steps", steps_workflow)
    async with engine:
        t = time.perf_counter()
        await engine.wait(await engine.invoke("steps", steps))
        cpu = time.perf_counter() - t
    us = 1e6 / steps
    return {"raw_us": raw * us, "hop_us": hopped * us, "noop_hop_us": noop * us,
            "cpu_us": cpu * us}


def child_raw(path: str, steps: int) -> dict[str, Any]:
    """The disk's raw rate for one writer, records/s, for records of the run's sizes.

    append: write + fsync to a file that grows (what an appending journal
    pays); overwrite: pwrite + fdatasync into space written with zeros and
    synced beforehand (a preallocated segment). Both in this process,
    alternately in blocks, so each sees the same disk.
    """
    import msgpack

    frames = [b"\0" * 8 + msgpack.packb(_value(i)) for i in range(steps)]
    total = sum(map(len, frames))
    block = max(1, steps // 4)

    def append(fd: int, part: list[bytes]) -> float:
        t = time.perf_counter()
        for frame in part:
            os.write(fd, frame)
            os.fsync(fd)
        return time.perf_counter() - t

    def overwrite(fd: int, part: list[bytes], at: int) -> float:
        t = time.perf_counter()
        for frame in part:
            os.pwrite(fd, frame, at)
            os.fdatasync(fd)
            at += len(frame)
        return time.perf_counter() - t

    flags = os.O_WRONLY | os.O_CREAT
    fa = os.open(os.path.join(path, "append.raw"), flags | os.O_APPEND, 0o600)
    fo = os.open(os.path.join(path, "overwrite.raw"), flags, 0o600)
    try:
        os.write(fo, bytes(total + 4096))
        os.fsync(fo)
        t_append = t_over = 0.0
        at = 0
        for first in range(0, steps, block):
            part = frames[first : first + block]
            t_append += append(fa, part)
            t_over += overwrite(fo, part, at)
            at += sum(map(len, part))
    finally:
        os.close(fa)
        os.close(fo)
    return {"append_rate": steps / t_append, "overwrite_rate": steps / t_over}


def _what_if_inline_commit() -> None:
    """Experiment only: run the journal's commits on the trio thread, not a worker.

    Quantifies the cost of the thread hand-off per commit (docs/performance.md).
    It blocks the event loop for each fsync, which the library does not do:
    the journal treats a storage that says it does not block (MemoryStorage)
    this way, so the directory is made to say so.
    """
    from memable_log._storage.files import FileStorage

    FileStorage.blocking = False  # type: ignore[misc]


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_engine.py --child")
    parser.add_argument("scenario", choices=[
        "steps", "concurrent", "prepare", "recover", "startup-build", "startup-measure",
        "breakdown", "raw",
    ])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--instances", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the top N functions of a cProfile to stderr")
    parser.add_argument("--what-if", choices=["inline-commit"])
    parser.add_argument("--values", choices=sorted(KINDS), default="small")
    args = parser.parse_args(argv)
    global _value
    _value = KINDS[args.values]
    trio = _import_engine()
    if args.what_if == "inline-commit":
        _what_if_inline_commit()
    s = args.scenario
    fn: Callable[[], Any]
    if s == "steps":
        fn = lambda: child_steps(args.dir, args.steps)  # noqa: E731
    elif s == "concurrent":
        fn = lambda: child_concurrent(args.dir, args.workflows, args.steps)  # noqa: E731
    elif s == "prepare":
        fn = lambda: child_prepare(args.dir, args.steps, args.crash_after)  # noqa: E731
    elif s == "recover":
        fn = lambda: child_recover(args.dir, args.steps)  # noqa: E731
    elif s == "startup-build":
        fn = lambda: child_startup_build(args.dir, args.instances, args.steps)  # noqa: E731
    elif s == "raw":
        fn = lambda: _async(child_raw(args.dir, args.steps))  # noqa: E731
    elif s == "breakdown":
        fn = lambda: child_breakdown(args.dir, args.steps)  # noqa: E731
    else:
        fn = lambda: child_startup_measure(args.dir)  # noqa: E731
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        result = profiler.runcall(trio.run, fn)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
    else:
        result = trio.run(fn)
    print(json.dumps(result), flush=True)
    return 0


async def _async(value: Any) -> Any:
    return value


# == the driver =======================================================================


class Unavailable(Exception):
    """A system that cannot run here (DBOS not installed)."""


def run_scenario(system: str, scenario: str, path: str, *extra: str,
                 stderr: Any = None) -> dict[str, Any]:
    """Run one scenario in a fresh process; its last stdout line is a JSON object."""
    argv = [sys.executable, *SCRIPTS[system], scenario, "--dir", path, *extra]
    if scenario != "breakdown" and not scenario.startswith("startup"):
        argv += ["--values", VALUES[0]]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, env=_env(system),
                          stderr=subprocess.PIPE if stderr is None else stderr,
                          text=True, check=False, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{system} {scenario} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{(proc.stderr or '')[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if "unavailable" in result:
        raise Unavailable(result["unavailable"])
    return result


VALUES = ["realistic"]  # the kind of step value of (a)-(d); set by the driver


def _env(system: str) -> dict[str, str] | None:
    extra = ENVS.get(system)
    return None if extra is None else {**os.environ, **extra}


def crash_and_recover(system: str, path: str, steps: int, cached: int) -> dict[str, Any]:
    """Lifetime 1 records ``cached`` steps and is interrupted; lifetime 2 recovers."""
    proc = subprocess.run(
        [sys.executable, *SCRIPTS[system], "prepare", "--dir", path, "--steps", str(steps),
         "--crash-after", str(cached), "--values", VALUES[0]], capture_output=True,
        text=True, check=False, timeout=600, env=_env(system))
    if proc.returncode != 0:
        if '"unavailable"' in proc.stdout:
            raise Unavailable(json.loads(proc.stdout.strip().splitlines()[-1])["unavailable"])
        raise RuntimeError(f"{system} prepare failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return run_scenario(system, "recover", path, "--steps", str(steps))


class Results:
    """Per-system, per-quantity series of repeated measurements."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Stat]] = {s: {} for s in SYSTEMS}
        self.unavailable: dict[str, str] = {}

    def add(self, system: str, quantity: str, value: float) -> None:
        self.stats[system].setdefault(quantity, Stat()).add(value)

    def get(self, system: str, quantity: str) -> Stat | None:
        if system in self.unavailable:
            return None
        return self.stats.get(system, {}).get(quantity)


def measure_rounds(sizes: Sizes, data_dir: str, res: Results,
                   progress: Callable[[str], None], what_if: bool, breakdown: bool,
                   only_a: bool = False) -> None:
    for rnd in range(sizes.runs):
        for system in SYSTEMS:
            if system in res.unavailable:
                continue
            progress(f"round {rnd + 1}/{sizes.runs}: {system}")
            try:
                with scratch_dir(data_dir, "eng-a-") as d:
                    out = run_scenario(system, "steps", d, "--steps", str(sizes.a_steps))
                    res.add(system, "a_rate", out["steps"] / out["elapsed"])
                with scratch_dir(data_dir, "eng-a-") as d:
                    VALUES.insert(0, "small")
                    try:
                        out = run_scenario(system, "steps", d, "--steps", str(sizes.a_steps))
                    finally:
                        VALUES.pop(0)
                    res.add(system, "a_rate_small", out["steps"] / out["elapsed"])
                if system == "memable_log":
                    with scratch_dir(data_dir, "eng-r-") as d:
                        out = run_scenario(system, "raw", d, "--steps", str(sizes.a_steps))
                        res.add(system, "raw_append", out["append_rate"])
                        res.add(system, "raw_overwrite", out["overwrite_rate"])
                if only_a or system == BASE:
                    continue
                if breakdown and system == "memable_log":
                    with scratch_dir(data_dir, "eng-k-") as d:
                        out = run_scenario(system, "breakdown", d, "--steps", str(sizes.a_steps))
                        for key in ("raw_us", "hop_us", "noop_hop_us", "cpu_us"):
                            res.add(system, f"k_{key}", out[key])
                if what_if and system == "memable_log":
                    with scratch_dir(data_dir, "eng-w-") as d:
                        out = run_scenario(system, "steps", d, "--steps", str(sizes.a_steps),
                                           "--what-if", "inline-commit")
                        res.add(system, "a_rate_inline", out["steps"] / out["elapsed"])
                with scratch_dir(data_dir, "eng-b-") as d:
                    out = run_scenario(system, "concurrent", d, "--workflows",
                                       str(sizes.b_workflows), "--steps", str(sizes.b_steps))
                    res.add(system, "b_rate", out["steps"] / out["elapsed"])
                with scratch_dir(data_dir, "eng-c-") as d:
                    out = crash_and_recover(system, d, sizes.c_steps, sizes.c_steps)
                    res.add(system, "c_rate", out["steps"] / out["replay"])
                    res.add(system, "c_total_s", out["total"])
                with scratch_dir(data_dir, "eng-d-") as d:
                    out = crash_and_recover(system, d, sizes.d_steps, sizes.d_cached)
                    res.add(system, "d_ms", out["total"] * 1000)
                    res.add(system, "d_launch_ms", out["launch"] * 1000)
            except Unavailable as exc:
                res.unavailable[system] = str(exc)
                progress(f"{system} unavailable: {exc}")


def startup_data(system: str, data_dir: str, sizes: Sizes,
                 progress: Callable[[str], None]) -> str:
    """The cached start-up data's directory for ``system``, built if missing or stale."""
    path = os.path.join(data_dir, f"engine-startup-{system}-{sizes.e_instances}x{sizes.e_steps}")
    marker = path + ".json"
    want: dict[str, Any] = {"version": STARTUP_DATA_VERSION, "system": system,
                            "instances": sizes.e_instances, "steps": sizes.e_steps}
    if system == "memable_log":
        from memable_log._core.format import FORMAT_VERSION

        want["format"] = FORMAT_VERSION
    elif system == "DBOS":
        from importlib.metadata import PackageNotFoundError, version

        try:
            want["dbos"] = version("dbos")
        except PackageNotFoundError:
            want["dbos"] = None
    try:
        with open(marker) as f:
            if json.load(f) == want:
                return path
    except (OSError, ValueError):
        pass
    progress(f"building start-up data for {system}: {sizes.e_instances:,} instances x "
             f"{sizes.e_steps} steps (cached in {path})")
    if os.path.exists(path):
        shutil.rmtree(path)
    out = run_scenario(system, "startup-build", path, "--instances", str(sizes.e_instances),
                       "--steps", str(sizes.e_steps))
    progress(f"  built in {out['elapsed']:.1f} s")
    with open(marker, "w") as f:
        json.dump(want, f)
    return path


def measure_startup(sizes: Sizes, data_dir: str, res: Results,
                    progress: Callable[[str], None]) -> None:
    paths: dict[str, str] = {}
    for system in SYSTEMS:
        if system in res.unavailable:
            continue
        try:
            paths[system] = startup_data(system, data_dir, sizes, progress)
        except Unavailable as exc:
            res.unavailable[system] = str(exc)
    for rnd in range(sizes.e_runs):
        progress(f"start-up round {rnd + 1}/{sizes.e_runs}")
        for system, path in paths.items():
            out = run_scenario(system, "startup-measure", path)
            res.add(system, "e_start_ms", out["start_s"] * 1000)
            res.add(system, "e_import_ms", out["import_s"] * 1000)
            res.add(system, "e_rss_mb", out["rss_after"] / 2**20)
            res.add(system, "e_rss_delta_mb", (out["rss_after"] - out["rss_before"]) / 2**20)
            if system == "memable_log":
                assert out["completed"] == sizes.e_instances, out


def profile(sizes: Sizes, data_dir: str) -> None:
    """cProfile of memable_log's (a) and (c) (lifetime 2), printed to stderr."""
    with scratch_dir(data_dir, "eng-p-") as d:
        print(f"\n--- cProfile: (a) {sizes.a_steps} steps ---", file=sys.stderr, flush=True)
        run_scenario("memable_log", "steps", d, "--steps", str(sizes.a_steps),
                     "--profile", "25", stderr=sys.stderr)
    with scratch_dir(data_dir, "eng-p-") as d:
        run_scenario("memable_log", "prepare", d, "--steps", str(sizes.c_steps),
                     "--crash-after", str(sizes.c_steps))
        print(f"\n--- cProfile: (c) replay of {sizes.c_steps} steps ---", file=sys.stderr,
              flush=True)
        run_scenario("memable_log", "recover", d, "--steps", str(sizes.c_steps),
                     "--profile", "25", stderr=sys.stderr)


# -- report ------------------------------------------------------------------------


def _fmt(stat: Stat | None, fmt: str) -> str:
    return "n/a" if stat is None or not stat.values else fmt.format(stat.median)


def _x(stat: Stat | None) -> str:
    return "n/a" if stat is None or not stat.values else f"{stat.median:,.2f}x"


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("ok" if passed else "MISSED")


def report(res: Results, sizes: Sizes, out: dict[str, Any]) -> str:
    m, q, d = "memable_log", "sqlite3", "DBOS"
    g = res.get
    # Speed-ups: > 1 means memable_log is better (rates: m/peer; times: peer/m).
    rows: list[list[str]] = []
    summary: dict[str, Any] = {}

    def row(label: str, key: str, fmt: str, higher_better: bool, target: str,
            passed: bool | None) -> None:
        mv, qv, dv = g(m, key), g(q, key), g(d, key)
        vs_q = ratios_if_paired(mv, qv) if higher_better else ratios_if_paired(qv, mv)
        vs_d = ratios_if_paired(mv, dv) if higher_better else ratios_if_paired(dv, mv)
        rows.append([label, _fmt(mv, fmt), _fmt(qv, fmt), _fmt(dv, fmt),
                     _x(vs_q), _x(vs_d), target, _verdict(passed) if target else ""])
        summary[key] = {
            "memable_log": mv.as_dict() if mv else None,
            "sqlite3": qv.as_dict() if qv else None,
            "DBOS": dv.as_dict() if dv else None,
            "speedup_vs_sqlite3": vs_q.as_dict() if vs_q else None,
            "speedup_vs_DBOS": vs_d.as_dict() if vs_d else None,
            "target": target, "verdict": _verdict(passed),
            "memable_log_range": fmt_range(mv, fmt) if mv else None,
        }

    def med(stat: Stat | None) -> float | None:
        return stat.median if stat is not None and stat.values else None

    a_q = med(ratios_if_paired(g(m, "a_rate"), g(q, "a_rate")))
    b_d = med(ratios_if_paired(g(m, "b_rate"), g(d, "b_rate")))
    c_d = med(ratios_if_paired(g(m, "c_rate"), g(d, "c_rate")))
    d_ms = med(g(m, "d_ms"))
    start_ok = rss_ok = None
    m_start, d_start = med(g(m, "e_start_ms")), med(g(d, "e_start_ms"))
    m_rss, d_rss = med(g(m, "e_rss_mb")), med(g(d, "e_rss_mb"))
    if m_start is not None and d_start is not None:
        start_ok = m_start <= d_start
    if m_rss is not None and d_rss is not None:
        rss_ok = m_rss < d_rss

    row(f"(a) 1 x {sizes.a_steps} steps, steps/s", "a_rate", "{:,.0f}", True,
        f">= {TARGET_A_VS_SQLITE:g}x sqlite3", None if a_q is None else a_q >= TARGET_A_VS_SQLITE)
    row(f"(b) {sizes.b_workflows} x {sizes.b_steps} steps at once, steps/s", "b_rate",
        "{:,.0f}", True, f">= {TARGET_B_VS_DBOS:g}x DBOS",
        None if b_d is None else b_d >= TARGET_B_VS_DBOS)
    row(f"(c) replay {sizes.c_steps} cached steps, steps/s", "c_rate", "{:,.0f}", True,
        f">= {TARGET_C_VS_DBOS:g}x DBOS", None if c_d is None else c_d >= TARGET_C_VS_DBOS)
    row("    launch -> recovered result, s", "c_total_s", "{:.3f}", False, "", None)
    row(f"(d) {sizes.d_steps} steps, {sizes.d_cached} cached: launch -> result, ms", "d_ms",
        "{:,.1f}", False, f"<= {TARGET_D_MS:g} ms", None if d_ms is None else d_ms <= TARGET_D_MS)
    row("    of which launch (enter / DBOS.launch / open), ms", "d_launch_ms", "{:,.1f}", False,
        "", None)
    row(f"(e) start with {sizes.e_instances:,} x {sizes.e_steps} steps done, ms", "e_start_ms",
        "{:,.1f}", False, "<= DBOS launch", start_ok)
    row("    resident memory after start (total), MB", "e_rss_mb", "{:,.1f}", False,
        "< DBOS", rss_ok)
    row("    resident memory added by the start, MB", "e_rss_delta_mb", "{:,.1f}", False, "",
        None)
    row("    import time (trio+memable_log / dbos / sqlite3), ms", "e_import_ms", "{:,.0f}",
        False, "", None)
    text = table(
        f"Engine scenarios (median of {sizes.runs} interleaved rounds, start-up of "
        f"{sizes.e_runs}; 'vs' columns are memable_log's speed-up, median of per-round ratios)",
        ["scenario", m, q, d, "vs sqlite3", "vs DBOS", "target", ""], rows,
    )
    inline = g(m, "a_rate_inline")
    if inline is not None:
        vs_lib = ratios_if_paired(inline, g(m, "a_rate"))
        vs_q = ratios_if_paired(inline, g(q, "a_rate"))
        text += "\n\n" + table(
            "What-if (an experiment, not the library): (a) with each commit run on the trio "
            "thread instead of a worker thread, same rounds",
            ["scenario", "steps/s", "min..max", "vs library", "vs sqlite3"],
            [[f"(a) 1 x {sizes.a_steps} steps, inline commit", _fmt(inline, "{:,.0f}"),
              fmt_range(inline), _x(vs_lib), _x(vs_q)]],
        )
        summary["what_if_inline_commit_a_rate"] = {
            "rate": inline.as_dict(), "vs_library": vs_lib.as_dict() if vs_lib else None,
            "vs_sqlite3": vs_q.as_dict() if vs_q else None}
    raw = g(m, "k_raw_us")
    if raw is not None:
        sql = g(q, "a_rate")
        lib = g(m, "a_rate")
        parts = [
            ("write + fsync of 128 B on the calling thread", g(m, "k_raw_us")),
            ("same, via trio's thread cache and back (for scale)", g(m, "k_hop_us")),
            ("  a hand-off that does nothing", g(m, "k_noop_hop_us")),
            ("one engine step, in-memory storage (CPU only)", g(m, "k_cpu_us")),
            ("memable_log (a), per step", Stat([1e6 / v for v in lib.values]) if lib else None),
            ("sqlite3 (a), per step", Stat([1e6 / v for v in sql.values]) if sql else None),
        ]
        text += "\n\n" + table(
            "Per-step budget behind (a), us (median of the rounds, measured in the same rounds)",
            ["cost", "us", "min..max"],
            [[label, _fmt(st, "{:,.0f}"), fmt_range(st) if st else ""] for label, st in parts],
        )
        summary["breakdown_us"] = {label: st.as_dict() if st else None for label, st in parts}
    text += "\n\n" + report_a(res, sizes, summary)
    for system, why in res.unavailable.items():
        text += f"\n\n{system}: unavailable ({why}); its columns show n/a."
    out["results"] = summary
    out["unavailable"] = res.unavailable
    return text


def report_a(res: Results, sizes: Sizes, summary: dict[str, Any]) -> str:
    """(a) side by side: realistic and small values, another tree, the raw disk."""
    m, q = "memable_log", "sqlite3"
    g = res.get
    over, append = g(m, "raw_overwrite"), g(m, "raw_append")
    rows = []

    def x_range(stat: Stat | None) -> str:
        return "n/a" if stat is None or not stat.values else (
            f"{stat.median:.2f}x ({stat.low:.2f}..{stat.high:.2f})")

    for label, key in ((f"(a) 1 x {sizes.a_steps} realistic values, steps/s", "a_rate"),
                       (f"(a) 1 x {sizes.a_steps} small ints, steps/s", "a_rate_small")):
        mv, bv, qv = g(m, key), g(BASE, key), g(q, key)
        vs_q, vs_b = ratios_if_paired(mv, qv), ratios_if_paired(mv, bv)
        base_q = ratios_if_paired(bv, qv)
        vs_raw = ratios_if_paired(mv, over) if key == "a_rate" else None
        rows.append([label, _fmt(mv, "{:,.0f}"), _fmt(bv, "{:,.0f}"), _fmt(qv, "{:,.0f}"),
                     x_range(vs_q), x_range(base_q), x_range(vs_b), x_range(vs_raw)])
        summary[f"side_by_side_{key}"] = {
            name: st.as_dict() if st else None for name, st in (
                ("memable_log", mv), ("base", bv), ("sqlite3", qv), ("vs_sqlite3", vs_q),
                ("base_vs_sqlite3", base_q), ("vs_base", vs_b), ("vs_raw_overwrite", vs_raw))}
    for label, st in (("raw append + fsync, records/s", append),
                      ("raw overwrite + fdatasync (preallocated), records/s", over)):
        rows.append([label, _fmt(st, "{:,.0f}"), "", "", "", "", "", ""])
    summary["raw_append"] = append.as_dict() if append else None
    summary["raw_overwrite"] = over.as_dict() if over else None
    return table(
        f"(a) side by side, one writer (median of {sizes.runs} interleaved rounds; ratios: "
        "median of per-round ratios (min..max))",
        ["scenario", m, BASE, q, "vs sqlite3", "base vs sqlite3", "vs base", "vs raw overwrite"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = bench_parser(
        __doc__, quick="small sizes: a smoke check", runs="rounds (default 5, quick 1)",
        data_dir="where journals and databases live (must be on the disk you "
        "mean to measure; default bench/.data)",
    )
    parser.add_argument("--skip-startup", action="store_true", help="scenarios (a)-(d) only")
    parser.add_argument("--only-startup", action="store_true", help="scenario (e) only")
    parser.add_argument("--what-if", action="store_true",
                        help="also run (a) with commits on the trio thread (an experiment)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure the per-step costs behind (a), each round")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile of memable_log's (a) and (c) to stderr")
    parser.add_argument("--only-a", action="store_true",
                        help="scenario (a) only: realistic and small values, the raw disk")
    parser.add_argument("--skip-dbos", action="store_true", help="leave DBOS out")
    parser.add_argument("--vs-tree", metavar="PATH",
                        help="also run (a) with the memable_log of another source tree "
                        "(PYTHONPATH=PATH), in the same rounds")
    args = parser.parse_args(argv)
    if args.skip_dbos:
        SYSTEMS.remove("DBOS")
    if args.vs_tree:
        SYSTEMS.insert(1, BASE)
        ENVS[BASE] = {"PYTHONPATH": os.path.abspath(args.vs_tree),
                      "PYTHONDONTWRITEBYTECODE": "1"}

    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs, "e_runs": args.runs})
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("engine", args.quick, data_dir, disk)
    before = machine_line(data_dir)
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus; before: {before}")
    warn_if_in_memory(disk)
    out: dict[str, Any] = {"quick": args.quick, "sizes": sizes.__dict__, "disk": disk.__dict__,
                           "machine_before": before}
    res = Results()
    t = time.perf_counter()
    if not args.only_startup:
        measure_rounds(sizes, data_dir, res, progress, args.what_if, args.breakdown,
                       args.only_a)
    if not args.skip_startup and not args.only_a:
        measure_startup(sizes, data_dir, res, progress)
    out["machine_after"] = after = machine_line(data_dir)
    out["seconds"] = time.perf_counter() - t
    print(f"  after: {after}")
    print()
    print(report(res, sizes, out))
    if args.profile:
        profile(sizes, data_dir)
    if args.json:
        write_json(args.json, out, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
