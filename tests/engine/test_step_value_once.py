"""A step's result is decoded once on its first run, however many run at once.

The value a workflow gets from an executed step is the journal's decode
of it (tuples come back as lists, as on every replay). That decode is the
one the codec's read-back check already made: concurrent steps must not
pay a second one each (the codec's one kept read-back is overwritten by
the next step's encode while the first waits for its commit).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from memable_log import Context, Engine, MemoryStorage
from memable_log._core.codec import Codec


async def test_concurrent_steps_return_the_decoded_value_without_decoding_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decodes = 0
    decode = Codec.decode

    def counted(self: Codec, blob: bytes) -> Any:
        nonlocal decodes
        decodes += 1
        return decode(self, blob)

    monkeypatch.setattr(Codec, "decode", counted)

    async def flow(ctx: Context) -> Any:
        got = []
        for i in range(5):
            value = await ctx.step(f"s{i}").run(lambda i=i: {"i": i, "pair": (i, ctx.input)})
            got.append(value)
        return got

    engine = Engine.builder().in_memory(MemoryStorage()).build()
    engine.register("flow", flow)
    results: dict[int, Any] = {}
    async with engine:
        async def one(n: int) -> None:
            results[n] = await engine.wait(await engine.invoke("flow", n, instance_id=f"x{n}"))

        before = decodes
        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(one, n)
        executed = decodes - before
        # The first run's values are the decoded ones: the tuple is a list.
        assert results[7] == [{"i": i, "pair": [i, 7]} for i in range(5)]
        # Replayed, the same values.
        await engine.restart("x7")
        assert await engine.wait("x7") == results[7]
    # Each run decodes its input and each wait its result (60); the 150
    # step results are not decoded again (210 with a decode per step).
    assert executed <= 2 * 30
