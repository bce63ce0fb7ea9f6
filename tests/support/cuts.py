"""A power cut in the middle of one chosen batch of an engine's appends.

``cut_at_batch(storage, engine, drive, batch, nth)`` runs ``drive`` on
``engine`` until the ``nth`` batch whose record types are ``batch`` is
appended, lets its write land and cuts the power before its fsync; it
returns how many such batches were seen. Shared by the crash tests of
children, schedules and flow control.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from memable_log import Engine, MemoryStorage
from memable_log._core.records import TYPE_NAMES
from support.powerloss import is_power_cut

Drive = Callable[[Engine], Awaitable[None]]


async def cut_at_batch(
    storage: MemoryStorage, engine: Engine, drive: Drive, batch: list[str],
    nth: int = 1, before: Drive | None = None,
) -> int:
    """See the module comment; ``before`` runs just before the cut batch."""
    seen = 0

    async def run() -> None:
        async with engine:
            journal: Any = engine._backend.journal  # type: ignore[attr-defined]
            original = journal.append_many

            async def spy(recs: list[list[Any]]) -> None:
                nonlocal seen
                if [TYPE_NAMES[rec[0]] for rec in recs] == batch:
                    seen += 1
                    if seen == nth:
                        if before is not None:
                            await before(engine)
                        storage.crash_at = storage.ops + 2  # the write lands, not its fsync
                await original(recs)

            journal.append_many = spy
            await drive(engine)
            with trio.fail_after(10**6):
                await trio.sleep_forever()

    with pytest.raises(BaseException) as info:  # noqa: PT011 (a PowerCut, in groups)
        await run()
    assert is_power_cut(info.value), info.value
    return seen
