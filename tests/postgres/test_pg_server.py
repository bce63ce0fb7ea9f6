"""The test server itself: it runs, and each test's database is its own."""

from __future__ import annotations

import psycopg
from pgserver import PgServer


def test_server_runs_and_databases_are_fresh(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x int)")
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    assert row[0] >= 150000
    assert pg_server.started_s > 0


def test_another_database_has_nothing_of_the_last(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'").fetchone()
    assert row == (0,)
