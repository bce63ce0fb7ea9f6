"""A recorded value that cannot be read back is the engine's trouble, not the workflow's.

An I/O error (or damage found on reading) while a replay reads a memoised
value from the journal must not become the workflow's durable failure, nor
an exception the workflow can catch and carry on past with a wrong answer:
the instance stops as recorded, and the next start runs it again.
"""

from __future__ import annotations

import errno
import logging
import random
from typing import Any

import pytest
import trio
import trio.testing

from memable_log import Context, Engine, EngineError, MemoryStorage
from memable_log._core import records as r
from memable_log._storage.segments import scan
from memable_log.testing import wait_for_state

BIG = 2048  # above the inline limit (and incompressible): replays read it back
DATA = random.Random(1).randbytes(BIG)


class FlakyReads(MemoryStorage):
    """Reads of journal segments fail with EIO while ``broken`` is set."""

    broken = False
    failures = 0

    def read_at(self, name: str, offset: int, size: int) -> bytes:
        if self.broken and name.endswith(".mlog"):
            self.failures += 1
            raise OSError(errno.EIO, "Input/output error", name)
        return super().read_at(name, offset, size)


def workflows() -> dict[str, Any]:
    async def careless(ctx: Context) -> Any:
        try:  # a catch-all in user code must not swallow the engine's trouble
            data = await ctx.step("big").run(lambda: DATA)
        except Exception as exc:
            return f"swallowed {type(exc).__name__}"
        await ctx.suspend("go")
        return len(data)

    async def parallel(ctx: Context) -> Any:
        async def branch(key: str, results: dict[str, int]) -> None:
            results[key] = len(await ctx.step(key).run(lambda: DATA))

        results: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(branch, "a", results)
            nursery.start_soon(branch, "b", results)
        await ctx.suspend("go")
        return sum(results.values())

    return {"careless": careless, "parallel": parallel}


def engine_on(storage: MemoryStorage) -> Engine:
    engine = Engine.builder().in_memory(storage).build()
    for name, fn in workflows().items():
        engine.register(name, fn)
    return engine


@pytest.mark.parametrize(("workflow", "expected"), [("careless", BIG), ("parallel", 2 * BIG)])
async def test_an_unreadable_value_stops_the_instance_and_the_next_start_finishes_it(
    workflow: str, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FlakyReads()
    async with engine_on(storage) as engine:
        await engine.invoke(workflow, instance_id="i")
        await wait_for_state(engine, "i", "suspended")

    storage.broken = True
    with caplog.at_level(logging.ERROR, logger="memable_log"):
        async with engine_on(storage) as engine:
            await engine.signal(workflow, "i", "go")  # replays the step: reads fail
            await trio.testing.wait_all_tasks_blocked()
            assert storage.failures > 0
            assert engine.status("i").state == "running"  # not failed, not completed
            assert "i" not in engine._host.running  # stopped
            # Waiting on it says so, rather than block until the engine stops.
            with pytest.raises(EngineError, match="stopped: a recorded value cannot be read"):
                await engine.wait("i")
    assert "a recorded value cannot be read" in caplog.text
    storage.broken = False
    kinds = [rec[0] for rec in _records(storage)]
    assert r.FAILED not in kinds
    assert r.COMPLETED not in kinds

    async with engine_on(storage) as engine:
        assert await engine.wait("i") == expected


def _records(storage: MemoryStorage) -> list[list[Any]]:
    out: list[list[Any]] = []
    scan(storage, lambda rec, loc: out.append(rec))
    return out
