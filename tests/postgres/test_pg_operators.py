"""Operator actions from an engine that does not own the instance (it takes
the instance over: design.md), children across engines, and schedules and
debounce with two engines ticking them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio
from support.suspend import until_state
from test_pg_shared import engine, keys_written, seen

from memable_log import Clock, Context, Engine, WorkflowCancelled
from memable_log._core import records as r
from memable_log._core.index import child_id
from memable_log._engine.engine import host_of


def owner(dsn: str, instance_id: str) -> tuple[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        [(name, epoch)] = conn.execute(
            "SELECT lease_owner, lease_epoch FROM ml_instances WHERE instance_id = %s",
            (instance_id,)).fetchall()
    return name, epoch


def writer(eng: Engine) -> str:
    return host_of(eng).backend.writer  # type: ignore[union-attr,no-any-return]


async def test_cancel_from_another_engine_stops_the_instance_where_it_runs(
    pg_dsn: str,
) -> None:
    entered = trio.Event()
    stopped: list[str] = []

    async def stuck(ctx: Context) -> Any:
        async def body() -> None:
            entered.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                stopped.append("cancelled")
                raise

        await ctx.step("stuck").run(body)

    with trio.fail_after(10):
        async with engine(pg_dsn, stuck=stuck) as a, engine(pg_dsn, stuck=stuck) as b:
            await a.invoke("stuck", instance_id="x")
            await entered.wait()
            await seen(b, "x")
            await b.cancel("x")  # b takes x (a fenced out), writes the cancel
            with pytest.raises(WorkflowCancelled):
                await b.wait("x")
            while "x" in host_of(a).running:  # a saw b's record: it stopped x
                await host_of(a).changed("x").wait()
            assert a.status("x").state == "cancelled"
            assert host_of(a).backend.failed is None  # type: ignore[union-attr]
    assert stopped == ["cancelled"]
    assert owner(pg_dsn, "x")[1] == 2


async def test_restart_forget_and_wake_from_another_engine_apply_once(pg_dsn: str) -> None:
    ran: list[str] = []

    async def flow(ctx: Context) -> Any:
        got = await ctx.step("a").run(lambda: ran.append("a") or 1)
        await ctx.timer("t", 3600)
        return got + await ctx.step("b").run(lambda: ran.append("b") or 2)

    with trio.fail_after(15):
        async with engine(pg_dsn, flow=flow) as a, engine(pg_dsn, flow=flow) as b:
            await a.invoke("flow", instance_id="x")
            await until_state(a, "x", "sleeping")
            await seen(b, "x", "sleeping")
            await b.wake("x", "t")  # b takes x, fires the timer, runs it on
            assert await b.wait("x") == 3
            assert owner(pg_dsn, "x")[0] == writer(b)
            await a.forget("x", "b")  # back to a, on a finished instance
            await a.restart("x")  # a runs it again: "a" kept, "b" forgotten
            assert await a.wait("x") == 3
            assert await b.wait("x") == 3
            assert owner(pg_dsn, "x")[0] == writer(a)
    assert ran == ["a", "b", "b"]
    # a step's key counts the instance's forgets and restarts: first writer wins per run
    assert keys_written(pg_dsn, "x") == ["0:a", "w0:t", "0:b", "2:b"]


async def test_a_child_run_by_another_engine_ends_its_parents_wait(pg_dsn: str) -> None:
    async def kid(ctx: Context) -> Any:
        return ["kid", await ctx.suspend("go")]

    async def parent(ctx: Context) -> Any:
        return await ctx.child("k", "kid")

    with trio.fail_after(15):
        async with engine(pg_dsn, parent=parent, kid=kid) as a, \
                engine(pg_dsn, parent=parent, kid=kid) as b:
            await a.invoke("parent", instance_id="p")
            child = child_id("p", "k")
            await seen(a, child, "suspended")
            await seen(b, child, "suspended")
            await b.forget(child, "nothing")  # b takes the child; a keeps the parent
            assert owner(pg_dsn, child)[0] == writer(b)
            await a.signal("kid", child, "go", 1)
            assert await a.wait("p") == ["kid", 1]  # b ended it; a's parent woke
            assert owner(pg_dsn, "p")[0] == writer(a)
            assert host_of(a).backend.failed is None  # type: ignore[union-attr]
            assert host_of(b).backend.failed is None  # type: ignore[union-attr]


async def test_a_cancel_takes_the_descendants_another_engine_runs(pg_dsn: str) -> None:
    async def grand(ctx: Context) -> Any:
        return await ctx.suspend("go")

    async def kid(ctx: Context) -> Any:
        return await ctx.child("g", "grand")

    async def parent(ctx: Context) -> Any:
        return await ctx.child("k", "kid")

    flows = {"parent": parent, "kid": kid, "grand": grand}
    with trio.fail_after(15):
        async with engine(pg_dsn, **flows) as a, engine(pg_dsn, **flows) as b:
            await a.invoke("parent", instance_id="p")
            kid_id = child_id("p", "k")
            grand_id = child_id(kid_id, "g")
            await seen(b, grand_id, "suspended")
            await b.forget(kid_id, "nothing")  # b runs the child; a the parent, the grandchild
            assert owner(pg_dsn, kid_id)[0] == writer(b)
            await a.cancel("p")  # takes the child from b, then cancels all three at once
            with pytest.raises(WorkflowCancelled):
                await a.wait("p")
            await seen(b, "p", "cancelled")
            for iid in ("p", kid_id, grand_id):
                assert owner(pg_dsn, iid)[0] == writer(a)
                assert a.status(iid).state == b.status(iid).state == "cancelled"
            while kid_id in host_of(b).running:  # b saw a's record: it stopped the child
                await host_of(b).changed(kid_id).wait()
            assert host_of(a).backend.failed is None  # type: ignore[union-attr]
            assert host_of(b).backend.failed is None  # type: ignore[union-attr]


def near_a_minute() -> Clock:
    """A wall clock 1.5 s before a whole minute (cron's ticks), same for
    every engine of the test."""
    now = time.time()
    shift = (60 - now % 60) - 1.5
    return Clock(lambda: time.time() + shift)


async def test_a_schedule_ticks_once_with_two_engines(pg_dsn: str) -> None:
    runs: list[str] = []

    async def ticked(ctx: Context) -> Any:
        runs.append(ctx.instance_id)
        return await ctx.step("s").run(lambda: "ok")

    clock = near_a_minute()

    def built() -> Engine:
        eng = Engine.builder().postgres(pg_dsn, worker="s", lease=5.0).clock(clock).build()
        eng.register("tick", ticked)
        return eng

    tick = datetime.fromtimestamp(clock.now() // 60 * 60 + 60, tz=UTC)
    iid = f"every@{tick:%Y-%m-%dT%H:%M:%SZ}"
    with trio.fail_after(15):
        async with built() as a, built() as b:
            await a.schedule("every", "tick", cron="* * * * *")
            while not b.schedules():  # b ticks it too
                await host_of(b).changed(r.ENGINE).wait()
            await seen(a, iid, "completed")
            await seen(b, iid, "completed")
    assert runs == [iid]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        [(instances,)] = conn.execute(
            "SELECT count(*) FROM ml_instances WHERE instance_id LIKE 'every@%'").fetchall()
    assert instances == 1


async def test_a_debounced_start_fires_once_with_two_engines(pg_dsn: str) -> None:
    runs: list[str] = []

    async def job(ctx: Context) -> Any:
        runs.append(ctx.instance_id)
        return ctx.instance_id

    with trio.fail_after(10):
        async with engine(pg_dsn, job=job) as a, engine(pg_dsn, job=job) as b:
            iid = await a.debounce("job", "k", delay=0.5)  # b tails it: due there too
            await seen(a, iid, "completed")
            await seen(b, iid, "completed")
    assert runs == [iid]


async def test_finished_instances_keep_an_owner_and_are_taken_over(pg_dsn: str) -> None:
    async def quick(ctx: Context) -> Any:
        return await ctx.step("s").run(lambda: "ok")

    with trio.fail_after(10):
        async with engine(pg_dsn, quick=quick) as b:
            async with engine(pg_dsn, quick=quick) as a:
                await a.invoke("quick", instance_id="x")
                assert await a.wait("x") == "ok"
                assert owner(pg_dsn, "x")[0] == writer(a)
            # a stopped (its lease released): b claims x, finished as it is
            while not host_of(b).backend.owns("x"):  # type: ignore[union-attr]
                await host_of(b).backend.caught_up()  # type: ignore[union-attr]
            assert owner(pg_dsn, "x") == (writer(b), 2)
            await b.restart("x")  # its own now: no take
            assert await b.wait("x") == "ok"
            assert owner(pg_dsn, "x") == (writer(b), 2)
