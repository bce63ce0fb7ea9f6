"""Found by the power-loss campaign's flow workload (fuzz/powerloss.py
--workload flow, cut at op 10, tears prefix82 / zero-tail): an invoke's batch
(``created``, ``options``, ``queued``) survives a power cut as a prefix, and
an instance left with only its ``created`` is resumed as running, without
its concurrency key, beside a running instance of the same key.

The engine's flow control mends it at start (``FlowControl.repair``): such
an instance gets the key its workflow's ``key`` function gives its input,
written before anything resumes, and an invoke retried on it records the
priority and timeout the lost ``options`` held."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from memable_log import Context, Engine, MemoryStorage, WorkflowCancelled
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.offline import OfflineJournal


async def test_an_instance_whose_invoke_batch_was_torn_still_waits_for_its_key() -> None:
    storage = MemoryStorage()
    blob = Codec().encode({"k": "a"})
    with OfflineJournal(storage) as journal:
        journal.append([r.make(r.CREATED, 1, "n0", "w", blob),
                        r.make(r.OPTIONS, 1, "n0", 0, None, "a")])
        journal.append([r.make(r.CREATED, 2, "n1", "w", blob)])  # options, queued: torn off
    started: list[str] = []
    gate = trio.Event()

    async def w(ctx: Context) -> Any:
        started.append(ctx.instance_id)
        await gate.wait()
        return await ctx.step("s").run(lambda: 1)

    engine = Engine.builder().in_memory(storage).build()
    engine.register("w", w, key=lambda i: i["k"], max_running_per_key=1)
    async with engine:
        await trio.testing.wait_all_tasks_blocked()
        running = sorted(started)
        states = {iid: engine.status(iid).state for iid in ("n0", "n1")}
        gate.set()
    assert len(running) == 1, f"both instances of key 'a' run: {running}, {states}"


async def test_an_instance_whose_invoke_batch_was_torn_keeps_its_invoke_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same cut (powerloss --workload flow, cut at op 18, prefix94) hung
    the recovery: the held instance lost its deadline with ``options``, and
    the client's retried ``invoke(..., timeout=10)`` returns the existing id
    as it is, so nothing ever ends it."""
    storage = MemoryStorage()
    with OfflineJournal(storage) as journal:  # options (deadline) and queued: torn off
        journal.append([r.make(r.CREATED, 1, "n4", "w", Codec().encode({"k": "d"}))])

    async def w(ctx: Context) -> Any:
        return await ctx.suspend("never")

    engine = Engine.builder().in_memory(storage).build()
    engine.register("w", w, key=lambda i: i["k"], max_running_per_key=1)
    async with engine:
        await engine.invoke("w", {"k": "d"}, instance_id="n4", timeout=10)  # the retry
        with trio.move_on_after(60), pytest.raises(WorkflowCancelled):
            await engine.wait("n4")
        state = engine.status("n4").state
    assert state == "cancelled", f"n4 is {state} a minute after its 10 s timeout"
