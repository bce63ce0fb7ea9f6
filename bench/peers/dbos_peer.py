"""DBOS Transact on SQLite: the peer side of bench_engine.py and bench_signal.py.

Each invocation runs ONE scenario in a fresh process (DBOS keeps global
state and background threads, which must never mix with trio) and prints
one JSON object on the last line of stdout. If ``import dbos`` fails it
prints ``{"unavailable": "<why>"}`` and exits 0, so the drivers can report
DBOS as unavailable instead of failing.

DBOS runs with its defaults on SQLite (``system_database_url =
sqlite:///...``: rollback journal, synchronous=FULL, queues and
notifications polled), the way an application would use it. The one
exception is ``startup-build``, which only fills a database for the
start-up measurement and turns fsync off while doing so (the rows written
are the same).

    python bench/peers/dbos_peer.py steps       --dir D --steps 1000
    python bench/peers/dbos_peer.py concurrent  --dir D --workflows 100 --steps 20
    python bench/peers/dbos_peer.py prepare     --dir D --steps 1000 --crash-after 1000
    python bench/peers/dbos_peer.py recover     --dir D --steps 1000
    python bench/peers/dbos_peer.py startup-build   --dir D --instances 10000 --steps 10
    python bench/peers/dbos_peer.py startup-measure --dir D
    python bench/peers/dbos_peer.py signal      --dir D --samples 20 [--poll 1.0]
    python bench/peers/dbos_peer.py fanout      --dir D --workflows 1000 --concurrency 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

from values import KINDS, small, weight

_T_IMPORT = time.perf_counter()
try:
    from dbos import DBOS, SetWorkflowID
except ImportError as _exc:  # reported, not raised: the drivers show "unavailable"
    DBOS = None  # type: ignore[assignment,misc]
    _UNAVAILABLE: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    _UNAVAILABLE = None
_IMPORT_S = time.perf_counter() - _T_IMPORT

DB_NAME = "dbos.sqlite"
WORKFLOW_ID = "bench-recover-1"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# -- the workflows (registered at import, before any DBOS instance exists) ------

_value = small  # set by --values
_crash_after: int | None = None  # set by `prepare`: os._exit after this many steps
_body_entered: float | None = None  # when the workflow body last started (replay)
_body_done: float | None = None  # when it last reached its return statement
_before_recv = threading.Event()

if DBOS is not None:

    @DBOS.step()
    def work(i: int) -> Any:
        """A step returning the run's kind of value (as in the memable_log runs)."""
        return _value(i)

    @DBOS.workflow()
    def steps_workflow(n: int) -> int:
        global _body_entered, _body_done
        _body_entered = time.perf_counter()
        total = 0
        for i in range(n):
            total += weight(work(i))
            if _crash_after is not None and i + 1 == _crash_after:
                # A crash right after the step's row is committed.
                os._exit(0)
        _body_done = time.perf_counter()
        return total

    @DBOS.workflow()
    def fan_child(i: int) -> int:
        """A trivial child workflow (as memable_log's fan-out children)."""
        return i * 2

    @DBOS.workflow()
    def fan_parent(n: int) -> list[int]:
        """Starts ``n`` children on the concurrency-limited queue, then awaits each."""
        handles = [_fan_queue.enqueue(fan_child, i) for i in range(n)]
        return [handle.get_result() for handle in handles]

    @DBOS.workflow()
    def wait_workflow() -> Any:
        _before_recv.set()
        return DBOS.recv("go", timeout_seconds=120)


def start(path: str, **extra: Any) -> float:
    """Create and launch DBOS on ``path/dbos.sqlite``; return the launch's seconds."""
    config: Any = {
        "name": "memable-bench",
        "system_database_url": "sqlite:///" + os.path.join(path, DB_NAME),
        "log_level": "WARNING",
        **extra,
    }
    DBOS(config=config)
    t = time.perf_counter()
    DBOS.launch()
    return time.perf_counter() - t


# -- scenarios ----------------------------------------------------------------------


def scenario_steps(path: str, steps: int) -> dict[str, Any]:
    """(a) one workflow of ``steps`` trivial steps, start to result."""
    start(path)
    t = time.perf_counter()
    handle = DBOS.start_workflow(steps_workflow, steps)
    handle.get_result()
    return {"elapsed": time.perf_counter() - t, "steps": steps}


def scenario_concurrent(path: str, workflows: int, steps: int) -> dict[str, Any]:
    """(b) ``workflows`` workflows of ``steps`` steps started at once."""
    start(path)
    t = time.perf_counter()
    handles = [DBOS.start_workflow(steps_workflow, steps) for _ in range(workflows)]
    for handle in handles:
        handle.get_result()
    return {"elapsed": time.perf_counter() - t, "steps": workflows * steps}


def scenario_prepare(path: str, steps: int, crash_after: int) -> NoReturn:
    """Lifetime 1 of (c)/(d): run until ``crash_after`` steps are recorded, then die."""
    global _crash_after
    _crash_after = crash_after
    start(path)
    with SetWorkflowID(WORKFLOW_ID):
        handle = DBOS.start_workflow(steps_workflow, steps)
    handle.get_result()  # never returns: the workflow calls os._exit
    raise SystemExit("the workflow did not crash")


def scenario_recover(path: str, steps: int) -> dict[str, Any]:
    """Lifetime 2 of (c)/(d): launch, let DBOS recover the workflow, wait for it."""
    t0 = time.perf_counter()
    launch_s = start(path)
    result: int = DBOS.retrieve_workflow(WORKFLOW_ID).get_result()
    t1 = time.perf_counter()
    assert result == sum(i * 2 for i in range(steps)), result
    assert _body_entered is not None
    assert _body_done is not None
    return {
        "total": t1 - t0,  # launch -> recovered result (get_result polls the database)
        "launch": launch_s,
        "replay": _body_done - _body_entered,  # the body's first line to its return
        "steps": steps,
    }


TEMPLATE = 100  # workflows run through DBOS; the rest are copies of their rows


def scenario_startup_build(path: str, instances: int, steps: int) -> dict[str, Any]:
    """Fill a database with ``instances`` completed workflows of ``steps`` steps.

    Up to TEMPLATE workflows run through DBOS (fsync off); the rest copy
    their rows under new workflow ids, table by table, so the database holds
    exactly the rows DBOS would have written, without the hour it would take
    at DBOS's step rate.
    """
    import sqlalchemy
    from sqlalchemy import event

    @event.listens_for(sqlalchemy.engine.Engine, "connect")
    def _no_fsync(dbapi_conn: Any, _record: Any) -> None:
        # Only to build the data quickly: the rows are those DBOS always writes.
        dbapi_conn.execute("PRAGMA synchronous=OFF")

    start(path)
    t = time.perf_counter()
    template = min(instances, TEMPLATE)
    try:
        window = 8  # a few at a time: SQLite serialises writers anyway
        for first in range(0, template, window):
            handles = [
                DBOS.start_workflow(steps_workflow, steps)
                for _ in range(min(window, template - first))
            ]
            for handle in handles:
                handle.get_result()
    finally:
        DBOS.destroy()
    copies = _replicate(os.path.join(path, DB_NAME), template, instances)
    return {"elapsed": time.perf_counter() - t, "instances": template + copies, "steps": steps}


def _replicate(db_path: str, template: int, instances: int) -> int:
    """Copy the template workflows' rows until there are ``instances``; return copies."""
    import sqlite3

    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("BEGIN")
        tables = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")
            if any(col[1] == "workflow_uuid"
                   for col in db.execute(f"PRAGMA table_info({name})"))]
        ids = [wid for (wid,) in db.execute("SELECT workflow_uuid FROM workflow_status")]
        assert len(ids) == template, (len(ids), template)
        db.execute("CREATE TEMP TABLE template (workflow_uuid TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO template VALUES (?)", [(i,) for i in ids])
        copies = 0
        for copy in range(1, -(-instances // template)):
            n = min(template, instances - template * copy)
            for table in tables:
                cols = [col[1] for col in db.execute(f"PRAGMA table_info({table})")]
                quoted = ", ".join(f'"{c}"' for c in cols)
                select = ", ".join(
                    f"\"{c}\" || '-copy{copy}'" if c == "workflow_uuid" else f'"{c}"'
                    for c in cols)
                db.execute(
                    f"INSERT INTO {table} ({quoted}) SELECT {select} FROM {table} "
                    f"WHERE workflow_uuid IN (SELECT workflow_uuid FROM template "
                    f"ORDER BY workflow_uuid LIMIT {n})")
            copies += n
        db.execute("COMMIT")
    finally:
        db.close()
    return copies


def scenario_startup_measure(path: str) -> dict[str, Any]:
    """(e) launch time and resident memory over an existing database."""
    rss_before = rss_bytes()
    launch_s = start(path)
    rss_after = rss_bytes()
    return {"import_s": _IMPORT_S, "start_s": launch_s,
            "rss_before": rss_before, "rss_after": rss_after}


def scenario_signal(path: str, samples: int, poll: float | None) -> dict[str, Any]:
    """DBOS.send -> the receiving workflow's result, ``samples`` times in turn."""
    extra = {} if poll is None else {"notification_listener_polling_interval_sec": poll}
    start(path, **extra)
    latencies: list[float] = []
    for _ in range(samples):
        _before_recv.clear()
        handle = DBOS.start_workflow(wait_workflow)
        _before_recv.wait()
        # recv registers its wait right after the event; give it time to
        # park (unmeasured) so we time a wake-up, not an early message.
        time.sleep(0.05)
        t = time.perf_counter()
        DBOS.send(handle.get_workflow_id(), "payload", topic="go")
        result = handle.get_result()
        latencies.append(time.perf_counter() - t)
        assert result == "payload", result
    return {"latencies": latencies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[
        "steps", "concurrent", "prepare", "recover", "startup-build", "startup-measure",
        "signal", "fanout",
    ])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--instances", type=int, default=0)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--poll", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--values", choices=sorted(KINDS), default="small")
    args = parser.parse_args(argv)
    global _value
    _value = KINDS[args.values]
    if _UNAVAILABLE is not None:
        emit({"unavailable": _UNAVAILABLE})
        return 0
    os.makedirs(args.dir, exist_ok=True)
    try:
        result = run(args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    emit(result)
    # Measured already: skip DBOS.destroy(), which waits up to a second for
    # its polling threads, and let the OS reclaim everything.
    os._exit(0)


_fan_queue: Any = None  # set by scenario_fanout, before DBOS launches


def scenario_fanout(path: str, children: int, concurrency: int,
                    poll: float | None) -> dict[str, Any]:
    """A workflow that starts ``children`` child workflows on a queue of
    ``concurrency`` and awaits them all: start to last result. The queue
    polls every ``poll`` seconds (DBOS's default: 1.0)."""
    global _fan_queue
    extra = {} if poll is None else {"polling_interval_sec": poll}
    start(path)
    # DBOS 3 declares queues through the running instance (persisted in its
    # system database); ``concurrency`` is the global limit.
    _fan_queue = DBOS.register_queue("fanout", concurrency=concurrency, **extra)
    t = time.perf_counter()
    result = DBOS.start_workflow(fan_parent, children).get_result()
    elapsed = time.perf_counter() - t
    assert result == [i * 2 for i in range(children)], result[:5]
    return {"elapsed": elapsed, "children": children}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "fanout":
        return scenario_fanout(args.dir, args.workflows, args.concurrency, args.poll)
    if args.scenario == "steps":
        return scenario_steps(args.dir, args.steps)
    if args.scenario == "concurrent":
        return scenario_concurrent(args.dir, args.workflows, args.steps)
    if args.scenario == "prepare":
        return scenario_prepare(args.dir, args.steps, args.crash_after)
    if args.scenario == "recover":
        return scenario_recover(args.dir, args.steps)
    if args.scenario == "startup-build":
        return scenario_startup_build(args.dir, args.instances, args.steps)
    if args.scenario == "startup-measure":
        return scenario_startup_measure(args.dir)
    return scenario_signal(args.dir, args.samples, args.poll)


if __name__ == "__main__":
    sys.exit(main())
