"""DBOS Transact on PostgreSQL: the peer side of bench_pg_versus.py.

The same scenarios and workflows as dbos_peer.py (DBOS on SQLite), with
DBOS's system database on a PostgreSQL server instead: ``--dsn`` names a
database on it (DBOS creates it if missing; one database per run keeps
the runs apart). Everything else is DBOS's defaults, the way an
application would configure it: the PostgreSQL mode DBOS documents,
LISTEN/NOTIFY for ``send``/``recv``.

One scenario per process (DBOS keeps global state and threads); one JSON
object on the last line of stdout, ``{"unavailable": ...}`` if DBOS cannot
be imported.

    python bench/peers/dbos_pg_peer.py steps      --dsn URL --steps 1000
    python bench/peers/dbos_pg_peer.py concurrent --dsn URL --workflows 100 --steps 20
    python bench/peers/dbos_pg_peer.py prepare    --dsn URL --steps 1000 --crash-after 1000
    python bench/peers/dbos_pg_peer.py recover    --dsn URL --steps 1000
    python bench/peers/dbos_pg_peer.py signal     --dsn URL --samples 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

import dbos_peer  # the workflows, registered at import, and the scenarios


def start_on_postgres(dsn: str, **extra: Any) -> float:
    """dbos_peer.start, with the system database at ``dsn``: launch's seconds."""
    config: Any = {
        "name": "memable-bench",
        "system_database_url": dsn,
        "log_level": "WARNING",
        **extra,
    }
    dbos_peer.DBOS(config=config)
    began = time.perf_counter()
    dbos_peer.DBOS.launch()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["steps", "concurrent", "prepare", "recover",
                                             "signal"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workflows", type=int, default=1)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    if dbos_peer._UNAVAILABLE is not None:
        dbos_peer.emit({"unavailable": dbos_peer._UNAVAILABLE})
        return 0
    dbos_peer.start = start_on_postgres  # type: ignore[assignment]
    # dbos_peer's scenarios take the database where they took the directory
    args.dir, args.poll = args.dsn, None
    try:
        result = dbos_peer.run(args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    dbos_peer.emit(result)
    os._exit(0)  # as dbos_peer: skip DBOS.destroy's wait for its threads


if __name__ == "__main__":
    sys.exit(main())
