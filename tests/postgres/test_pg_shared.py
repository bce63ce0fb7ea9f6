"""Several engines on one database (phase 2): what one engine sees and does
for instances another engine runs.

Engines here run in one trio run on the real clock (the lease is the
database's clock); waits are bounded by ``fail_after`` and wait on the
engine's own events, or on ``seen`` (the tailer brings another engine's
records within its 0.2 s poll, or at once on NOTIFY).
"""

from __future__ import annotations

from typing import Any

import trio

from memable_log import Context, Engine


def engine(dsn: str, *, lease: float = 5.0, **workflows: Any) -> Engine:
    built = Engine.builder().postgres(dsn, worker="test", lease=lease).build()
    for name, fn in workflows.items():
        built.register(name, fn)
    return built


async def seen(eng: Engine, instance_id: str, state: str | None = None) -> None:
    """Until ``eng``'s index has the instance (in ``state``), which its
    tailer applies from the shared log; a short poll of a local read."""
    while True:
        found = [s for s in eng.instances(prefix=instance_id) if s.instance_id == instance_id]
        if found and (state is None or found[0].state == state):
            return
        await trio.sleep(0.01)


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
