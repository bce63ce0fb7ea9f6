"""Clocks: wall time for persisted deadlines, and a way to sleep until one.

Deadlines are stored as wall-clock milliseconds, so they survive restarts.
Sleeping goes through trio, so a test that runs under ``trio.testing.
MockClock`` sleeps through days of timers in no real time.

``Clock.now()`` is the wall clock as it is now (``wall()``, ``time.time``
by default): a clock stepped while the engine runs (NTP setting the time of
a machine that booted before it knew it) moves neither the records written
after the step nor when a deadline fires. ``sleep_until(wall)`` sleeps on
trio's clock for what is left, but at most ``REAIM_SECONDS`` at a time, and
re-reads the wall clock: a step forward while asleep delays the wake-up past
the deadline by at most that, a step back never wakes it early. (The
monotonic clock cannot see a step and the wall clock cannot be slept on,
so the sleep is re-aimed; one wake-up a second costs nothing measurable.)

Under trio's MockClock the default wall source would be real time in a test
whose sleeps are virtual: there, and for ``ManualClock`` always, wall time
is anchored to trio's clock at ``start()``: ``now() = base + (trio time -
anchor)``, virtual and deterministic, and a sleep is one exact trio sleep.
A test that steps the wall clock passes its own ``wall`` source (a function
of ``trio.current_time()``), which is read as it is. ``ManualClock`` keeps
its own wall time across engine lifetimes and can be advanced to simulate
downtime between them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import trio

# The longest a sleep until a wall-clock time goes without re-reading the
# wall clock: the most a forward step of the clock can delay a wake-up.
REAIM_SECONDS = 1.0


class Clock:
    """The wall clock as it is now: ``wall()``, ``time.time`` by default.

    Every deadline, timestamp and retention cut-off reads it as it is, so a
    clock corrected while the engine runs moves nothing written after.
    Under trio's MockClock the default is virtual instead: the system's
    time at ``start()`` plus trio's time since. A ``wall`` you pass is read
    as it is, under MockClock too (a test stepping the clock passes a
    function of ``trio.current_time()``).
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._base: float | None = None  # set while wall time is anchored to trio's clock
        self._anchor = 0.0

    def _anchored(self) -> bool:
        """Whether to anchor wall time to trio's clock (see the module comment)."""
        if self._wall is not time.time:
            return False
        # No MockClock can be running unless trio.testing was imported.
        testing = sys.modules.get("trio.testing")
        return testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)

    def start(self) -> None:
        """Called when the engine starts: anchor to trio's clock if it is virtual."""
        if self._anchored():
            self._base = self._wall()
            self._anchor = trio.current_time()
        else:
            self._base = None

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        if self._base is None:
            return self._wall()
        return self._base + (trio.current_time() - self._anchor)

    def now_ms(self) -> int:
        # Rounded, so a sleep until deadline_ms / 1000 always reaches it.
        return round(self.now() * 1000)

    async def sleep_until(self, wall: float) -> None:
        """Sleep until wall time ``wall`` (at once if it is past).

        It wakes no earlier than ``wall`` on the wall clock as it is then,
        and, if the clock is stepped while asleep, at most a second
        (``REAIM_SECONDS``) later: it sleeps at most that long at a time and
        re-reads the wall clock.
        """
        if self._base is not None:
            await trio.sleep_until(self._anchor + (wall - self._base))
            return
        left = wall - self._wall()
        if left <= 0:
            await trio.lowlevel.checkpoint()
            return
        while left > 0:
            await trio.sleep(min(left, REAIM_SECONDS))
            left = wall - self._wall()

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

    def _anchored(self) -> bool:
        return True  # its time runs with trio's clock, whichever it is

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
