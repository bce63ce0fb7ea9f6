"""Calls from another thread (issue 13 b).

An engine runs in one trio run, on one thread. A call from another thread
that runs its own ``trio.run`` used to corrupt it (TrioInternalError,
records stamped with the other run's clock, a hang). It is refused at once,
writing nothing; ``trio.from_thread`` with the engine's trio token is the
way in, as docs/api.md says.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from support.suspend import finish, memory_engine, written

from memable_log import Context, EngineError, MemoryStorage


async def wf(ctx: Context) -> Any:
    return await ctx.step("a").run(lambda: 41) + 1


async def test_a_call_from_another_threads_trio_run_is_refused_and_writes_nothing() -> None:
    storage = MemoryStorage()
    engine = memory_engine(storage, wf=wf)
    async with engine:
        first = await engine.invoke("wf", instance_id="here")
        assert await finish(engine, first) == 42
        before = written(engine)

        def other_run(call: Any, *args: Any) -> Any:
            async def main() -> Any:
                return await call(*args)

            return trio.run(main)

        for call, args in [
            (engine.invoke, ("wf",)), (engine.wait, ("here",)),
            (engine.signal, ("wf", "here", "k", 1)), (engine.cancel, ("here",)),
            (engine.forget, ("here", "a")), (engine.restart, ("here",)),
        ]:
            with pytest.raises(EngineError, match="runs in another thread's trio run"):
                await trio.to_thread.run_sync(other_run, call, *args)
        with pytest.raises(EngineError, match="another thread"):
            await trio.to_thread.run_sync(engine.status, "here")
        with pytest.raises(EngineError, match="another thread"):
            await trio.to_thread.run_sync(engine.instances)
        assert written(engine) == before
        assert engine.status("here").state == "completed"


async def test_trio_from_thread_with_the_engines_token_is_the_way_in() -> None:
    engine = memory_engine(MemoryStorage(), wf=wf)
    async with engine:
        token = trio.lowlevel.current_trio_token()

        def worker() -> tuple[Any, str]:
            iid = trio.from_thread.run(engine.invoke, "wf", trio_token=token)
            result = trio.from_thread.run(engine.wait, iid, trio_token=token)
            state = trio.from_thread.run_sync(engine.status, iid, trio_token=token).state
            return result, state

        assert await trio.to_thread.run_sync(worker) == (42, "completed")
