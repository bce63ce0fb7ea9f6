"""The writer's plain statements (writer.py): a batch of steps of held
instances goes as one plain statement, and does exactly what ``ml_append``
would: the same fence, all rows or none, seqs in batch order; a refusal
comes back in ``ml_append``'s words."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_pg_backend import created, done, opened, rows

from memable_log._core import records as r
from memable_log._postgres.backend import PostgresBackend


def statements(backend: PostgresBackend) -> list[bytes]:
    """The names of the prepared statements the writer connection sends
    from now on."""
    assert backend.link is not None
    assert backend.link.conn is not None
    conn = backend.link.conn
    sent: list[bytes] = []
    real = conn.query

    async def query(name: bytes, *args: Any) -> Any:
        sent.append(name)
        return await real(name, *args)

    conn.query = query  # type: ignore[method-assign]
    return sent


async def test_steps_of_held_instances_go_as_one_plain_statement(pg_dsn: str) -> None:
    backend, index = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), created("b")])
        sent = statements(backend)
        await backend.append(done("a", "k1"))
        await backend.append_many([done("b", "k1"), done("a", "k2"), done("b", "k2")])
        assert sent == [b"ml_fast1", b"ml_fastn"]
        assert rows(pg_dsn)[2:] == [(3, "a", "0:k1"), (4, "b", "0:k1"), (5, "a", "0:k2"),
                                    (6, "b", "0:k2")]
        assert index.instances["a"].last_seq == 5
        assert index.instances["b"].last_seq == 6
    finally:
        await backend.close()


@pytest.mark.parametrize("batch", [["a"], ["b", "a"]])
async def test_a_fenced_out_plain_batch_writes_nothing_and_is_refused_by_name(
    pg_dsn: str, batch: list[str]
) -> None:
    backend, _ = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), created("b")])
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # another engine took "a"
            conn.execute("UPDATE ml_instances SET lease_epoch = 2 WHERE instance_id = 'a'")
        sent = statements(backend)
        with pytest.raises(Exception, match="fenced out of instance a"):
            await backend.append_many([done(i, "k") for i in batch])
        assert sent == [b"ml_fast1" if len(batch) == 1 else b"ml_fastn", b"ml_append"]
        assert [row[2] for row in rows(pg_dsn)] == [None, None]
        assert not backend.owns("a")
        assert backend.owns("b")
    finally:
        await backend.close()


async def test_a_batch_that_creates_or_notifies_goes_to_ml_append(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)
    try:
        sent = statements(backend)
        await backend.append_many([created("a"), done("a", "k")])
        assert sent == [b"ml_append"]
    finally:
        await backend.close()


def queued(dsn: str) -> dict[str, bool]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT instance_id, queued FROM ml_instances"))


async def test_a_batch_that_queues_starts_or_ends_an_instance_records_its_queue_state(
    pg_dsn: str,
) -> None:
    backend, _ = await opened(pg_dsn)
    try:
        sent = statements(backend)
        await backend.append_many([created("a"), r.make(r.QUEUED, 1000, "a"),
                                   created("b"), r.make(r.QUEUED, 1000, "b")])
        assert queued(pg_dsn) == {"a": True, "b": True}
        await backend.append(r.make(r.DEQUEUED, 1000, "a"))
        assert queued(pg_dsn) == {"a": False, "b": True}
        await backend.append(done("a", "k"))  # a step: the plain statement, no change
        await backend.append_many([r.make(r.COMPLETED, 1000, "a", b"\x01"),
                                   r.make(r.CANCELLED, 1000, "b")])
        assert queued(pg_dsn) == {"a": False, "b": False}
        assert sent == [b"ml_append", b"ml_append", b"ml_fast1", b"ml_append"]
    finally:
        await backend.close()
