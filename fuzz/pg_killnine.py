"""kill -9 campaign on PostgreSQL: three engine processes on one database,
one of them killed with SIGKILL again and again, and started again.

Each *round* makes a fresh database on one embedded server and starts three
engine processes (this file, ``child`` mode) with a lease of ``--lease``
seconds. Every engine invokes its third of the round's instances of
``chain`` (``--steps`` steps whose bodies sleep 0-40 ms; at most
``--max-running`` of them run at once in each engine, the rest queue, and an
engine with room takes queued ones from a full one: ``taken_queued``
counts those takes), then waits for
*every* instance of the round, wherever it runs (the shared log), checks
each result, prints ``DONE`` and stops. Meanwhile the campaign kills one
engine at a time and starts it again at once (the restarted one invokes its
ids again: it finds them; the dead engine's instances are taken over by
whichever engine claims first, after its lease). Each kill (an *iteration*)
is one of:

* ``random``: SIGKILL from the campaign after a random delay;
* a named point, armed in the engine (a line on its stdin) and hit after
  0-3 occurrences, where the engine kills itself: ``step`` (inside a step's
  body), ``sent`` (right after a batch with a step's outcome went to the
  server, before its reply), ``between`` (after a step was acknowledged,
  before the next one), ``complete`` (right after the batch that completes
  an instance went to the server). An arm not hit within 3 s falls back to
  a campaign SIGKILL (counted apart).

Every step body first appends ``instance key pid`` to the round's ledger
(one line, ``O_APPEND``: what executed, whatever the journal says); the
workflow appends ``instance key ledger-size`` to the acks file right after
``run`` returned (an acknowledged step). Checked after each round:

* every engine's last life printed ``DONE``: every instance finished with
  its expected result, seen from every engine;
* every acknowledged step is in the log (``ml_log.step_key``): 0 lost;
* no step acknowledged at ledger size P appears in the ledger after P: 0
  executed after their result was acknowledged;
* each step is in the log once (the unique index), and every instance
  has exactly one ``completed`` record.

Run from the repository root::

    .venv/bin/python fuzz/pg_killnine.py --iterations 300 --seed 1

It prints a JSON summary (rounds, iterations, kills by kind, points hit,
fallbacks, re-executed in-flight bodies, violations) and exits 1 on any
violation. The server runs with ``fsync=off``: killed here are engines,
not the server's host.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import trio

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "postgres"))

from _summary import finish

POINTS = ("step", "sent", "between", "complete")
KINDS = ("random", *POINTS)
ENGINES = 3
COMPLETED = 11  # records.COMPLETED (the log's rec, msgpack: [type, ...])

# -- the engine process -------------------------------------------------------


class Arm:
    """A named point armed by the campaign: hit after ``skip`` occurrences."""

    point: str | None = None
    skip = 0
    fire_on_send = False

    @classmethod
    def hit(cls, point: str) -> bool:
        if cls.point != point:
            return False
        if cls.skip > 0:
            cls.skip -= 1
            return False
        return True


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def patch_sends() -> None:
    """``sent`` and ``complete``: the engine dies right after the batch's
    bytes left for the server (flushed), before its reply."""
    from memable_log._core import records as r
    from memable_log._postgres import commit, driver, writer

    write = commit.GroupCommit._write

    async def _write(self: Any, recs: list[list[Any]]) -> list[int]:
        types = {rec[r.TYPE] for rec in recs}
        if (r.STEP_DONE in types and Arm.hit("sent")) or (
            r.COMPLETED in types and Arm.hit("complete")
        ):
            Arm.fire_on_send = True
        return await write(self, recs)

    send = driver.Conn._send

    def _send(self: Any, how: Any, *args: Any) -> None:
        send(self, how, *args)
        if Arm.fire_on_send and getattr(how, "__name__", "") == "send_query_prepared" and (
            args[0] in writer.SENDS_BATCH
        ):
            while self.pgconn.flush() != 0:
                pass
            die()

    commit.GroupCommit._write = _write  # type: ignore[method-assign]
    driver.Conn._send = _send  # type: ignore[method-assign]


def note(path: str, line: str) -> int:
    """Append one line (one write, O_APPEND); the file's size after it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def chain(ledger: str, acks: str, steps: int) -> Any:
    from memable_log import Context

    async def flow(ctx: Context) -> Any:
        total = 0
        for i in range(steps):
            key = f"s{i}"

            async def body(key: str = key, i: int = i) -> int:
                note(ledger, f"{ctx.instance_id} {key} {os.getpid()}\n")
                if Arm.hit("step"):
                    die()
                await trio.sleep(random.uniform(0, 0.04))
                return i

            total += await ctx.step(key).run(body)
            size = os.stat(ledger).st_size
            note(acks, f"{ctx.instance_id} {key} {size}\n")
            if Arm.hit("between"):
                die()
        return total

    return flow


def count_taken(path: str) -> None:
    """Note each queued instance this engine takes from another (spread.py)."""
    from memable_log._postgres.backend import PostgresBackend

    take = PostgresBackend.take_queued

    async def take_queued(self: Any, ids: list[str]) -> list[str]:
        got = await take(self, ids)
        for iid in got:
            note(path, f"{iid} {os.getpid()}\n")
        return got

    PostgresBackend.take_queued = take_queued  # type: ignore[method-assign]


async def child(dsn: str, slot: int, ledger: str, acks: str, steps: int, lease: float,
                mine: list[str], every: list[str], max_running: int) -> None:
    from memable_log import Engine
    from memable_log._engine.engine import host_of

    patch_sends()
    count_taken(str(Path(ledger).with_name("taken")))
    engine = Engine.builder().postgres(dsn, worker=f"e{slot}", lease=lease).build()
    engine.register("chain", chain(ledger, acks, steps), max_running=max_running or None)
    expected = sum(range(steps))

    async def arming() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                point, skip = line.decode().split()
                Arm.skip, Arm.point = int(skip), point

    async with engine, trio.open_nursery() as nursery:
        nursery.start_soon(arming)
        for iid in mine:
            await engine.invoke("chain", instance_id=iid)
        bad = []
        for iid in every:
            while not engine.instances(prefix=iid):  # another engine invokes it
                await host_of(engine).changed(iid).wait()
            got = await engine.wait(iid)
            if got != expected:
                bad.append(f"{iid}={got!r}")
        print("DONE" if not bad else f"BAD {' '.join(bad)}", flush=True)
        nursery.cancel_scope.cancel()


# -- the campaign -------------------------------------------------------------


class Life:
    """One engine process of a round."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = b""
        self.ended = trio.Event()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for chunk in self.proc.stdout:
            self.out += chunk
        await self.proc.wait()
        self.ended.set()


class Round:
    def __init__(self, dsn: str, base: Path, rng: random.Random, args: Any,
                 stats: Counter[str], violations: list[str], name: str) -> None:
        self.dsn, self.rng, self.args, self.stats = dsn, rng, args, stats
        self.violations, self.name = violations, name
        self.ledger, self.acks = str(base / "ledger"), str(base / "acks")
        self.ids = [f"i{n}" for n in range(args.instances)]
        self.lives: list[Life | None] = [None] * ENGINES

    async def start(self, nursery: trio.Nursery, slot: int) -> None:
        mine = [iid for n, iid in enumerate(self.ids) if n % ENGINES == slot]
        proc = await trio.lowlevel.open_process(
            [sys.executable, __file__, "child", self.dsn, str(slot), self.ledger, self.acks,
             str(self.args.steps), str(self.args.lease), ",".join(mine), ",".join(self.ids),
             str(self.args.max_running)],
            stdin=-1, stdout=-1)
        life = Life(proc)
        self.lives[slot] = life
        nursery.start_soon(life.read)

    def done(self) -> bool:
        return any(life is not None and b"DONE" in life.out for life in self.lives)

    async def run(self, kills_left: int) -> int:
        kills = 0
        with trio.fail_after(self.args.round_timeout):
            async with trio.open_nursery() as nursery:
                for slot in range(ENGINES):
                    await self.start(nursery, slot)
                while kills < kills_left and not self.done():
                    if await self.kill_one(nursery):
                        kills += 1
                for life in self.lives:
                    assert life is not None
                    await life.ended.wait()
                    if life.proc.returncode != 0 or b"DONE" not in life.out:
                        await self.restart_until_done(nursery, life)
        self.check()
        return kills

    async def restart_until_done(self, nursery: trio.Nursery, life: Life) -> None:
        """An engine that died on its own (its lease lost on a stalled
        machine, say): started again until it reports; counted."""
        slot = self.lives.index(life)
        while True:
            self.stats["unplanned_restarts"] += 1
            await self.start(nursery, slot)
            again = self.lives[slot]
            assert again is not None
            await again.ended.wait()
            if again.proc.returncode == 0 and b"DONE" in again.out:
                return

    def owners(self) -> list[int]:
        """The engines that hold an instance not finished yet (by the acks)."""
        last = f"s{self.args.steps - 1}"
        acks = Path(self.acks).read_text() if Path(self.acks).exists() else ""
        finished = {line.split()[0] for line in acks.splitlines() if line.split()[1] == last}
        live = [iid for iid in self.ids if iid not in finished]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            try:
                rows = conn.execute("SELECT DISTINCT split_part(lease_owner, '/', 1) FROM "
                                    "ml_instances WHERE instance_id = ANY(%s)",
                                    (live,)).fetchall()
            except psycopg.errors.UndefinedTable:  # no engine made the schema yet
                return []
        return sorted(int(owner[1:]) for (owner,) in rows if owner)

    async def kill_one(self, nursery: trio.Nursery) -> bool:
        owners = await trio.to_thread.run_sync(self.owners)
        slot = self.rng.choice(owners) if owners else self.rng.randrange(ENGINES)
        life = self.lives[slot]
        assert life is not None
        kind = self.rng.choice(KINDS)
        await trio.sleep(self.rng.uniform(0.1, 0.6))
        if life.ended.is_set():
            return False
        if kind == "random":
            life.proc.send_signal(signal.SIGKILL)
        else:
            assert life.proc.stdin is not None
            try:
                await life.proc.stdin.send_all(f"{kind} {self.rng.randrange(4)}\n".encode())
            except trio.BrokenResourceError:
                return False
            with trio.move_on_after(3):
                await life.ended.wait()
            if life.ended.is_set() and life.proc.returncode == -signal.SIGKILL:
                self.stats[f"hit_{kind}"] += 1
            elif life.ended.is_set():
                return False  # it finished (DONE) before the point came
            else:
                self.stats[f"fallback_{kind}"] += 1
                life.proc.send_signal(signal.SIGKILL)
        await life.ended.wait()
        self.stats[f"kill_{kind}"] += 1
        await self.start(nursery, slot)
        return True

    def check(self) -> None:
        for slot, life in enumerate(self.lives):
            assert life is not None
            if b"DONE" not in life.out:
                self.violations.append(f"{self.name}: engine {slot} did not finish: "
                                       f"{life.out.decode(errors='replace')[-300:]}")
        taken = Path(self.ledger).with_name("taken")
        if taken.exists():
            self.stats["taken_queued"] += taken.read_text().count("\n")
        ledger = Path(self.ledger).read_bytes() if Path(self.ledger).exists() else b""
        ran: dict[tuple[str, str], list[int]] = {}
        pos = 0
        for line in ledger.splitlines(keepends=True):
            iid, key, _pid = line.decode().split()
            ran.setdefault((iid, key), []).append(pos)
            pos += len(line)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            logged = conn.execute(
                "SELECT instance_id, step_key FROM ml_log WHERE step_key IS NOT NULL").fetchall()
            recs = conn.execute("SELECT instance_id, rec FROM ml_log").fetchall()
        in_log = Counter((iid, key.split(":", 1)[1]) for iid, key in logged)
        completed = Counter(iid for iid, rec in recs if msgpack.unpackb(rec)[0] == COMPLETED)
        acks = Path(self.acks).read_text().split("\n") if Path(self.acks).exists() else []
        for line in filter(None, acks):
            iid, key, size = line.split()
            self.stats["acknowledged"] += 1
            if in_log[(iid, key)] != 1:
                self.violations.append(f"{self.name}: acknowledged step {iid} {key} is in the "
                                       f"log {in_log[(iid, key)]} times")
            late = [p for p in ran.get((iid, key), []) if p >= int(size)]
            if late:
                self.violations.append(f"{self.name}: step {iid} {key} acknowledged at ledger "
                                       f"{size} ran again at {late}")
        for iid in self.ids:
            if completed[iid] != 1:
                self.violations.append(f"{self.name}: {iid} has {completed[iid]} completed records")
            for i in range(self.args.steps):
                runs = len(ran.get((iid, f"s{i}"), []))
                self.stats["executions"] += runs
                self.stats["re_executed"] += max(0, runs - 1)
                if in_log[(iid, f"s{i}")] != 1:
                    self.violations.append(f"{self.name}: {iid} s{i} in the log "
                                           f"{in_log[(iid, f's{i}')]} times")


async def campaign(make_db: Any, args: Any, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """Rounds until ``args.iterations`` kills; the summary and violations.
    ``make_db(name)`` makes an empty database and returns its DSN."""
    rng = random.Random(args.seed)
    stats: Counter[str] = Counter()
    violations: list[str] = []
    began = time.monotonic()
    iterations = rounds = 0
    while iterations < args.iterations:
        rounds += 1
        name = f"round{rounds}"
        base = workdir / name
        base.mkdir()
        dsn = await trio.to_thread.run_sync(make_db, f"k{args.seed}_{rounds}")
        one = Round(dsn, base, rng, args, stats, violations, name)
        try:
            iterations += await one.run(min(args.kills_per_round, args.iterations - iterations))
        except trio.TooSlowError:
            violations.append(f"{name}: not finished within {args.round_timeout}s")
            break
    summary = {"campaign": "pg_killnine", "seed": args.seed, "rounds": rounds,
               "iterations": iterations, "seconds": round(time.monotonic() - began, 1),
               **dict(sorted(stats.items())), "violations": len(violations)}
    return summary, violations


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=300, help="kills in all")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--instances", type=int, default=9)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--kills-per-round", type=int, default=4)
    p.add_argument("--max-running", type=int, default=1,
                   help="each engine's max_running of the workflow (0: no limit): "
                        "instances queue, and engines with room take them from full ones")
    p.add_argument("--round-timeout", type=float, default=90.0)
    p.add_argument("--json", default=None, help="also write the summary here")
    return p.parse_args(argv)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        dsn, slot, ledger, acks, steps, lease, mine, every, most = sys.argv[2:11]
        trio.run(child, dsn, int(slot), ledger, acks, int(steps), float(lease),
                 [i for i in mine.split(",") if i], every.split(","), int(most))
        return 0
    import tempfile

    from pgserver import PgServer

    args = options()
    server = PgServer(fsync=False).start()

    def make_db(name: str) -> str:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return server.dsn(name)

    try:
        with tempfile.TemporaryDirectory(prefix="pg-killnine-") as tmp:
            summary, violations = trio.run(campaign, make_db, args, Path(tmp))
    finally:
        server.stop()
    return finish(summary, violations, args.json, show=20)


if __name__ == "__main__":
    sys.exit(main())
