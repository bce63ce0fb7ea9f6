"""A small sample of the PostgreSQL kill -9 campaign (fuzz/pg_killnine.py):
three engine processes on one database, one killed with SIGKILL (at random
and at named points) and started again; 0 acknowledged steps lost, 0 run
again after their acknowledgement, every instance finished."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import trio
from pgserver import PgServer

sys.path.insert(0, str(Path(__file__).parents[2] / "fuzz"))

import pg_killnine


async def test_a_few_kill_nine_iterations_lose_nothing(
    pg_server: PgServer, tmp_path: Path
) -> None:
    def make_db(name: str) -> str:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return pg_server.dsn(name)

    args = pg_killnine.options(["--iterations", "3", "--seed", "7", "--instances", "3",
                                "--steps", "6", "--kills-per-round", "3"])
    with trio.fail_after(60):
        summary, violations = await pg_killnine.campaign(make_db, args, tmp_path)
    assert violations == []
    assert summary["iterations"] == 3
    assert summary["acknowledged"] > 0
