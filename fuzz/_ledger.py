"""The ledger: what step bodies actually did, kept outside the journal.

Every step body of the campaigns' workflow first records ``instance key
attempt`` in a ledger and only then returns. The ledger is the outside world
(a charged card, a sent e-mail): it survives every crash, so it says what
really executed, whatever the journal says.

Each entry has a *position*. Acknowledgements carry the ledger's size at the
moment they were made, so "this step never ran again after its ACK" is a
comparison of positions. ``FileLedger`` is an fsynced file (positions are
byte offsets; one process writes it at a time); ``MemoryLedger`` a list
(positions are indexes) that outlives simulated power cuts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    pos: int
    instance: str
    key: str
    attempt: str


class MemoryLedger:
    """A ledger in a list; give it a new ``attempt`` label per engine lifetime."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.attempt = "0"

    def record(self, instance: str, key: str) -> None:
        self.entries.append(Entry(len(self.entries), instance, key, self.attempt))

    def size(self) -> int:
        return len(self.entries)


class FileLedger:
    """An append-only file of ``instance key attempt`` lines, fsynced per line.

    Open one per process lifetime; ``attempt`` labels that lifetime's lines.
    """

    def __init__(self, path: str, attempt: str) -> None:
        self.attempt = attempt
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def record(self, instance: str, key: str) -> None:
        line = f"{instance} {key} {self.attempt}\n".encode()
        os.write(self._fd, line)
        os.fsync(self._fd)  # on disk before the step returns
        self._size += len(line)

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        os.close(self._fd)


def read_file_ledger(path: str) -> list[Entry]:
    """The entries of a ledger file, each at its byte offset."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    entries, pos = [], 0
    for raw in data.split(b"\n")[:-1]:
        instance, key, attempt = raw.decode().split(" ")
        entries.append(Entry(pos, instance, key, attempt))
        pos += len(raw) + 1
    return entries


def covers(pattern: str, key: str) -> bool:
    """Whether ``engine.forget(instance, pattern)`` forgets ``key``."""
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


@dataclass(frozen=True, slots=True)
class Forget:
    """A forget call as it was issued (acknowledged or not), at a ledger size.

    ``until``: a forget handed over through the inbox takes effect when the
    engine applies it, at some ledger size from ``pos`` to ``until`` (None:
    at ``pos`` itself, as an in-process call does).
    """

    instance: str
    pattern: str
    pos: int
    until: int | None = None


def forgotten_between(
    forgets: Iterable[Forget], instance: str, key: str, start: int, end: int
) -> bool:
    """Whether a forget of ``key`` took effect at a position in [start, end]."""
    return any(
        f.instance == instance and covers(f.pattern, key) and f.pos <= end
        and (f.pos if f.until is None else f.until) >= start
        for f in forgets
    )


def check_ledger(
    entries: list[Entry],
    acked_steps: dict[tuple[str, str], int],
    at_most_once: set[str],
    forgets: list[Forget],
) -> list[str]:
    """Violations of the two ledger rules.

    * A step acknowledged at position P never runs again after P, unless a
      forget of its key was issued after P (and before the new run).
    * An at-most-once step runs at most once between two forgets of its key.
    """
    problems = []
    last: dict[tuple[str, str], Entry] = {}
    for e in entries:
        where = (e.instance, e.key)
        acked = acked_steps.get(where)
        if acked is not None and e.pos >= acked and not forgotten_between(
            forgets, e.instance, e.key, acked, e.pos
        ):
            problems.append(
                f"step {e.key!r} of {e.instance} ran again (attempt {e.attempt}, ledger "
                f"position {e.pos}) after it was acknowledged at position {acked}"
            )
        before = last.get(where)
        if (
            e.key in at_most_once
            and before is not None
            and not forgotten_between(forgets, e.instance, e.key, before.pos + 1, e.pos)
        ):
            problems.append(
                f"at-most-once step {e.key!r} of {e.instance} ran twice (attempts "
                f"{before.attempt} and {e.attempt})"
            )
        last[where] = e
    return problems
