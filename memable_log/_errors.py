"""The library's errors: a flat set, each named after what happened.

Every error derives from :class:`EngineError`, so ``except EngineError``
catches anything the library raises on purpose. Messages say what happened
and what to do about it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error memable_log raises."""


class JournalLocked(EngineError):
    """Another process holds the journal open for writing."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"journal {path!r} is locked by another process; stop that process "
            "or open the journal read-only (memable-dump needs no lock)"
        )


class JournalCorrupt(EngineError):
    """Damage found in the journal outside its torn tail.

    ``file`` and ``offset`` name the first damaged byte that was found.
    """

    def __init__(self, file: str, offset: int, reason: str) -> None:
        self.file = file
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"journal corrupt: {file} at byte {offset}: {reason}; the journal "
            "was not changed: restore it from a backup, or inspect it with "
            "memable-dump"
        )


class JournalFormatError(JournalCorrupt):
    """A segment was written in a format version this library cannot read."""


class JournalFailed(EngineError):
    """A write or fsync of the journal failed; the journal refuses writes.

    What was acknowledged before the failure is safe on disk. The records of
    the failed batch may or may not be; reopen the journal to find out.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"journal write failed ({reason}); it accepts no more writes. "
            "Free space or fix the disk, then reopen the journal"
        )


class JournalClosed(EngineError):
    """The journal is closed (or was never opened) and cannot take writes."""
