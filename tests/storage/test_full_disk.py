"""A full disk says so, and leaves no half hand-over behind (issue 13 i).

A write to a filling disk first writes fewer bytes than asked; the next
write raises ENOSPC. The journal reported the short write as EIO ("short
write"), which hides the cause: now the rest is written, and the ENOSPC
that follows is what the journal fails with, naming the segment. A
hand-over writer that fails removes its temp file, and the engine's inbox
watcher removes the temps of writers killed mid-way while it runs, never a
live writer's. ``os.write`` is faked here: a disk with so many bytes of room.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.journal import rec

from memable_log._core.errors import JournalFailed
from memable_log._core.records import SEQ
from memable_log._storage.files import FileStorage, write_all
from memable_log._storage.inbox import (
    STALE_TEMP_SECONDS,
    InboxWatcher,
    encode_handover,
    write_handover,
)
from memable_log._storage.segments import scan
from memable_log._storage.writer import SegmentWriter

_real_write = os.write
_real_pwrite = os.pwrite


class Disk:
    """``os.write`` on a disk with ``room`` bytes left, at most ``chunk`` per call."""

    def __init__(self, room: int = 1 << 30, chunk: int = 1 << 30) -> None:
        self.room = room
        self.chunk = chunk
        self.calls = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls += 1
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = _real_write(fd, bytes(data[: min(self.room, self.chunk)]))
        self.room -= written
        return written

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """``os.pwrite`` on the same disk (a segment writer overwrites its zeros)."""
        self.calls += 1
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = _real_pwrite(fd, bytes(data[: min(self.room, self.chunk)]), offset)
        self.room -= written
        return written

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "pwrite", self.pwrite)


def test_write_all_writes_the_rest_after_short_writes(tmp_path: Path) -> None:
    disk = Disk(chunk=3)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        write_all(fd, b"0123456789", disk.write)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0123456789"
    assert disk.calls == 4


def test_write_all_reports_enospc_from_the_write_after_a_short_one(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        with pytest.raises(OSError, match="No space left on device") as failed:
            write_all(fd, b"0123456789", Disk(room=4).write)
    finally:
        os.close(fd)
    assert failed.value.errno == errno.ENOSPC


def test_write_all_does_not_spin_on_a_write_that_takes_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="took no byte") as failed:
        write_all(0, b"data", lambda fd, data: 0)
    assert failed.value.errno == errno.EIO


def _writer(path: Path) -> SegmentWriter:
    storage = FileStorage(path)
    writer = SegmentWriter(storage, 64 * 1024)
    writer.recover(scan(storage))
    return writer


def test_segment_writes_that_come_up_short_are_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(tmp_path)
    records = [rec(i) for i in range(50)]
    for seq, record in enumerate(records, start=writer.next_seq):
        record[SEQ] = seq
    Disk(chunk=7).install(monkeypatch)
    writer.commit([msgpack.packb(record) for record in records])
    monkeypatch.undo()
    writer.close()
    read: list[list[Any]] = []
    scan(FileStorage(tmp_path), lambda record, loc: read.append(record))
    assert read == records


def test_a_full_disk_fails_the_journal_with_enospc_naming_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(tmp_path)
    Disk(room=10).install(monkeypatch)
    with pytest.raises(JournalFailed) as failed:
        writer.commit([msgpack.packb(rec(1, size=200))])
    monkeypatch.undo()
    message = str(failed.value)
    assert "No space left on device (ENOSPC)" in message
    assert "seg-0000000001.mlog" in message
    assert "short write" not in message
    assert isinstance(failed.value.__cause__, OSError)
    assert failed.value.__cause__.errno == errno.ENOSPC


def _handover() -> bytes:
    return encode_handover("approval", "a1", "approval:v1", b"\x00\xc0" + b"x" * 500)


@pytest.mark.parametrize("fails", ["write", "fsync"])
def test_a_handover_writer_that_fails_leaves_no_temp_file(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    (journal_dir / "inbox").mkdir(parents=True)  # the temp is the first thing written
    if fails == "write":
        monkeypatch.setattr(os, "write", Disk(room=100).write)
    else:

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", fsync)
    expected = errno.ENOSPC if fails == "write" else errno.EIO
    with pytest.raises(OSError, match=os.strerror(expected)) as failed:
        write_handover(str(journal_dir), _handover())
    monkeypatch.undo()
    assert failed.value.errno == expected
    assert os.listdir(journal_dir / "inbox") == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: no such process now
    return child.pid


def test_the_watcher_removes_stale_temps_while_the_engine_runs(journal_dir: Path) -> None:
    """A temp goes once the process named in it is gone and it was last
    written STALE_TEMP_SECONDS ago; a live writer's temp stays, however old."""
    inbox = journal_dir / "inbox"
    inbox.mkdir(parents=True)
    clock = [1000.0]
    watcher = InboxWatcher(str(journal_dir), monotonic=lambda: clock[0])
    signal = write_handover(str(journal_dir), _handover())  # so that wait() returns at once
    dead, old = _dead_pid(), time.time() - 2 * STALE_TEMP_SECONDS
    temps = {
        "gone": f"{time.time_ns():020d}-{dead}-0a0b0c0d.sig.tmp",  # dead writer, old
        "fresh": f"{time.time_ns():020d}-{dead}-1a1b1c1d.sig.tmp",  # dead writer, just now
        "alive": f"{time.time_ns():020d}-{os.getpid()}-2a2b2c2d.sig.tmp",  # alive, old
    }
    for what, name in temps.items():
        (inbox / name).write_bytes(b"half a hand-over")
        if what != "fresh":
            os.utime(inbox / name, (old, old))
    assert watcher.wait() == [signal]
    assert sorted(os.listdir(inbox)) == sorted([signal, *temps.values()])  # not due yet
    clock[0] += STALE_TEMP_SECONDS
    assert watcher.wait() == [signal]
    assert sorted(os.listdir(inbox)) == sorted([signal, temps["fresh"], temps["alive"]])
