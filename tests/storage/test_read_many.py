"""``read_records_at``: a read-ahead's window, read span by span, reads what
``read_record_at`` reads record by record, and finds the same damage."""

from __future__ import annotations

import random

import pytest
from support.journal import files_of, storage_from, write_records

from memable_log._core.errors import JournalCorrupt
from memable_log._core.format import unpack_header
from memable_log._core.index import unpack_loc
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import (
    ScanResult,
    iter_scan,
    read_record_at,
    read_records_at,
    segment_name,
)


async def journal() -> tuple[MemoryStorage, list[int], dict[str, int]]:
    storage = MemoryStorage()
    await write_records(storage, 300, batch=3, size=200, segment_size=4096)
    locs = [loc for _, loc in iter_scan(storage, ScanResult())]
    salts = {n: unpack_header(storage.read(n)).salt for n in storage.list() if n.endswith(".mlog")}
    assert len({unpack_loc(loc)[0] for loc in locs}) > 5  # many segments
    return storage, locs, salts


async def test_windows_read_as_each_record_alone() -> None:
    storage, locs, salts = await journal()
    alone = [read_record_at(storage, salts, loc) for loc in locs]
    rng = random.Random(3)
    for _ in range(50):
        start = rng.randrange(len(locs))
        window = locs[start : start + rng.randrange(1, 200)]
        if rng.random() < 0.3:  # not always in journal order, nor all of a run
            window = sorted(rng.sample(locs, min(len(locs), 40)))
        assert read_records_at(storage, salts, window) == [alone[locs.index(w)] for w in window]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_damage_in_a_window_is_found_at_its_record(where: str) -> None:
    storage, locs, salts = await journal()
    segment = unpack_loc(locs[0])[0]
    in_first = [loc for loc in locs if unpack_loc(loc)[0] == segment]
    victim = {"first": 0, "middle": len(in_first) // 2, "last": len(in_first) - 1}[where]
    offset = unpack_loc(in_first[victim])[1]
    name = segment_name(segment)
    files = files_of(storage)
    data = bytearray(files[name])
    data[offset + 12] ^= 0x40  # a byte of its payload: the checksum no longer holds
    storage = storage_from({**files, name: bytes(data)})
    with pytest.raises(JournalCorrupt) as info:
        read_records_at(storage, salts, in_first)
    assert info.value.offset == offset
    with pytest.raises(JournalCorrupt):
        read_record_at(storage, salts, in_first[victim])
