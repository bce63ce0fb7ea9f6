"""Pauses between commits: when background work on the event loop may run.

Theory of operation. Compaction's share of work on the event loop runs in
short slices (~50 us) and pauses between them in ``between_commits``, which
returns only at moments a slice delays no commit:

* no commit in flight;
* with a commit thread, while the commit in flight is in its fsync: the
  thread holds no GIL then, so a slice shorter than an fsync costs it
  nothing. The writer's ``before_sync`` hook (``fsync_begins``, on the
  commit thread) marks it and wakes the waiting task. One return per fsync,
  so slices do not run on past it; a steady writer thus gives one slice per
  commit and never starves the work;
* or when the event loop is about to wait for I/O with no commit in flight
  (``_IdleWatch``): the commit waited on ended and nobody sent another.

Work that ran instead as a commit is handed over would hold the GIL the
commit thread needs to frame and write its batch (measured: 160 us more
per commit). Commits on the event loop (no thread) are simply waited for:
nothing else runs during them anyway.

A pause must never hang, even shielded (compaction pauses in a shielded
scope the engine's exit cannot cancel): every way a commit ends sets its
batch's ``done`` (applied or failed, see scheduler.py), and closing the
journal wakes every pause.
"""

from __future__ import annotations

import trio

from .scheduler import Batch, CommitScheduler


class Pauses:
    """``between_commits`` for one journal. See the module comment."""

    def __init__(self, scheduler: CommitScheduler) -> None:
        self._scheduler = scheduler
        self._threaded = False  # commits run on a thread that reports its fsyncs
        # Set as the commit in flight begins its fsync, or once the event
        # loop is about to wait with no commit in flight.
        self._quiet: trio.Event | None = None
        # Set on the commit thread while it is in a batch's fsync (and just
        # after); the batch that last gave a pause its moment.
        self._in_fsync = False
        self._sliced: Batch | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._idle_watch: _IdleWatch | None = None  # installed by the first pause
        self._idle_asked = False

    def use_thread(self) -> None:
        """Commits run on a commit thread, which calls ``fsync_begins``/``commit_ends``."""
        self._threaded = True
        self._token = trio.lowlevel.current_trio_token()

    async def between_commits(self) -> None:
        """Return at a moment when ~50 us of work on the event loop delays no commit."""
        # No checkpoint first while a commit is in flight: a task step run as
        # its waiters send the next batch holds the GIL its thread needs.
        while (batch := self._scheduler.committing) is not None:
            if not self._threaded:
                await batch.done.wait()
                return
            if self._in_fsync and self._sliced is not batch:
                self._sliced = batch
                return
            if self._quiet is None:
                self._quiet = trio.Event()
            if self._idle_watch is None:
                self._idle_watch = _IdleWatch(self)
                trio.lowlevel.add_instrument(self._idle_watch)
            await self._quiet.wait()  # an fsync began, or the loop is idle
        await trio.lowlevel.checkpoint()

    def fsync_begins(self) -> None:
        """On the commit thread, as an fsync begins (SegmentWriter.before_sync)."""
        self._in_fsync = True
        if self._quiet is not None and self._token is not None:
            self._token.run_sync_soon(self._wake)

    def commit_ends(self) -> None:
        """On the commit thread, once a commit is over."""
        self._in_fsync = False

    def close(self) -> None:
        """The journal is closing: nothing is in flight; wake every pause."""
        if self._idle_watch is not None:
            trio.lowlevel.remove_instrument(self._idle_watch)
            self._idle_watch = None
        self._wake()

    def _loop_idle(self) -> None:
        """Called by _IdleWatch as the loop is about to wait: ask once to be woken."""
        if (
            self._quiet is not None and self._scheduler.committing is None
            and not self._idle_asked and self._token is not None
        ):
            self._idle_asked = True
            self._token.run_sync_soon(self._idle_or_not)  # wakes the loop, too

    def _idle_or_not(self) -> None:
        self._idle_asked = False
        if self._scheduler.committing is None:
            self._wake()

    def _wake(self) -> None:
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            quiet.set()


class _IdleWatch(trio.abc.Instrument):
    """Wakes a task in ``between_commits`` once the event loop is about to
    wait for I/O with no commit in flight (a steady writer sends the next at
    once, and the task sleeps on until that one's fsync begins). A hook the
    run loop calls anyway, so a steady writer's commits are not interrupted
    by an extra task step just as the thread frames the next batch.
    """

    def __init__(self, pauses: Pauses) -> None:
        self._pauses = pauses

    def before_io_wait(self, timeout: float) -> None:
        self._pauses._loop_idle()
