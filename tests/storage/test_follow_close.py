"""JournalFollower.close() is safe from any thread at any time (issue 13 m).

A program that follows a journal from trio runs the follower in a worker
thread (``trio.to_thread.run_sync(next, follower)``) and closes it from the
event loop when it is done: closing must wake the blocked wait and end the
follow, never raise "generator already executing", and the files it held
must be closed by the time the worker returns. Nothing here sleeps to wait
for a condition: the worker says when it waits (``on_wait``), and the
follower's own wait is what close() must cut short (an hour-long interval).
"""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log.reader import RecordView, follow_journal

HOUR = 3600.0
codec = Codec()


def record(n: int) -> list[Any]:
    return r.make(r.CREATED, 1_714_564_800_000 + n, f"inst-{n}", "wf", codec.encode(n))


async def write(path: Path, count: int) -> None:
    async with Journal(FileStorage(path)) as journal:
        for n in range(1, count + 1):
            await journal.append(record(n))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_close_from_trio_while_the_follower_waits_in_a_thread(journal_dir: Path) -> None:
    await write(journal_dir, 3)
    before = open_fds()
    waiting = threading.Event()
    follower = follow_journal(journal_dir, interval=HOUR, on_wait=waiting.set)
    shown: list[RecordView] = []

    def read_all() -> None:
        shown.extend(follower)  # ends only when closed

    with trio.fail_after(30):  # a real-time guard: the wait is an hour unless close wakes it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, read_all, abandon_on_cancel=True)
            )
            await trio.to_thread.run_sync(waiting.wait)  # caught up: blocked in its wait
            follower.close()  # raised ValueError: generator already executing
    assert [rec.seq for rec in shown] == [1, 2, 3]
    assert open_fds() == before  # the worker closed every segment as it stopped
    assert list(follower) == []  # closed for good
    follower.close()  # and closing again is harmless


def test_close_from_on_wait_in_the_following_thread(journal_dir: Path) -> None:
    trio.run(write, journal_dir, 2)
    before = open_fds()
    slept: list[float] = []
    follower = follow_journal(
        journal_dir, interval=HOUR, sleep=slept.append, on_wait=lambda: follower.close()
    )
    assert [rec.seq for rec in follower] == [1, 2]  # ends: closed from inside its wait
    assert slept == []  # it stopped before sleeping
    assert open_fds() == before


def test_close_during_an_injected_sleep_ends_once_it_returns(journal_dir: Path) -> None:
    """A sleep the follower did not choose cannot be woken; it stops right after."""
    trio.run(write, journal_dir, 1)
    before = open_fds()
    follower = follow_journal(journal_dir, interval=HOUR, sleep=lambda _: follower.close())
    assert [rec.seq for rec in follower] == [1]
    assert open_fds() == before


def test_close_before_and_between_records(journal_dir: Path) -> None:
    trio.run(write, journal_dir, 3)
    before = open_fds()
    unstarted = follow_journal(journal_dir)
    unstarted.close()
    assert list(unstarted) == []
    follower = follow_journal(journal_dir, interval=HOUR)
    assert next(follower).seq == 1
    assert open_fds() > before
    follower.close()
    assert open_fds() == before
    with pytest.raises(StopIteration):
        next(follower)


async def test_close_races_a_worker_reading_records(journal_dir: Path) -> None:
    """Closing while the worker is busy yielding: it finishes the record, then stops."""
    await write(journal_dir, 200)
    before = open_fds()
    first = threading.Event()
    follower = follow_journal(journal_dir, interval=HOUR)
    shown: list[int] = []

    def read_all() -> None:
        for rec in follower:
            shown.append(rec.seq)
            first.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(trio.to_thread.run_sync, read_all, abandon_on_cancel=True)
            )
            await trio.to_thread.run_sync(first.wait)
            follower.close()
    assert shown == list(range(1, len(shown) + 1))  # in order, none twice, then stopped
    assert open_fds() == before
