"""Commit executors: where a batch's write + fsync runs for the scheduler.

Theory of operation. The commit scheduler (scheduler.py) decides which
batch is committed and who waits for it; an executor only runs
``SegmentWriter.commit`` on one batch at a time, in three moves:
``submit(payloads)`` starts a commit, ``await ready()`` waits until its
result can be taken (a cancelled wait leaves the commit in flight; whoever
waits next takes it over), and ``result()`` returns its locations or raises
its error. The scheduler never submits again before taking the result.

* ``CommitThread``, for storage that blocks (a directory): a long-lived
  thread of the journal's own, parked on a pipe read. ``submit`` writes a
  byte to wake it; it commits and writes a byte to the done pipe, which
  ``ready`` waits on. Why pipes and not trio's thread cache
  (bench/bench_engine.py (a)): a thread parked on a pipe wakes sooner than
  one parked on a lock, and a task waiting on a descriptor is woken by the
  event loop directly, where ``run_sync_soon`` goes through trio's
  entry-queue task, one scheduler pass more: ~100 us less per append here.
* ``InlineCommit``, for storage that does not block (MemoryStorage): the
  commit runs on the event loop, inside ``result()``; ``ready`` is one
  checkpoint, so appends of the same scheduler pass gather in the next
  batch as they do while a thread's fsync runs. No thread, on purpose: a
  simulated power cut (PowerCut, raised inside the commit) must reach the
  journal's nursery, and under trio's MockClock with autojump a commit on a
  thread would let virtual time run (every task blocked) mid-commit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import trio

Commit = Callable[[list[bytes]], list[int]]


class CommitThread:
    """A long-lived thread that runs one commit at a time, handed over by pipes.

    ``after`` runs on the thread once each commit is over, whatever its
    outcome (the journal's pauses clear their "in an fsync" mark there).
    ``stop`` closes the wake pipe: the thread reads end-of-file and ends.
    """

    __slots__ = ("_after", "_commit", "_done_fd", "_error", "_job", "_result", "_wake_w", "thread")

    def __init__(self, commit: Commit, after: Callable[[], None]) -> None:
        self._commit = commit
        self._after = after
        self._job: list[bytes] = []
        self._result: list[int] = []
        self._error: BaseException | None = None
        wake_r, self._wake_w = os.pipe()
        self._done_fd, done_w = os.pipe()
        os.set_blocking(self._done_fd, False)
        thread = threading.Thread(
            target=self._run, args=(wake_r, done_w), name="memable_log commit", daemon=True
        )
        self.thread = thread
        try:
            thread.start()
        except BaseException:
            for fd in (wake_r, self._wake_w, self._done_fd, done_w):
                os.close(fd)
            raise

    def _run(self, wake_r: int, done_w: int) -> None:
        # The thread owns (and closes) its pipe ends: a descriptor closed
        # under a blocked read could be reused for another file.
        try:
            while os.read(wake_r, 1):
                try:
                    self._result = self._commit(self._job)
                except BaseException as exc:  # handed to the event loop, raised there
                    self._error = exc
                finally:
                    self._after()
                self._job = []
                os.write(done_w, b"\0")
        finally:
            os.close(wake_r)
            os.close(done_w)

    def submit(self, payloads: list[bytes]) -> None:
        self._job = payloads
        os.write(self._wake_w, b"\0")

    async def ready(self) -> None:
        await trio.lowlevel.wait_readable(self._done_fd)

    def result(self) -> list[int]:
        """Once ready: the commit's locations, or its error."""
        os.read(self._done_fd, 1)
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    async def aclose(self) -> None:
        """End the thread (no commit may be in flight) and wait for it."""
        os.close(self._wake_w)
        os.close(self._done_fd)
        with trio.CancelScope(shield=True):  # no thread outlives the journal
            await trio.to_thread.run_sync(self.thread.join)


class InlineCommit:
    """Commits on the event loop, inside ``result()`` (see the module comment)."""

    __slots__ = ("_commit", "_job")

    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._job: list[bytes] = []

    def submit(self, payloads: list[bytes]) -> None:
        self._job = payloads

    async def ready(self) -> None:
        await trio.lowlevel.checkpoint()

    def result(self) -> list[int]:
        job, self._job = self._job, []
        return self._commit(job)

    async def aclose(self) -> None:
        pass
