"""For tests/ui: a journal with something of everything for the page: steps with values and
errors (one hostile), a status text, an event, a suspension, a child."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memable_log import Context, Engine
from memable_log.reader import follow_journal
from memable_log.testing import wait_for_state

HOSTILE = "<script>alert(1)</script>"
TOKEN = "test-token"


def boom() -> None:
    raise ValueError(f"bad row {HOSTILE}")


async def order(ctx: Context) -> Any:
    await ctx.step("fetch").run(lambda: {"items": [1, 2, 3], "note": HOSTILE})
    await ctx.step(f"key{HOSTILE}").run(lambda: "x" * 500)
    await ctx.set_status(f"status {HOSTILE}")
    await ctx.publish("progress", {"done": 2})
    await ctx.child("ship", "shipping", {"to": "Bob"})
    try:
        await ctx.step("charge").retry(max_attempts=2, initial_delay=0.001).run(boom)
    except Exception:
        pass
    return await ctx.suspend("approve", status=f"waiting for {HOSTILE}")


async def shipping(ctx: Context) -> str:
    return str(await ctx.step("label").run(lambda: "label-1"))


async def plain(ctx: Context) -> int:
    return int(await ctx.step("one").run(lambda: 1))


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    engine.register("order", order)
    engine.register("shipping", shipping)
    engine.register("plain", plain)
    engine.register("stepper", stepper)
    return engine


async def populate(path: Path) -> None:
    engine = make_engine(path)
    async with engine:
        await engine.invoke("order", {"id": 42}, instance_id="o-1")
        for i in range(7):
            await engine.invoke("plain", instance_id=f"p-{i}")
        await wait_for_state(engine, "o-1", "suspended")
        for i in range(7):
            await engine.wait(f"p-{i}")




async def stepper(ctx: Context) -> str:
    """Waits for ``go``, then runs one more step: the live view's new step."""
    await ctx.step("before").run(lambda: 1)
    await ctx.suspend("go")
    return str(await ctx.step("after-go").run(lambda: f"went {HOSTILE}"))


def wait_record(path: Path, instance_id: str, rtype: str) -> None:
    """Block until the journal has a record ``rtype`` of the instance (run it in
    a thread): follows the journal, as memable-dump --follow does."""
    follower = follow_journal(path, interval=0.005)
    try:
        for rec in follower:
            if rec.instance == instance_id and rec.type == rtype:
                return
    finally:
        follower.close()
