"""Frames and segment headers: encode, decode incrementally, reject damage.

The decoder's contract (h11 style): for any bytes it yields frames, says it
needs more (None), or raises FrameError; never anything else, and never
allocates on the word of a declared length.
"""

from __future__ import annotations

import random
import re
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memable_log._core.format import (
    FORMAT_VERSION,
    FRAME_BATCH_END,
    FRAME_BATCH_START,
    FRAME_HEADER_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    HeaderError,
    NewerFormatError,
    SegmentHeader,
    pack_header,
    parse_segment_name,
    segment_name,
    unpack_header,
)
from memable_log._core.framing import (
    Frame,
    FrameDecoder,
    FrameError,
    check_frame_at,
    encode_batch,
    encode_frame,
    frame_crc,
)

SALT = 0x1234_5678
BASE = HEADER_SIZE

payloads_st = st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=12)


def encode_all(payloads: list[bytes], salt: int = SALT) -> tuple[bytes, list[Frame]]:
    """Frames back to back, and the Frame each should decode to."""
    out = bytearray()
    expected = []
    for i, payload in enumerate(payloads):
        batch_start = i % 3 == 0
        expected.append(Frame(BASE + len(out), batch_start, payload))
        out += encode_frame(payload, salt, batch_start=batch_start)
    return bytes(out), expected


def drain(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def decode_chunks(chunks: list[bytes], salt: int = SALT) -> list[Frame]:
    decoder = FrameDecoder(salt, BASE)
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames += drain(decoder)
    assert decoder.buffered == 0
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    pieces, prev = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[prev:point])
        prev = point
    return pieces


def raw_frame(word: int, payload: bytes, salt: int = SALT, crc: int | None = None) -> bytes:
    """A frame with an arbitrary word (bypassing encode_frame's checks)."""
    if crc is None:
        crc = frame_crc(word, payload, salt)
    return struct.pack("<II", word, crc) + payload


# -- round trips --------------------------------------------------------------


@given(payloads_st)
@settings(max_examples=150)
def test_frames_fed_whole_decode_to_what_was_encoded(payloads: list[bytes]) -> None:
    data, expected = encode_all(payloads)
    assert decode_chunks([data]) == expected


def test_frames_fed_byte_by_byte_decode_to_what_was_encoded() -> None:
    payloads = [bytes([i]) * (i * 7 + 1) for i in range(20)]
    data, expected = encode_all(payloads)
    decoder = FrameDecoder(SALT, BASE)
    frames = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        frame = decoder.next_frame()
        if frame is not None:
            # A frame completes exactly on its last byte, never earlier.
            assert frame.end == BASE + i + 1
            frames.append(frame)
        assert decoder.offset + decoder.buffered == BASE + i + 1
    assert frames == expected
    assert decoder.offset == BASE + len(data)


@given(payloads_st, st.lists(st.integers(min_value=0), max_size=30))
@settings(max_examples=200)
def test_frames_in_random_chunks_decode_to_what_was_encoded(
    payloads: list[bytes], cuts: list[int]
) -> None:
    data, expected = encode_all(payloads)
    assert decode_chunks(split_at(data, cuts)) == expected


def test_decoder_compacts_its_buffer_over_a_long_stream() -> None:
    # Many small feeds that never line up with frame ends: the decoder must
    # keep decoding correctly as it drops consumed bytes.
    payloads = [bytes([i % 251]) * 1000 for i in range(300)]
    data, expected = encode_all(payloads)
    chunks = [data[i : i + 777] for i in range(0, len(data), 777)]
    assert decode_chunks(chunks) == expected


def test_frame_end_and_offsets_are_file_offsets() -> None:
    data, _ = encode_all([b"abc", b"defg"])
    decoder = FrameDecoder(SALT, 1000)
    decoder.feed(data)
    first, second = drain(decoder)
    assert first.offset == 1000
    assert first.end == 1000 + FRAME_HEADER_SIZE + 3 == second.offset
    assert decoder.offset == second.end


def test_encode_frame_rejects_empty_and_oversized_payloads() -> None:
    with pytest.raises(ValueError, match=re.escape(f"1..{MAX_RECORD}")):
        encode_frame(b"", SALT)
    with pytest.raises(ValueError, match=re.escape(f"1..{MAX_RECORD}")):
        encode_frame(b"x" * (MAX_RECORD + 1), SALT)


def test_largest_record_round_trips() -> None:
    payload = b"\x5a" * MAX_RECORD
    frame = encode_frame(payload, SALT, batch_start=True)
    decoder = FrameDecoder(SALT, 0)
    decoder.feed(frame)
    assert decoder.next_frame() == Frame(0, True, payload)


# -- trailing data --------------------------------------------------------------


@given(payloads_st, st.binary(min_size=1, max_size=64), st.lists(st.integers(0), max_size=8))
@settings(max_examples=200)
def test_trailing_garbage_after_frames_gives_frames_then_error_or_need_more(
    payloads: list[bytes], garbage: bytes, cuts: list[int]
) -> None:
    data, expected = encode_all(payloads)
    decoder = FrameDecoder(SALT, BASE)
    frames: list[Frame] = []
    error: FrameError | None = None
    for chunk in split_at(data + garbage, cuts):
        decoder.feed(chunk)
        try:
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
        except FrameError as exc:
            error = exc
            break
    # The garbage may by chance be a valid frame only with ~2**-32 odds.
    assert frames == expected
    if error is not None:
        assert error.offset == BASE + len(data)
    else:
        assert decoder.next_frame() is None
        assert decoder.offset == BASE + len(data)
        assert decoder.buffered == len(garbage)


def test_incomplete_tail_needs_more_bytes_at_every_cut() -> None:
    data, expected = encode_all([b"first", b"second record", b"third"])
    last_start = expected[-1].offset - BASE
    for cut in range(last_start, len(data)):
        decoder = FrameDecoder(SALT, BASE)
        decoder.feed(data[:cut])
        assert drain(decoder) == expected[:-1]
        assert decoder.offset == expected[-1].offset
        assert decoder.buffered == cut - last_start


def test_decoder_stays_put_after_an_error() -> None:
    data, expected = encode_all([b"good"])
    decoder = FrameDecoder(SALT, BASE)
    decoder.feed(data + b"\x00" * 16)
    assert drain_until_error(decoder) == expected
    for _ in range(2):
        with pytest.raises(FrameError) as info:
            decoder.next_frame()
        assert info.value.offset == BASE + len(data)
    assert decoder.offset == BASE + len(data)


def drain_until_error(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    try:
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    except FrameError:
        pass
    return frames


# -- damage -------------------------------------------------------------------


def decode_one(data: bytes, salt: int = SALT) -> Frame | None:
    decoder = FrameDecoder(salt, BASE)
    decoder.feed(data)
    return decoder.next_frame()


def test_zero_length_frame_is_rejected() -> None:
    with pytest.raises(FrameError, match="zero length") as info:
        decode_one(raw_frame(0, b""))
    assert info.value.offset == BASE
    with pytest.raises(FrameError, match="zero length"):
        decode_one(b"\x00" * 64)
    assert check_frame_at(raw_frame(0, b""), 0, SALT) is None


@pytest.mark.parametrize("bit", [24, 25, 26, 27, 28, 30])
def test_reserved_bit_set_is_rejected(bit: int) -> None:
    # Even with a checksum that matches the word, a reserved bit is damage
    # (bit 30, a block, outside a compacted segment).
    frame = raw_frame(5 | 1 << bit, b"hello")
    with pytest.raises(FrameError) as info:
        decode_one(frame)
    assert info.value.offset == BASE
    assert check_frame_at(frame, 0, SALT) is None


def test_the_batch_end_bit_is_allowed_only_where_batches_end() -> None:
    frame = raw_frame(5 | FRAME_BATCH_END, b"hello")
    found = decode_one(frame)
    assert found is not None
    assert (found.batch_start, found.batch_end) == (False, True)
    assert check_frame_at(frame, 0, SALT) == (False, len(frame))
    # Segments before version 4 (and compacted ones) never set it: damage there.
    decoder = FrameDecoder(SALT, BASE, batch_end=False)
    decoder.feed(frame)
    with pytest.raises(FrameError, match="record cap"):
        decoder.next_frame()
    assert check_frame_at(frame, 0, SALT, batch_end=False) is None


def test_a_batch_marks_its_first_and_last_frames() -> None:
    decoder = FrameDecoder(SALT, BASE)
    for frame in encode_batch([b"a", b"b", b"c"], SALT):
        decoder.feed(frame)
    frames = drain(decoder)
    assert [(f.batch_start, f.batch_end) for f in frames] == [
        (True, False), (False, False), (False, True)
    ]
    decoder.feed(encode_batch([b"alone"], SALT)[0])
    (alone,) = drain(decoder)
    assert (alone.batch_start, alone.batch_end) == (True, True)


def test_checksum_mismatch_is_rejected() -> None:
    frame = bytearray(encode_frame(b"payload bytes", SALT))
    for pos in range(len(frame)):
        damaged = bytearray(frame)
        damaged[pos] ^= 0x01
        if pos < 4 and pos != 3:
            # A flipped length bit changes the frame's extent: either an error
            # now, or "need more" for a longer frame, never a frame.
            try:
                assert decode_one(bytes(damaged)) is None
            except FrameError:
                pass
            continue
        with pytest.raises(FrameError) as info:
            decode_one(bytes(damaged))
        assert info.value.offset == BASE
        if pos == 3:
            assert "record cap" in info.value.reason  # bit 24: reserved
        else:
            assert info.value.reason == "checksum mismatch"
        assert check_frame_at(bytes(damaged), 0, SALT) is None


def test_flipped_batch_start_bit_is_a_checksum_mismatch() -> None:
    frame = bytearray(encode_frame(b"payload", SALT, batch_start=True))
    frame[3] ^= FRAME_BATCH_START >> 24
    with pytest.raises(FrameError, match="checksum mismatch"):
        decode_one(bytes(frame))


def test_frame_from_another_segment_salt_is_rejected() -> None:
    frame = encode_frame(b"from an older file generation", SALT, batch_start=True)
    assert decode_one(frame, SALT) is not None
    for other in (SALT + 1, 0, 0xFFFF_FFFF):
        with pytest.raises(FrameError, match="checksum mismatch"):
            decode_one(frame, other)
        assert check_frame_at(frame, 0, other) is None


def test_damaged_length_never_allocates_the_declared_size() -> None:
    # The largest length the word can hold, and a checksum that is garbage:
    # the decoder must wait for bytes, not reserve 16 MiB.
    word = MAX_RECORD | FRAME_BATCH_START
    header = struct.pack("<II", word, 0xDEADBEEF)
    decoder = FrameDecoder(SALT, BASE)
    tracemalloc.start()
    try:
        decoder.feed(header + b"x" * 100)
        for _ in range(50):
            assert decoder.next_frame() is None
            decoder.feed(b"y" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert decoder.buffered == FRAME_HEADER_SIZE + 100 * 51
    assert decoder.offset == BASE
    assert check_frame_at(header + b"x" * 100, 0, SALT) is None


def test_length_cap_matches_the_word_layout() -> None:
    # Any length bits beyond the cap are reserved bits: "above the cap" is
    # always caught before the payload is looked at.
    word = (MAX_RECORD + 1) | 3
    with pytest.raises(FrameError, match="record cap"):
        decode_one(raw_frame(word, b"abc"))


def test_check_frame_at_finds_frames_only_where_they_start() -> None:
    data, expected = encode_all([b"one", b"two two", b"three three three"])
    for frame in expected:
        pos = frame.offset - BASE
        assert check_frame_at(data, pos, SALT) == (frame.batch_start, frame.end - BASE)
    starts = {f.offset - BASE for f in expected}
    for pos in range(len(data) + 4):
        if pos not in starts:
            assert check_frame_at(data, pos, SALT) is None
    # A frame cut short is not a frame.
    assert check_frame_at(data[:-1], expected[-1].offset - BASE, SALT) is None


@given(st.binary(max_size=400), st.lists(st.integers(0), max_size=6), st.integers(0, 2**32 - 1))
@settings(max_examples=400)
def test_fuzz_arbitrary_bytes_yield_frames_or_frame_error(
    data: bytes, cuts: list[int], salt: int
) -> None:
    decoder = FrameDecoder(salt, BASE)
    consumed = BASE
    error: FrameError | None = None
    for chunk in split_at(data, cuts):
        decoder.feed(chunk)
        try:
            while (frame := decoder.next_frame()) is not None:
                assert frame.offset == consumed
                assert 0 < len(frame.payload) <= MAX_RECORD
                consumed = frame.end
        except FrameError as exc:
            error = exc
            break
    # An error names the first byte not decoded; otherwise all is consumed
    # or waiting for more.
    if error is not None:
        assert error.offset == consumed
    assert decoder.offset == consumed


@given(st.binary(min_size=1, max_size=200), st.integers(0, 2**32 - 1), st.data())
@settings(max_examples=200)
def test_fuzz_mutated_frames_yield_frames_or_frame_error(
    payload: bytes, salt: int, data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(payload, salt, batch_start=True) * 2)
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    decoder = FrameDecoder(salt, 0)
    decoder.feed(bytes(frame))
    try:
        while (got := decoder.next_frame()) is not None:
            assert got.payload  # a frame, if any, is complete and non-empty
    except FrameError:
        pass


# -- segment headers ------------------------------------------------------------


def header(**changes: int) -> SegmentHeader:
    fields = {"version": FORMAT_VERSION, "flags": 0, "salt": SALT, "segment": 7,
              "first_seq": 1234}
    fields.update(changes)
    return SegmentHeader(**fields)


@given(st.integers(0, 2**32 - 1), st.integers(1, 2**40), st.integers(1, 2**63))
@settings(max_examples=100)
def test_header_pack_unpack_round_trips(salt: int, segment: int, first_seq: int) -> None:
    h = header(salt=salt, segment=segment, first_seq=first_seq)
    packed = pack_header(h)
    assert len(packed) == HEADER_SIZE
    assert packed.startswith(MAGIC)
    assert unpack_header(packed) == h
    # Frames follow the header: trailing bytes are not its business.
    assert unpack_header(packed + b"frames...") == h


def test_header_bad_magic_is_rejected() -> None:
    packed = bytearray(pack_header(header()))
    packed[0] ^= 0xFF
    with pytest.raises(HeaderError, match="bad magic"):
        unpack_header(bytes(packed))


@pytest.mark.parametrize("pos", range(len(MAGIC), HEADER_SIZE))
def test_header_any_flipped_byte_is_a_bad_crc(pos: int) -> None:
    packed = bytearray(pack_header(header()))
    packed[pos] ^= 0x40
    with pytest.raises(HeaderError, match="checksum mismatch"):
        unpack_header(bytes(packed))


def test_header_cut_short_is_rejected() -> None:
    packed = pack_header(header())
    for cut in range(HEADER_SIZE):
        with pytest.raises(HeaderError, match="shorter"):
            unpack_header(packed[:cut])


def test_header_from_a_newer_format_version_says_to_upgrade() -> None:
    packed = pack_header(header(version=FORMAT_VERSION + 1))
    with pytest.raises(HeaderError) as info:
        unpack_header(packed)
    message = str(info.value)
    assert f"version {FORMAT_VERSION + 1}" in message
    assert "newer" in message
    assert "upgrade" in message


def test_header_version_zero_and_unknown_flags_are_rejected() -> None:
    with pytest.raises(HeaderError, match="unknown format version 0"):
        unpack_header(pack_header(header(version=0)))
    with pytest.raises(HeaderError, match="unknown segment flags"):
        unpack_header(pack_header(header(flags=0x0002)))  # 0x0001 marks compaction


def test_only_a_newer_version_is_a_newer_format_error() -> None:
    """The kind is the error's type: readers never look at its message."""
    with pytest.raises(NewerFormatError):
        unpack_header(pack_header(header(version=FORMAT_VERSION + 1)))
    packed = pack_header(header())
    damaged = [pack_header(header(version=0)), pack_header(header(flags=0x0002)),
               packed[:10], b"X" + packed[1:], packed[:-1] + bytes([packed[-1] ^ 1])]
    for data in damaged:
        with pytest.raises(HeaderError) as info:
            unpack_header(data)
        assert not isinstance(info.value, NewerFormatError), info.value


def test_header_crc_covers_the_reserved_word() -> None:
    packed = bytearray(pack_header(header()))
    packed[32] = 1  # the reserved u32 before the crc
    with pytest.raises(HeaderError, match="checksum"):
        unpack_header(bytes(packed))
    # With a matching crc the header still parses: reserved is ignored.
    body = bytes(packed[:36])
    fixed = body + struct.pack("<I", zlib.crc32(body))
    assert unpack_header(fixed) == header()


def test_segment_names_round_trip_and_reject_lookalikes() -> None:
    for number in (1, 42, 9_999_999_999):
        assert parse_segment_name(segment_name(number)) == number
    assert segment_name(1) == "seg-0000000001.mlog"
    for name in ("seg-0000000001.mlog.tmp", "seg-1.mlog", "LOCK", "seg-00000000001.mlog",
                 "xseg-0000000001.mlog", "seg-000000000a.mlog"):
        assert parse_segment_name(name) is None


def test_random_frames_survive_a_reference_walk() -> None:
    # An independent reading of the documented layout: word, crc, payload.
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randint(1, 500)) for _ in range(50)]
    data, _ = encode_all(payloads)
    pos, seen = 0, []
    while pos < len(data):
        word, crc = struct.unpack_from("<II", data, pos)
        length = word & 0x00FF_FFFF
        body = data[pos + 8 : pos + 8 + length]
        assert crc == zlib.crc32(body, zlib.crc32(struct.pack("<I", word), SALT))
        seen.append(body)
        pos += 8 + length
    assert seen == payloads
