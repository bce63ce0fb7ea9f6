"""Retention on PostgreSQL (retention.py): finished instances past the
engine's retention are deleted from the database, in batches, once, and
never a live one or one with a record newer than the sweeper knows; the
schema migration from version 2 that it needs."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
import trio
from support.suspend import until_state
from test_pg_shared import seen

from memable_log import Clock, Context, Engine, UnknownInstance
from memable_log._engine.engine import host_of
from memable_log._postgres import retention


async def one(ctx: Context) -> Any:
    return await ctx.step("s").run(lambda: ctx.input)


async def ask(ctx: Context) -> Any:
    return await ctx.suspend("ok")


def shifted(offset: list[float]) -> Clock:
    """A wall clock the test moves forward (``offset[0]`` seconds)."""
    return Clock(lambda: time.time() + offset[0])


def built(dsn: str, offset: list[float], keep: float | None) -> Engine:
    eng = (Engine.builder().postgres(dsn, worker="ret", lease=5.0).clock(shifted(offset))
           .retention(keep).build())
    eng.register("one", one)
    eng.register("ask", ask)
    return eng


def rows(dsn: str) -> tuple[set[str], set[str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        log = {i for (i,) in conn.execute("SELECT DISTINCT instance_id FROM ml_log")}
        leases = {i for (i,) in conn.execute("SELECT instance_id FROM ml_instances")}
    return log, leases


async def test_finished_instances_past_retention_are_deleted_once_by_either_engine(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)  # three batches for five instances
    offset = [0.0]
    with trio.fail_after(15):
        async with built(pg_dsn, offset, 60.0) as a, built(pg_dsn, offset, 60.0) as b:
            for i in range(5):
                await a.invoke("one", i, instance_id=f"old{i}")
                assert await a.wait(f"old{i}") == i
            await a.invoke("ask", instance_id="live")
            await until_state(a, "live", "suspended")
            await seen(b, "old4", "completed")
            swept = host_of(a).backend.retention  # type: ignore[union-attr]
            assert await swept.sweep() == 0  # nothing is 60 s old yet
            offset[0] = 61.0
            await a.invoke("one", 9, instance_id="new")  # finished, but new
            assert await a.wait("new") == 9
            other = host_of(b).backend.retention  # type: ignore[union-attr]
            counts: list[int] = []

            async def sweep(which: Any) -> None:
                counts.append(await which.sweep())

            async with trio.open_nursery() as nursery:  # both at once: each deleted once
                nursery.start_soon(sweep, swept)
                nursery.start_soon(sweep, other)
            assert sum(counts) == 5
            log, leases = rows(pg_dsn)
            assert log == leases == {"live", "new"}
            await other.sweep()  # what the other deleted (or held locked) is found gone
            await swept.sweep()
            for eng in (a, b):
                with pytest.raises(UnknownInstance):
                    eng.status("old0")
                assert [s.instance_id for s in eng.instances()] == ["live", "new"]
            # the id is free again: a new instance
            await b.invoke("one", 7, instance_id="old0")
            await seen(a, "old0", "completed")
            assert await a.wait("old0") == 7
            assert a.status("live").state == "suspended"  # never a live one


async def test_an_instance_restarted_by_another_engine_is_kept_and_a_gone_one_refuses_rows(
    pg_dsn: str,
) -> None:
    offset = [0.0]
    with trio.fail_after(15):
        async with built(pg_dsn, offset, 60.0) as a, built(pg_dsn, offset, None) as b:
            for iid in ("x", "y"):
                await a.invoke("one", iid, instance_id=iid)
                await a.wait(iid)
                await seen(b, iid, "completed")
            offset[0] = 61.0
            swept = host_of(a).backend.retention  # type: ignore[union-attr]
            assert await swept.candidates() == ["x", "y"]
            await b.restart("x")  # a has not read it yet, or has: x is kept either way
            assert await swept.sweep() == 1
            assert rows(pg_dsn) == ({"x"}, {"x"})
            assert await a.wait("x") == "x"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # a row for a deleted instance (another engine's late signal) is refused
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT * FROM ml_append('w', ARRAY['y'], ARRAY[NULL], "
                         "ARRAY['\\x90'::bytea], '{}', '{}', '{}', false, '{}', '{}')")
        assert refused.value.sqlstate == "ML003"
        assert conn.execute("SELECT count(*) FROM ml_log WHERE instance_id = 'y'"
                            ).fetchone() == (0,)


async def test_a_child_outliving_its_parent_deleted_by_another_engine_still_ends(
    pg_dsn: str,
) -> None:
    async def parent(ctx: Context) -> Any:
        return await ctx.start_child("k", "ask")  # and does not wait for it

    offset = [0.0]
    with trio.fail_after(15):
        async with built(pg_dsn, offset, None) as a, built(pg_dsn, offset, 60.0) as b:
            a.register("parent", parent)
            await a.invoke("parent", instance_id="p")
            kid = await a.wait("p")
            await until_state(a, kid, "suspended")
            await seen(b, kid, "suspended")
            offset[0] = 61.0
            swept = host_of(b).backend.retention  # type: ignore[union-attr]
            assert await swept.sweep() == 1  # p, finished; a keeps it (retention None)
            assert a.status("p").state == "completed"
            # the child's end goes with a note to p, which is gone: written without it
            await a.signal("ask", kid, "ok", "done")
            assert await a.wait(kid) == "done"
            assert rows(pg_dsn) == ({kid}, {kid})


def _as_version(dsn: str, version: int) -> None:
    """Make a journal look as one of ``version`` did: its ml_append of eight
    parameters (a stand-in body), no queue state, and version 2 without
    first_seq either."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP FUNCTION ml_append(text, text[], text[], bytea[], text[], text[], "
                     "int8[], bool, text[], text[])")
        conn.execute("CREATE FUNCTION ml_append(p_writer text, p_inst text[], p_key text[], "
                     "p_rec bytea[], p_new text[], p_fence text[], p_epoch int8[], "
                     "p_notify bool) RETURNS SETOF int8 LANGUAGE sql AS 'SELECT 1::int8'")
        conn.execute("ALTER TABLE ml_instances DROP COLUMN queued")
        if version == 2:
            conn.execute("ALTER TABLE ml_instances DROP COLUMN first_seq")
        conn.execute("UPDATE ml_meta SET value = %s WHERE name = 'schema'", (version,))


@pytest.mark.parametrize("version", [2, 3])
async def test_an_older_journal_is_migrated(pg_dsn: str, version: int) -> None:
    offset = [0.0]
    async with built(pg_dsn, offset, None) as a:
        await a.invoke("one", 1, instance_id="x")
        await a.wait("x")
    _as_version(pg_dsn, version)
    async with built(pg_dsn, offset, None) as a:
        assert await a.wait("x") == 1
        await a.invoke("one", 2, instance_id="y")
        await a.wait("y")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM ml_meta").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM ml_instances WHERE queued").fetchone() == (0,)
        # an engine of the older version still running is stopped with a reason
        with pytest.raises(psycopg.Error) as outdated:
            conn.execute("SELECT * FROM ml_append('w', ARRAY['z'], ARRAY[NULL], "
                         "ARRAY['\\x90'::bytea], '{}', '{}', '{}', false)")
        assert outdated.value.sqlstate == "ML004"
        assert "schema version 4" in str(outdated.value)
        firsts = dict(conn.execute("SELECT instance_id, first_seq FROM ml_instances"))
        created = dict(conn.execute("SELECT instance_id, min(seq) FROM ml_log "
                                    "GROUP BY instance_id"))
    assert firsts == created  # x's filled by the migration, y's by ml_append


async def test_a_migration_that_fails_changes_nothing_and_says_why(pg_dsn: str) -> None:
    offset = [0.0]
    async with built(pg_dsn, offset, None) as a:
        await a.invoke("one", 1, instance_id="x")
        await a.wait("x")
    _as_version(pg_dsn, 3)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # in its way: the column it adds
        conn.execute("ALTER TABLE ml_instances ADD COLUMN queued int")
    # the statement's own error, not "current transaction is aborted" (from
    # releasing the advisory lock inside the failed transaction)
    with pytest.raises(psycopg.errors.DuplicateColumn):
        async with built(pg_dsn, offset, None):
            pass
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM ml_meta").fetchone() == (3,)
