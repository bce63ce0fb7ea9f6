"""Helpers for the power-loss, model and group-commit tests.

* ``is_power_cut(exc)``: whether ``exc`` is a PowerCut, bare or in trio's
  exception groups with nothing else but Cancelled (the one detector, shared
  with ``memable_log.testing.crash_test`` and the power-loss campaign).
* ``tears(storage, rng)``: the ways a power cut can leave the bytes written
  since the last fsync (nothing, everything, every or sampled prefixes,
  zeroed sectors, garbage), each as a named ``TearFn`` for
  ``MemoryStorage.crash``.
* ``read_all``: every record of a journal, read-only, via the reader.

Records used here are CREATED records of distinct instances, each with a
unique blob, so a record can only equal the one append that made it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from memable_log._core import records as r
from memable_log._core.format import FRAME_HEADER_SIZE, FRAME_LENGTH_MASK
from memable_log._storage.files import Storage
from memable_log._storage.memory import MemoryStorage, TearFn
from memable_log._storage.segments import ScanResult, scan
from memable_log.testing import _is_power_cut as is_power_cut

__all__ = [
    "ALL_PREFIXES_UP_TO", "SECTOR", "created", "frame_ends", "is_power_cut", "prefix_lengths",
    "read_all", "tears",
]

SECTOR = 512
ALL_PREFIXES_UP_TO = 48  # below this many unsynced bytes, try every prefix


def created(n: int, size: int = 24) -> list[Any]:
    """A CREATED record of instance ``i<n>`` whose blob is unique to ``n``."""
    blob = n.to_bytes(4, "little") * (size // 4 + 1)
    rec: list[Any] = r.make(r.CREATED, 1_000 + n, f"i{n}", "wf", blob[:size])
    return rec


def read_all(storage: Storage) -> tuple[list[list[Any]], ScanResult]:
    """Every record in order (no lock taken, nothing written) and the scan."""
    out: list[list[Any]] = []
    result = scan(storage, lambda rec, loc: out.append(rec))
    return out, result


def frame_ends(data: bytes) -> list[int]:
    """Where each complete-looking frame in ``data`` ends (by its length word)."""
    ends, pos = [], 0
    while pos + FRAME_HEADER_SIZE <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "little") & FRAME_LENGTH_MASK
        pos += FRAME_HEADER_SIZE + length
        if length == 0 or pos > len(data):
            break
        ends.append(pos)
    return ends


def prefix_lengths(unsynced: bytes, rng: random.Random, samples: int = 4) -> list[int]:
    """Prefix lengths worth keeping: all of them for a short tail, else the
    edges, every frame boundary and its neighbours, and a few at random."""
    size = len(unsynced)
    if size <= ALL_PREFIXES_UP_TO:
        return list(range(size + 1))
    keep = {0, 1, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE, size // 2, size - 1, size}
    for end in frame_ends(unsynced):
        keep.update((end - 1, end, end + 1, end + FRAME_HEADER_SIZE))
    keep.update(rng.randrange(size + 1) for _ in range(samples))
    return sorted(k for k in keep if 0 <= k <= size)


def _zero_sectors(base: dict[str, int], lost: Callable[[int], bool]) -> TearFn:
    """Unsynced bytes land, but sectors where ``lost(n)`` read back as zeros.

    ``n`` counts sectors from the one holding the first unsynced byte.
    """

    def tear(name: str, unsynced: bytes) -> bytes:
        start = base[name]
        first = start // SECTOR
        out = bytearray(unsynced)
        for i in range(len(out)):
            if lost((start + i) // SECTOR - first):
                out[i] = 0
        return bytes(out)

    return tear


def _prefix(k: int) -> TearFn:
    return lambda name, data: data[:k]


def tears(storage: MemoryStorage, rng: random.Random) -> list[tuple[str, TearFn | None]]:
    """Named ways the unsynced bytes of ``storage`` may land after a power cut."""
    unsynced = {name: data for name, data in storage.unsynced().items() if data}
    modes: list[tuple[str, TearFn | None]] = [("drop", None)]
    if not unsynced:
        return modes
    durable = storage.crash()
    base = {name: durable.size(name) for name in unsynced}
    longest = max(unsynced.values(), key=len)
    modes.append(("all", lambda name, data: data))
    for k in prefix_lengths(longest, rng):
        modes.append((f"prefix{k}", _prefix(k)))
    modes += [
        ("zero-even-sectors", _zero_sectors(base, lambda n: n % 2 == 0)),
        ("zero-odd-sectors", _zero_sectors(base, lambda n: n % 2 == 1)),
        ("zero-later-sectors", _zero_sectors(base, lambda n: n > 0)),
        ("zeros", lambda name, data: bytes(len(data))),
    ]
    seed = rng.randrange(2**32)
    modes += [
        ("garbage", lambda name, data: random.Random(seed).randbytes(len(data))),
        ("all+garbage", lambda name, data: data + random.Random(seed).randbytes(SECTOR)),
        ("half+garbage", lambda name, data: data[: len(data) // 2]
         + random.Random(seed).randbytes(len(data) - len(data) // 2)),
    ]
    return modes
