"""Signals handed to a running engine by other processes, through the directory.

When an engine holds the journal, ``memable-signal`` cannot append. It
writes a *hand-over file* instead: ``inbox/<time_ns>-<pid>-<random>.sig``,
created as a temp file, fsynced, renamed into place, and the directory
fsynced, so once the tool exits 0 the signal survives a crash of either
side. A hand-over file is ``MAGIC``, a crc32 of the body, and the body: the
msgpack array ``[workflow, instance_id, key, payload_blob]``.

The engine watches the inbox from a worker thread (polling every
``POLL_SECONDS`` of real time, so tests on a mock clock are not disturbed),
applies each file in name order through ``engine.signal`` (the same checks
as an in-process signal), and only then deletes it and fsyncs the
directory. A crash between the append and the delete leaves the file; the
next pass finds the key already signalled, logs it and deletes the file:
nothing is applied twice. Of two hand-overs racing for one key the first
(by name) is applied and the second logged. A hand-over the engine cannot
apply at all (damaged, undecodable, invalid, not a file) is moved to
``inbox/rejected/`` by ``reject_handover``, where an operator finds it; an
``inbox`` that is not a directory is renamed ``inbox.rejected-<time_ns>``
(``move_inbox_aside``). Nothing a tool was told is durable is deleted
unread.

A writer that fails removes its temp file. One killed before its rename
leaves it: the engine deletes it at start, and the watcher every
``STALE_TEMP_SECONDS`` while it runs, once it is *stale*: the process named
in it is gone and it was last written ``STALE_TEMP_SECONDS`` ago. A live
writer's temp is never stale (its process exists); a writer in another PID
namespace may look gone, but it writes its temp in well under a minute,
and if it were slower still its rename would fail and it would report the
failure: nothing acknowledged is lost.

The writing side lives in ``memable_log.operations`` (``signal``), which
``memable-signal`` calls; ``waiting_signal`` lets it refuse a key whose
hand-over is already here.

Operator actions (SPEC-NEXT section 6: invoke, cancel, forget, restart)
go through this same inbox, written by ``write_handover`` and applied in
name order by the same watcher: no second mechanism. A signal is always
written as the four-element body above (so every engine that ever shipped
applies it). An action is the body ``[action, instance_id, arguments]`` (a
str, a str, a map; ``ACTIONS`` names what each map holds) under ``MAGIC``
and the crc32, in a file named ``<time_ns>-<pid>-<random>.act``. The
suffix keeps such files out of ``pending`` of an engine too old to apply
them: it leaves them in the inbox rather than deleting what a tool was told
is durable, and the next engine that knows them applies them. ``pending``
lists both suffixes, so one name order (creation time) sorts signals and
actions together; ``decode_action`` checks an action's body.

An action the engine refuses (an unknown workflow, a restart of an instance
that changed since it was asked) is moved to ``inbox/rejected/`` with its
reason beside it in ``<name>.why`` (``reject_handover(..., reason)``);
``rejection`` reads it back, which is how ``memable invoke --wait`` learns
that the engine refused what it handed over.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

from .crashpoints import crashpoint
from .files import fsync_dir as _fsync_dir
from .files import write_all

INBOX = "inbox"
REJECTED = "rejected"
MAGIC = b"MMBLSIG1"
SUFFIX = ".sig"
ACTION_SUFFIX = ".act"
WHY_SUFFIX = ".why"
# The actions and the arguments each takes: name -> {argument: type}.
ACTIONS: dict[str, dict[str, type]] = {
    "invoke": {"workflow": str, "input": bytes},
    "cancel": {},
    "restart": {"updated_ms": int},
    "forget": {"key": str},
}
POLL_SECONDS = 0.01
STALE_TEMP_SECONDS = 60.0
_CRC = struct.Struct("<I")
_MAX_HANDOVER = 16 * 1024 * 1024



def _logger() -> Any:
    """The library's logger; logging is imported only by the engine's side
    (a tool that writes a hand-over starts faster without it)."""
    import logging

    return logging.getLogger("memable_log")


class HandoverError(ValueError):
    """A hand-over file is damaged."""


def inbox_path(journal_path: str) -> str:
    """The inbox directory of the journal at ``journal_path``."""
    return os.path.join(journal_path, INBOX)


def encode_handover(workflow: str, instance_id: str, key: str, blob: bytes) -> bytes:
    """A signal hand-over file's bytes: ``MAGIC``, crc32, the msgpack body."""
    body: bytes = msgpack.packb([workflow, instance_id, key, blob], use_bin_type=True)
    return MAGIC + _CRC.pack(zlib.crc32(body)) + body


def decode_handover(data: bytes) -> tuple[str, str, str, bytes]:
    """(workflow, instance_id, key, payload blob) of a hand-over; HandoverError if damaged."""
    fields = _body(data)
    if (
        type(fields) is not list
        or len(fields) != 4
        or not all(type(f) is str for f in fields[:3])
        or type(fields[3]) is not bytes
    ):
        raise HandoverError("malformed hand-over")
    return fields[0], fields[1], fields[2], fields[3]


def encode_action(action: str, instance_id: str, arguments: dict[str, object]) -> bytes:
    """An action hand-over file's bytes: ``MAGIC``, crc32, the msgpack body."""
    body: bytes = msgpack.packb([action, instance_id, arguments], use_bin_type=True)
    return MAGIC + _CRC.pack(zlib.crc32(body)) + body


def decode_action(data: bytes) -> tuple[str, str, dict[str, Any]]:
    """(action, instance_id, arguments) of an action hand-over; HandoverError if
    damaged, or if the action or its arguments are not those of ``ACTIONS``."""
    fields = _body(data)
    if type(fields) is not list or len(fields) != 3:
        raise HandoverError("malformed action hand-over")
    action, instance_id, arguments = fields
    if type(action) is not str or action not in ACTIONS:
        raise HandoverError(f"unknown action {action!r}")
    if type(instance_id) is not str or not instance_id:
        raise HandoverError("an action hand-over needs a non-empty instance id")
    wanted = ACTIONS[action]
    if (
        type(arguments) is not dict
        or set(arguments) != set(wanted)
        or any(type(arguments[k]) is not t for k, t in wanted.items())
    ):
        raise HandoverError(f"bad arguments for action {action!r}: {arguments!r}")
    return action, instance_id, arguments


def _body(data: bytes) -> object:
    head = len(MAGIC) + _CRC.size
    if len(data) < head or not data.startswith(MAGIC):
        raise HandoverError("not a hand-over file")
    (crc,) = _CRC.unpack_from(data, len(MAGIC))
    body = data[head:]
    if zlib.crc32(body) != crc:
        raise HandoverError("hand-over checksum mismatch")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:
        raise HandoverError(f"undecodable hand-over: {exc}") from None


def is_action(name: str) -> bool:
    """Whether the hand-over file ``name`` holds an action (else a signal)."""
    return name.endswith(ACTION_SUFFIX)


def write_handover(
    journal_path: str, data: bytes, *, file_mode: int = 0o600, suffix: str = SUFFIX
) -> str:
    """Durably place a hand-over in the inbox; return its file name.

    ``suffix`` is ``SUFFIX`` for a signal, ``ACTION_SUFFIX`` for an action.
    """
    inbox = inbox_path(journal_path)
    created = not os.path.isdir(inbox)
    os.makedirs(inbox, mode=0o700, exist_ok=True)
    if created:
        _fsync_dir(journal_path)
    name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}{suffix}"
    temp = os.path.join(inbox, name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, file_mode)
    try:
        try:
            write_all(fd, data)  # a full disk: ENOSPC
            os.fsync(fd)
        finally:
            os.close(fd)
        crashpoint("inbox.after-temp-write")
        os.rename(temp, os.path.join(inbox, name))
    except BaseException:
        # Never acknowledged: leave no half hand-over behind (a full disk).
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    crashpoint("inbox.after-rename")
    _fsync_dir(inbox)
    return name


def pending(journal_path: str) -> list[str]:
    """Hand-over files waiting in the inbox, oldest first."""
    try:
        names = os.listdir(inbox_path(journal_path))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith((SUFFIX, ACTION_SUFFIX)))


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(journal_path: str, now: float | None = None) -> list[str]:
    """Delete temp files of hand-overs whose writer died before the rename.

    Such a hand-over was never acknowledged (the tool exits 0 only after its
    rename and directory fsync), so it is garbage. A temp file goes when the
    process named in it is gone *and* it is older than ``STALE_TEMP_SECONDS``
    (a writer in another PID namespace may look dead). Returns the names.
    """
    inbox = inbox_path(journal_path)
    try:
        names = os.listdir(inbox)
    except FileNotFoundError:
        return []
    now = time.time() if now is None else now
    removed = []
    for name in names:
        if not name.endswith((SUFFIX + ".tmp", ACTION_SUFFIX + ".tmp")):
            continue
        parts = name.split("-")
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        try:
            age = now - os.stat(os.path.join(inbox, name)).st_mtime
            if (pid is None or not _writer_alive(pid)) and age > STALE_TEMP_SECONDS:
                os.unlink(os.path.join(inbox, name))
                removed.append(name)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
    if removed:
        _fsync_dir(inbox)
    return removed


def read_handover(journal_path: str, name: str) -> bytes:
    """The bytes of the hand-over file ``name`` (at most one byte past the cap)."""
    with open(os.path.join(inbox_path(journal_path), name), "rb") as f:
        return bytes(f.read(_MAX_HANDOVER + 1))


def reject_handover(journal_path: str, name: str, reason: str | None = None) -> str:
    """Move a hand-over the engine cannot apply to ``inbox/rejected/``, durably.

    Returns where it went, relative to the journal (``inbox/rejected/<name>``,
    with ``.1``, ``.2``... added if that name is taken). A ``reason`` is
    written first, beside it, as ``<that name>.why`` (UTF-8 text).
    """
    inbox = inbox_path(journal_path)
    rejected = os.path.join(inbox, REJECTED)
    if not os.path.isdir(rejected):
        os.mkdir(rejected, 0o700)
        _fsync_dir(inbox)
    target, n = name, 0
    while os.path.lexists(os.path.join(rejected, target)):
        n += 1
        target = f"{name}.{n}"
    if reason is not None:
        fd = os.open(os.path.join(rejected, target + WHY_SUFFIX),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, reason.encode("utf-8", "backslashreplace"))
            os.fsync(fd)
        finally:
            os.close(fd)
    os.rename(os.path.join(inbox, name), os.path.join(rejected, target))
    _fsync_dir(rejected)
    _fsync_dir(inbox)
    return f"{INBOX}/{REJECTED}/{target}"


def move_inbox_aside(journal_path: str) -> str | None:
    """Rename an ``inbox`` that is not a directory to ``inbox.rejected-<time_ns>``.

    Returns the new name, or None if the inbox is a directory or absent
    (nothing to do).
    """
    inbox = inbox_path(journal_path)
    if os.path.isdir(inbox) or not os.path.lexists(inbox):
        return None
    aside = f"{INBOX}.rejected-{time.time_ns():020d}"
    os.rename(inbox, os.path.join(journal_path, aside))
    _fsync_dir(journal_path)
    return aside


def remove_handover(journal_path: str, name: str) -> None:
    """Delete an applied hand-over durably; one already gone is not an error."""
    inbox = inbox_path(journal_path)
    crashpoint("inbox.before-remove")
    try:
        os.unlink(os.path.join(inbox, name))
    except FileNotFoundError:
        return
    _fsync_dir(inbox)


def rejection(journal_path: str, name: str) -> str | None:
    """Why the engine refused the hand-over ``name``, or None if it has not.

    The text of ``inbox/rejected/<name>.why`` once the hand-over is there
    (an empty string if no reason was written).
    """
    rejected = os.path.join(inbox_path(journal_path), REJECTED)
    if not os.path.lexists(os.path.join(rejected, name)):
        return None
    try:
        with open(os.path.join(rejected, name + WHY_SUFFIX), "rb") as f:
            return f.read(64 * 1024).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def waiting_action(journal_path: str, action: str | None, instance_id: str) -> str | None:
    """The name of an action hand-over in the inbox doing ``action`` (None:
    any action) to ``instance_id``, or None (damaged or vanishing files are
    skipped)."""
    for name in pending(journal_path):
        if not is_action(name):
            continue
        try:
            waiting, waiting_instance, _ = decode_action(read_handover(journal_path, name))
        except (HandoverError, OSError):
            continue
        if waiting_instance == instance_id and action in (None, waiting):
            return name
    return None


def waiting_signal(journal_path: str, instance_id: str, key: str) -> str | None:
    """The name of a hand-over in the inbox that signals ``key`` of ``instance_id``.

    None if there is none. A damaged file is skipped (the engine reports
    it when it gets there), and so is one that vanished while being read
    (the engine applied it: the journal shows the signal then).
    """
    for name in pending(journal_path):
        if is_action(name):
            continue
        try:
            _, waiting_instance, waiting_key, _ = decode_handover(read_handover(journal_path, name))
        except (HandoverError, OSError):
            continue
        if (waiting_instance, waiting_key) == (instance_id, key):
            return name
    return None


class InboxWatcher:
    """Blocks a worker thread until hand-overs appear or ``stop()`` is called.

    Names in ``skip`` (hand-overs the engine could neither apply nor move
    aside) are not returned again. Every ``STALE_TEMP_SECONDS`` of
    ``monotonic`` time it removes stale temp files (``remove_stale_temps``).
    """

    def __init__(
        self, journal_path: str, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = journal_path
        self.skip: set[str] = set()
        self._monotonic = monotonic
        self._next_sweep = monotonic() + STALE_TEMP_SECONDS
        self._stop = threading.Event()

    def wait(self) -> list[str]:
        """Pending names, as soon as there are any; [] once stopped.

        An OSError listing the inbox (not a directory, unreadable) is raised.
        """
        while not self._stop.is_set():
            self.sweep()
            names = [n for n in pending(self.path) if n not in self.skip]
            if names:
                return names
            self._stop.wait(POLL_SECONDS)
        return []

    def sweep(self, *, now: bool = False) -> None:
        """Remove stale temp files if a sweep is due (or ``now``); log what went.

        An error is logged and the next sweep tries again.
        """
        if not now and self._monotonic() < self._next_sweep:
            return
        self._next_sweep = self._monotonic() + STALE_TEMP_SECONDS
        try:
            removed = remove_stale_temps(self.path)
        except OSError as exc:
            _logger().warning("stale hand-over temp files not removed: %s", exc)
            return
        for name in removed:
            _logger().info("removed %s/%s, left by a memable-signal that died writing it",
                        INBOX, name)

    def stop(self) -> None:
        self._stop.set()
