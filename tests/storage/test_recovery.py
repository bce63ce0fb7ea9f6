"""Recovery policy: torn tails are cut durably, damage elsewhere is JournalCorrupt.

Every test builds a real journal with the Journal class, damages its bytes
the way a crash or a bad disk would, and reopens it. "Torn tail" tests
compare the reopened records with the exact complete prefix; "corruption"
tests check the error names the file and the frame's byte offset and that
the journal was left untouched.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.journal import files_of, read_all, read_locs, rec, storage_from, write_records

from memable_log._core import records as r
from memable_log._core.errors import JournalCorrupt, JournalFormatError
from memable_log._core.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SegmentHeader,
    pack_header,
    segment_name,
    unpack_header,
)
from memable_log._core.framing import Frame, FrameDecoder, encode_frame
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage, Storage
from memable_log._storage.memory import MemoryStorage, PowerCut

SEG1 = segment_name(1)
SMALL = 4096  # the smallest segment size: roll-overs every ~95 records
BIG = 100  # value size for crash enumerations: roll-overs every ~30 records


# -- two kinds of disk, one test body --------------------------------------------


class Disk:
    """Makes a storage holding given files; memory or a real directory."""

    kind = "memory"

    def make(self, files: dict[str, bytes]) -> Storage:
        return storage_from(files)

    def path_of(self, storage: Storage, name: str) -> str:
        return f"{storage.location}/{name}"


class RealDisk(Disk):
    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = itertools.count()

    def make(self, files: dict[str, bytes]) -> Storage:
        path = self.root / f"j{next(self.count)}"
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)
        return FileStorage(path)

    def path_of(self, storage: Storage, name: str) -> str:
        return os.path.join(storage.location, name)


@pytest.fixture(params=["memory", "file"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Disk:
    return Disk() if request.param == "memory" else RealDisk(tmp_path)


def all_files(storage: Storage) -> dict[str, bytes]:
    return {n: storage.read(n) for n in storage.list() if n != "LOCK"}


def frames_of(data: bytes) -> list[Frame]:
    """Every frame of a segment's bytes, seal included (no damage expected)."""
    decoder = FrameDecoder(unpack_header(data).salt, HEADER_SIZE)
    decoder.feed(data[HEADER_SIZE:])
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert decoder.buffered == 0
    return frames


def flip(data: bytes, pos: int, mask: int = 0x10) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def salt_of(data: bytes) -> int:
    return unpack_header(data).salt


async def reopen(storage: Storage, **kw: Any) -> Journal:
    """Open and close a journal; return it (its index and scan result stay)."""
    journal = Journal(storage, **kw)
    async with journal:
        pass
    return journal


async def expect_corrupt(storage: Storage) -> JournalCorrupt:
    """Opening must fail with JournalCorrupt and change no byte of the journal."""
    before = all_files(storage)
    with pytest.raises(JournalCorrupt) as info:
        await reopen(storage)
    assert all_files(storage) == before
    # The failed open released the lock: the next open gets as far as the scan.
    with pytest.raises(JournalCorrupt):
        await reopen(storage)
    return info.value


async def small_journal(n: int = 20, **kw: Any) -> tuple[list[list[Any]], dict[str, bytes]]:
    storage = MemoryStorage()
    written = await write_records(storage, n, **kw)
    return written, files_of(storage)


# -- torn tails ---------------------------------------------------------------


async def check_recovers_to(
    disk: Disk, files: dict[str, bytes], name: str, expected: list[list[Any]], end: int,
) -> None:
    """Open ``files``; the journal must hold ``expected`` with ``name`` cut at ``end``.

    Then: recover, append, crash again, reopen.
    """
    storage = disk.make(files)
    journal = await reopen(storage)
    assert journal.index.records == len(expected)
    assert storage.size(name) == end
    assert read_all(storage) == expected
    if isinstance(storage, MemoryStorage):
        # The cut was fsynced: it survives a power cut.
        storage = storage.crash()
        assert storage.size(name) == end
    more = await write_records(storage, 2, start=500)
    assert [m[1] for m in more] == [len(expected) + 1, len(expected) + 2]
    if isinstance(storage, MemoryStorage):
        storage = storage.crash()
    assert read_all(storage) == expected + more
    assert (await reopen(storage)).index.records == len(expected) + 2


async def test_truncation_at_every_offset_of_the_last_records_keeps_the_complete_prefix(
    disk: Disk,
) -> None:
    written, files = await small_journal(20)
    data = files[SEG1]
    starts = [off for _, off in read_locs(storage_from(files))]
    ends = [*starts[1:], len(data)]
    first_cut = starts[-3] if disk.kind == "memory" else starts[-2]
    for cut in range(first_cut, len(data) + 1):
        complete = sum(1 for end in ends if end <= cut)
        await check_recovers_to(
            disk, {SEG1: data[:cut]}, SEG1, written[:complete], ends[complete - 1]
        )


async def test_truncation_reports_the_torn_tail_it_cut() -> None:
    written, files = await small_journal(5)
    data = files[SEG1]
    storage = storage_from({SEG1: data[:-3]})
    journal = await reopen(storage)
    assert journal.scan_result is not None
    start_of_last = read_locs(storage_from(files))[-1][1]
    assert journal.scan_result.torn_at == start_of_last
    assert journal.scan_result.torn_bytes == len(data) - 3 - start_of_last
    assert read_all(storage) == written[:-1]


async def test_truncation_in_a_fresh_segment_after_roll_over(disk: Disk) -> None:
    storage = MemoryStorage()
    written = await write_records(storage, 100, segment_size=SMALL)
    files = files_of(storage)
    last = sorted(files)[-1]
    assert last != SEG1
    locs = [(seg, off) for seg, off in read_locs(storage)]
    in_last = [off for seg, off in locs if segment_name(seg) == last]
    before_last = len(written) - len(in_last)
    ends = [*in_last[1:], len(files[last])]
    cuts: range | list[int] = range(len(files[last]) + 1)
    if disk.kind == "file":  # every cut on the memory disk, a sample on a real one
        cuts = [c for c in cuts if c <= HEADER_SIZE + 9 or c % 11 == 0 or c == cuts[-1]]
    for cut in cuts:
        damaged = {**files, last: files[last][:cut]}
        if cut < HEADER_SIZE:
            # The writer renames a segment into place only after its header
            # is fsynced: a short header is damage, not a torn write.
            exc = await expect_corrupt(disk.make(damaged))
            assert exc.offset == 0
            assert exc.file.endswith(last)
            continue
        complete = before_last + sum(1 for end in ends if end <= cut)
        end = max([HEADER_SIZE, *(e for e in ends if e <= cut)])
        await check_recovers_to(disk, damaged, last, written[:complete], end)


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x00" * 1, id="one-zero"),
        pytest.param(b"\x00" * 7, id="zeros-short-of-a-header"),
        pytest.param(b"\x00" * 4096, id="a-page-of-zeros"),
        pytest.param(b"\xff" * 300, id="ff-bytes"),
        pytest.param(random.Random(1).randbytes(2000), id="garbage-1"),
        pytest.param(random.Random(2).randbytes(50), id="garbage-2"),
        pytest.param(
            encode_frame(msgpack.packb(rec(99)), 0xABCDEF, batch_start=True, batch_end=True) * 3,
            id="frames-of-an-older-file-generation",
        ),
    ],
)
async def test_bytes_after_the_last_record_are_cut_as_a_torn_tail(
    disk: Disk, tail: bytes
) -> None:
    written, files = await small_journal(10)
    end = len(files[SEG1])
    await check_recovers_to(disk, {SEG1: files[SEG1] + tail}, SEG1, written, end)


async def test_damage_in_the_final_batch_is_a_torn_tail(disk: Disk) -> None:
    # Batch A committed, then batch B; damage in B, with only B's own
    # continuation frames after it: B's write may have been torn, and a
    # batch is all or nothing, so none of B is kept, wherever the damage.
    storage = MemoryStorage()
    batch_a = await write_records(storage, 3, batch=3)
    await write_records(storage, 6, start=3, batch=6)
    files = files_of(storage)
    locs = [off for _, off in read_locs(storage)]
    for victim in range(3, 9):
        for pos in (locs[victim] + 1, locs[victim] + 8 + 5):
            damaged = {SEG1: flip(files[SEG1], pos)}
            await check_recovers_to(disk, damaged, SEG1, batch_a, locs[3])


async def test_a_final_batch_cut_anywhere_leaves_none_of_it(disk: Disk) -> None:
    # What a power cut can leave of B: any prefix of its bytes, then zeros
    # (preallocated space) or nothing. Whole frames of B are not kept.
    storage = MemoryStorage()
    batch_a = await write_records(storage, 3, batch=3)
    await write_records(storage, 6, start=3, batch=6)
    data = files_of(storage)[SEG1]
    start_b = [off for _, off in read_locs(storage)][3]
    cuts = range(start_b, len(data))
    if disk.kind == "file":  # every cut on the memory disk, a sample on a real one
        cuts = cuts[::7]
    for cut in cuts:
        for tail in (b"", bytes(len(data) - cut)):
            await check_recovers_to(disk, {SEG1: data[:cut] + tail}, SEG1, batch_a, start_b)


async def test_damage_in_an_earlier_batch_is_corruption(disk: Disk) -> None:
    storage = MemoryStorage()
    await write_records(storage, 3, batch=3)
    await write_records(storage, 6, start=3, batch=6)
    files = files_of(storage)
    locs = [off for _, off in read_locs(storage)]
    for victim in range(3):
        positions = range(locs[victim], locs[victim + 1])
        if disk.kind == "file":  # every byte on the memory disk, a sample on a real one
            positions = positions[::5]
        for pos in positions:
            damaged = disk.make({SEG1: flip(files[SEG1], pos)})
            exc = await expect_corrupt(damaged)
            assert exc.file == disk.path_of(damaged, SEG1)
            assert exc.offset == locs[victim]
            assert "later commit" in exc.reason


# -- corruption -----------------------------------------------------------------


async def test_flipped_byte_in_an_early_record_names_file_and_frame_offset(
    disk: Disk,
) -> None:
    _, files = await small_journal(20)
    locs = [off for _, off in read_locs(storage_from(files))]
    for victim in (0, 5, 16):
        for pos in range(locs[victim], locs[victim + 1]):
            storage = disk.make({SEG1: flip(files[SEG1], pos, 0x01)})
            exc = await expect_corrupt(storage)
            assert exc.file == disk.path_of(storage, SEG1)
            assert exc.offset == locs[victim]
            assert SEG1 in str(exc)
            assert f"byte {locs[victim]}" in str(exc)


async def multi_segment_files(n: int = 300) -> tuple[list[list[Any]], dict[str, bytes]]:
    storage = MemoryStorage()
    written = await write_records(storage, n, segment_size=SMALL)
    files = files_of(storage)
    assert len(files) >= 3
    return written, files


async def test_damage_anywhere_in_a_non_last_segment_is_corruption(disk: Disk) -> None:
    _, files = await multi_segment_files()
    name = segment_name(2)
    frames = frames_of(files[name])
    seal = frames[-1]
    assert r.check_seal(msgpack.unpackb(seal.payload)) is not None
    # The first record, one in the middle, the last record and the seal.
    for frame in (frames[0], frames[len(frames) // 2], frames[-2], seal):
        positions: range | list[int] = range(frame.offset, frame.end)
        if disk.kind == "file":  # the word, the crc, a payload byte and the last
            positions = [frame.offset, frame.offset + 2, frame.offset + 5,
                         frame.offset + 8, frame.end - 1]
        for pos in positions:
            storage = disk.make({**files, name: flip(files[name], pos)})
            exc = await expect_corrupt(storage)
            assert exc.file == disk.path_of(storage, name)
            assert exc.offset == frame.offset


async def test_a_cut_non_last_segment_is_corruption() -> None:
    _, files = await multi_segment_files()
    name = segment_name(2)
    seal = frames_of(files[name])[-1]
    for cut in (seal.end - 1, seal.offset + 3, seal.offset - 1):
        exc = await expect_corrupt(storage_from({**files, name: files[name][:cut]}))
        assert exc.file.endswith(name)


async def test_a_non_last_segment_without_a_seal_is_corruption(disk: Disk) -> None:
    _, files = await multi_segment_files()
    name = segment_name(1)
    seal = frames_of(files[name])[-1]
    storage = disk.make({**files, name: files[name][: seal.offset]})
    exc = await expect_corrupt(storage)
    assert exc.file == disk.path_of(storage, name)
    assert exc.offset == seal.offset
    assert "without a seal" in exc.reason


async def test_a_missing_middle_segment_is_corruption(disk: Disk) -> None:
    _, files = await multi_segment_files()
    del files[segment_name(2)]
    storage = disk.make(files)
    exc = await expect_corrupt(storage)
    assert exc.file == disk.path_of(storage, segment_name(2))
    assert "missing" in exc.reason


@pytest.mark.parametrize("which", [1, 2, 4])
async def test_a_damaged_segment_header_is_corruption(disk: Disk, which: int) -> None:
    _, files = await multi_segment_files()
    name = segment_name(which)
    assert name in files
    for pos in (0, 9, 12, 20, 28, HEADER_SIZE - 1):
        storage = disk.make({**files, name: flip(files[name], pos)})
        exc = await expect_corrupt(storage)
        assert exc.file == disk.path_of(storage, name)
        assert exc.offset == 0


def rewrite_header(data: bytes, **changes: int) -> bytes:
    fields = unpack_header(data)._asdict()
    fields.update(changes)
    return pack_header(SegmentHeader(**fields)) + data[HEADER_SIZE:]


async def test_a_segment_from_a_newer_format_is_a_format_error() -> None:
    _, files = await multi_segment_files()
    name = segment_name(3)
    storage = storage_from({**files, name: rewrite_header(files[name], version=FORMAT_VERSION + 1)})
    exc = await expect_corrupt(storage)
    assert isinstance(exc, JournalFormatError)
    assert exc.file.endswith(name)
    assert "upgrade" in str(exc)


async def test_headers_that_do_not_follow_on_are_corruption() -> None:
    _, files = await multi_segment_files()
    name = segment_name(3)
    first_seq = unpack_header(files[name]).first_seq
    for changes in ({"segment": 7}, {"first_seq": first_seq + 1}, {"first_seq": first_seq - 1}):
        exc = await expect_corrupt(
            storage_from({**files, name: rewrite_header(files[name], **changes)})
        )
        assert exc.file.endswith(name)
        assert exc.offset == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(msgpack.packb({"a": 1}), id="a-map"),
        pytest.param(msgpack.packb([r.CREATED, 11, 0, "x"]), id="too-few-fields"),
        pytest.param(msgpack.packb([99, 11, 0, "x", "y"]), id="unknown-type"),
        pytest.param(msgpack.packb([r.STEP_DONE, 11, 0, "inst-0", "k", "not bytes"]),
                     id="field-of-the-wrong-type"),
        pytest.param(msgpack.packb([r.STEP_DONE, 11, 0, "no-such-instance", "k", b""]),
                     id="unknown-instance"),
        pytest.param(msgpack.packb(rec(50))[:-1], id="truncated-msgpack"),
        pytest.param(msgpack.packb(rec(50)) + b"\x00", id="extra-bytes"),
        pytest.param(b"\xc1", id="never-used-msgpack-byte"),
        pytest.param(msgpack.packb([r.CREATED, 12, 0, "x", "wf", b""]), id="seq-skips"),
        pytest.param(msgpack.packb([r.CREATED, 10, 0, "x", "wf", b""]), id="seq-repeats"),
        pytest.param(msgpack.packb([r.SEAL, 99]), id="seal-with-a-wrong-seq"),
    ],
)
async def test_a_valid_frame_that_is_not_the_next_record_is_corruption(
    disk: Disk, payload: bytes
) -> None:
    # The checksum holds, so no torn write made this: even at the very end
    # of the last segment it is corruption.
    _, files = await small_journal(10)
    data = files[SEG1]
    frame = encode_frame(payload, salt_of(data), batch_start=True, batch_end=True)
    storage = disk.make({SEG1: data + frame})
    exc = await expect_corrupt(storage)
    assert exc.file == disk.path_of(storage, SEG1)
    assert exc.offset == len(data)


async def test_a_record_after_the_seal_is_corruption() -> None:
    _, files = await small_journal(10)
    data = files[SEG1]
    salt = salt_of(data)
    seal = encode_frame(msgpack.packb([r.SEAL, 11]), salt, batch_start=True, batch_end=True)
    after = encode_frame(
        msgpack.packb([r.CREATED, 11, 0, "x", "wf", b""]), salt, batch_start=True, batch_end=True
    )
    exc = await expect_corrupt(storage_from({SEG1: data + seal + after}))
    assert exc.offset == len(data) + len(seal)
    assert "after the segment's seal" in exc.reason


async def test_a_sealed_last_segment_opens_and_starts_the_next() -> None:
    # A crash between the seal's fsync and the next segment's rename.
    written, files = await small_journal(10)
    data = files[SEG1]
    seal = encode_frame(
        msgpack.packb([r.SEAL, 11]), salt_of(data), batch_start=True, batch_end=True
    )
    storage = storage_from({SEG1: data + seal})
    more = await write_records(storage, 3, start=10)
    assert storage.list() == [SEG1, segment_name(2)]
    assert [seg for seg, _ in read_locs(storage)] == [1] * 10 + [2] * 3
    assert read_all(storage.crash()) == written + more


# -- roll-over ------------------------------------------------------------------


async def test_records_span_segments_in_order_with_dense_seqs(disk: Disk) -> None:
    written, files = await multi_segment_files(300)
    storage = disk.make(files)
    journal = await reopen(storage, segment_size=SMALL)
    got = read_all(storage)
    assert got == written
    assert [g[1] for g in got] == list(range(1, 301))
    assert journal.scan_result is not None
    segments = journal.scan_result.segments
    assert [s.number for s in segments] == list(range(1, len(segments) + 1))
    assert all(s.sealed for s in segments[:-1])
    assert not segments[-1].sealed
    for seg, data in files.items():
        assert len(data) <= SMALL, seg
    # Each segment's header says where its records start.
    firsts = [unpack_header(files[segment_name(s.number)]).first_seq for s in segments]
    locs = read_locs(storage)
    assert firsts == [1 + [seg for seg, _ in locs].index(s.number) for s in segments]


async def test_a_batch_that_does_not_fit_goes_whole_into_the_next_segment() -> None:
    storage = MemoryStorage()
    first = await write_records(storage, 5, batch=5, segment_size=SMALL)
    size_before = storage.size(SEG1)
    room = SMALL - size_before
    big = await write_records(storage, 3, start=5, batch=3, segment_size=SMALL, size=room // 2)
    # The seal went alone after the first batch; all of the second is in segment 2.
    assert [seg for seg, _ in read_locs(storage)] == [1] * 5 + [2] * 3
    assert read_all(storage.crash()) == first + big


async def test_one_batch_larger_than_a_segment_goes_whole_into_an_empty_one() -> None:
    # A batch is never split across segments (a crash between the two
    # writes would keep half of it): a batch larger than a segment fills an
    # empty segment past segment_size, as one large record does.
    storage = MemoryStorage()
    written = await write_records(storage, 250, batch=250, segment_size=SMALL)
    assert sorted(storage.list()) == [SEG1]
    assert storage.size(SEG1) > SMALL
    more = await write_records(storage, 2, start=250, segment_size=SMALL)
    assert [seg for seg, _ in read_locs(storage)] == [1] * 250 + [2] * 2
    assert read_all(storage.crash()) == written + more


async def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own() -> None:
    storage = MemoryStorage()
    records = [rec(0), rec(1), rec(2, size=3 * SMALL), rec(3)]
    async with Journal(storage, segment_size=SMALL) as journal:
        for record in records:
            await journal.append(record)
    assert [seg for seg, _ in read_locs(storage)] == [1, 1, 2, 3]
    assert storage.size(segment_name(2)) > SMALL
    assert read_all(storage.crash()) == records


# -- crash at every step of a roll-over --------------------------------------------


async def run_until_power_cut(
    storage: MemoryStorage, plan: list[int], acked: list[list[Any]],
    attempted: list[list[Any]],
) -> None:
    """Append batches of ``plan`` sizes, logging what was acknowledged."""
    n = 0
    try:
        async with Journal(storage, segment_size=SMALL) as journal:
            for size in plan:
                recs = [rec(i, BIG) for i in range(n, n + size)]
                n += size
                attempted += recs
                await journal.append_many(recs)
                acked += recs
    except* PowerCut:
        pass


async def roll_over_windows(plan: list[int]) -> list[int]:
    """The op numbers at which some batch of ``plan`` rolls a segment over."""
    storage = MemoryStorage()
    crash_points: list[int] = []
    async with Journal(storage, segment_size=SMALL) as journal:
        n = 0
        for size in plan:
            before_ops, before_segs = storage.ops, len(storage.list())
            await journal.append_many([rec(i, BIG) for i in range(n, n + size)])
            n += size
            if len(storage.list()) != before_segs:
                crash_points.extend(range(before_ops + 1, storage.ops + 1))
    return crash_points


PLANS = {
    "lone-appends": [1] * 75,
    "batches": [7] * 12,
}

def _killed(storage: MemoryStorage) -> MemoryStorage:
    """The process died but the machine did not: every write is still visible."""
    storage.crash_at = None
    return storage


AFTERMATHS: dict[str, Callable[[MemoryStorage], MemoryStorage]] = {
    "power-cut-unsynced-lost": lambda s: s.crash(),
    "power-cut-unsynced-landed": lambda s: s.crash(lambda name, data: data),
    "power-cut-half-landed": lambda s: s.crash(lambda name, data: data[: len(data) // 2]),
    "power-cut-zeros-landed": lambda s: s.crash(lambda name, data: b"\x00" * len(data)),
    # Then a power cut after the next process appended: what it opened
    # with must have been made durable before it built on it.
    "process-killed": _killed,
}


@pytest.mark.parametrize("plan_name", list(PLANS))
async def test_power_cut_at_every_operation_of_a_roll_over(plan_name: str) -> None:
    plan = PLANS[plan_name]
    points = await roll_over_windows(plan)
    assert len(points) >= 2 * 7  # two roll-overs, each several operations
    for crash_at in points:
        for name, aftermath in AFTERMATHS.items():
            storage = MemoryStorage(crash_at=crash_at)
            acked: list[list[Any]] = []
            attempted: list[list[Any]] = []
            await run_until_power_cut(storage, plan, acked, attempted)
            # (>=: closing after the cut tries to cut the zero tail, one more op)
            assert storage.ops >= crash_at, "the workload ended before its power cut"
            after = aftermath(storage)
            got = read_all(after)
            where = f"crash at op {crash_at}, {name}"
            # Every acknowledged record; beyond them the batch that was in
            # flight, whole or not at all (never split by the roll-over).
            assert got[: len(acked)] == acked, where
            assert got == attempted[: len(got)], where
            ends = list(itertools.accumulate(plan, initial=0))
            assert len(got) in ends, f"{where}: {len(got)} records is not whole batches"
            more = await write_records(after, 3, start=1000, segment_size=SMALL)
            assert read_all(after.crash()) == got + more, where


async def test_a_journal_opened_after_a_killed_process_is_durable_as_opened() -> None:
    # Regression: a process killed after writing a batch (or a seal) but
    # before its fsync leaves those bytes visible; the next process must
    # make them durable at open, or a power cut later takes back records it
    # has already acted on (or a seal, leaving the journal unopenable).
    total = (await roll_over_windows([1] * 75))[-1] + 6
    for crash_at in range(1, total):
        storage = MemoryStorage(crash_at=crash_at)
        await run_until_power_cut(storage, [1] * 75, [], [])
        storage = _killed(storage)
        journal = await reopen(storage, segment_size=SMALL)
        seen = read_all(storage)
        assert journal.index.records == len(seen)
        assert read_all(storage.crash()) == seen, f"crash at op {crash_at}"


# -- the directory -------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
async def test_file_storage_creates_owner_only_dir_and_files(
    tmp_path: Path, umask: int
) -> None:
    path = tmp_path / "journal.memable"
    old = os.umask(umask)
    try:
        storage = FileStorage(path)
        await write_records(storage, 200, segment_size=SMALL)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o700
    names = sorted(os.listdir(path))
    assert "LOCK" in names
    assert len([n for n in names if n.endswith(".mlog")]) >= 2
    for name in names:
        assert os.stat(path / name).st_mode & 0o777 == 0o600, name


async def test_leftover_temp_files_are_removed_at_open(disk: Disk) -> None:
    written, files = await small_journal(5)
    temps = {
        segment_name(2) + ".tmp": pack_header(SegmentHeader(FORMAT_VERSION, 0, 1, 2, 6))[:17],
        segment_name(3) + ".tmp": b"",
    }
    storage = disk.make({**files, **temps})
    journal = await reopen(storage)
    assert journal.scan_result is not None
    assert sorted(journal.scan_result.temp_files) == sorted(temps)
    assert [n for n in storage.list() if n != "LOCK"] == [SEG1]
    if isinstance(storage, MemoryStorage):
        # The removal was made durable by a directory fsync.
        assert storage.crash().list() == [SEG1]
    assert read_all(storage) == written
