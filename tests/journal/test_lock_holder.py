"""JournalLocked names the process holding the journal.

The writer puts its pid into ``LOCK`` once it holds the flock; a second
writer refused the lock reads it back for its message. The holders here are
real processes (a flock is per open file, so only another process shows
the pid that matters); one holds a ``LOCK`` the way an older version did,
empty, and the refusal still comes, without a pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from memable_log import JournalLocked
from memable_log._core.format import LOCK_NAME
from memable_log._storage.files import FileStorage

# Takes the lock as the library does, says so, and holds it until stdin closes.
HOLD = """
import sys
from memable_log._storage.files import FileStorage
storage = FileStorage(sys.argv[1])
storage.lock()
print("locked", flush=True)
sys.stdin.read()
"""

# Takes the flock as a version that wrote no pid did: the file stays as it is.
HOLD_OLD = """
import fcntl, os, sys
fd = os.open(os.path.join(sys.argv[1], "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def holding(script: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        yield holder
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    with holding(HOLD, tmp_path) as holder:
        yield holder


def test_the_refusal_names_the_holders_pid(tmp_path: Path, held: subprocess.Popen[str]) -> None:
    with pytest.raises(JournalLocked) as info:
        FileStorage(tmp_path).lock()
    assert info.value.pid == held.pid
    assert f"pid {held.pid}" in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_a_lock_file_without_a_pid_still_locks_and_is_written_once_taken(
    tmp_path: Path,
) -> None:
    (tmp_path / LOCK_NAME).write_bytes(b"")
    with holding(HOLD_OLD, tmp_path):
        with pytest.raises(JournalLocked) as info:
            FileStorage(tmp_path).lock()
        assert info.value.pid is None
        assert "locked by another process;" in str(info.value)
    # Free again: this process takes it and writes its own pid over any old one.
    (tmp_path / LOCK_NAME).write_bytes(b"4194304999\n")
    storage = FileStorage(tmp_path)
    storage.lock()
    try:
        assert (tmp_path / LOCK_NAME).read_bytes() == f"{os.getpid()}\n".encode()
    finally:
        storage.unlock()


def test_garbage_in_the_lock_file_gives_the_message_without_a_pid(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_bytes(b"\xff not a pid")
    with holding(HOLD_OLD, tmp_path):
        with pytest.raises(JournalLocked) as info:
            FileStorage(tmp_path).lock()
        assert info.value.pid is None
