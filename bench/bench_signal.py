"""Signal benchmark: from sending a signal to the woken instance's completion.

Run from the repository root::

    .venv/bin/python bench/bench_signal.py            # full run, about a minute
    .venv/bin/python bench/bench_signal.py --quick    # a smoke check
    .venv/bin/python bench/bench_signal.py --json bench/results/signal.json

Measured, each in its own process, in interleaved rounds:

* memable_log in process: ``await engine.signal(...)`` -> ``engine.wait``
  returns for an instance suspended in ``ctx.suspend`` (its runner gone,
  so the signal starts a new run that replays up to the suspension);
  also the time until ``signal`` itself returns (the signal is on disk);
* memable_log across processes: an engine process holds the journal and
  the instance; this driver runs ``memable-signal PATH WORKFLOW INSTANCE
  KEY JSON`` and the engine process notes when the instance completes
  (CLOCK_MONOTONIC is shared by all processes). The total includes
  starting the tool's Python interpreter, shown on its own as the time of
  ``memable-signal --help``;
* DBOS on SQLite: ``DBOS.send`` -> the receiving workflow's result (it
  waits in ``DBOS.recv``), with DBOS's default notification polling and
  with the polling interval set to 10 ms.

Quoted: the median of the per-round medians, and the p99 over all samples.
If ``import dbos`` fails, DBOS is reported as unavailable; if
``memable-signal`` is not installed, the cross-process row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from _util import (
    Stat,
    bench_parser,
    machine_line,
    open_data_dir,
    print_banner,
    progress,
    scratch_dir,
    table,
    write_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DBOS_PEER = os.path.join(HERE, "peers", "dbos_peer.py")
WORKFLOW = "waiter"
KEY = "go"
TARGET_INPROC_MS = 5.0


@dataclass(frozen=True)
class Sizes:
    runs: int
    inproc: int  # samples per round
    xproc: int
    dbos: int
    dbos_tuned: int


FULL = Sizes(runs=5, inproc=200, xproc=20, dbos=10, dbos_tuned=20)
QUICK = Sizes(runs=1, inproc=10, xproc=2, dbos=2, dbos_tuned=2)


# == the memable_log side: runs in a child process (``--child SCENARIO``) ===========


async def waiter(ctx: Any) -> Any:
    """Suspends until the signal ``go`` arrives; returns its payload."""
    return await ctx.suspend(KEY, status="waiting for the benchmark")


async def _suspended(engine: Any, instance_id: str) -> None:
    """Wait (unmeasured) until the instance is durably suspended and its runner gone."""
    import trio

    # Polling is fine here: this wait is not measured.
    while engine.status(instance_id).state != "suspended":  # noqa: ASYNC110
        await trio.sleep(0.001)


async def child_inproc(path: str, samples: int) -> dict[str, Any]:
    from memable_log import Engine

    engine = Engine.builder().open(path).build()
    engine.register(WORKFLOW, waiter)
    latencies: list[float] = []
    durable: list[float] = []
    async with engine:
        for i in range(samples):
            iid = await engine.invoke(WORKFLOW, instance_id=f"w-{i}")
            await _suspended(engine, iid)
            t0 = time.perf_counter()
            await engine.signal(WORKFLOW, iid, KEY, {"n": i})
            t1 = time.perf_counter()
            result = await engine.wait(iid)
            t2 = time.perf_counter()
            assert result == {"n": i}, result
            durable.append(t1 - t0)
            latencies.append(t2 - t0)
    return {"latencies": latencies, "durable": durable}


async def child_server(path: str, samples: int) -> dict[str, Any]:
    """Hold the journal; for each sample, announce a suspended instance, report its end."""
    from memable_log import Engine

    engine = Engine.builder().open(path).build()
    engine.register(WORKFLOW, waiter)
    async with engine:
        for i in range(samples):
            iid = await engine.invoke(WORKFLOW, instance_id=f"x-{i}")
            await _suspended(engine, iid)
            print(json.dumps({"ready": iid}), flush=True)
            result = await engine.wait(iid)
            print(json.dumps({"done": iid, "t": time.monotonic(), "result": result}), flush=True)
    return {"samples": samples}


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_signal.py --child")
    parser.add_argument("scenario", choices=["inproc", "server"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args(argv)
    import trio

    fn = child_inproc if args.scenario == "inproc" else child_server
    print(json.dumps(trio.run(fn, args.dir, args.samples)), flush=True)
    return 0


# == the driver =======================================================================


def _child(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[1:3]} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def signal_cli() -> list[str] | None:
    """The command that runs memable-signal, or None if it is not installed."""
    for candidate in (os.path.join(os.path.dirname(sys.executable), "memable-signal"),
                      shutil.which("memable-signal")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    return None


def memable_inproc(path: str, samples: int) -> dict[str, Any]:
    return _child([sys.executable, os.path.abspath(__file__), "--child", "inproc",
                   "--dir", path, "--samples", str(samples)])


def memable_xproc(cli: list[str], path: str, samples: int) -> dict[str, list[float]]:
    """Drive a server child with ``memable-signal``: latency from spawn to completion."""
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", "server", "--dir", path,
         "--samples", str(samples)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None
    latencies: list[float] = []
    tool: list[float] = []
    try:
        for i in range(samples):
            line = server.stdout.readline()
            if not line:
                break
            iid = json.loads(line)["ready"]
            t0 = time.monotonic()
            done = subprocess.run([*cli, path, WORKFLOW, iid, KEY, json.dumps({"n": i})],
                                  capture_output=True, text=True, check=False, timeout=120)
            t1 = time.monotonic()
            if done.returncode != 0:
                raise RuntimeError(f"memable-signal exited {done.returncode}: {done.stderr}")
            end = json.loads(server.stdout.readline())
            assert end["done"] == iid, end
            assert end["result"] == {"n": i}, end
            latencies.append(end["t"] - t0)
            tool.append(t1 - t0)
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if server.returncode != 0 or len(latencies) != samples:
        assert server.stderr is not None
        raise RuntimeError(f"signal server failed (exit {server.returncode}):\n"
                           f"{server.stderr.read()[-4000:]}")
    return {"latencies": latencies, "tool": tool}


def cli_startup(cli: list[str]) -> float:
    """Seconds to run ``memable-signal --help``: the interpreter and imports alone."""
    t = time.monotonic()
    subprocess.run([*cli, "--help"], capture_output=True, check=True, timeout=120)
    return time.monotonic() - t


def dbos_signal(path: str, samples: int, poll: float | None) -> dict[str, Any]:
    extra = [] if poll is None else ["--poll", str(poll)]
    return _child([sys.executable, DBOS_PEER, "signal", "--dir", path,
                   "--samples", str(samples), *extra])


class Series:
    """Latency samples of one path, kept per round."""

    def __init__(self) -> None:
        self.rounds: list[list[float]] = []

    def add(self, samples: list[float]) -> None:
        self.rounds.append([s * 1000 for s in samples])

    @property
    def medians(self) -> Stat:
        return Stat([_quantile(r, 0.5) for r in self.rounds if r])

    @property
    def pooled(self) -> list[float]:
        return [s for r in self.rounds for s in r]

    def as_dict(self) -> dict[str, Any]:
        pooled = self.pooled
        return {"median_ms": self.medians.median, "round_medians_ms": self.medians.values,
                "p99_ms": _quantile(pooled, 0.99), "samples": len(pooled),
                "samples_ms": self.rounds}


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (p99 of 20 samples is the max)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = bench_parser(
        __doc__, quick="a few samples: a smoke check", runs="rounds (default 5, quick 1)",
        data_dir="where journals and databases live (default bench/.data)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("signal", args.quick, data_dir, disk)
    before = machine_line(data_dir)
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} cpus; before: {before}")
    cli = signal_cli()
    series: dict[str, Series] = {name: Series() for name in (
        "inproc", "inproc_durable", "xproc", "xproc_tool", "dbos", "dbos_tuned")}
    cli_start = Stat()
    unavailable: dict[str, str] = {}
    if cli is None:
        unavailable["memable-signal"] = "not installed (no memable-signal next to python or " \
            "on PATH)"
    for rnd in range(sizes.runs):
        progress(f"round {rnd + 1}/{sizes.runs}: memable_log in process")
        with scratch_dir(data_dir, "sig-in-") as d:
            out = memable_inproc(d, sizes.inproc)
        series["inproc"].add(out["latencies"])
        series["inproc_durable"].add(out["durable"])
        if cli is not None:
            progress(f"round {rnd + 1}/{sizes.runs}: memable-signal across processes")
            with scratch_dir(data_dir, "sig-x-") as d:
                xp = memable_xproc(cli, d, sizes.xproc)
            series["xproc"].add(xp["latencies"])
            series["xproc_tool"].add(xp["tool"])
            cli_start.add(cli_startup(cli) * 1000)
        for name, samples, poll in (("dbos", sizes.dbos, None),
                                    ("dbos_tuned", sizes.dbos_tuned, 0.01)):
            if "DBOS" in unavailable:
                continue
            progress(f"round {rnd + 1}/{sizes.runs}: DBOS send -> recv "
                     f"({'default polling' if poll is None else f'polling {poll} s'})")
            with scratch_dir(data_dir, "sig-d-") as d:
                res = dbos_signal(d, samples, poll)
            if "unavailable" in res:
                unavailable["DBOS"] = res["unavailable"]
                progress(f"DBOS unavailable: {res['unavailable']}")
                continue
            series[name].add(res["latencies"])

    after = machine_line(data_dir)
    print(f"  after: {after}")
    inproc_ms = series["inproc"].medians.median
    dbos = series["dbos"]
    rows = []
    labels = {
        "inproc": "memable_log: engine.signal -> instance completed",
        "inproc_durable": "  of which engine.signal returns (on disk)",
        "xproc": "memable-signal (spawn) -> instance completed",
        "xproc_tool": "  of which memable-signal exits (durable)",
        "dbos": "DBOS: send -> recv'ing workflow's result (default polling)",
        "dbos_tuned": "DBOS: same, notification polling 10 ms",
    }
    for name, label in labels.items():
        s = series[name]
        if not s.rounds:
            why = unavailable.get("DBOS" if name.startswith("dbos") else "memable-signal", "")
            rows.append([label, "n/a", "n/a", "", "", f"unavailable: {why}" if why else ""])
            continue
        vs = f"{dbos.medians.median / s.medians.median:,.1f}x" if dbos.rounds else "n/a"
        target = verdict = ""
        if name == "inproc":
            target = f"<= {TARGET_INPROC_MS:g} ms"
            verdict = "ok" if inproc_ms <= TARGET_INPROC_MS else "MISSED"
        rows.append([label, f"{s.medians.median:,.2f}", f"{_quantile(s.pooled, 0.99):,.2f}",
                     vs if not name.startswith("dbos") else "", target, verdict])
    if cli_start.values:
        rows.append(["  for scale: memable-signal --help (interpreter + imports)",
                     f"{cli_start.median:,.2f}", "", "", "", ""])
    print()
    print(table(
        f"Signal latency, ms (median of {sizes.runs} round medians; p99 over all samples; "
        f"samples per round: {sizes.inproc} in process, {sizes.xproc} across processes, "
        f"{sizes.dbos} + {sizes.dbos_tuned} DBOS)",
        ["path", "median ms", "p99 ms", "DBOS/this", "target", ""], rows))
    if "memable-signal" in unavailable:
        print("\nTODO: memable-signal is not installed; the cross-process row is not measured.")
    if "DBOS" in unavailable:
        print(f"\nDBOS: unavailable ({unavailable['DBOS']}); its rows show n/a.")
    if args.json:
        out = {"quick": args.quick, "sizes": sizes.__dict__, "disk": disk.__dict__,
               "machine_before": before, "machine_after": after,
               "series": {name: s.as_dict() for name, s in series.items() if s.rounds},
               "cli_help_ms": cli_start.as_dict(), "unavailable": unavailable,
               "target_inproc_ms": TARGET_INPROC_MS}
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
