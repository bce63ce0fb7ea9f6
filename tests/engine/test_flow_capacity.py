"""Flow control (SPEC-NEXT §4): max_running, the queued state, priority,
per-key limits; queued instances across restarts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from support.engine import Home, of_type, wait

from memable_log import Context, Engine


class Board:
    """What the workflows do: who runs now, the most at once, the order they began."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.total = 0
        self.most_total = 0
        self.began: list[Any] = []
        self.gates: dict[Any, trio.Event] = {}

    def gate(self, name: Any) -> trio.Event:
        return self.gates.setdefault(name, trio.Event())

    def workflow(self, group: Any = lambda x: "all", hold: float | None = None) -> Any:
        async def wf(ctx: Context) -> Any:
            name = ctx.input
            key = group(name)
            self.began.append(name)
            self.now[key] += 1
            self.total += 1
            self.most[key] = max(self.most[key], self.now[key])
            self.most_total = max(self.most_total, self.total)
            try:
                if hold is None:
                    await self.gate(name).wait()
                else:
                    await trio.sleep(hold)
            finally:
                self.now[key] -= 1
                self.total -= 1
            return name

        return wf


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_instances_past_max_running_are_queued_and_start_as_slots_free(
    autojump_clock: Any,
) -> None:
    board = Board()
    engine = Engine.builder().in_memory().build()
    engine.register("job", board.workflow(), max_running=2)
    async with engine:
        ids = [await engine.invoke("job", n, instance_id=f"j{n}") for n in range(5)]
        await settle()
        assert [engine.status(i).state for i in ids] == ["running"] * 2 + ["queued"] * 3
        assert [s.instance_id for s in engine.instances("queued")] == ["j2", "j3", "j4"]
        board.gate(0).set()
        assert await wait(engine, "j0") == 0
        await settle()
        assert engine.status("j2").state == "running"
        assert engine.status("j3").state == "queued"
        for n in range(1, 5):
            board.gate(n).set()
        assert [await wait(engine, i) for i in ids] == list(range(5))
    assert board.most_total == 2
    assert board.began == [0, 1, 2, 3, 4]


async def test_queued_goes_in_the_batch_of_created_and_dequeued_starts_it(tmp_path: Path) -> None:
    home = Home("memory", tmp_path)
    board = Board()
    engine = home.builder().build()
    engine.register("job", board.workflow(), max_running=1)
    async with engine:
        await engine.invoke("job", 0, instance_id="a")
        await engine.invoke("job", 1, instance_id="b")
        await settle()
        board.gate(0).set()
        board.gate(1).set()
        await wait(engine, "b")
    records = [(rec.type, rec.instance) for rec in home.records()]
    assert records.index(("queued", "b")) == records.index(("created", "b")) + 1
    assert ("queued", "a") not in records
    assert records.index(("dequeued", "b")) > records.index(("completed", "a"))


async def test_queued_instances_start_by_priority_then_creation_order(autojump_clock: Any) -> None:
    board = Board()
    engine = Engine.builder().in_memory().build()
    engine.register("job", board.workflow(hold=1.0), max_running=1)
    async with engine:
        await engine.invoke("job", "first")
        await settle()
        ids = [
            await engine.invoke("job", name, priority=priority)
            for name, priority in [("a0", 0), ("b5", 5), ("c0", 0), ("d5", 5), ("e1", 1),
                                   ("f-2", -2)]
        ]
        for iid in ids:
            await wait(engine, iid, timeout=100)
    assert board.began == ["first", "b5", "d5", "e1", "a0", "c0", "f-2"]


async def test_parked_instances_hold_no_slot_and_a_woken_one_queues_again(
    autojump_clock: Any,
) -> None:
    began: list[str] = []
    release = trio.Event()

    async def approval(ctx: Context) -> Any:
        began.append(ctx.input)
        if ctx.input == "waits":
            return await ctx.suspend("ok")
        await release.wait()
        return ctx.input

    engine = Engine.builder().in_memory().build()
    engine.register("job", approval, max_running=1)
    async with engine:
        await engine.invoke("job", "waits", instance_id="w")
        await settle()
        assert engine.status("w").state == "suspended"
        await engine.invoke("job", "busy", instance_id="b")  # the slot is free: it runs
        await settle()
        assert engine.status("b").state == "running"
        await engine.signal("job", "w", "ok", "yes")
        await settle()
        assert engine.status("w").state == "queued"  # woken, with no slot
        release.set()
        assert await wait(engine, "w") == "yes"
        assert await wait(engine, "b") == "busy"


async def test_a_cancelled_queued_instance_never_runs(autojump_clock: Any) -> None:
    board = Board()
    engine = Engine.builder().in_memory().build()
    engine.register("job", board.workflow(), max_running=1)
    async with engine:
        await engine.invoke("job", 0, instance_id="a")
        await engine.invoke("job", 1, instance_id="b")
        await engine.invoke("job", 2, instance_id="c")
        await settle()
        await engine.cancel("b")
        assert engine.status("b").state == "cancelled"
        board.gate(0).set()
        board.gate(2).set()
        assert await wait(engine, "c") == 2
    assert board.began == [0, 2]


async def test_the_engine_wide_max_running_queues_too(autojump_clock: Any) -> None:
    board = Board()
    engine = Engine.builder().in_memory().max_running(1).build()
    engine.register("job", board.workflow())
    engine.register("other", board.workflow())
    async with engine:
        await engine.invoke("job", 0, instance_id="a")
        await engine.invoke("other", 1, instance_id="b")
        await settle()
        assert engine.status("b").state == "queued"
        board.gate(0).set()
        board.gate(1).set()
        assert await wait(engine, "b") == 1


async def test_max_running_per_key_caps_each_key_and_lets_other_keys_pass(
    autojump_clock: Any,
) -> None:
    board = Board()
    engine = Engine.builder().in_memory().build()
    engine.register("job", board.workflow(group=lambda x: x[0], hold=1.0),
                    key=lambda x: x[0], max_running_per_key=2)
    async with engine:
        ids = [await engine.invoke("job", f"{tenant}{n}")
               for n in range(6) for tenant in "abc"]
        await settle()
        states = Counter(engine.status(i).state for i in ids)
        assert states == {"running": 6, "queued": 12}
        for iid in ids:
            await wait(engine, iid, timeout=100)
    assert board.most == {"a": 2, "b": 2, "c": 2}
    assert trio.current_time() == pytest.approx(3.0)  # three waves of one second


async def test_per_key_and_workflow_limits_hold_together(autojump_clock: Any) -> None:
    board = Board()
    engine = Engine.builder().in_memory().build()
    engine.register("job", board.workflow(group=lambda x: x[0], hold=1.0),
                    max_running=3, key=lambda x: x[0], max_running_per_key=2)
    async with engine:
        ids = [await engine.invoke("job", f"{tenant}{n}")
               for n in range(4) for tenant in "ab"]
        for iid in ids:
            await wait(engine, iid, timeout=100)
    assert board.most_total == 3
    assert max(board.most.values()) == 2


async def test_a_key_function_that_returns_no_str_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    home = Home("memory", tmp_path)
    engine = home.builder().build()

    async def job(ctx: Context) -> None:
        return None

    engine.register("job", job, key=lambda x: x, max_running_per_key=1)
    async with engine:
        with pytest.raises(TypeError, match=r"'job'.*returned 7, not a str"):
            await engine.invoke("job", 7)
    assert of_type(home.records(), "created") == []


def test_bad_settings_name_the_workflow_and_the_setting() -> None:
    engine = Engine.builder().in_memory().build()

    async def job(ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match="'job': max_running must be an int >= 1"):
        engine.register("job", job, max_running=0)
    with pytest.raises(ValueError, match="'job': max_running_per_key needs key="):
        engine.register("job", job, max_running_per_key=2)
    with pytest.raises(ValueError, match=r"'job': rate must be \(n, seconds\)"):
        engine.register("job", job, rate=(0, 1.0))
    with pytest.raises(ValueError, match="'job': timeout must be seconds >= 0"):
        engine.register("job", job, timeout=-1)


@pytest.mark.parametrize("kind", ["disk", "memory"])
async def test_queued_instances_stay_queued_across_a_restart_and_keep_their_order(
    kind: str, tmp_path: Path
) -> None:
    home = Home(kind, tmp_path)

    async def stuck(ctx: Context) -> Any:
        await trio.sleep_forever()

    engine = home.builder().build()
    engine.register("job", stuck, max_running=1)
    async with engine:
        await engine.invoke("job", "blocker", instance_id="blocker")
        for name, priority in [("a0", 0), ("b3", 3), ("c0", 0), ("d3", 3)]:
            await engine.invoke("job", name, instance_id=name, priority=priority)
        await settle()
        assert [s.instance_id for s in engine.instances("queued")] == ["a0", "b3", "c0", "d3"]

    began: list[str] = []

    async def job(ctx: Context) -> Any:
        began.append(ctx.input)
        await trio.sleep(0.01)
        return ctx.input

    engine = home.builder().resume_on_start(False).build()
    engine.register("job", job, max_running=1)
    async with engine:  # nothing resumed: the journal's states as they are
        assert [s.instance_id for s in engine.instances("queued")] == ["a0", "b3", "c0", "d3"]
        assert engine.status("blocker").state == "running"
    engine = home.builder().build()
    engine.register("job", job, max_running=1)
    async with engine:
        with trio.fail_after(10):
            for iid in ["blocker", "a0", "b3", "c0", "d3"]:
                await engine.wait(iid)
    assert began == ["blocker", "b3", "d3", "a0", "c0"]


async def test_running_instances_beyond_a_lowered_limit_are_queued_at_start(
    tmp_path: Path,
) -> None:
    home = Home("memory", tmp_path)
    arrived = trio.Event()
    count = 0

    async def stuck(ctx: Context) -> Any:
        nonlocal count
        count += 1
        if count == 3:
            arrived.set()
        await trio.sleep_forever()

    engine = home.builder().build()
    engine.register("job", stuck)
    async with engine:
        for n in range(3):
            await engine.invoke("job", n, instance_id=f"j{n}")
        with trio.fail_after(10):
            await arrived.wait()

    engine = home.builder().build()
    engine.register("job", stuck, max_running=1)
    async with engine:
        await trio.testing.wait_all_tasks_blocked()
        assert [engine.status(f"j{n}").state for n in range(3)] == [
            "running", "queued", "queued"]
