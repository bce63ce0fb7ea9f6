"""Crash points: named places in the write paths where a test kills the process.

The crash-fuzzing campaign (fuzz/killnine.py) kills processes with SIGKILL at
random moments, and, to reach the narrow windows random timing rarely hits,
at these named points. ``crashpoint(name)`` is called at each of them. In a
normal process it does nothing and costs one global check: the arming is read
once, when this module is imported.

A process is armed by the environment variable ``MEMABLE_CRASH_POINT=name:n``
(read at import), or by ``arm(name, n)`` in a process forked after the
import. Armed, the n-th call of point ``name`` writes one line,
``memable crash point NAME``, to file descriptor 2 and sends the process
SIGKILL: nothing is flushed, closed or unlocked, as with ``kill -9`` or the
OOM killer. The page cache survives, so what was written stays visible; this
tests process crashes, not power loss (MemoryStorage simulates that).

Points (``POINTS``):

``writer.torn-write``
    half of a batch's bytes written, then death: a torn tail.
``writer.before-fsync``
    a batch written, not fsynced, nobody told.
``writer.after-fsync``
    a batch fsynced, nobody told: durable but never acknowledged.
``writer.after-preallocate``
    the active segment's next zeros written, not yet fsynced (the batch
    that needed them not yet written).
``roll.after-seal``
    a full segment sealed and fsynced, its successor not yet created.
``roll.after-temp-create``
    the next segment's temp file created, still empty.
``roll.after-temp-sync``
    its header written and fsynced, not yet renamed into place.
``roll.after-rename``
    renamed into place, the directory not yet fsynced.
    (The roll.* points also fire when a journal's first segment is made.)
``inbox.after-temp-write``
    a signal hand-over's temp file written and fsynced, not renamed.
``inbox.after-rename``
    the hand-over renamed into the inbox, the directory not fsynced.
``inbox.before-remove``
    the engine applied a hand-over (its signal is durable in the journal)
    and has not yet deleted the file.
``compact.after-temp-sync``
    a compacted segment's temp file written and fsynced, not renamed.
``compact.after-rename``
    renamed into place (it now replaces the older segments), the directory
    not yet fsynced.
``compact.before-remap``
    (in the engine) the compacted segment and its snapshot are written, the
    live index still points at the segments it replaced.
``compact.after-remove``
    the first of the replaced segments deleted, the rest not, the directory
    not fsynced.

The first two run in the compaction child process of an engine on a
directory (see _compact_process.py): an armed engine hands its arming to
each child it starts (counting from 0 in each) and relays the child's
crash-point line to its own descriptor 2.
"""

from __future__ import annotations

import os
import signal
from typing import Final, Protocol

ENV: Final = "MEMABLE_CRASH_POINT"
POINTS: Final = (
    "writer.torn-write",
    "writer.before-fsync",
    "writer.after-fsync",
    "writer.after-preallocate",
    "roll.after-seal",
    "roll.after-temp-create",
    "roll.after-temp-sync",
    "roll.after-rename",
    "inbox.after-temp-write",
    "inbox.after-rename",
    "inbox.before-remove",
    "compact.after-temp-sync",
    "compact.after-rename",
    "compact.before-remap",
    "compact.after-remove",
)
LINE_PREFIX: Final = b"memable crash point "


class _Writable(Protocol):
    def write(self, data: bytes) -> None: ...


_armed: tuple[str, int] | None = None  # (point, the call that kills)
_calls = 0  # calls of the armed point so far


def parse(spec: str) -> tuple[str, int]:
    """``"name:n"`` -> (name, n); ValueError for an unknown point or a bad n."""
    name, sep, count = spec.rpartition(":")
    if not sep or name not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"{ENV} must be NAME:N with N >= 1 and NAME one of {', '.join(POINTS)}; "
            f"got {spec!r}"
        )
    return name, int(count)


def arm(name: str, n: int = 1) -> None:
    """Kill this process at the ``n``-th call of point ``name`` from now on."""
    global _armed, _calls
    _armed = parse(f"{name}:{n}")
    _calls = 0


def armed() -> str | None:
    """The arming of this process as ``"name:n"``, or None."""
    return None if _armed is None else f"{_armed[0]}:{_armed[1]}"


def disarm() -> None:
    global _armed
    _armed = None


def crashpoint(name: str, file: _Writable | None = None, data: bytes = b"") -> None:
    """Die here if armed for ``name`` and this is the chosen call.

    With ``file``, the first half of ``data`` is written to it before dying
    (a write cut short), so a single point can leave a torn batch.
    """
    if _armed is None:
        return
    _hit(name, file, data)


def _hit(name: str, file: _Writable | None, data: bytes) -> None:
    global _calls
    assert _armed is not None
    if name != _armed[0]:
        return
    _calls += 1
    if _calls != _armed[1]:
        return
    if file is not None:
        file.write(data[: len(data) // 2])
    try:
        os.write(2, LINE_PREFIX + name.encode() + b"\n")
    except OSError:
        pass  # nobody listening: die all the same
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # not reached: SIGKILL cannot be caught


_spec = os.environ.get(ENV)
if _spec:
    _armed = parse(_spec)
