"""A compaction child dies with its engine, so a restart finds the journal free.

The child shares the engine's lock (it inherits the descriptor), so while it
lives no other engine may open the journal. Here the engine runs in a real
process (tests/support/children/compacting_engine.py) whose compaction child
is stuck in one long C call that holds its GIL, as a real compaction is in
zstd or msgpack: no Python code of the child runs again. The engine is
killed with SIGKILL; the journal must then open, at once or right after the
child's exit, which the test waits for on a pidfd (bounded: the child never
exits by itself), never on a guessed delay.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from memable_log import Context, Engine, JournalLocked

CHILD = Path(__file__).resolve().parents[1] / "support" / "children" / "compacting_engine.py"
BOUND_S = 60.0  # for a broken build: the child would hold the lock for ever


def value(i: int) -> bytes:
    return bytes([i % 251]) * 1024


async def work(ctx: Context) -> bytes:
    return await ctx.step("blob").run(lambda: value(int(ctx.input)))


def read_line(fd: int) -> str:
    """One line from a non-blocking FIFO, waiting for it at most BOUND_S."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], BOUND_S)
        assert ready, "the compaction child never started"
        chunk = os.read(fd, 64)
        assert chunk, "the compaction child closed the FIFO without its pid"
        data += chunk
    return data.decode()


@pytest.fixture
def killer() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end, in case the test failed with them alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def reopen(journal: Path, child_exit: int) -> tuple[int, dict[str, bytes]]:
    """Open the journal: at once, or once the child has exited (at most twice)."""
    for attempt in range(2):
        try:
            engine = Engine.builder().open(journal).compaction(False).build()
            engine.register("work", work)
            async with engine:
                done = [status.instance_id for status in engine.instances("completed")]
                return attempt, {iid: await engine.wait(iid) for iid in done}
        except JournalLocked:
            if attempt:
                raise
        with trio.fail_after(BOUND_S):
            await trio.lowlevel.wait_readable(child_exit)
    raise AssertionError("unreachable")


def test_an_engine_killed_during_a_compaction_leaves_the_journal_free(
    tmp_path: Path, killer: list[int]
) -> None:
    journal, fifo = tmp_path / "j", tmp_path / "child.fifo"
    os.mkfifo(fifo)
    fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    with subprocess.Popen(
        [sys.executable, str(CHILD), str(journal), str(fifo)],
        stdout=subprocess.PIPE, text=True,
    ) as engine:
        killer.append(engine.pid)
        try:
            child = int(read_line(fifo_fd))
        finally:
            os.close(fifo_fd)
        killer.append(child)
        child_exit = os.pidfd_open(child)
        try:
            os.kill(engine.pid, signal.SIGKILL)
            assert engine.wait(timeout=BOUND_S) == -signal.SIGKILL
            attempts, results = trio.run(reopen, journal, child_exit)
        finally:
            os.close(child_exit)
        assert engine.stdout is not None
        acknowledged = [line.split()[1] for line in engine.stdout.read().splitlines()]
    assert attempts in (0, 1)
    assert acknowledged
    for iid in acknowledged:
        assert results[iid] == value(int(iid[1:]))
