"""Several engines on one database (phase 2): what one engine sees and does
for instances another engine runs.

Engines here run in one trio run on the real clock (the lease is the
database's clock); waits are bounded by ``fail_after`` and wait on the
engine's own events (``seen``: the tailer brings another engine's records
within its 0.2 s poll, or at once on NOTIFY).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pg_worker
import psycopg
import pytest
import trio
import trio.testing
from support.suspend import until_state

from memable_log import Context, Engine, SignalAlreadyDelivered, WorkflowCancelled
from memable_log._engine.engine import host_of


def engine(dsn: str, *, lease: float = 5.0, **workflows: Any) -> Engine:
    built = Engine.builder().postgres(dsn, worker="test", lease=lease).build()
    for name, fn in workflows.items():
        built.register(name, fn)
    return built


async def seen(eng: Engine, instance_id: str, state: str | None = None) -> None:
    """Until ``eng``'s index has the instance (in ``state``), which its
    tailer applies from the shared log (each record it applies sets the
    instance's change event)."""
    while True:
        changed = host_of(eng).changed(instance_id)
        found = [s for s in eng.instances(prefix=instance_id) if s.instance_id == instance_id]
        if found and (state is None or found[0].state == state):
            return
        await changed.wait()


async def test_another_engines_instance_wakes_wait_and_event_readers(pg_dsn: str) -> None:
    async def two(ctx: Context) -> Any:
        await ctx.publish("half", 1)
        got = await ctx.suspend("go")
        await ctx.publish("all", got)
        return got * 2

    with trio.fail_after(10):
        async with engine(pg_dsn, two=two) as a, engine(pg_dsn, two=two) as b:
            await a.invoke("two", instance_id="x")
            await seen(b, "x", "suspended")
            results: list[Any] = []

            async def read_on_b() -> None:
                results.append(await b.event("x", "all"))
                results.append(await b.wait("x"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_on_b)
                await trio.sleep(0.05)  # b's readers are parked on its events
                await a.signal("two", "x", "go", 21)
            assert results == [21, 42]
            assert [e.key async for e in b.events("x")] == ["half", "all"]


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def until_in(path: Path, line: str) -> None:
    """Until the ledger file holds ``line``: another process's body reached
    it (no event crosses processes: a short poll)."""
    while line not in lines(path):  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_a_killed_engines_instance_is_taken_over_and_finished(
    pg_dsn: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    lease = 0.8
    worker = Path(__file__).with_name("pg_worker.py")
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(worker), pg_dsn, str(ledger), str(lease)])
    try:
        with trio.fail_after(20):
            await until_in(ledger, pg_worker.STALL)  # killed inside step s3
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    killed_at = time.monotonic()
    with trio.fail_after(10):
        async with engine(pg_dsn, lease=lease, job=pg_worker.job(str(ledger), stall=False)) as b:
            assert await b.wait("job") == sum(range(pg_worker.STEPS))
            took = time.monotonic() - killed_at
    # Each step committed before the kill ran once; s3, in flight, ran again.
    assert lines(ledger) == ["s0", "s1", "s2", "s3", "s3", "s4", "s5"]
    assert took < lease + 1.0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(epoch,)] = conn.execute(
            "SELECT lease_epoch FROM ml_instances WHERE instance_id = 'job'").fetchall()
    assert epoch == 2


async def test_a_stalled_engines_late_write_is_fenced_and_it_stops_that_instance(
    pg_dsn: str,
) -> None:
    gate, entered = trio.Event(), trio.Event()
    ran: list[str] = []

    def slow_flow(stall: bool) -> Any:
        async def flow(ctx: Context) -> Any:
            await ctx.step("one").run(lambda: ran.append("one") or 1)

            async def slow() -> str:
                ran.append("slow")
                if stall:
                    entered.set()
                    await gate.wait()
                return "late" if stall else "fresh"

            return await ctx.step("slow").run(slow)
        return flow

    with trio.fail_after(15):
        a = engine(pg_dsn, lease=2.0, flow=slow_flow(True))
        async with a:
            await a.invoke("flow", instance_id="x")
            await entered.wait()
            # a stalls: no renewal, and its self-fencing off (as a SIGSTOPped
            # process that wakes after its lease: its clock did not run)
            keeper = host_of(a).backend.keeper  # type: ignore[union-attr]
            keeper.paused, keeper.fence_at = True, math.inf
            async with engine(pg_dsn, lease=2.0, flow=slow_flow(False)) as b:
                assert await b.wait("x") == "fresh"  # taken over, run again
                gate.set()  # a's body ends: its write is fenced out
                await until_state(a, "x", "completed")
                assert [s.key for s in b.steps("x")] == ["one", "slow"]
                assert a.status("x").state == "completed"  # b's outcome, tailed
                assert await a.wait("x") == "fresh"
                assert "x" not in host_of(a).running
                # the refusal stopped that instance only: a's journal is not failed
                assert host_of(a).backend.failed is None  # type: ignore[union-attr]
    assert ran == ["one", "slow", "slow"]


async def test_an_engine_whose_renewals_stop_fences_itself_then_rejoins(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    entered = trio.Event()
    stopped: list[str] = []
    ran: list[str] = []

    async def flow(ctx: Context) -> Any:
        await ctx.step("first").run(lambda: ran.append("first"))

        async def body() -> str:
            ran.append("stuck")
            if len(ran) > 2:
                return "ok"  # again, once the engine rejoined
            entered.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                stopped.append(f"cancelled after {trio.current_time() - paused_at:.2f}s")
                raise
            return "not reached"

        return await ctx.step("stuck").run(body)

    with trio.fail_after(10):
        a = engine(pg_dsn, lease=2.0, flow=flow)
        async with a:
            await a.invoke("flow", instance_id="x")
            await entered.wait()
            backend: Any = host_of(a).backend
            first = backend.writer
            paused_at = trio.current_time()
            backend.keeper.paused = True  # the database unreachable, say: no renewal succeeds
            # It stops x before the database's expiry, then (the database
            # answers) rejoins under a new name, takes x back (nobody took
            # it), and runs it on: the step in flight again, the first not.
            assert await a.wait("x") == "ok"
            assert backend.rejoins == 1
            assert backend.failed is None
            assert backend.writer != first
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                assert conn.execute("SELECT lease_owner, lease_epoch FROM ml_instances"
                                    ).fetchall() == [(backend.writer, 2)]
    [when] = stopped
    assert float(when.split()[2][:-1]) < 2.0  # before the database's expiry
    assert ran == ["first", "stuck", "stuck"]
    assert any("lost its lease" in rec.getMessage() for rec in caplog.records)


async def approve(ctx: Context) -> Any:
    await ctx.step("before").run(lambda: "before")
    answer = await ctx.suspend("ok")
    return ["done", answer]


async def test_a_signal_through_another_engine_resumes_the_instance_where_it_runs(
    pg_dsn: str,
) -> None:
    with trio.fail_after(10):
        async with engine(pg_dsn, approve=approve) as a, engine(pg_dsn, approve=approve) as b:
            await a.invoke("approve", instance_id="x")
            await seen(b, "x", "suspended")
            await b.signal("approve", "x", "ok", "yes")  # written by b, unfenced
            assert await a.wait("x") == ["done", "yes"]  # a, woken by NOTIFY, ran it
            assert await b.wait("x") == ["done", "yes"]
            assert "x" not in host_of(b).running


async def test_actions_on_an_instance_another_engine_created_a_moment_ago(
    pg_dsn: str,
) -> None:
    with trio.fail_after(10):
        async with engine(pg_dsn, approve=approve) as a, engine(pg_dsn, approve=approve) as b:
            await a.invoke("approve", instance_id="x")
            # b has not tailed it yet: it reads the log before it says unknown
            await b.signal("approve", "x", "ok", "at once")
            assert await a.wait("x") == ["done", "at once"]
            await a.invoke("approve", instance_id="y")
            await b.cancel("y")
            with pytest.raises(WorkflowCancelled):
                await a.wait("y")


async def test_a_signal_sent_before_the_wait_is_delivered_once(pg_dsn: str) -> None:
    gate = trio.Event()

    async def late(ctx: Context) -> Any:
        async def first() -> str:
            await gate.wait()
            return "first"

        await ctx.step("first").run(first)
        return await ctx.suspend("ok")

    with trio.fail_after(10):
        async with engine(pg_dsn, late=late) as a, engine(pg_dsn, late=late) as b:
            await a.invoke("late", instance_id="x")
            await seen(b, "x")
            await b.signal("late", "x", "ok", "early")  # a has not reached the wait
            with pytest.raises(SignalAlreadyDelivered):
                await b.signal("late", "x", "ok", "again")
            gate.set()
            assert await a.wait("x") == "early"
    assert keys_written(pg_dsn, "x") == ["w0:ok", "0:first"]


async def test_two_engines_signalling_one_wait_deliver_one_signal(pg_dsn: str) -> None:
    outcomes: dict[str, str] = {}

    async def send(eng: Engine, name: str) -> None:
        try:
            await eng.signal("approve", "x", "ok", name)
            outcomes[name] = "delivered"
        except SignalAlreadyDelivered:
            outcomes[name] = "refused"

    with trio.fail_after(10):
        async with engine(pg_dsn, approve=approve) as a, engine(pg_dsn, approve=approve) as b:
            await a.invoke("approve", instance_id="x")
            await seen(b, "x", "suspended")
            async with trio.open_nursery() as nursery:  # at once: both pass their checks
                nursery.start_soon(send, a, "a")
                nursery.start_soon(send, b, "b")
            [winner] = [name for name, got in outcomes.items() if got == "delivered"]
            assert sorted(outcomes.values()) == ["delivered", "refused"]
            assert await a.wait("x") == ["done", winner]
            await seen(b, "x", "completed")
    assert keys_written(pg_dsn, "x") == ["0:before", "w0:ok"]


async def test_a_signal_sent_during_a_takeover_is_delivered_once(pg_dsn: str) -> None:
    lease = 0.6
    with trio.fail_after(10):
        async with engine(pg_dsn, lease=lease, approve=approve) as b:
            a = engine(pg_dsn, lease=lease, approve=approve)
            async with a:
                await a.invoke("approve", instance_id="x")
                await seen(b, "x", "suspended")
                # a dies: its connections close, its lease is not released
                host_of(a).backend.fail("killed")  # type: ignore[union-attr]
            assert not host_of(b).backend.owns("x")  # type: ignore[union-attr]
            await b.signal("approve", "x", "ok", "meanwhile")  # a's lease not expired yet
            assert await b.wait("x") == ["done", "meanwhile"]  # b claimed it, ran it
            assert host_of(b).backend.owns("x")  # type: ignore[union-attr]
    assert keys_written(pg_dsn, "x") == ["0:before", "w0:ok"]


async def test_one_id_invoked_from_two_engines_at_once_starts_one_instance(
    pg_dsn: str,
) -> None:
    runs: list[str] = []

    async def once(ctx: Context) -> Any:
        runs.append("run")
        return await ctx.step("s").run(lambda: "ok")

    got: list[str] = []

    async def invoke(eng: Engine) -> None:
        got.append(await eng.invoke("once", instance_id="same"))

    with trio.fail_after(10):
        async with engine(pg_dsn, once=once) as a, engine(pg_dsn, once=once) as b:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(invoke, a)
                nursery.start_soon(invoke, b)
            assert got == ["same", "same"]
            assert await a.wait("same") == "ok"
            assert await b.wait("same") == "ok"
    assert runs == ["run"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(created,)] = conn.execute(
            "SELECT count(*) FROM ml_log WHERE instance_id = 'same' AND seq IN ("
            " SELECT min(seq) FROM ml_log GROUP BY instance_id)").fetchall()
        [(instances,)] = conn.execute("SELECT count(*) FROM ml_instances").fetchall()
    assert (created, instances) == (1, 1)


def keys_written(dsn: str, instance_id: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT step_key FROM ml_log WHERE instance_id = %s AND step_key IS NOT NULL "
            "ORDER BY seq", (instance_id,))]


async def test_lost_tailer_listener_and_lease_connections_are_made_again(
    pg_dsn: str,
) -> None:
    with trio.fail_after(10):
        async with engine(pg_dsn, lease=0.6, approve=approve) as a, \
                engine(pg_dsn, lease=0.6, approve=approve) as b:
            await a.invoke("approve", instance_id="x")
            await seen(b, "x", "suspended")
            backend = host_of(a).backend
            writer, keeper = backend.writer, backend.keeper  # type: ignore[union-attr]
            while keeper.renewals < 1:  # its connection is made
                await keeper.renewed.wait()
            renewed = keeper.renewals
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                [(killed,)] = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = ANY(%s)",
                    ([f"memable_log {role} {writer}" for role in ("tailer", "listener", "lease")],),
                ).fetchall()
            assert killed == 3
            await b.signal("approve", "x", "ok", "after")  # a's new tailer brings it
            assert await a.wait("x") == ["done", "after"]
            # renewed on a new connection (by a rejoin's new keeper if the
            # loaded machine let the lease run out meanwhile)
            while backend.keeper is keeper and keeper.renewals < renewed + 2:  # type: ignore[union-attr]
                with trio.move_on_after(0.6):  # a rejoin replaces the keeper: look again
                    await keeper.renewed.wait()
            if backend.keeper is not keeper:  # type: ignore[union-attr]
                await backend.keeper.renewed.wait()  # type: ignore[union-attr]
            assert backend.failed is None  # type: ignore[union-attr]


async def test_another_engines_instance_timeout_is_fired_by_its_owner_only(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with engine(pg_dsn, approve=approve) as a:
            await a.invoke("approve", instance_id="x", timeout=0.5)
            await until_state(a, "x", "suspended")
            async with engine(pg_dsn, approve=approve) as b:  # its start sees x live
                with pytest.raises(WorkflowCancelled):
                    await b.wait("x")
                assert b.status("x").state == "cancelled"
                assert host_of(b).backend.failed is None  # type: ignore[union-attr]
                await b.invoke("approve", instance_id="y")
                await until_state(b, "y", "suspended")
    assert "fenced out" not in caplog.text  # b never tried to cancel it


async def test_a_sigstopped_engine_is_fenced_out_when_it_wakes_past_its_lease(
    pg_dsn: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    lease = 2.0
    worker = Path(__file__).with_name("pg_worker.py")
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(worker), pg_dsn, str(ledger), str(lease), "stop"],
        stdout=subprocess.PIPE)
    try:
        with trio.fail_after(20):
            await until_in(ledger, pg_worker.STALL)  # inside s3, the process blocked
            proc.send_signal(signal.SIGSTOP)
            async with engine(pg_dsn, lease=lease,
                              job=pg_worker.job(str(ledger), stall=False)) as b:
                assert await b.wait("job") == sum(range(pg_worker.STEPS))  # taken over
            Path(f"{ledger}.go").touch()  # noqa: ASYNC240 (s3 ends when it runs again)
            proc.send_signal(signal.SIGCONT)
            assert proc.stdout is not None
            out = b""
            while not out.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                assert chunk, "the stopped engine exited without its report"
                out += chunk
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    report = json.loads(out)
    # it stopped running "job", which it sees finished by the other engine
    assert report["state"] == "completed"
    assert report["running"] is False
    # its late write of s3 was refused (its own clock fenced it: its lease
    # ran out while stopped; the server would refuse it too), and it ran
    # no step after that
    assert report["lost"] is True
    # then it rejoined (a new name, nothing of "job" taken back: b had it)
    # and writes again
    assert report["rejoins"] == 1
    assert report["after"] == "written after the rejoin"
    *ran, refused = lines(ledger)
    assert ran == ["s0", "s1", "s2", "s3", "s3", "s4", "s5"]
    assert refused in ("refused:s3:PostgresJournalFailed", "refused:s3:Cancelled")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        writers = conn.execute(
            "SELECT step_key, split_part(writer, '/', 1) FROM ml_log "
            "WHERE step_key IS NOT NULL AND instance_id = 'job' ORDER BY seq").fetchall()
    assert writers == [("0:s0", "victim"), ("0:s1", "victim"), ("0:s2", "victim"),
                       ("0:s3", "test"), ("0:s4", "test"), ("0:s5", "test")]


async def test_an_engines_own_notifies_do_not_wake_its_tailer(pg_dsn: str) -> None:
    async def one(ctx: Context) -> Any:
        return 1

    with trio.fail_after(10):
        async with engine(pg_dsn, one=one) as a, engine(pg_dsn, one=one) as b:
            tailers = []
            for eng in (a, b):
                backend = host_of(eng).backend
                backend.poll = 60.0  # type: ignore[union-attr]
                await backend.caught_up()  # type: ignore[union-attr]
                tailers.append(backend.follower)  # type: ignore[union-attr]
            before = [t.polls for t in tailers]
            for i in range(3):  # each sends NOTIFY: created, completed
                await a.invoke("one", instance_id=f"x{i}")
                await a.wait(f"x{i}")
                await seen(b, f"x{i}", "completed")
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert tailers[0].polls == before[0]  # its own rows: applied as written
            assert tailers[1].polls > before[1]  # b's tailer read them
            await b.invoke("one", instance_id="y")
            await seen(a, "y", "completed")  # a's tailer woke for b's
