"""The timer poller: one task and a heap of deadlines, not a task per timer.

Sleeping instances and suspensions with a timeout are pushed as
``(deadline_ms, instance_id)``. The poller sleeps until the earliest
deadline (on the engine's clock, whose ``sleep_until`` re-reads the wall
clock while asleep: a clock stepped meanwhile fires it by the corrected
time, never early) and calls ``fire(instance_id, deadline_ms)`` for every
entry that is due by the wall clock as it is then; the engine checks the instance still waits on
that deadline (entries are never removed early: a stale one is ignored).
Pushing an earlier deadline wakes the poller to re-aim its sleep.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import trio

from .clock import Clock


class TimerQueue:
    def __init__(self, clock: Clock, fire: Callable[[str, int], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[tuple[int, str]] = []
        self._wake = trio.Event()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline_ms: int, instance_id: str) -> None:
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (deadline_ms, instance_id))
        if earliest is None or deadline_ms < earliest:
            self._wake.set()
            if self._sleep is not None:
                self._sleep.cancel()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        heap = self._heap
        while True:
            if not heap:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            now = self._clock.now_ms()
            while heap and heap[0][0] <= now:
                deadline, instance_id = heapq.heappop(heap)
                self._fire(instance_id, deadline)
            if heap:
                with trio.CancelScope() as self._sleep:
                    await self._clock.sleep_until(heap[0][0] / 1000)
                self._sleep = None
            await trio.lowlevel.checkpoint()
