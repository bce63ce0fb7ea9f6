"""The writer connection lost: made again, and a commit in doubt settled by
reading the log back before it is acknowledged or sent again; the server
restarted under running engines."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from pgserver import PgServer
from support.suspend import until_state
from test_pg_backend import created, done, opened, rows

from memable_log import Context, Engine, JournalFailed
from memable_log._engine.engine import host_of
from memable_log._postgres.backend import PostgresBackend
from memable_log._postgres.writer import SENDS_BATCH


def writer_conn(backend: PostgresBackend) -> Any:
    assert backend.link is not None
    assert backend.link.conn is not None
    return backend.link.conn


async def test_a_commit_whose_reply_was_lost_is_read_back_not_written_again(
    pg_dsn: str,
) -> None:
    backend, index = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), done("a", "k1")])
        conn = writer_conn(backend)
        real = conn.query

        async def reply_lost(name: bytes, *args: Any) -> Any:
            result = await real(name, *args)
            if name in SENDS_BATCH:  # committed; the reply never arrives
                conn.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return result

        conn.query = reply_lost
        await backend.append(done("a", "k2"))  # settled: it committed, not sent again
        assert [row[2] for row in rows(pg_dsn)] == [None, "0:k1", "0:k2"]
        assert index.instances["a"].last_seq == 3
        assert backend.link is not None
        assert backend.link.in_doubt == [1, 0]
        assert backend.link.reconnects == 1
        await backend.append(done("a", "k3"))  # the new connection goes on
        assert [row[2] for row in rows(pg_dsn)] == [None, "0:k1", "0:k2", "0:k3"]
    finally:
        await backend.close()


async def test_a_batch_whose_session_was_ended_is_sent_again_once(pg_dsn: str) -> None:
    backend, index = await opened(pg_dsn)
    try:
        await backend.append_many([created("a"), done("a", "k1")])
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (writer_conn(backend).pid,))
        await backend.append(done("a", "k2"))  # in doubt, not committed: sent again
        assert [row[2] for row in rows(pg_dsn)] == [None, "0:k1", "0:k2"]
        assert index.instances["a"].last_seq == 3
        assert backend.link is not None
        assert backend.link.in_doubt == [0, 1]
    finally:
        await backend.close()


async def test_the_journal_failed_message_names_the_server(pg_dsn: str) -> None:
    async def one(ctx: Context) -> Any:
        return 1

    engine = Engine.builder().postgres(pg_dsn, worker="w", lease=5.0).build()
    engine.register("one", one)
    with trio.fail_after(10):
        async with engine:
            backend = host_of(engine).backend
            assert isinstance(backend, PostgresBackend)
            backend.link.close()  # type: ignore[union-attr]
            backend.keeper.fence_at = 0.0  # type: ignore[union-attr]  # past its lease
            with pytest.raises(JournalFailed) as got:
                await engine.invoke("one", instance_id="x")
            with pytest.raises(JournalFailed) as again:  # refused before anything is sent
                await engine.invoke("one", instance_id="y")  # (a rejoin is round trips away)
    for message in (str(got.value), str(again.value)):
        assert f"PostgreSQL journal at {backend.where()}" in message
        assert "lost its lease" in message
        assert "disk" not in message
    assert backend.where().startswith("127.0.0.1:")


STEPS = 30


async def test_engines_reconnect_when_the_server_restarts_and_lose_nothing(
    pg_server: PgServer, pg_dsn: str
) -> None:
    executed: list[tuple[str, str]] = []
    acknowledged: list[tuple[str, str]] = []
    halfway = trio.Event()

    async def chain(ctx: Context) -> Any:
        for i in range(STEPS):
            key = f"s{i}"
            await ctx.step(key).run(lambda key=key: executed.append((ctx.instance_id, key)))
            acknowledged.append((ctx.instance_id, key))
            if len(acknowledged) >= 40:
                halfway.set()
        return ctx.instance_id

    async def one(ctx: Context) -> Any:
        return ctx.instance_id

    def engine() -> Engine:
        built = Engine.builder().postgres(pg_dsn, worker="r", lease=10.0).build()
        built.register("chain", chain)
        built.register("one", one)
        return built

    ids = [f"i{n}" for n in range(6)]
    with trio.fail_after(40):
        async with engine() as a, engine() as b:
            for n, iid in enumerate(ids):
                await (a if n % 2 else b).invoke("chain", instance_id=iid)
            await halfway.wait()
            await trio.to_thread.run_sync(pg_server.restart)  # steps keep coming meanwhile
            for iid in ids:
                assert await a.wait(iid) == iid
            # Each engine writes after the restart (its chains may all have
            # ended before it), so each writer has had to reconnect.
            for name, eng in (("late-a", a), ("late-b", b)):
                await eng.invoke("one", instance_id=name)
                assert await eng.wait(name) == name
            for eng in (a, b):
                backend = host_of(eng).backend
                assert isinstance(backend, PostgresBackend)
                assert backend.failed is None
                assert backend.link is not None
                assert backend.link.reconnects >= 1
    # every body ran once, every acknowledged step is in the log, once
    assert sorted(executed) == sorted(acknowledged) == sorted(
        (iid, f"s{i}") for iid in ids for i in range(STEPS))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        logged = conn.execute(
            "SELECT instance_id, step_key FROM ml_log WHERE step_key IS NOT NULL").fetchall()
    assert sorted(logged) == sorted((iid, f"0:s{i}") for iid in ids for i in range(STEPS))


async def test_an_engine_cut_off_past_its_lease_rejoins_when_the_server_is_back(
    pg_server: PgServer, pg_dsn: str
) -> None:
    async def ask(ctx: Context) -> Any:
        await ctx.step("before").run(lambda: ran.append("before"))
        return await ctx.suspend("ok")

    ran: list[str] = []
    engine = Engine.builder().postgres(pg_dsn, worker="cut", lease=1.0).build()
    engine.register("ask", ask)
    with trio.fail_after(30):
        async with engine:
            await engine.invoke("ask", instance_id="x")
            await until_state(engine, "x", "suspended")
            backend = host_of(engine).backend
            assert isinstance(backend, PostgresBackend)
            first = backend.writer
            # down for longer than the engine trusts its lease (0.8 s): it
            # fences itself, then rejoins once the server answers again
            await trio.to_thread.run_sync(pg_server.restart, 1.5)
            await backend.until_rejoined()
            assert backend.rejoins == 1
            assert backend.writer != first
            await engine.signal("ask", "x", "ok", "back")  # x is its own again
            assert await engine.wait("x") == "back"
    assert ran == ["before"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(owner, epoch)] = conn.execute(
            "SELECT lease_owner, lease_epoch FROM ml_instances").fetchall()
    assert (owner.split("/")[0], epoch) == ("cut", 2)


async def test_a_debounced_start_due_while_the_engine_was_out_is_made_once_it_rejoins(
    pg_server: PgServer, pg_dsn: str
) -> None:
    async def job(ctx: Context) -> Any:
        return ctx.input

    engine = Engine.builder().postgres(pg_dsn, worker="deb", lease=1.0).build()
    engine.register("job", job)
    with trio.fail_after(30):
        async with engine:
            iid = await engine.debounce("job", "k", delay=1.0, input="late")
            # due in 1 s, while the server is down (2 s, past the lease): its
            # write is refused; armed again when the engine rejoins
            await trio.to_thread.run_sync(pg_server.restart, 2.0)
            backend = host_of(engine).backend
            assert isinstance(backend, PostgresBackend)
            await backend.until_rejoined()
            assert backend.rejoins == 1
            host = host_of(engine)
            while iid not in host.index.instances:  # made at once, not at the next start
                await host.changed(iid).wait()
            assert await engine.wait(iid) == "late"
