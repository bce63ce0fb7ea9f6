"""Capacity across engines (SPEC-NEXT §9): an instance queued in a full
engine is run by another engine with room, and never taken once it runs.

Engines run in one trio run on the real clock; waits are bounded by
``fail_after`` and wait on the engines' own change events. Workflow bodies
block on in-memory events, so which engine runs what is decided by the
slots alone.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any

import psycopg
import trio
import trio.testing
from test_pg_shared import seen

from memable_log import Context, Engine
from memable_log._engine.engine import host_of
from memable_log._postgres.errors import Refused


class Site:
    """One engine's workflow body: who ran what, how many at once."""

    def __init__(self, name: str, go: trio.Event) -> None:
        self.name = name
        self.go = go
        self.now = 0
        self.most = 0
        self.ran: list[str] = []
        self.changed = trio.Event()

    async def slow(self, ctx: Context) -> Any:
        async def work() -> str:
            self.ran.append(ctx.instance_id)
            self.now += 1
            self.most = max(self.most, self.now)
            self.changed.set()
            self.changed = trio.Event()
            try:
                await self.go.wait()
            finally:
                self.now -= 1
            return self.name

        return await ctx.step("work").run(work)

    async def until_running(self, count: int) -> None:
        while self.now < count:
            await self.changed.wait()


def build(dsn: str, site: Site, max_running: int | None, lease: float = 30.0) -> Engine:
    eng = Engine.builder().postgres(dsn, worker=site.name, lease=lease).build()
    eng.register("slow", site.slow, max_running=max_running)
    return eng


def owner(dsn: str, instance_id: str) -> str:
    """The worker name of the engine that holds the instance's lease."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = conn.execute("SELECT w.writer FROM ml_instances m JOIN ml_workers w "
                           "ON w.writer = m.lease_owner WHERE instance_id = %s",
                           (instance_id,)).fetchone()
    assert got is not None
    return str(got[0]).split("/")[0]


def queued_in_db(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {i for (i,) in conn.execute("SELECT instance_id FROM ml_instances WHERE queued")}


async def test_instances_queued_in_a_full_engine_run_in_one_with_room(pg_dsn: str) -> None:
    go = trio.Event()
    a_site, b_site = Site("a", go), Site("b", go)
    ids = [f"x{i}" for i in range(8)]
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 2) as a, build(pg_dsn, b_site, 2) as b:
            for iid in ids:  # all invoked in a: two run there, six wait
                await a.invoke("slow", instance_id=iid)
            await a_site.until_running(2)
            await b_site.until_running(2)  # b, with room, took two of a's queue
            await host_of(a).backend.caught_up()  # type: ignore[union-attr]
            queued = [s.instance_id for s in a.instances() if s.state == "queued"]
            assert len(queued) == 4
            assert queued_in_db(pg_dsn) == set(queued)
            assert sorted(a_site.ran) == ["x0", "x1"]  # a's own, by creation order
            assert sorted(b_site.ran) == ["x2", "x3"]  # the oldest of its queue
            go.set()
            results = {iid: await a.wait(iid) for iid in ids}
            for iid in ids:
                await seen(b, iid, "completed")
    assert a_site.most <= 2
    assert b_site.most <= 2
    runs = Counter(a_site.ran + b_site.ran)
    assert runs == Counter(ids)  # every step ran once, in one engine
    assert {iid for iid, by in results.items() if by == "b"} == set(b_site.ran)
    assert queued_in_db(pg_dsn) == set()


async def test_an_engine_with_no_room_takes_nothing_until_a_slot_frees(pg_dsn: str) -> None:
    go_a, go_b = trio.Event(), trio.Event()
    a_site, b_site = Site("a", go_a), Site("b", go_b)
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 1) as a, build(pg_dsn, b_site, 1) as b:
            await b.invoke("slow", instance_id="b0")
            await b_site.until_running(1)
            await a.invoke("slow", instance_id="a0")
            await a.invoke("slow", instance_id="a1")
            await a_site.until_running(1)
            await seen(b, "a1", "queued")
            await trio.testing.wait_all_tasks_blocked(0.05)  # b has looked
            assert owner(pg_dsn, "a1") == "a"
            assert b_site.ran == ["b0"]
            go_b.set()  # b's slot frees: a1 is taken there, a0 still holds a's
            assert await b.wait("b0") == "b"
            await seen(a, "a1", "completed")
            assert b_site.ran == ["b0", "a1"]
            go_a.set()
            assert await a.wait("a0") == "a"
            assert await a.wait("a1") == "b"


async def test_a_queued_instance_taken_while_its_owner_hands_it_a_slot(pg_dsn: str) -> None:
    """a's run ends and its outcome's batch gives the slot to x1, queued
    there, which b took a moment before (a has not heard): x1's ``dequeued``
    is fenced out and goes aside; x0's outcome is written all the same.
    Then a has room and b none: a takes x1 back, and it runs once, in a."""
    go_a, go_b = trio.Event(), trio.Event()
    a_site, b_site = Site("a", go_a), Site("b", go_b)
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 1) as a, build(pg_dsn, b_site, 1) as b:
            await b.invoke("slow", instance_id="b0")  # b is full: it takes nothing itself
            await b_site.until_running(1)
            await a.invoke("slow", instance_id="x0")
            await a.invoke("slow", instance_id="x1")
            await seen(b, "x1", "queued")
            taken = await host_of(b).backend.take_queued(["x0", "x1"])  # type: ignore[union-attr]
            assert taken == ["x1"]  # x0 runs: never taken
            assert owner(pg_dsn, "x1") == "b"
            assert a.status("x1").state == "queued"  # a has not heard
            go_a.set()
            assert await a.wait("x0") == "a"  # its outcome's batch lost only x1's start
            assert await a.wait("x1") == "a"
            go_b.set()
            assert await b.wait("b0") == "b"
    assert a_site.ran == ["x0", "x1"]
    assert b_site.ran == ["b0"]


async def test_an_instance_whose_start_committed_is_not_taken(pg_dsn: str) -> None:
    go = trio.Event()
    a_site, b_site = Site("a", go), Site("b", go)
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 1) as a, build(pg_dsn, b_site, None) as b:
            await a.invoke("slow", instance_id="x0")
            await a_site.until_running(1)
            await seen(b, "x0", "running")
            backend = host_of(b).backend
            assert await backend.take_queued(["x0"]) == []  # type: ignore[union-attr]
            go.set()
            assert await a.wait("x0") == "a"
    assert b_site.ran == []


async def test_an_invoke_that_loses_the_id_to_another_engine_gives_its_slot_back(
    pg_dsn: str,
) -> None:
    go = trio.Event()
    go.set()
    a_site, b_site = Site("a", go), Site("b", go)
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 1) as a, build(pg_dsn, b_site, 1) as b:
            async with trio.open_nursery() as nursery:  # both write its creation: one loses
                for eng in (a, b):
                    nursery.start_soon(partial(eng.invoke, "slow", instance_id="same"))
            assert await a.wait("same") == await b.wait("same")
            for eng, iid in ((a, "next-a"), (b, "next-b")):
                await seen(eng, "same", "completed")
                await eng.invoke("slow", instance_id=iid)
                assert eng.status(iid).state != "queued"  # the loser's slot came back
    assert sorted(a_site.ran + b_site.ran) == ["next-a", "next-b", "same"]


async def test_a_signal_from_another_engine_wakes_a_limited_instance_where_there_is_room(
    pg_dsn: str,
) -> None:
    """x waits in a. Both engines' one slot of ``ask`` is held. b's signal
    decides nothing about capacity for a's instance (it is written alone,
    not with a ``queued`` that a's lease would fence out); a queues x; once
    b's slot frees, b takes x and runs it."""
    holds = {"busy-a": trio.Event(), "busy-b": trio.Event()}
    ran: list[tuple[str, str]] = []

    def ask(site: str) -> Any:
        async def body(ctx: Context) -> Any:
            ran.append((site, ctx.instance_id))
            if ctx.instance_id in holds:
                await ctx.step("hold").run(holds[ctx.instance_id].wait)
                return None
            return await ctx.suspend("go")

        return body

    def make(site: str) -> Engine:
        eng = Engine.builder().postgres(pg_dsn, worker=site, lease=30.0).build()
        eng.register("ask", ask(site), max_running=1)
        return eng

    with trio.fail_after(20):
        async with make("a") as a, make("b") as b:
            await a.invoke("ask", instance_id="x")
            await seen(a, "x", "suspended")
            await a.invoke("ask", instance_id="busy-a")
            await b.invoke("ask", instance_id="busy-b")
            await seen(b, "busy-a", "running")
            await b.signal("ask", "x", "go", 42)
            await seen(b, "x", "queued")  # by a, its owner
            holds["busy-b"].set()
            assert await b.wait("x") == 42
            holds["busy-a"].set()
            await a.wait("busy-a")
    assert ran == [("a", "x"), ("a", "busy-a"), ("b", "busy-b"), ("b", "x")]


async def test_a_slot_handed_to_an_instance_another_engine_took_and_started_runs_nothing(
    pg_dsn: str,
) -> None:
    """The kill -9 campaign's one violation (seed 64): x1, queued in a, was
    taken by b, which started it; a's run of x0 ended and handed its slot to
    x1 (a had not heard), that ``dequeued`` was fenced out and put aside,
    and before a looked at its batch again its tailer applied b's
    ``dequeued``: x1 was running by a's index, and a ran it too, its steps
    beside b's. Here a's tailer is made to read the log right when the
    fence refuses the batch."""
    go_a, go_b = trio.Event(), trio.Event()
    a_site, b_site = Site("a", go_a), Site("b", go_b)
    with trio.fail_after(20):
        async with build(pg_dsn, a_site, 1) as a, build(pg_dsn, b_site, 1) as b:
            backend = host_of(a).backend
            assert backend is not None
            await a.invoke("slow", instance_id="x0")
            await a_site.until_running(1)
            backend.poll = 60.0  # type: ignore[attr-defined]  # a reads the log when told only
            await backend.caught_up()  # type: ignore[attr-defined]
            await a.invoke("slow", instance_id="x1")  # queued in a
            await b_site.until_running(1)  # b took x1 and started it
            commits = backend.commits  # type: ignore[attr-defined]
            write = commits._write

            async def refused_then_read(recs: list[Any]) -> list[int]:
                try:
                    return await write(recs)  # type: ignore[no-any-return]
                except Refused:
                    await backend.caught_up()  # type: ignore[attr-defined]
                    raise

            commits._write = refused_then_read
            go_a.set()
            assert await a.wait("x0") == "a"  # its outcome written, x1's start put aside
            await trio.testing.wait_all_tasks_blocked(0.05)
            go_b.set()
            assert await b.wait("x1") == "b"
    assert a_site.ran == ["x0"]  # never x1
    assert b_site.ran == ["x1"]
