"""examples/two_workers.py against the session's server: worker A is
killed mid-order, worker B takes A's orders over and finishes all six."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

EXAMPLE = Path(__file__).parents[2] / "examples" / "two_workers.py"


def test_two_workers_one_killed_the_other_finishes(pg_dsn: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), pg_dsn], capture_output=True,
                          text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "worker A killed (SIGKILL)" in out
    assert "worker B: all 6 orders finished" in out
    tail = out[out.index("worker A killed"):]
    for n in range(1, 4):  # A's orders, finished by B
        assert f"order-{n} done by worker B" in tail
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        keys = conn.execute("SELECT instance_id, step_key FROM ml_log "
                            "WHERE step_key IS NOT NULL").fetchall()
    assert len(keys) == len(set(keys)) == 6 * 4  # every step recorded once
    # a step A finished is not run again: at most the one in flight per order
    for n in range(1, 4):
        runs = [line for line in out.splitlines() if f"order-{n} " in line and " ran" in line]
        assert len(runs) <= 4 + 1
