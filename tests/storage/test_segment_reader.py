"""SegmentReader: the same verdict however its bytes are fed.

The scan feeds a segment whole; a follower feeds what it reads, in pieces.
For every segment of generated journals, good and damaged, feeding it in
random pieces (or byte by byte) must yield the same records at the same
locations and end in the same state (damage, seal, next seq, what
``ended()`` and ``proof()`` say) as feeding it whole, or raise the same
JournalCorrupt after the same records.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage.generated import SALT, damaged, frame_of, journals, packed

from memable_log._core import records as r
from memable_log._core.errors import JournalCorrupt
from memable_log._core.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SegmentHeader,
    pack_header,
    segment_name,
)
from memable_log._core.index import pack_loc
from memable_log._storage.segment_reader import Damage, SegmentReader, read_header


def verdict(name: str, number: int, data: bytes, pieces: list[int] | None) -> tuple[Any, ...]:
    """Read one segment, fed whole (``pieces`` None) or in pieces of those sizes."""
    try:
        header = read_header(name, name, number, data)
        # Placement in the walk is tested below: any segment may start here.
        reader = SegmentReader(name, number, header, after=None,
                               resume=(HEADER_SIZE, header.first_seq))
    except JournalCorrupt as exc:
        return ("header", type(exc), exc.offset, exc.reason)
    seen: list[tuple[list[Any], int]] = []
    try:
        if pieces is None:
            reader.feed(data, at=0)
            seen += reader.records()
        else:
            pos = HEADER_SIZE
            sizes = iter(pieces)
            while pos < len(data):
                step = next(sizes, 1)
                reader.feed(data[pos : pos + step])
                pos += step
                seen += reader.records()
    except JournalCorrupt as exc:
        return ("corrupt", seen, exc.offset, exc.reason)
    ended = reader.ended()
    proof = reader.proof(ended) if ended is not None else None
    return ("read", seen, reader.damage, ended, proof and str(proof), reader.sealed,
            reader.next_seq, reader.count, reader.pos)


def number_of(name: str) -> int:
    return int(name[4:14])


@settings(max_examples=300)
@given(st.data())
def test_a_segment_fed_in_pieces_reads_as_fed_whole(data: st.DataObject) -> None:
    files = data.draw(damaged(data.draw(journals())))
    pieces = data.draw(st.lists(st.integers(1, 64), max_size=40))
    for name, body in sorted(files.items()):
        whole = verdict(name, number_of(name), body, None)
        assert verdict(name, number_of(name), body, pieces) == whole


@settings(max_examples=100)
@given(journals())
def test_a_segment_fed_byte_by_byte_reads_as_fed_whole(files: dict[str, bytes]) -> None:
    for name, body in sorted(files.items()):
        whole = verdict(name, number_of(name), body, None)
        assert verdict(name, number_of(name), body, []) == whole


def segment(*frames: bytes, first_seq: int = 1) -> bytes:
    return pack_header(SegmentHeader(FORMAT_VERSION, 0, SALT, 1, first_seq)) + b"".join(frames)


def created(seq: int) -> list[Any]:
    return [r.CREATED, seq, 5, f"i{seq}", "wf", b"x"]


def test_a_frame_cut_short_waits_for_its_bytes_then_is_read() -> None:
    frame = frame_of(packed(created(1)), True, True)
    data = segment(frame)
    reader = SegmentReader("f", 1, read_header("f", segment_name(1), 1, data), after=None)
    reader.feed(data[HEADER_SIZE:-1])
    assert list(reader.records()) == []
    assert reader.damage is None
    assert reader.ended() == Damage(HEADER_SIZE, "record cut short")
    reader.feed(data[-1:])
    assert list(reader.records()) == [(created(1), pack_loc(1, HEADER_SIZE))]
    assert reader.ended() is None


def test_rewind_forgets_a_torn_tail_that_a_writer_cut() -> None:
    good = frame_of(packed(created(1)), True, True)
    data = segment(good, b"\xff" * 12)
    reader = SegmentReader("f", 1, read_header("f", segment_name(1), 1, data), after=None)
    reader.feed(data[HEADER_SIZE:])
    assert len(list(reader.records())) == 1
    assert reader.damage == Damage(HEADER_SIZE + len(good), "length above the record cap")
    reader.rewind()  # the writer cut the torn tail and appended record 2
    reader.feed(frame_of(packed(created(2)), True, True))
    assert [rec for rec, _ in reader.records()] == [created(2)]
    assert (reader.damage, reader.ended(), reader.next_seq) == (None, None, 3)


def test_damage_is_proven_by_a_later_commit_only() -> None:
    bad = bytearray(frame_of(packed(created(1)), True, True))
    bad[-1] ^= 1
    later = frame_of(packed(created(2)), False)  # not a batch start: proves nothing
    data = segment(bytes(bad), later)
    reader = SegmentReader("f", 1, read_header("f", segment_name(1), 1, data), after=None)
    reader.feed(data, at=0)
    assert list(reader.records()) == []
    damage = reader.ended()
    assert damage == Damage(HEADER_SIZE, "checksum mismatch")
    assert reader.proof(damage) is None
    reader.feed(frame_of(packed(created(2)), True, True))
    proven = reader.proof(damage)
    assert proven is not None
    assert proven.offset == HEADER_SIZE
    assert f"later commit at byte {len(data)}" in proven.reason


@pytest.mark.parametrize(("after", "first_seq", "compacted", "reason"), [
    (None, 2, False, "the first segment starts at seq 2: earlier segments are missing"),
    (7, 8, False, "segment starts at seq 8, expected 7"),
    (7, 7, True, "a compacted segment after the first one"),
])
def test_a_header_out_of_place_in_the_walk_is_corruption(
    after: int | None, first_seq: int, compacted: bool, reason: str
) -> None:
    header = SegmentHeader(FORMAT_VERSION, int(compacted), SALT, 1, first_seq)
    with pytest.raises(JournalCorrupt) as info:
        SegmentReader("f", 1, header, after=after)
    assert (info.value.offset, info.value.reason) == (0, reason)


def test_a_record_after_the_seal_is_corruption_whenever_it_comes() -> None:
    data = segment(
        frame_of(msgpack.packb([0, 1]), True, True), frame_of(packed(created(1)), True, True)
    )
    for cut in range(HEADER_SIZE, len(data)):  # the record never whole in the first piece
        reader = SegmentReader("f", 1, read_header("f", segment_name(1), 1, data), after=None)
        reader.feed(data[HEADER_SIZE:cut])
        list(reader.records())
        assert reader.sealed == (cut >= HEADER_SIZE + 11)
        reader.feed(data[cut:])
        with pytest.raises(JournalCorrupt, match="record after the segment's seal"):
            list(reader.records())
