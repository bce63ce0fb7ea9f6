"""Clocks: wall time for persisted deadlines, and a way to sleep until one.

Deadlines are stored as wall-clock milliseconds, so they survive restarts.
Sleeping goes through trio, so a test that runs under ``trio.testing.
MockClock`` sleeps through days of timers in no real time.

``Clock`` anchors wall time to trio's clock when the engine starts:
``now() = base + (trio.current_time() - anchor)``. With trio's default clock
this is the system's wall time at start, advanced by the monotonic clock
(no jumps when NTP steps the wall clock mid-run); under MockClock it is
virtual. ``base`` is re-read from ``wall()`` at every start. For tests,
``ManualClock`` keeps its own wall time across engine lifetimes and can be
advanced to simulate downtime between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio


class Clock:
    """Wall time anchored to trio's clock (the default)."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._base: float | None = None
        self._anchor = 0.0

    def start(self) -> None:
        """Anchor to the current trio clock; called when the engine starts."""
        self._base = self._wall()
        self._anchor = trio.current_time()

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        if self._base is None:
            return self._wall()
        return self._base + (trio.current_time() - self._anchor)

    def now_ms(self) -> int:
        # Rounded, so a sleep until deadline_ms / 1000 always reaches it.
        return round(self.now() * 1000)

    async def sleep_until(self, wall: float) -> None:
        """Sleep until wall time ``wall`` (at once if it is past)."""
        if self._base is None:
            await trio.sleep(max(0.0, wall - self._wall()))
        else:
            await trio.sleep_until(self._anchor + (wall - self._base))

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """A clock for tests: its wall time continues across engine lifetimes.

    Start it at ``start`` (epoch seconds); run the engine under
    ``trio.testing.MockClock(autojump_threshold=0)`` so sleeps take no real
    time; ``advance(seconds)`` between lifetimes simulates downtime.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._current = start
        super().__init__(wall=lambda: self._current)

    def start(self) -> None:
        if self._base is not None:
            # Keep the time the last lifetime ran (advance() does the same),
            # or a restart would turn wall time back to the last now() call.
            self.now()
        super().start()

    def now(self) -> float:
        value = super().now()
        self._current = max(self._current, value)
        return value

    def advance(self, seconds: float) -> None:
        """Move wall time forward (between engine lifetimes)."""
        self._current = self.now() + seconds
        if self._base is not None:
            self._base += seconds
