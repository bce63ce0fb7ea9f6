"""A hand-over survives a power cut once ``write_handover`` returns.

kill -9 (fuzz/killnine.py, at ``inbox.after-temp-write`` and
``inbox.after-rename``) cannot catch a missing fsync: the page cache keeps
what a killed process wrote. Here the hand-over is written for real, every
file-system call it makes is recorded, and a model of what a power cut
keeps replays them: a file's bytes only as of its last ``fsync``, a name
created, renamed or removed in a directory only once that directory was
fsynced (a new directory's own name once its parent was). At every point
of the sequence the state a power cut would leave is checked:

* no hand-over is ever visible under its final name with bytes missing;
* from the moment ``write_handover`` returned (the tool's exit 0), the
  hand-over is there, whole, in every such state.

The model is conservative: a file system may keep more (ext4 orders data
before a rename it commits), never less.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memable_log._storage import inbox

Op = tuple[Any, ...]


@contextmanager
def recorded(log: list[Op]) -> Iterator[None]:
    """Record the calls that change the file system, by path, as they succeed."""
    real = {name: getattr(os, name) for name in
            ("open", "write", "fsync", "close", "rename", "unlink", "makedirs", "mkdir")}
    fds: dict[int, str] = {}

    def open_(path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd: int = real["open"](path, flags, mode, **kw)
        fds[fd] = os.path.abspath(path)
        if flags & os.O_CREAT:
            log.append(("create", fds[fd]))
        return fd

    def write(fd: int, data: Any) -> int:
        n: int = real["write"](fd, data)
        log.append(("write", fds[fd], bytes(data[:n])))
        return n

    def fsync(fd: int) -> None:
        real["fsync"](fd)
        log.append(("fsync", fds[fd]))

    def close(fd: int) -> None:
        real["close"](fd)
        fds.pop(fd, None)

    def rename(src: str, dst: str) -> None:
        real["rename"](src, dst)
        log.append(("rename", os.path.abspath(src), os.path.abspath(dst)))

    def unlink(path: str) -> None:
        real["unlink"](path)
        log.append(("unlink", os.path.abspath(path)))

    def makedirs(path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        missing = not os.path.isdir(path)
        real["makedirs"](path, mode, exist_ok=exist_ok)
        if missing:
            log.append(("mkdir", os.path.abspath(path)))

    def mkdir(path: str, mode: int = 0o777) -> None:
        real["mkdir"](path, mode)
        log.append(("mkdir", os.path.abspath(path)))

    replaced = {"open": open_, "write": write, "fsync": fsync, "close": close,
                "rename": rename, "unlink": unlink, "makedirs": makedirs, "mkdir": mkdir}
    for name, fake in replaced.items():
        setattr(os, name, fake)
    try:
        yield
    finally:
        for name, original in real.items():
            setattr(os, name, original)


@dataclass
class Model:
    """What a power cut keeps of the calls replayed so far (module comment)."""

    root: str
    content: dict[str, bytes] = field(default_factory=dict)  # inode -> bytes written
    synced: dict[str, bytes] = field(default_factory=dict)  # inode -> bytes at its fsync
    names: dict[str, str] = field(default_factory=dict)  # path -> inode, as seen now
    kept: dict[str, str] = field(default_factory=dict)  # path -> inode, after a power cut
    dirs: set[str] = field(default_factory=set)  # directories that exist now
    kept_dirs: set[str] = field(default_factory=set)  # ... and after a power cut
    inodes: int = 0

    def apply(self, op: Op) -> None:
        kind, path = op[0], op[1]
        if kind == "create" and path not in self.names and path not in self.dirs:
            self.inodes += 1
            self.names[path] = inode = f"inode{self.inodes}"
            self.content[inode] = b""
        elif kind == "write":
            self.content[self.names[path]] += op[2]
        elif kind == "fsync" and path in self.dirs:
            # A directory's fsync keeps its entries as they are now.
            for name in [n for n in self.kept if os.path.dirname(n) == path]:
                del self.kept[name]
            self.kept.update({n: i for n, i in self.names.items() if os.path.dirname(n) == path})
            self.kept_dirs |= {d for d in self.dirs if os.path.dirname(d) == path}
        elif kind == "fsync":
            inode = self.names[path]
            self.synced[inode] = self.content[inode]
        elif kind == "rename":
            self.names[op[2]] = self.names.pop(path)
        elif kind == "unlink":
            del self.names[path]
        elif kind == "mkdir":
            self.dirs.add(path)

    def kept_dir(self, directory: str) -> bool:
        """Whether a power cut keeps ``directory``: its name, and its parents'."""
        return directory == self.root or (
            directory in self.kept_dirs and self.kept_dir(os.path.dirname(directory))
        )

    def after_power_cut(self, directory: str) -> dict[str, bytes]:
        """The files of ``directory`` a power cut would leave, with their bytes."""
        if not self.kept_dir(directory):
            return {}
        return {os.path.basename(n): self.synced.get(i, b"") for n, i in self.kept.items()
                if os.path.dirname(n) == directory}


@pytest.mark.parametrize("inbox_exists", [False, True], ids=["new-inbox", "inbox-there"])
def test_a_hand_over_is_durable_when_write_handover_returns(
    tmp_path: Path, inbox_exists: bool
) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    box = inbox.inbox_path(str(journal))
    if inbox_exists:
        os.mkdir(box)
    data = inbox.MAGIC + os.urandom(3000)
    log: list[Op] = []
    with recorded(log):
        name = inbox.write_handover(str(journal), data)
    acknowledged = len(log)  # everything write_handover did before it returned
    assert {op[0] for op in log} >= {"create", "write", "fsync", "rename"}

    model = Model(str(journal), dirs={str(journal)} | ({box} if inbox_exists else set()),
                  kept_dirs={box} if inbox_exists else set())
    for done in range(acknowledged + 1):
        if done:
            model.apply(log[done - 1])
        left = model.after_power_cut(box)
        for file, content in left.items():
            if not file.endswith(".tmp"):
                assert content == data, f"after call {done} of {log}: {file} torn"
        if done == acknowledged:
            assert left.get(name) == data, f"acknowledged, then lost in a power cut: {log}"


def test_the_model_catches_a_missing_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fails when the directory's fsync after the rename is
    left out, or the file's before it: the model is not vacuous."""
    journal = tmp_path / "journal"
    journal.mkdir()
    os.mkdir(inbox.inbox_path(str(journal)))
    data = inbox.MAGIC + b"x" * 100
    for leave_out in ("dir", "file"):
        if leave_out == "dir":
            monkeypatch.setattr(inbox, "_fsync_dir", lambda path: None)
        log: list[Op] = []
        with recorded(log):
            recording = os.fsync
            if leave_out == "file":  # directories' fsyncs only
                os.fsync = lambda fd, recording=recording: (  # type: ignore[misc]
                    recording(fd) if stat.S_ISDIR(os.fstat(fd).st_mode) else None
                )
            try:
                name = inbox.write_handover(str(journal), data)
            finally:
                os.fsync = recording
        box = inbox.inbox_path(str(journal))
        model = Model(str(journal), dirs={str(journal), box}, kept_dirs={box})
        for op in log:
            model.apply(op)
        assert model.after_power_cut(box).get(name) != data, leave_out
        monkeypatch.undo()


@pytest.mark.parametrize("rejected_exists", [False, True], ids=["new-rejected", "rejected-there"])
def test_a_rejected_hand_over_is_never_lost_on_its_way_to_rejected(
    tmp_path: Path, rejected_exists: bool
) -> None:
    """At every point of ``reject_handover``, a power cut leaves the hand-over
    whole in the inbox or in ``rejected/``; once it returned, in ``rejected/``
    with its reason, and gone from the inbox."""
    journal = tmp_path / "journal"
    journal.mkdir()
    data = inbox.MAGIC + os.urandom(500)
    name = inbox.write_handover(str(journal), data)
    box = inbox.inbox_path(str(journal))
    rejected = os.path.join(box, inbox.REJECTED)
    if rejected_exists:
        os.mkdir(rejected)
    log: list[Op] = []
    with recorded(log):
        where = inbox.reject_handover(str(journal), name, "unknown workflow")
    target = os.path.basename(where)
    there = {rejected} if rejected_exists else set()
    model = Model(str(journal), dirs={str(journal), box} | there, kept_dirs={box} | there)
    model.kept[os.path.join(box, name)] = "before"  # the hand-over, durable already
    model.names[os.path.join(box, name)] = "before"
    model.content["before"] = model.synced["before"] = data
    for done in range(len(log) + 1):
        if done:
            model.apply(log[done - 1])
        in_box = model.after_power_cut(box).get(name)
        in_rejected = model.after_power_cut(rejected).get(target)
        assert data in (in_box, in_rejected), f"lost after call {done} of {log}"
    assert in_rejected == data
    assert in_box is None
    assert model.after_power_cut(rejected)[target + inbox.WHY_SUFFIX] == b"unknown workflow"
