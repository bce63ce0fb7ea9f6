"""Helpers for the suspend, signal and timer tests.

They reach into a few engine internals on purpose: waiting for a state
change without polling (the engine's per-instance change events), counting
what the journal was asked to write, and counting the tasks in the engine's
own nursery.

``approval(ledger)`` is the article's approval workflow; the child script in
tests/children_suspend/ imports it from here, so parent and child run the
same code. Its steps append their name to an fsynced ledger file: the
ledger, not the journal, says what actually executed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from memable_log import Clock, Context, Engine, InstanceStatus, MemoryStorage
from memable_log._storage.files import Storage
from memable_log.reader import JournalReader, RecordView

DAY = 86_400.0
APPROVAL_KEY = "approval:v1"
APPROVAL_STATUS = "Waiting for manager approval"

Workflow = Callable[[Context], Awaitable[Any]]


def memory_engine(
    storage: MemoryStorage | None = None, clock: Clock | None = None, **workflows: Workflow
) -> Engine:
    """An in-memory engine with ``workflows`` registered (name=fn; '_' reads as '-')."""
    builder = Engine.builder().in_memory(storage)
    if clock is not None:
        builder = builder.clock(clock)
    engine = builder.build()
    for name, fn in workflows.items():
        engine.register(name.replace("_", "-"), fn)
    return engine


def patience() -> float:
    """How long to wait before calling an engine stuck: long on a MockClock (free)."""
    return 1000 * DAY if isinstance(trio.lowlevel.current_clock(), MockClock) else 30.0


async def finish(engine: Engine, instance_id: str) -> Any:
    """``engine.wait``, failing (not hanging) if the instance never finishes."""
    with trio.fail_after(patience()):
        return await engine.wait(instance_id)


async def until_state(engine: Engine, instance_id: str, *states: str) -> None:
    """Wait, without polling, until the instance is in one of ``states``.

    The engine sets a per-instance event whenever a runner ends or the
    instance is cancelled: the moments its state settles. Unless the state
    is "running", this also waits for the instance's runner task to end (the
    index says "suspended" as soon as the record is applied, a moment before
    the workflow has finished unwinding).
    """
    await until(engine, instance_id, lambda status: status.state in states)


async def until(
    engine: Engine, instance_id: str, check: Callable[[InstanceStatus], bool]
) -> None:
    """Wait, without polling, until ``check(engine.status(instance_id))`` holds
    and, unless it is running, the instance has no runner task left."""

    def settled() -> bool:
        status = engine.status(instance_id)
        gone = status.state == "running" or instance_id not in engine._host.running
        return gone and check(status)

    with trio.fail_after(patience()):
        while not settled():
            event = engine._host.changed(instance_id)
            await event.wait()


def written(engine: Engine) -> tuple[int, int]:
    """(records applied to the index, the seq the journal would give next)."""
    journal = engine._backend.journal
    assert journal is not None
    return engine._host.index.records, journal.next_seq


def limit_writes(engine: Engine, limit: int) -> None:
    """Fail (not hang) if the engine appends more than ``limit`` records.

    For tests of faults that made the engine wake an instance over and over:
    the runaway loop writes a record each time and never lets a MockClock
    jump, so a timeout alone would never fire.
    """
    journal = engine._backend.journal
    assert journal is not None
    append_many = journal.append_many
    count = 0

    async def limited(recs: list[list[Any]]) -> None:
        nonlocal count
        count += len(recs)
        if count > limit:
            raise AssertionError(f"more than {limit} records appended: a runaway loop")
        await append_many(recs)

    journal.append_many = limited  # type: ignore[method-assign]


def engine_tasks(engine: Engine) -> int:
    """Tasks in the engine's nursery: its services plus one per running instance."""
    assert engine._nursery is not None
    return len(engine._nursery.child_tasks)


def all_tasks() -> int:
    """Every task alive in this trio run."""
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def records_of(storage: Storage) -> list[RecordView]:
    """Every record of the journal, in order (read without the lock)."""
    return list(JournalReader(storage))


def types_of(storage: Storage, instance_id: str | None = None) -> list[str]:
    """The record type names, in order (of one instance if given)."""
    return [
        rec.type for rec in records_of(storage)
        if instance_id is None or rec.instance == instance_id
    ]


def note_to(ledger: Path) -> Callable[[str, Any], Any]:
    """A step body that appends ``name`` to ``ledger`` (fsynced) and returns ``value``."""

    def note(name: str, value: Any) -> Any:
        with ledger.open("a") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        return value

    return note


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines() if ledger.exists() else []


def approval(ledger: Path) -> Workflow:
    """The approval workflow: fetch data, wait for a manager, process if approved."""
    note = note_to(ledger)

    async def approval_workflow(ctx: Context) -> dict[str, Any]:
        data = await ctx.step("fetch-data").run(
            note, "fetch-data", {"order": ctx.input, "amount": 120}
        )
        approved = await ctx.suspend(APPROVAL_KEY, status=APPROVAL_STATUS)
        if not approved:
            return {"approved": False, "order": data["order"]}
        receipt = await ctx.step("process").run(note, "process", f"order {data['order']} paid")
        return {"approved": True, "receipt": receipt}

    return approval_workflow
