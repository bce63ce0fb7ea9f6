"""A hand-written sqlite3 journal: the baseline of bench_engine.py.

What a careful programmer would write in an afternoon instead of using a
library: one table of instances, one of step results keyed by
(instance, key), WAL mode, ``synchronous=FULL`` (every commit fsynced), and
one transaction per step. Values are msgpack, as in memable_log. It runs
sync on one thread, so "100 workflows started at once" runs them one after
another: a single writer is sqlite's best case.

Each invocation runs ONE scenario in a fresh process and prints one JSON
object on the last line of stdout (same scenarios and fields as
dbos_peer.py):

    python bench/peers/sqlite_peer.py steps       --dir D --steps 1000
    python bench/peers/sqlite_peer.py concurrent  --dir D --workflows 100 --steps 20
    python bench/peers/sqlite_peer.py prepare     --dir D --steps 1000 --crash-after 1000
    python bench/peers/sqlite_peer.py recover     --dir D --steps 1000
    python bench/peers/sqlite_peer.py startup-build   --dir D --instances 10000 --steps 10
    python bench/peers/sqlite_peer.py startup-measure --dir D
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_T_IMPORT = time.perf_counter()
import sqlite3  # noqa: E402 (timed import)

import msgpack  # noqa: E402
from values import KINDS, small, weight  # noqa: E402

_IMPORT_S = time.perf_counter() - _T_IMPORT

DB_NAME = "journal.db"
INSTANCE_ID = "bench-recover-1"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


class SqliteJournal:
    """Instances and memoised step results in one SQLite database."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(os.path.join(path, DB_NAME), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, "
            "state TEXT NOT NULL, input BLOB, output BLOB) WITHOUT ROWID")
        self.db.execute(
            "CREATE INDEX IF NOT EXISTS running ON instances (state) WHERE state = 'running'")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS steps (instance TEXT NOT NULL, key TEXT NOT NULL, "
            "value BLOB NOT NULL, PRIMARY KEY (instance, key)) WITHOUT ROWID")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT (fsynced: synchronous=FULL), or ROLLBACK on an error."""
        self.db.execute("BEGIN")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def create(self, instance: str, workflow: str, input: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO instances VALUES (?, ?, 'running', ?, NULL)",
                            (instance, workflow, msgpack.packb(input)))

    def running(self) -> list[tuple[str, Any]]:
        return [(iid, msgpack.unpackb(blob)) for iid, blob in self.db.execute(
            "SELECT id, input FROM instances WHERE state = 'running'")]

    def step(self, instance: str, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        row = self.db.execute(
            "SELECT value FROM steps WHERE instance = ? AND key = ?", (instance, key)).fetchone()
        if row is not None:
            return msgpack.unpackb(row[0])
        blob = msgpack.packb(fn(*args))
        with self.transaction() as db:
            db.execute("INSERT INTO steps VALUES (?, ?, ?)", (instance, key, blob))
        return msgpack.unpackb(blob)

    def complete(self, instance: str, output: Any) -> None:
        with self.transaction() as db:
            db.execute("UPDATE instances SET state = 'completed', output = ? WHERE id = ?",
                            (msgpack.packb(output), instance))


_value = small  # set by --values


def work(i: int) -> Any:
    return _value(i)


_body_entered = _body_done = 0.0


def steps_workflow(j: SqliteJournal, instance: str, n: int, crash_after: int = 0) -> int:
    global _body_entered, _body_done
    _body_entered = time.perf_counter()
    total = 0
    for i in range(n):
        total += weight(j.step(instance, f"step-{i}", work, i))
        if crash_after and i + 1 == crash_after:
            os._exit(0)  # the step's transaction is committed
    _body_done = time.perf_counter()
    return total


def run(j: SqliteJournal, instance: str, n: int, crash_after: int = 0) -> int:
    result = steps_workflow(j, instance, n, crash_after)
    j.complete(instance, result)
    return result


def scenario_steps(path: str, steps: int) -> dict[str, Any]:
    j = SqliteJournal(path)
    try:
        t = time.perf_counter()
        j.create("wf-1", "steps", steps)
        run(j, "wf-1", steps)
        elapsed = time.perf_counter() - t
    finally:
        j.close()
    return {"elapsed": elapsed, "steps": steps}


def scenario_concurrent(path: str, workflows: int, steps: int) -> dict[str, Any]:
    j = SqliteJournal(path)
    try:
        t = time.perf_counter()
        for w in range(workflows):
            j.create(f"wf-{w}", "steps", steps)
        for w in range(workflows):
            run(j, f"wf-{w}", steps)
        elapsed = time.perf_counter() - t
    finally:
        j.close()
    return {"elapsed": elapsed, "steps": workflows * steps}


def scenario_prepare(path: str, steps: int, crash_after: int) -> None:
    j = SqliteJournal(path)
    j.create(INSTANCE_ID, "steps", steps)
    run(j, INSTANCE_ID, steps, crash_after)
    raise SystemExit("the workflow did not crash")


def scenario_recover(path: str, steps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    j = SqliteJournal(path)
    try:
        launch = time.perf_counter() - t0
        results = [run(j, iid, n) for iid, n in j.running()]
        t1 = time.perf_counter()
    finally:
        j.close()
    assert results == [sum(i * 2 for i in range(steps))], results
    return {"total": t1 - t0, "launch": launch, "replay": _body_done - _body_entered,
            "steps": steps}


def scenario_startup_build(path: str, instances: int, steps: int) -> dict[str, Any]:
    t = time.perf_counter()
    j = SqliteJournal(path)
    try:
        with j.transaction() as db:  # the data only: one transaction
            for w in range(instances):
                iid = f"wf-{w:06d}"
                total = sum(work(i) for i in range(steps))
                db.execute("INSERT INTO instances VALUES (?, 'steps', 'completed', ?, ?)",
                           (iid, msgpack.packb(steps), msgpack.packb(total)))
                db.executemany("INSERT INTO steps VALUES (?, ?, ?)", [
                    (iid, f"step-{i}", msgpack.packb(work(i))) for i in range(steps)])
    finally:
        j.close()
    return {"elapsed": time.perf_counter() - t, "instances": instances, "steps": steps}


def scenario_startup_measure(path: str) -> dict[str, Any]:
    rss_before = rss_bytes()
    t = time.perf_counter()
    j = SqliteJournal(path)
    running = j.running()  # what a restart must find: the instances to resume
    start_s = time.perf_counter() - t
    rss_after = rss_bytes()
    j.close()
    assert running == [], running
    return {"import_s": _IMPORT_S, "start_s": start_s,
            "rss_before": rss_before, "rss_after": rss_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[
        "steps", "concurrent", "prepare", "recover", "startup-build", "startup-measure",
    ])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--instances", type=int, default=0)
    parser.add_argument("--values", choices=sorted(KINDS), default="small")
    args = parser.parse_args(argv)
    global _value
    _value = KINDS[args.values]
    os.makedirs(args.dir, exist_ok=True)
    if args.scenario == "steps":
        emit(scenario_steps(args.dir, args.steps))
    elif args.scenario == "concurrent":
        emit(scenario_concurrent(args.dir, args.workflows, args.steps))
    elif args.scenario == "prepare":
        scenario_prepare(args.dir, args.steps, args.crash_after)
    elif args.scenario == "recover":
        emit(scenario_recover(args.dir, args.steps))
    elif args.scenario == "startup-build":
        emit(scenario_startup_build(args.dir, args.instances, args.steps))
    else:
        emit(scenario_startup_measure(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
