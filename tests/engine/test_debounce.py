"""engine.debounce: one start after a quiet ``delay``, durable (SPEC-NEXT §4, time).

MockClock (``autojump_clock``) and a ManualClock for wall time: delays take
no real time; ``ManualClock.advance`` between lifetimes is downtime.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
from support.suspend import finish, memory_engine, records_of
from trio.testing import MockClock, wait_all_tasks_blocked

from memable_log import (
    Context,
    Engine,
    ManualClock,
    MemoryStorage,
    NotSerializable,
    UnknownWorkflow,
)

START = 1_700_000_000.0


async def sync(ctx: Context) -> Any:
    return ctx.input


def created(storage: MemoryStorage) -> list[str]:
    return [rec.instance for rec in records_of(storage) if rec.type == "created"]


def engine_on(storage: MemoryStorage, clock: ManualClock) -> Engine:
    return memory_engine(storage, clock, sync=sync)


async def test_a_burst_starts_one_instance_with_the_last_input_after_a_quiet_delay(
    autojump_clock: MockClock,
) -> None:
    storage = MemoryStorage()
    async with engine_on(storage, ManualClock(START)) as engine:
        ids = []
        for n in range(5):
            ids.append(await engine.debounce("sync", "acct-1", delay=10, input=n))
            await trio.sleep(4)  # each call within the delay pushes the start back
        assert ids == ["sync~acct-1~1"] * 5
        assert created(storage) == []
        await trio.sleep(6.5)  # 10 s after the last call: the id is an instance now
        assert await finish(engine, "sync~acct-1~1") == 4
        # Started 10 s after the last call (at 16 s), not before.
        started = engine.status("sync~acct-1~1").created_at.timestamp() - START
        assert started == pytest.approx(16 + 10, abs=0.01)
        # The next call begins the next n; other keys count on their own.
        assert await engine.debounce("sync", "acct-1", delay=1, input="b") == "sync~acct-1~2"
        assert await engine.debounce("sync", "acct-2", delay=1) == "sync~acct-2~1"
        await trio.sleep(1.5)
        assert await finish(engine, "sync~acct-1~2") == "b"
        assert await finish(engine, "sync~acct-2~1") is None
    assert sorted(created(storage)) == ["sync~acct-1~1", "sync~acct-1~2", "sync~acct-2~1"]


async def test_a_restart_keeps_the_pending_start(autojump_clock: MockClock) -> None:
    storage, clock = MemoryStorage(), ManualClock(START)
    async with engine_on(storage, clock) as engine:
        assert await engine.debounce("sync", "k", delay=30, input="late") == "sync~k~1"
        await trio.sleep(10)
    async with engine_on(storage, clock) as engine:  # due 20 s after this start
        await trio.sleep(19.9)
        assert created(storage) == []
        await trio.sleep(0.2)
        assert await finish(engine, "sync~k~1") == "late"
        at = engine.status("sync~k~1").created_at.timestamp() - START
        assert at == pytest.approx(30, abs=0.01)  # due 30 s after the call
    clock.advance(5)
    async with engine_on(storage, clock) as engine:
        # Started once: the next call is the next n.
        assert await engine.debounce("sync", "k", delay=1) == "sync~k~2"
    clock.advance(3600)  # down past its due time: it starts at once at the next start
    async with engine_on(storage, clock) as engine:
        await wait_all_tasks_blocked()
        assert await finish(engine, "sync~k~2") is None
    assert created(storage) == ["sync~k~1", "sync~k~2"]


async def test_the_start_is_one_batch_with_the_debounce_done(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()
    async with engine_on(storage, ManualClock(START)) as engine:
        await engine.debounce("sync", "k", delay=1, input=1)
        await trio.sleep(1.5)
        await finish(engine, "sync~k~1")
    recs = [(rec.type, rec.instance, rec.fields) for rec in records_of(storage)]
    at = recs.index(("created", "sync~k~1", {"workflow": "sync", "input": recs[0][2]["input"]}))
    kind, instance, fields = recs[at + 1]
    assert (kind, instance, fields["n"], fields["due_ms"]) == ("debounce_set", "", 1, None)


@pytest.mark.parametrize(("workflow", "key", "delay", "error", "match"), [
    ("nope", "k", 1, UnknownWorkflow, "unknown workflow 'nope'"),
    ("sync", "a~b", 1, ValueError, "not allowed in an instance id: '~'"),
    ("sync", "a b", 1, ValueError, "not allowed in an instance id: ' '"),
    ("sync", "", 1, TypeError, "non-empty str"),
    ("sync", "k", 0, ValueError, "above 0"),
    ("sync", "k", -1.5, ValueError, "above 0"),
    ("sync", "k", math.inf, ValueError, "finite"),
    ("sync", "k", "1", TypeError, "number of seconds"),
])
async def test_bad_input_fails_clearly_and_writes_nothing(
    autojump_clock: MockClock, workflow: str, key: str, delay: Any, error: type, match: str
) -> None:
    storage = MemoryStorage()
    async with engine_on(storage, ManualClock(START)) as engine:
        before = len(records_of(storage))
        with pytest.raises(error, match=match):
            await engine.debounce(workflow, key, delay=delay)
        with pytest.raises(NotSerializable):
            await engine.debounce("sync", "k", delay=1, input=object())
        assert len(records_of(storage)) == before
