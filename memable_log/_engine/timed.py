"""Engine-level deadlines on the one timer poller; a lock per name.

Theory of operation. Schedules and debounce (schedules.py, debounce.py)
start instances at times of their own. Each keeps a ``Timed`` heap of
``(deadline_ms, name)`` and puts only its earliest deadline on the engine's
timer poller (timers.py), under the instance id ``""`` (``ENGINE_TIMER``:
no instance has it). The engine hands a firing of that id to each
``Timed``'s ``fire``, which pops its due names and hands each to
``due(name)`` (a subclass's), then puts its next deadline on the poller.
Entries are never removed early: ``due`` checks the name still has that
deadline's work to do, so a stale entry costs one look.

``KeyedLocks`` orders the writes for one name (a tick against a
``schedule`` call of the same name; a debounce call against its start): a
``trio.Lock`` per name, dropped once nobody holds or waits for it.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

from .timers import TimerQueue

ENGINE_TIMER = ""  # the poller's id for engine-level deadlines (records.ENGINE)

Name = TypeVar("Name", bound=Hashable)


class Timed(Generic[Name]):
    """A heap of engine-level deadlines, its earliest on the engine's poller."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, Name]] = []
        self._timers: TimerQueue | None = None
        self._armed: int | None = None  # the deadline last put on the poller, not yet fired
        self.nursery: trio.Nursery | None = None

    def begin(self, nursery: trio.Nursery, timers: TimerQueue) -> None:
        """The engine started: deadlines go on ``timers``, work in ``nursery``."""
        self.nursery, self._timers = nursery, timers

    def end(self) -> None:
        """The engine stopped: forget every deadline (the next start re-arms)."""
        self.nursery = self._timers = None
        self._heap.clear()
        self._armed = None

    def arm(self, deadline_ms: int, name: Name) -> None:
        """Call ``due(name)`` once ``deadline_ms`` has passed (nothing if stopped)."""
        if self._timers is None:
            return
        heapq.heappush(self._heap, (deadline_ms, name))
        if self._armed is None or deadline_ms < self._armed:
            self._armed = deadline_ms
            self._timers.push(deadline_ms, ENGINE_TIMER)

    def fire(self, now_ms: int) -> None:
        """The poller fired: hand every due name to ``due``, once each."""
        heap = self._heap
        self._armed = None
        names: dict[Name, None] = {}
        while heap and heap[0][0] <= now_ms:
            names[heapq.heappop(heap)[1]] = None
        for name in names:
            self.due(name)
        if heap and self._timers is not None:
            self._armed = heap[0][0]
            self._timers.push(heap[0][0], ENGINE_TIMER)

    def due(self, name: Name) -> None:
        raise NotImplementedError


class KeyedLocks(Generic[Name]):
    """A lock per name, kept only while held or awaited."""

    def __init__(self) -> None:
        self._locks: dict[Name, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, name: Name) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)
