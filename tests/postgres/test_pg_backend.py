"""PostgresBackend under the engine: batches, the fence, first writer wins,
and the tailer's gap rule (a seq handed out before a visible one but
committed after it is still read)."""

from __future__ import annotations

from typing import Any

import msgpack
import psycopg
import pytest
import trio
import trio.testing

from memable_log._core import records as r
from memable_log._core.index import Index
from memable_log._postgres.backend import PostgresBackend
from memable_log._postgres.driver import Conn
from memable_log._postgres.tailer import Tail


def created(iid: str) -> list[Any]:
    return r.make(r.CREATED, 1000, iid, "wf", b"\xc0")


def done(iid: str, key: str) -> list[Any]:
    return r.make(r.STEP_DONE, 1000, iid, key, b"\x01")


def rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT seq, instance_id, step_key FROM ml_log ORDER BY seq").fetchall()


async def opened(dsn: str) -> tuple[PostgresBackend, Index]:
    backend, index = PostgresBackend(dsn, worker="w", lease=5.0), Index()
    await backend.open(index)
    return backend, index


async def test_a_batch_is_written_whole_or_not_at_all(pg_dsn: str) -> None:
    backend, index = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), done("a", "k1")])
        assert [row[1] for row in rows(pg_dsn)] == ["a", "a"]
        assert index.instances["a"].last_seq == 2
        # "z" has no lease of ours: the whole batch is refused, "b" included.
        with pytest.raises(Exception, match="fenced out of instance z"):
            await backend.append_many([created("b"), done("a", "k2"), done("z", "k")])
        assert [row[1] for row in rows(pg_dsn)] == ["a", "a"]
        assert "b" not in index.instances
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT instance_id FROM ml_instances").fetchall() == [("a",)]
    finally:
        await backend.close()


async def test_the_first_writer_of_a_step_wins(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), done("a", "k")])
        with pytest.raises(Exception, match="ml_log_step"):
            await backend.append(done("a", "k"))
        assert [row[2] for row in rows(pg_dsn)] == [None, "0:k"]
    finally:
        await backend.close()


async def test_a_reopened_backend_replays_every_record_in_order(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)
    await backend.append_many([created("a"), done("a", "k1")])
    await backend.append(done("a", "k2"))
    big = r.make(r.STEP_DONE, 1000, "a", "big", b"\x02" * 10_000)
    await backend.append(big)
    await backend.close()
    again, index = await opened(pg_dsn)
    try:
        entry = index.instances["a"]
        assert entry.last_seq == 4
        assert sorted(entry.steps) == ["big", "k1", "k2"]
        assert (await again.read(4))[r.STEP_DONE_VALUE] == b"\x02" * 10_000
    finally:
        await again.close()


def insert(conn: psycopg.Connection[Any], rec: list[Any]) -> None:
    conn.execute("INSERT INTO ml_log (instance_id, writer, rec) VALUES (%s, 'other', %s)",
                 (rec[r.INSTANCE], msgpack.packb(rec)))


async def test_the_tailer_reads_a_row_committed_after_a_later_one(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)  # makes the schema
    await backend.close()
    seen: list[int] = []
    tail = Tail()
    conn = await Conn.connect(pg_dsn)
    slow = psycopg.connect(pg_dsn)  # a transaction held open: seq 1, not committed
    fast = psycopg.connect(pg_dsn, autocommit=True)
    try:
        insert(slow, created("late"))
        insert(fast, created("early"))  # seq 2, committed
        await tail.poll(conn, "me", lambda seq, blob: seen.append(seq))
        assert seen == [2]
        assert list(tail.gaps) == [1]
        await tail.poll(conn, "me", lambda seq, blob: seen.append(seq))
        assert list(tail.gaps) == [1]  # still in progress: kept
        slow.commit()
        await tail.poll(conn, "me", lambda seq, blob: seen.append(seq))
        assert seen == [2, 1]
        assert tail.gaps == {}
    finally:
        slow.close()
        fast.close()
        conn.close()


async def test_the_tailer_closes_a_gap_whose_transaction_rolled_back(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)
    await backend.close()
    seen: list[int] = []
    tail = Tail()
    conn = await Conn.connect(pg_dsn)
    slow = psycopg.connect(pg_dsn)
    fast = psycopg.connect(pg_dsn, autocommit=True)
    try:
        insert(slow, created("never"))
        insert(fast, created("early"))
        await tail.poll(conn, "me", lambda seq, blob: seen.append(seq))
        assert list(tail.gaps) == [1]
        slow.rollback()
        await tail.poll(conn, "me", lambda seq, blob: seen.append(seq))
        assert seen == [2]
        assert tail.gaps == {}
        assert tail.cursor == 2
    finally:
        slow.close()
        fast.close()
        conn.close()


async def test_settled_waits_for_a_batch_in_flight(pg_dsn: str) -> None:
    backend, index = await opened(pg_dsn)
    try:
        await backend.append(created("a"))
        settled = trio.Event()

        async def settle() -> None:
            await backend.settled("a")
            settled.set()

        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute("LOCK TABLE ml_log IN ACCESS EXCLUSIVE MODE")  # the insert waits
            async with trio.open_nursery() as nursery:
                try:
                    nursery.start_soon(backend.append, done("a", "k"))
                    await trio.testing.wait_all_tasks_blocked()  # its round trip is on the wire
                    nursery.start_soon(settle)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not settled.is_set()
                    assert "k" not in index.instances["a"].steps
                finally:
                    blocker.rollback()  # the append, shielded, ends even if a check failed
                await settled.wait()
                assert "k" in index.instances["a"].steps
    finally:
        await backend.close()


async def test_a_read_cut_by_a_cancellation_leaves_reads_working(pg_dsn: str) -> None:
    backend, _ = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), done("a", "k")])
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute("LOCK TABLE ml_log IN ACCESS EXCLUSIVE MODE")  # the read waits
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(backend.read, 2)
                    await trio.testing.wait_all_tasks_blocked()  # on the wire
                    scope.cancel()
            blocker.rollback()
        assert scope.cancelled_caught
        assert (await backend.read(2))[r.KEY] == "k"
    finally:
        await backend.close()
