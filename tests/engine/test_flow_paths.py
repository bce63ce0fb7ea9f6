"""Flow control on every path that creates, wakes or starts an instance
(SPEC-NEXT §4): a schedule's tick, a debounced start and a child are
counted against ``max_running``, ``max_running_per_key`` and ``rate`` as an
invoke is; a woken instance with no slot is queued in the batch that wakes
it; a start out of the queue rides in the batch of the outcome that freed
its slot; a cancel of a queued instance is never followed by its start;
one timer poller serves the whole engine.

Wall time is a ManualClock under trio's MockClock; START is
2023-11-14T22:13:20Z, so the first minute tick after it is 22:14:00Z.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from support.suspend import finish, memory_engine, records_of
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import Context, Engine, ManualClock, MemoryStorage
from memable_log._core.records import TYPE_NAMES

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Board:
    """Who runs now, the most at once (per key and in all), and a gate per input."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.total = 0
        self.most_total = 0
        self.began: list[Any] = []
        self.gates: dict[Any, trio.Event] = {}

    def gate(self, name: Any) -> trio.Event:
        return self.gates.setdefault(name, trio.Event())

    async def hold(self, name: Any, key: str) -> None:
        self.began.append(name)
        self.now[key] += 1
        self.total += 1
        self.most[key] = max(self.most[key], self.now[key])
        self.most_total = max(self.most_total, self.total)
        try:
            await self.gate(name).wait()
        finally:
            self.now[key] -= 1
            self.total -= 1


@contextmanager
def batches(engine: Engine) -> Iterator[list[list[tuple[str, str]]]]:
    """Every batch the journal is asked to append, as (type, instance) lists."""
    seen: list[list[tuple[str, str]]] = []
    journal = engine._backend.journal
    original = journal.append_many

    async def spy(recs: list[list[Any]]) -> None:
        seen.append([(TYPE_NAMES[rec[0]], rec[3]) for rec in recs])
        await original(recs)

    journal.append_many = spy
    try:
        yield seen
    finally:
        journal.append_many = original


def types(storage: MemoryStorage, instance_id: str) -> list[str]:
    return [rec.type for rec in records_of(storage) if rec.instance == instance_id]


# -- 1. every creation path is counted ---------------------------------------------------


async def test_a_tick_that_overlaps_the_last_one_queues_behind_max_running_per_key(
    autojump_clock: MockClock,
) -> None:
    board = Board()
    storage = MemoryStorage()

    async def nightly(ctx: Context) -> str:
        await board.hold(ctx.instance_id, ctx.input["tenant"])
        return ctx.instance_id

    engine = memory_engine(storage, ManualClock(START))
    engine.register("nightly", nightly, key=lambda x: x["tenant"], max_running_per_key=1)
    first, second = "every@2023-11-14T22:14:00Z", "every@2023-11-14T22:15:00Z"
    async with engine:
        await engine.schedule("every", "nightly", cron="* * * * *", input={"tenant": "t1"})
        await trio.sleep(100)  # 22:15:00Z: the second tick, the first still runs
        await wait_all_tasks_blocked()
        assert engine.status(first).state == "running"
        assert engine.status(second).state == "queued"
        board.gate(first).set()
        assert await finish(engine, first) == first
        board.gate(second).set()
        assert await finish(engine, second) == second
        await engine.unschedule("every")
    assert board.most["t1"] == 1
    # The tick's batch carries its key and its place in the queue.
    assert types(storage, second)[:3] == ["created", "options", "queued"]


async def test_a_debounced_start_queues_behind_max_running(autojump_clock: MockClock) -> None:
    board = Board()
    storage = MemoryStorage()

    async def hook(ctx: Context) -> str:
        await board.hold(ctx.instance_id, "all")
        return ctx.input

    engine = memory_engine(storage, ManualClock(START))
    engine.register("hook", hook, max_running=1)
    async with engine:
        running = await engine.invoke("hook", "direct", instance_id="direct")
        await wait_all_tasks_blocked()
        debounced = await engine.debounce("hook", "k", delay=5, input="burst")
        with batches(engine) as seen:
            await trio.sleep(6)
            await wait_all_tasks_blocked()
        assert engine.status(debounced).state == "queued"
        # Queued in the start's own batch: no append of its own.
        assert seen == [[("created", debounced), ("queued", debounced), ("debounce_set", "")]]
        board.gate(running).set()
        board.gate(debounced).set()
        assert await finish(engine, debounced) == "burst"
    assert board.most_total == 1


async def test_children_queue_behind_max_running_and_their_parked_parent_holds_no_slot(
    autojump_clock: MockClock,
) -> None:
    """SPEC-NEXT §4: waiting instances hold no slot. A parent waiting on its
    fan-out is parked, so its children (queued behind the parent's own slot
    at their start) run once it parks, one at a time; each end wakes the
    parent, which queues like any woken instance. No deadlock."""
    board = Board()
    storage = MemoryStorage()

    async def job(ctx: Context) -> Any:
        if ctx.input == "parent":
            return await ctx.fan_out("kids", "job", [1, 2, 3], concurrency=3)
        await board.hold(ctx.instance_id, "child")
        return ctx.input * 10

    engine = memory_engine(storage, ManualClock(START))
    engine.register("job", job, max_running=1)
    async with engine:
        await engine.invoke("job", "parent", instance_id="p")
        kids = {f"p/kids:{i}" for i in range(3)}
        for _ in range(3):
            await wait_all_tasks_blocked()
            assert engine.status("p").state in ("waiting", "queued")
            running = [s.instance_id for s in engine.instances("running")]
            assert len(running) == 1  # one at a time
            assert running[0] in kids
            board.gate(running[0]).set()
            kids.remove(running[0])
        assert await finish(engine, "p") == [10, 20, 30]
    assert board.most_total == 1
    # Every child was created with the parent's slot taken: queued in its batch.
    for i in range(3):
        assert types(storage, f"p/kids:{i}")[:2] == ["child_created", "queued"]


# -- 3. a woken instance with no slot is queued in the batch that wakes it ----------------


async def test_a_signal_that_wakes_an_instance_with_no_slot_queues_it_in_its_batch(
    autojump_clock: MockClock,
) -> None:
    board = Board()

    async def approval(ctx: Context) -> Any:
        if ctx.input == "waits":
            return await ctx.suspend("ok")
        await board.hold(ctx.input, "all")
        return ctx.input

    engine = memory_engine(MemoryStorage(), ManualClock(START))
    engine.register("job", approval, max_running=1)
    async with engine:
        await engine.invoke("job", "waits", instance_id="w")
        await wait_all_tasks_blocked()
        await engine.invoke("job", "busy", instance_id="b")
        await wait_all_tasks_blocked()
        with batches(engine) as seen:
            await engine.signal("job", "w", "ok", "yes")
            await wait_all_tasks_blocked()
        assert engine.status("w").state == "queued"
        # One batch, no append of its own for ``queued``.
        assert seen == [[("signalled", "w"), ("queued", "w")]]
        board.gate("busy").set()
        assert await finish(engine, "w") == "yes"


async def test_a_restart_with_no_slot_is_queued_in_its_batch(autojump_clock: MockClock) -> None:
    board = Board()

    async def job(ctx: Context) -> Any:
        await board.hold(ctx.input, "all")
        return ctx.input

    engine = memory_engine(MemoryStorage(), ManualClock(START))
    engine.register("job", job, max_running=1)
    async with engine:
        await engine.invoke("job", "once", instance_id="a")
        board.gate("once").set()
        await finish(engine, "a")
        board.gates.pop("once")  # its re-run holds at a new gate
        await engine.invoke("job", "busy", instance_id="b")
        await wait_all_tasks_blocked()
        with batches(engine) as seen:
            await engine.restart("a")
            await wait_all_tasks_blocked()
        assert seen == [[("restarted", "a"), ("queued", "a")]]
        assert engine.status("a").state == "queued"
        board.gate("busy").set()
        board.gate("once").set()
        assert await finish(engine, "a") == "once"


# -- 5. a cancelled queued instance never starts -------------------------------------------


async def test_a_queued_instance_cancelled_while_its_slot_frees_writes_no_dequeued(
    autojump_clock: MockClock,
) -> None:
    """The cancel of ``b`` is decided and its batch not yet durable when
    ``a``'s slot frees: ``b`` must not be picked out of the queue, nor run."""
    board = Board()
    storage = MemoryStorage()

    async def job(ctx: Context) -> Any:
        await board.hold(ctx.input, "all")
        return ctx.input

    engine = memory_engine(storage, ManualClock(START))
    engine.register("job", job, max_running=1)
    async with engine:
        await engine.invoke("job", "a", instance_id="a")
        await engine.invoke("job", "b", instance_id="b")
        await wait_all_tasks_blocked()
        journal = engine._backend.journal
        original = journal.append_many
        in_flight, go_on = trio.Event(), trio.Event()

        async def held(recs: list[list[Any]]) -> None:
            if TYPE_NAMES[recs[0][0]] == "cancelled" and recs[0][3] == "b":
                in_flight.set()
                await go_on.wait()  # the cancel is being written...
            await original(recs)

        journal.append_many = held
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.cancel, "b")
            await in_flight.wait()
            board.gate("a").set()  # ...when a's run ends and frees the slot
            assert await finish(engine, "a") == "a"
            await wait_all_tasks_blocked()
            go_on.set()
        journal.append_many = original
        assert engine.status("b").state == "cancelled"
        await wait_all_tasks_blocked()
    assert board.began == ["a"]
    assert types(storage, "b") == ["created", "queued", "cancelled"]


# -- 6. a start out of the queue rides in the batch of the outcome that freed its slot ------


async def test_the_next_queued_start_is_written_with_the_outcome_that_freed_its_slot(
    autojump_clock: MockClock,
) -> None:
    board = Board()

    async def job(ctx: Context) -> Any:
        await board.hold(ctx.input, ctx.input[0])
        return ctx.input

    engine = memory_engine(MemoryStorage(), ManualClock(START))
    engine.register("job", job, key=lambda x: x[0], max_running_per_key=1)
    async with engine:
        for name in ("a1", "b1", "a2", "b2"):
            await engine.invoke("job", name, instance_id=name)
        await wait_all_tasks_blocked()
        with batches(engine) as seen:
            board.gate("a1").set()
            assert await finish(engine, "a1") == "a1"
            await wait_all_tasks_blocked()
        # a1's slot goes to a2 (its key's next), not to b2 (b1 still runs).
        assert seen[0] == [("completed", "a1"), ("dequeued", "a2")]
        assert not any(rec[0] == "dequeued" for batch in seen[1:] for rec in batch)
        assert engine.status("a2").state == "running"
        assert engine.status("b2").state == "queued"
        for name in ("b1", "a2", "b2"):
            board.gate(name).set()
            assert await finish(engine, name) == name
    assert board.most == {"a": 1, "b": 1}


# -- 4. one timer poller --------------------------------------------------------------------


async def test_timeouts_and_rate_windows_use_the_engines_one_timer_poller(
    autojump_clock: MockClock,
) -> None:
    async def job(ctx: Context) -> Any:
        if ctx.input == "sleeps":
            await ctx.timer("nap", 1000)
        return ctx.input

    engine = memory_engine(MemoryStorage(), ManualClock(START))
    engine.register("job", job, rate=(1, 10.0), timeout=500.0)
    async with engine:
        await engine.invoke("job", "sleeps", instance_id="s")
        await engine.invoke("job", "rated", instance_id="r")
        await wait_all_tasks_blocked()
        assert engine.status("r").state == "queued"  # the rate window is closed
        pollers = [t for t in engine._nursery.child_tasks if t.name.endswith("TimerQueue.run")]
        assert len(pollers) == 1
        assert await finish(engine, "r") == "rated"  # the window reopened
        await trio.sleep(600)
        assert engine.status("s").state == "cancelled"  # its timeout passed


async def test_a_childs_key_and_place_in_the_queue_go_in_its_start_batch(
    autojump_clock: MockClock,
) -> None:
    board = Board()
    storage = MemoryStorage()

    async def parent(ctx: Context) -> Any:
        return await ctx.fan_out("kids", "child", ["t1", "t1"])

    async def child(ctx: Context) -> Any:
        await board.hold(ctx.instance_id, ctx.input)
        return ctx.input

    engine = memory_engine(storage, ManualClock(START), parent=parent)
    engine.register("child", child, key=lambda x: x, max_running_per_key=1)
    async with engine:
        await engine.invoke("parent", instance_id="p")
        await wait_all_tasks_blocked()
        for _ in range(2):
            (running,) = [s.instance_id for s in engine.instances("running")]
            board.gate(running).set()
            await wait_all_tasks_blocked()
        assert await finish(engine, "p") == ["t1", "t1"]
    assert board.most["t1"] == 1
    batch_types = [(rec.type, rec.instance) for rec in records_of(storage)]
    queued_kid = next(i for t, i in batch_types if t == "queued")
    at = batch_types.index(("child_created", queued_kid))
    assert batch_types[at:at + 4] == [
        ("child_created", queued_kid), ("options", queued_kid), ("queued", queued_kid),
        ("child_started", "p"),
    ]
