"""Several engine processes on one PostgreSQL journal: throughput with 1, 2
and 4 processes, takeover time after kill -9 for a lease of 2, 10 and 30 s,
and the latency of a signal sent through engine A to an instance running
on engine B (another process).

    .venv/bin/python bench/bench_pg_cluster.py [--rounds 3] [--skip-30] [--parts takeover]

One embedded server (fsync on, loopback TCP). The engine processes are this
file run as ``worker``; they talk to the bench over pipes, one JSON object
per line (no sleeps: each side waits for the other's line). Times are
``time.perf_counter()``, CLOCK_MONOTONIC on Linux: one clock for every
process of the machine, so a time taken in one process is compared with a
time taken in another.

* throughput: 4,000 steps (200 instances x 20 steps) split evenly between
  1, 2 or 4 processes; each invokes its share at once, on its own engine,
  when the bench says go. Steps/s = 4,000 / (last end - first start).
  Fresh database per measurement, interleaved across rounds.
* takeover: a victim process (lease L) runs an instance into a step whose
  body never ends, and says so; an engine in the bench (lease L, opened
  before) waits; the victim gets SIGKILL. Timed from the kill to the body
  of that step starting again on the bench's engine. The victim's last
  lease renewal was up to L/3 before the kill, and the survivor looks for
  expired leases every L/3: expect between 2L/3 and 4L/3. Lease 30 s: one
  round (a minute or so each), said in the output.
* signal: process B invokes an instance that suspends for ``go``; the
  bench's engine A sees it suspended (its own tail), then ``A.signal``;
  B's step after the wait reports when its body starts. Median and p90
  over ``--signals`` samples; also the time inside ``A.signal``. Beside
  it, DBOS on the same server (bench/peers/dbos_pg_peer.py): ``DBOS.send``
  to a workflow waiting in ``DBOS.recv`` in the same process, until its
  result (its own LISTEN/NOTIFY path).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

import memable_log
from memable_log import Context, Engine
from memable_log._engine.engine import host_of
from memable_log._postgres.driver import Conn

TOTAL_INSTANCES, STEPS = 200, 20
SELF = os.path.abspath(__file__)
HERE = os.path.dirname(SELF)


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Lines:
    """Lines from a stream, one at a time, decoded as JSON."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> Any:
        while b"\n" not in self.buf:
            got = await self.stream.receive_some(65536)
            if not got:
                raise EOFError("the other side closed its pipe")
            self.buf += got
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


# -- the worker processes ---------------------------------------------------------


def steps_flow(steps: int) -> Any:
    async def flow(ctx: Context) -> Any:
        for i in range(steps):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return steps

    return flow


def stuck_flow(on_stuck: Any) -> Any:
    """Three steps, then a step whose body calls ``on_stuck`` (the victim
    never leaves it; a survivor returns)."""

    async def flow(ctx: Context) -> Any:
        for i in range(3):
            await ctx.step(f"s{i}").run(lambda i=i: i)
        return await ctx.step("stuck").run(on_stuck)

    return flow


async def waiting(ctx: Context) -> Any:
    got = await ctx.suspend("go")

    def resumed() -> Any:
        say(resumed=ctx.instance_id, t=time.perf_counter())
        return got

    return await ctx.step("after").run(resumed)


async def worker(dsn: str, lease: float, mode: str, arg: str) -> None:
    engine = Engine.builder().postgres(dsn, worker=f"{mode}-{os.getpid()}", lease=lease).build()
    commands = Lines(trio.lowlevel.FdStream(os.dup(0)))

    async def stuck() -> Any:
        say(stuck=time.perf_counter())
        await trio.sleep_forever()

    engine.register("flow", steps_flow(STEPS))
    engine.register("stuck", stuck_flow(stuck))
    engine.register("waiting", waiting)
    async with engine:
        say(ready=True)
        if mode == "throughput":
            count, tag = int(arg.split(":")[0]), arg.split(":")[1]
            await commands.next()  # go
            began = time.perf_counter()
            ids = [await engine.invoke("flow", instance_id=f"{tag}-{n}") for n in range(count)]
            for iid in ids:
                await engine.wait(iid)
            say(began=began, ended=time.perf_counter())
        elif mode == "victim":
            await engine.invoke("stuck", instance_id=arg)
            await trio.sleep_forever()  # killed
        else:  # waiter: invoke each id it is given
            while True:
                try:
                    command = await commands.next()
                except EOFError:
                    return
                await engine.invoke("waiting", instance_id=command["invoke"])


# -- the bench side ---------------------------------------------------------------


class Proc:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        assert proc.stdin is not None
        self.lines = Lines(proc.stdout)
        self.stdin = proc.stdin

    @classmethod
    async def start(cls, dsn: str, lease: float, mode: str, arg: str = "") -> Proc:
        proc = await trio.lowlevel.open_process(
            [sys.executable, SELF, "worker", dsn, str(lease), mode, arg],
            stdin=-1, stdout=-1)
        return cls(proc)

    async def send(self, **fields: Any) -> None:
        await self.stdin.send_all(json.dumps(fields).encode() + b"\n")

    async def stop(self) -> None:
        await self.stdin.aclose()
        with trio.move_on_after(10):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def fresh(server: PgServer, name: str) -> str:
    admin = await Conn.connect(server.dsn())
    await admin.run(f"CREATE DATABASE {name}")
    admin.close()
    return server.dsn(name)


async def throughput(dsn: str, procs: int, tag: str) -> float:
    workers = [await Proc.start(dsn, 30.0, "throughput",
                                f"{TOTAL_INSTANCES // procs}:{tag}-{p}") for p in range(procs)]
    for w in workers:
        assert (await w.lines.next())["ready"]
    for w in workers:
        await w.send(go=True)
    spans = [await w.lines.next() for w in workers]
    for w in workers:
        await w.stop()
    took = max(s["ended"] for s in spans) - min(s["began"] for s in spans)
    return TOTAL_INSTANCES // procs * procs * STEPS / took


async def takeover(dsn: str, lease: float) -> float:
    resumed: list[float] = []

    async def again() -> str:
        resumed.append(time.perf_counter())
        return "done"

    survivor = Engine.builder().postgres(dsn, worker="survivor", lease=lease).build()
    survivor.register("stuck", stuck_flow(again))
    async with survivor:
        victim = await Proc.start(dsn, lease, "victim", "job")
        assert (await victim.lines.next())["ready"]
        await victim.lines.next()  # inside the step
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        await victim.proc.wait()
        assert await survivor.wait("job") == "done"
    return resumed[0] - killed


async def signals(dsn: str, samples: int) -> tuple[list[float], list[float]]:
    async def never(ctx: Context) -> Any:
        raise AssertionError("runs on B only")

    a = Engine.builder().postgres(dsn, worker="A").build()
    a.register("waiting", never)
    latency, inside = [], []
    async with a:
        b = await Proc.start(dsn, 30.0, "waiter")
        assert (await b.lines.next())["ready"]
        for n in range(samples):
            iid = f"sig-{n}"
            await b.send(invoke=iid)
            await suspended(a, iid)
            began = time.perf_counter()
            await a.signal("waiting", iid, "go", n)
            inside.append(time.perf_counter() - began)
            got = await b.lines.next()
            assert got["resumed"] == iid, got
            latency.append(got["t"] - began)
        await b.stop()
    return latency, inside


async def suspended(engine: Engine, iid: str) -> None:
    """Until ``engine``'s index has ``iid`` suspended: its tail brings the
    other engine's records, and each one it applies sets the instance's
    change event (as tests/postgres's ``seen``)."""
    host = host_of(engine)
    while True:
        changed = host.changed(iid)
        found = [s for s in engine.instances(prefix=iid) if s.instance_id == iid]
        if found and found[0].state == "suspended":
            return
        await changed.wait()


def dbos_signal(dsn: str, samples: int) -> list[float]:
    """DBOS on the same server: ``DBOS.send`` -> the waiting workflow's
    result, in one process (bench/peers/dbos_pg_peer.py ``signal``)."""
    done = subprocess.run([sys.executable, os.path.join(HERE, "peers", "dbos_pg_peer.py"),
                           "signal", "--dsn", dsn, "--samples", str(samples)],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"dbos_pg_peer signal failed: {done.stderr[-2000:]}")
    got: list[float] = json.loads(lines[-1])["latencies"]
    return got


def p90(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.9))]


async def main(rounds: int, samples: int, with_30: bool, parts: set[str]) -> None:
    server = PgServer(fsync=True).start()
    load = [os.getloadavg()]
    rates: dict[int, list[float]] = {}
    latency: list[float] = []
    takeovers: dict[float, list[float]] = {}
    try:
        for n in range(rounds if "throughput" in parts else 0):
            for procs in (1, 2, 4):
                rate = await throughput(await fresh(server, f"t{n}_{procs}"), procs, f"r{n}")
                rates.setdefault(procs, []).append(rate)
                print(f"  round {n + 1}: {procs} process(es) {rate:,.0f} steps/s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        load.append(os.getloadavg())
        if "signal" in parts:
            latency, inside = await signals(await fresh(server, "sig"), samples)
            dbos_latency = dbos_signal(server.dsn("dbos_sig"), samples)
            print(f"  DBOS send -> recv resumed (one process): median "
                  f"{statistics.median(dbos_latency) * 1e3:.2f} ms, p90 "
                  f"{p90(dbos_latency) * 1e3:.2f} ms", flush=True)
            print(f"  signal A -> instance on B: median {statistics.median(latency) * 1e3:.2f} ms, "
                  f"p90 {p90(latency) * 1e3:.2f} ms; inside A.signal median "
                  f"{statistics.median(inside) * 1e3:.2f} ms (load {os.getloadavg()[0]:.1f})",
                  flush=True)
        load.append(os.getloadavg())
        for lease in (2.0, 10.0, 30.0):
            if "takeover" not in parts or (lease == 30.0 and not with_30):
                continue
            for n in range(1 if lease == 30.0 else rounds):
                took = await takeover(await fresh(server, f"k{int(lease)}_{n}"), lease)
                takeovers.setdefault(lease, []).append(took)
                print(f"  takeover, lease {lease:g}s: {took:.2f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        load.append(os.getloadavg())
    finally:
        server.stop()
    print(f"\nload (1/5/15 min) at start, then after each part: {load}")
    print(f"memable_log imported from {os.path.dirname(memable_log.__file__)}")
    print("engine processes   steps/s median (range)   vs 1 process")
    for procs, values in rates.items():
        print(f"{procs:>16}   {statistics.median(values):>8,.0f} "
              f"({min(values):,.0f}-{max(values):,.0f})"
              f"   {statistics.median(values) / statistics.median(rates[1]):.2f}")
    if latency:
        print(f"signal A -> B resumed: median {statistics.median(latency) * 1e3:.2f} ms, "
              f"p90 {p90(latency) * 1e3:.2f} ms, {samples} samples")
    for lease, values in takeovers.items():
        print(f"takeover after kill -9, lease {lease:g} s: median {statistics.median(values):.2f} s"
              f" ({', '.join(f'{v:.2f}' for v in values)}; {len(values)} round(s)); "
              f"target <= {lease + 1:g} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        trio.run(worker, sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--signals", type=int, default=30)
        parser.add_argument("--skip-30", action="store_true")
        parser.add_argument("--parts", default="throughput,signal,takeover")
        args = parser.parse_args()
        trio.run(main, args.rounds, args.signals, not args.skip_30, set(args.parts.split(",")))
