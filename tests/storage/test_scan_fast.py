"""The fast scan reads every journal exactly as the reference walk did.

The scan (``iter_scan``, reading each segment with a ``SegmentReader``) cuts
frames straight out of a segment's bytes and checks common records by their
type layout (``records.SIGNATURES``). The reference here is the walk it
replaced, kept as an independent oracle: FrameDecoder fed the segment, the
generic record check, a FrameDecoder split of each block, and its own
torn-tail rule.
For generated journals, good and damaged (torn tails, flipped bits, hostile
payloads with valid checksums, blocks, seals in the wrong places), both walks
must yield the same records at the same locations, fill in the same
ScanResult, or raise the same error (class, file, offset, reason) after the
same records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from storage.generated import (
    SALT,
    damaged,
    frame_of,
    journals,
    msgpack_values,
    odd_record,
    packed,
    well_typed,
)
from support.journal import storage_from

from memable_log._core import records as r
from memable_log._core.errors import JournalCorrupt, JournalFormatError
from memable_log._core.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAX_RECORD,
    SEG_COMPACTED,
    HeaderError,
    NewerFormatError,
    SegmentHeader,
    pack_header,
    segment_name,
    unpack_header,
)
from memable_log._core.framing import (
    FrameDecoder,
    FrameError,
    check_frame_at,
    decode_block,
    encode_block,
    encode_frame,
)
from memable_log._core.index import pack_loc
from memable_log._storage.files import Storage
from memable_log._storage.segments import (
    Resume,
    ScanResult,
    Segment,
    iter_scan,
    plan_walk,
    unpack_record,
)

# -- the reference: the walk before the fast path ------------------------------------


def reference_check(rec: Any) -> list[Any]:
    """``_records.check`` without its layout fast path: the generic walk."""
    if type(rec) is not list or len(rec) < 4:
        raise r.RecordError("payload is not a record array")
    rtype = rec[0]
    spec = r._CHECKS.get(rtype) if type(rtype) is int else None
    if spec is None:
        raise r.RecordError(f"unknown record type {rtype!r}")
    length, types = spec
    if len(rec) != length:
        raise r.RecordError(
            f"{r.TYPE_NAMES[rtype]} record has {len(rec)} fields, expected {length}"
        )
    if type(rec[1]) is not int or type(rec[2]) is not int or type(rec[3]) is not str:
        raise r.RecordError("record seq, time or instance has the wrong type")
    for value, allowed in zip(rec[4:], types, strict=False):
        if not isinstance(value, allowed):
            raise r.RecordError(
                f"{r.TYPE_NAMES[rtype]} record has a field of type {type(value).__name__}"
            )
    deep = r.DEEP.get(rtype)
    if deep is not None:
        deep(rec)
    return rec


def reference_decode_block(payload: bytes, salt: int) -> list[bytes]:
    """``decode_block`` splitting the inner frames with FrameDecoder."""
    chunks: list[bytes] = []
    size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload)
        while chunk := reader.read(256 * 1024):
            size += len(chunk)
            if size > 4 * MAX_RECORD:
                raise FrameError(0, "block larger than the cap")
            chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise FrameError(0, f"undecodable block: {exc}") from None
    inner = b"".join(chunks)
    decoder = FrameDecoder(salt, batch_end=False)  # inner frames have no batch bits
    decoder.feed(inner)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame.payload)
    if decoder.buffered or not out:
        raise FrameError(decoder.offset, "block cut short or empty")
    return out


def reference_damage(
    path: str, data: bytes, salt: int, offset: int, reason: str, is_last: bool,
    result: ScanResult, batched: bool, cut: int | None,
) -> None:
    """Torn tail or corruption, byte by byte: a later valid batch start proves it.

    A torn tail starts at ``cut`` (the open batch's first frame), if given."""
    if not is_last:
        raise JournalCorrupt(path, offset, reason)
    for pos in range(offset + 1, len(data)):
        found = check_frame_at(data, pos, salt, batch_end=batched)
        if found is not None and found[0]:
            raise JournalCorrupt(
                path, offset, f"{reason}, and a later commit at byte {pos} proves "
                "these bytes were once durable",
            )
    result.torn_at = offset if cut is None else cut
    result.torn_bytes = len(data) - result.torn_at


def reference_iter_scan(
    storage: Storage, result: ScanResult, upto: int | None = None, resume: Resume | None = None
) -> Iterator[tuple[list[Any], int]]:
    """The walk over the segments, each read by ``reference_scan_segment``."""
    walk = plan_walk(storage, result)
    if upto is not None:
        walk = [(name, n) for name, n in walk if n <= upto]
    if resume is not None:
        result.segments = list(resume.segments)
        result.records = resume.records
    for i, (name, number) in enumerate(walk):
        if resume is not None and i < resume.index:
            continue
        if i and number != walk[i - 1][1] + 1:
            raise JournalCorrupt(
                f"{storage.location}/{segment_name(walk[i - 1][1] + 1)}", 0,
                f"segment {walk[i - 1][1] + 1} is missing",
            )
        is_last = i == len(walk) - 1 and upto is None
        if resume is not None and i == resume.index:
            yield from reference_scan_segment(
                storage, name, number, is_last, result, resume.offset, resume.next_seq
            )
        else:
            yield from reference_scan_segment(storage, name, number, is_last, result)


def reference_scan_segment(
    storage: Storage, name: str, number: int, is_last: bool, result: ScanResult,
    start: int = HEADER_SIZE, resume_seq: int | None = None, known: bytes = b"",
) -> Iterator[tuple[list[Any], int]]:
    path = f"{storage.location}/{name}"
    data = storage.read(name)  # whole, whatever a snapshot's check read before
    try:
        header = unpack_header(data)
    except HeaderError as exc:
        cls = JournalFormatError if isinstance(exc, NewerFormatError) else JournalCorrupt
        raise cls(path, 0, str(exc)) from None
    if header.segment != number:
        raise JournalCorrupt(path, 0, f"header says segment {header.segment}")
    compacted = bool(header.flags & SEG_COMPACTED)
    if compacted != name.startswith("cmp-"):
        raise JournalCorrupt(path, 0, "the segment's compacted flag does not match its name")
    is_last = is_last and not compacted
    if resume_seq is not None:
        pass
    elif result.segments:
        if compacted:
            raise JournalCorrupt(path, 0, "a compacted segment after the first one")
        if header.first_seq != result.next_seq:
            raise JournalCorrupt(
                path, 0, f"segment starts at seq {header.first_seq}, expected {result.next_seq}"
            )
    elif not compacted and header.first_seq != 1:
        raise JournalCorrupt(
            path, 0, f"the first segment starts at seq {header.first_seq}: earlier "
            "segments are missing",
        )
    next_seq = header.first_seq if resume_seq is None else resume_seq
    batched = not compacted and header.version >= 4
    decoder = FrameDecoder(header.salt, start, blocks=compacted, batch_end=batched)
    decoder.feed(data[start:])
    sealed = False
    base_loc = pack_loc(number, 0)
    # Version 4: a batch's records count once its end frame is read.
    batch: list[tuple[list[Any], int]] = []
    opened: tuple[int, int] | None = None  # the open batch's offset and first seq
    end_offset = None
    while True:
        damage: tuple[int, str] | None = None
        try:
            frame = decoder.next_frame()
        except FrameError as exc:
            damage = exc.offset, exc.reason
        else:
            if frame is None and decoder.buffered:
                damage = decoder.offset, "record cut short"
            elif frame is None and opened is not None:
                damage = opened[0], "commit batch cut short"
        if damage is not None or frame is None:
            # Only zeros after the last whole frame: unused space, the end
            # (a batch still open there was cut short).
            tail_from = decoder.offset if damage is None else damage[0]
            if tail_from < len(data) and not data[tail_from:].strip(b"\0"):
                damage = None if opened is None else (opened[0], "commit batch cut short")
            if opened is not None:
                end_offset, next_seq = opened
            if damage is not None:
                reference_damage(path, data, header.salt, damage[0], damage[1], is_last,
                                 result, batched, end_offset)
            break
        if sealed:
            raise JournalCorrupt(path, frame.offset, "record after the segment's seal")
        if batched:
            if frame.batch_start:
                if opened is not None:
                    raise JournalCorrupt(
                        path, opened[0], "a commit batch without its last frame, then "
                        f"another batch at byte {frame.offset}",
                    )
                opened = frame.offset, next_seq
            elif opened is None:
                raise JournalCorrupt(path, frame.offset, "a frame outside any commit batch")
        if frame.block:
            try:
                payloads = reference_decode_block(frame.payload, header.salt)
            except FrameError as exc:
                raise JournalCorrupt(path, frame.offset, exc.reason) from None
        else:
            payloads = [frame.payload]
        for inner, payload in enumerate(payloads, 1 if frame.block else 0):
            try:
                rec = unpack_record(payload)
            except Exception as exc:
                raise JournalCorrupt(path, frame.offset, f"undecodable record: {exc}") from None
            seal_seq = r.check_seal(rec)
            if seal_seq is not None:
                if seal_seq != next_seq or frame.block:
                    raise JournalCorrupt(path, frame.offset, "seal's sequence number is wrong")
                if batched and not (frame.batch_start and frame.batch_end):
                    raise JournalCorrupt(path, frame.offset, "a seal inside a commit batch")
                sealed = True
                continue
            try:
                reference_check(rec)
                if compacted:
                    if rec[1] != 0:
                        raise r.RecordError("a compacted record with a sequence number")
                elif rec[1] != next_seq:
                    raise r.RecordError(f"sequence number {rec[1]}, expected {next_seq}")
                else:
                    next_seq = rec[1] + 1
            except r.RecordError as exc:
                raise JournalCorrupt(path, frame.offset, str(exc)) from None
            loc = pack_loc(0, 0, inner) | base_loc | frame.offset
            if batched:
                batch.append((rec, loc))
            else:
                result.records += 1
                yield rec, loc
        if batched and frame.batch_end:
            result.records += len(batch)
            yield from batch
            batch, opened = [], None
    stopped = decoder.offset if end_offset is None else end_offset
    if not sealed and not is_last:
        raise JournalCorrupt(path, stopped, "segment ends without a seal")
    result.next_seq = next_seq
    end = stopped if result.torn_at is None or not is_last else result.torn_at
    result.segments.append(Segment(number, header, end, sealed, name))


Outcome = tuple[Any, ...]


def walk(
    storage: Storage, upto: int | None = None, resume: Resume | None = None,
    scan: Any = iter_scan,
) -> Outcome:
    """Everything a walk shows: records and locations, then its result or error."""
    result = ScanResult()
    seen: list[tuple[list[Any], int]] = []
    try:
        for rec, loc in scan(storage, result, upto, resume):
            seen.append((rec, loc))
    except JournalCorrupt as exc:
        return ("error", type(exc).__name__, exc.file, exc.offset, exc.reason, seen,
                result.records)
    return ("ok", seen, result)


def both_walks(
    storage: Storage, upto: int | None = None, resume: Resume | None = None
) -> tuple[Outcome, Outcome]:
    return walk(storage, upto, resume), walk(storage, upto, resume, reference_iter_scan)


@settings(max_examples=400)
@given(st.data())
def test_fast_scan_agrees_with_the_reference_walk(data: st.DataObject) -> None:
    files = data.draw(journals())
    files = data.draw(damaged(files))
    upto = data.draw(st.none() | st.integers(1, 4))
    fast, reference = both_walks(storage_from(files), upto)
    assert fast == reference


@settings(max_examples=150)
@given(st.data())
def test_fast_scan_agrees_when_resumed_anywhere(data: st.DataObject) -> None:
    """A resumed walk (from an index snapshot) starts mid-segment at an
    offset it trusts: on a frame boundary or not, both walks agree."""
    files = data.draw(damaged(data.draw(journals())))
    storage = storage_from(files)
    walked = plan_walk(storage, ScanResult())
    index = data.draw(st.integers(0, max(len(walked) - 1, 0)))
    size = len(files.get(walked[index][0], b"")) if walked else 0
    offset = data.draw(st.integers(HEADER_SIZE, max(size, HEADER_SIZE) + 10))
    # As from a snapshot: the segment's first ``offset`` bytes, already read.
    head = files[walked[index][0]][:offset] if walked and offset <= size else b""
    resume = Resume(index, offset, data.draw(st.integers(0, 50)), data.draw(st.integers(0, 5)),
                    [], head if data.draw(st.booleans()) else b"")
    fast, reference = both_walks(storage, resume=resume)
    assert fast == reference


@settings(max_examples=150)
@given(journals())
def test_fast_scan_agrees_on_undamaged_journals(files: dict[str, bytes]) -> None:
    fast, reference = both_walks(storage_from(files))
    assert fast == reference


def test_the_generated_journals_reach_every_verdict() -> None:
    """The equivalence test sees clean reads, torn tails and corruption alike."""
    good = {segment_name(1): pack_header(SegmentHeader(FORMAT_VERSION, 0, SALT, 1, 1))
            + frame_of(packed([r.CREATED, 1, 5, "i", "wf", b"x"]), True, True)}
    fast, reference = both_walks(storage_from(good))
    assert fast == reference
    assert fast[0] == "ok"
    assert len(fast[1]) == 1
    torn = {name: data[:-3] for name, data in good.items()}
    fast, reference = both_walks(storage_from(torn))
    assert fast == reference
    assert fast[0] == "ok"
    assert fast[2].torn_at == HEADER_SIZE
    proven = {name: data[:-3] + frame_of(b"\x01", True, True) for name, data in good.items()}
    fast, reference = both_walks(storage_from(proven))
    assert fast == reference
    assert fast[0:2] == ("error", "JournalCorrupt")
    assert fast[2].endswith(segment_name(1))
    assert fast[3] == HEADER_SIZE
    assert "proves these bytes were once durable" in fast[4]


# -- the record check ------------------------------------------------------------------


def verdict(check: Any, rec: Any) -> tuple[str, Any]:
    try:
        return ("ok", check(rec))
    except r.RecordError as exc:
        return ("error", str(exc))


@settings(max_examples=400)
@given(st.one_of(odd_record(), well_typed(), msgpack_values))
def test_check_agrees_with_the_generic_walk(rec: Any) -> None:
    assert verdict(r.check, rec) == verdict(reference_check, rec)


def test_every_signature_is_a_layout_the_generic_walk_accepts() -> None:
    samples: dict[type, Any] = {int: 7, bool: True, str: "s", bytes: b"b", type(None): None}
    for layout, rtypes in r.SIGNATURES.items():
        for rtype in rtypes:
            rec = [rtype, *(samples[t] for t in layout[1:])]
            assert reference_check(rec) is rec


def test_every_record_type_but_those_checked_deep_has_a_signature() -> None:
    covered = set().union(*r.SIGNATURES.values())
    assert covered == set(r.SCHEMA) - set(r.DEEP)


def test_a_bool_record_type_is_not_taken_for_created() -> None:
    """True == 1 == CREATED as a dict key: the layout lookup must see bool."""
    rec = [True, 1, 5, "i", "wf", b"x"]
    with pytest.raises(r.RecordError, match="unknown record type True"):
        r.check(rec)


def test_a_list_subclass_is_not_a_record() -> None:
    class Sneaky(list[Any]):
        pass

    with pytest.raises(r.RecordError, match="not a record array"):
        r.check(Sneaky([r.CREATED, 1, 5, "i", "wf", b"x"]))


# -- blocks ----------------------------------------------------------------------------


def block_verdict(decode: Any, payload: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", decode(payload, SALT))
    except FrameError as exc:
        return ("error", exc.offset, exc.reason)


def compressed(inner: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(inner)


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6), st.data())
def test_block_split_agrees_with_frame_decoder(payloads: list[bytes], data: st.DataObject) -> None:
    inner = bytearray(b"".join(frame_of(p, False) for p in payloads))
    if inner and data.draw(st.booleans()):
        where = data.draw(st.integers(0, len(inner) - 1))
        kind = data.draw(st.integers(0, 2))
        if kind == 0:
            inner[where] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == 1:
            del inner[where:]
        else:
            inner[where:where] = data.draw(st.binary(min_size=1, max_size=9))
    if data.draw(st.booleans()):
        inner += encode_block([b"z"], SALT)  # a block inside a block is damage
    payload = compressed(bytes(inner))
    assert block_verdict(decode_block, payload) == block_verdict(reference_decode_block, payload)


def test_block_split_keeps_every_payload_in_order() -> None:
    payloads = [bytes([i]) * (i + 1) for i in range(200)]
    assert decode_block(encode_block(payloads, SALT)[8:], SALT) == payloads


# -- the fast path is the one taken ----------------------------------------------------


def test_common_records_never_reach_the_generic_check() -> None:
    """Seals aside, a clean journal of every common record type is checked by
    layout alone: the generic walk (r.check) is never called."""
    recs = []
    for rtype in sorted(r.SCHEMA):
        if rtype in r.DEEP:
            continue
        fields = [next(iter(_FIELD_EXAMPLES[t] for t in allowed if t in _FIELD_EXAMPLES))
                  for _, allowed in r.SCHEMA[rtype][1]]
        recs.append([rtype, len(recs) + 1, 1_000, "inst", *fields])
    seal = packed([0, len(recs) + 1])
    body = b"".join(frame_of(packed(rec), True, True) for rec in recs) + frame_of(seal, True, True)
    files = {segment_name(1): pack_header(SegmentHeader(FORMAT_VERSION, 0, SALT, 1, 1)) + body,
             segment_name(2): pack_header(
                 SegmentHeader(FORMAT_VERSION, 0, SALT, 2, len(recs) + 1))}
    with mock.patch.object(r, "check", side_effect=AssertionError("generic check called")):
        outcome = walk(storage_from(files))
    assert outcome[0] == "ok"
    assert [rec for rec, _ in outcome[1]] == recs
    assert outcome[2].records == len(recs)
    assert outcome[2].next_seq == len(recs) + 1


_FIELD_EXAMPLES: dict[type, Any] = {str: "k", bytes: b"v", int: 3, type(None): None}


def test_word_checksum_cache_is_per_segment_salt() -> None:
    """Two segments with different salts and frames of the same length: a
    cached word checksum from one segment must not pass frames of the other."""
    rec1 = [r.CREATED, 1, 5, "a", "wf", b"x"]
    rec2 = [r.CREATED, 2, 5, "b", "wf", b"y"]
    seal = packed([0, 2])
    one = pack_header(SegmentHeader(FORMAT_VERSION, 0, SALT, 1, 1)) + frame_of(
        packed(rec1), True, True) + frame_of(seal, True, True)
    other_salt = SALT ^ 0xFFFF
    frame2 = encode_frame(packed(rec2), other_salt, batch_start=True, batch_end=True)
    two = pack_header(SegmentHeader(FORMAT_VERSION, 0, other_salt, 2, 2)) + frame2
    fast, reference = both_walks(storage_from({segment_name(1): one, segment_name(2): two}))
    assert fast == reference
    assert fast[0] == "ok"
    assert [rec for rec, _ in fast[1]] == [rec1, rec2]
    # The first segment's salt on the second's frame is a checksum mismatch.
    bad = pack_header(SegmentHeader(FORMAT_VERSION, 0, other_salt, 2, 2)) + frame_of(
        packed(rec2), True, True)
    fast, reference = both_walks(storage_from({segment_name(1): one, segment_name(2): bad}))
    assert fast == reference
    assert fast[0] == "ok"
    assert fast[2].torn_at == HEADER_SIZE
