"""Reading a journal: segments in order, every frame checked. Policy lives here.

``scan`` walks the segments, checks each header and frame, decodes and
checks each record and hands it to a callback. It decides what damage means:

* In any segment but the last, every byte must be a valid frame, sequence
  numbers must follow on from the previous segment, and the segment must end
  with a seal. Anything else is ``JournalCorrupt`` (file, offset).
* In the last segment, the first bad or incomplete frame starts either a
  torn tail (the end of a write that was never acknowledged) or corruption.
  It is corruption if a valid *batch start* frame follows it: a later batch
  is only written after the earlier one was fsynced, so the damaged bytes
  were durable once. Otherwise it is a torn tail, reported in the result
  (never cut here: the writer cuts it durably before appending).
* A frame whose checksum holds but whose payload is not a well-formed record
  is corruption wherever it is: no torn write produces it.

The scan reads but never writes, so readers (memable-dump) use it as well;
``iter_scan`` is the same walk as a generator, for readers that stream.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .._core import records as r
from .._core.errors import JournalCorrupt, JournalFormatError
from .._core.format import (
    FRAME_BATCH_START,
    FRAME_BLOCK,
    FRAME_HEADER_SIZE,
    FRAME_LENGTH_MASK,
    FRAME_RESERVED_MASK,
    HEADER_SIZE,
    SEG_COMPACTED,
    HeaderError,
    SegmentHeader,
    compacted_name,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
    unpack_header,
)
from .._core.framing import FrameDecoder, FrameError, check_frame_at, decode_block
from .._core.index import loc_inner, pack_loc, unpack_loc
from .files import Storage

_BATCH_START_BYTE = bytes([FRAME_BATCH_START >> 24])
_FRAME_HEAD = struct.Struct("<II")  # a frame's word and crc (see _framing)
OnRecord = Callable[[list[Any], int], None]  # record, packed location


@dataclass
class Segment:
    number: int
    header: SegmentHeader
    end: int  # offset just past the last valid frame
    sealed: bool
    name: str = ""


@dataclass
class ScanResult:
    segments: list[Segment] = field(default_factory=list)
    next_seq: int = 1
    records: int = 0
    torn_at: int | None = None  # offset where the last segment's torn tail starts
    torn_bytes: int = 0
    temp_files: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # left by a compaction

    @property
    def last(self) -> Segment | None:
        return self.segments[-1] if self.segments else None


def segment_numbers(names: list[str]) -> list[int]:
    return sorted(n for n in map(parse_segment_name, names) if n is not None)


def unpack_record(payload: bytes) -> Any:
    """Decode a payload; never runs code (no ext hooks, bounded sizes)."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)


def scan(
    storage: Storage, on_record: OnRecord | None = None, resume: Resume | None = None
) -> ScanResult:
    """Check the whole journal, feeding each record to ``on_record``.

    Raises JournalCorrupt for damage outside the torn tail, and for a
    RecordError raised by ``on_record`` (the record cannot be applied).
    """
    result = ScanResult()
    for rec, loc in iter_scan(storage, result, resume=resume):
        if on_record is not None:
            try:
                on_record(rec, loc)
            except r.RecordError as exc:
                segment, offset = unpack_loc(loc)
                raise JournalCorrupt(
                    _path(storage, segment_name(segment)), offset, str(exc)
                ) from None
    return result


@dataclass
class Resume:
    """Where a scan may start instead of the beginning (from an index snapshot).

    ``index`` is the position in the walk of the segment to resume in;
    ``segments`` describes the walk's segments before it (already applied);
    ``offset`` and ``next_seq`` say where in that segment to go on;
    ``head``, if not empty, is that segment's first ``offset`` bytes as the
    snapshot's check read them (the scan then reads only what follows).
    """

    index: int
    offset: int
    next_seq: int
    records: int
    segments: list[Segment]
    head: bytes = b""


def plan_walk(storage: Storage, result: ScanResult) -> list[tuple[str, int]]:
    """The segment files to read, in order; fills in temp and superseded files."""
    names = storage.list()
    numbers = segment_numbers(names)
    result.temp_files = [n for n in names if n.endswith(".tmp")]
    compacted = sorted(n for n in map(parse_compacted_name, names) if n is not None)
    walk = [(segment_name(n), n) for n in numbers]
    if compacted:
        # The newest compacted segment replaces every segment up to its number.
        top = compacted[-1]
        result.superseded = [segment_name(n) for n in numbers if n <= top]
        result.superseded += [compacted_name(n) for n in compacted[:-1]]
        walk = [(compacted_name(top), top)] + [(segment_name(n), n) for n in numbers if n > top]
    return walk


def iter_scan(
    storage: Storage,
    result: ScanResult,
    upto: int | None = None,
    resume: Resume | None = None,
) -> Iterator[tuple[list[Any], int]]:
    """Walk the journal like ``scan``, yielding (record, packed location).

    ``result`` is filled in as the walk goes; it is complete (torn tail
    included) once the generator is exhausted. Raises JournalCorrupt where
    ``scan`` would, after yielding every record before the damage. With
    ``upto``, the walk ends after segment ``upto``, which must be sealed.
    With ``resume``, what lies before it is taken as read (see _snapshot).
    """
    walk = plan_walk(storage, result)
    if upto is not None:
        walk = [(name, n) for name, n in walk if n <= upto]
    start, first_seq = HEADER_SIZE, None
    if resume is not None:
        result.segments = list(resume.segments)
        result.records = resume.records
        start, first_seq = resume.offset, resume.next_seq
    for i, (name, number) in enumerate(walk):
        if resume is not None and i < resume.index:
            continue
        if i and number != walk[i - 1][1] + 1:
            raise JournalCorrupt(
                _path(storage, segment_name(walk[i - 1][1] + 1)), 0,
                f"segment {walk[i - 1][1] + 1} is missing",
            )
        is_last = i == len(walk) - 1 and upto is None
        resumed = resume is not None and i == resume.index
        yield from _scan_segment(
            storage, name, number, is_last, result,
            start if resumed else HEADER_SIZE, first_seq if resumed else None,
            resume.head if resume is not None and resumed else b"",
        )


def _path(storage: Storage, name: str) -> str:
    return f"{storage.location}/{name}"


def _scan_segment(
    storage: Storage, name: str, number: int, is_last: bool, result: ScanResult,
    start: int = HEADER_SIZE, resume_seq: int | None = None, known: bytes = b"",
) -> Iterator[tuple[list[Any], int]]:
    path = _path(storage, name)
    if known and (rest := storage.size(name) - len(known)) >= 0:
        # The bytes before ``start`` were read (and checked) already.
        data = known + storage.read_at(name, len(known), rest) if rest else known
    else:
        data = storage.read(name)
    try:
        header = unpack_header(data)
    except HeaderError as exc:
        cls = JournalFormatError if "version" in str(exc) else JournalCorrupt
        raise cls(path, 0, str(exc)) from None
    if header.segment != number:
        raise JournalCorrupt(path, 0, f"header says segment {header.segment}")
    compacted = bool(header.flags & SEG_COMPACTED)
    if compacted != name.startswith("cmp-"):
        raise JournalCorrupt(path, 0, "the segment's compacted flag does not match its name")
    # A compacted segment is fsynced whole before its rename makes it
    # visible: damage in it, or a missing seal, is never a torn tail.
    is_last = is_last and not compacted
    if resume_seq is not None:
        pass  # resumed from a snapshot: what came before was checked when it was taken
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
    # Records of a compacted segment are history rewritten: their seq is 0
    # and the header's first_seq is the seq of the record after them.
    next_seq = header.first_seq if resume_seq is None else resume_seq
    salt = header.salt
    reserved = FRAME_RESERVED_MASK if compacted else FRAME_RESERVED_MASK | FRAME_BLOCK
    size = len(data)
    pos = start
    sealed = False
    base_loc = pack_loc(number, 0)
    # The hot loop: frames are cut straight out of the segment's bytes (the
    # same checks, in the same order, as FrameDecoder.next_frame), and a
    # record whose field types match a known layout (r.SIGNATURES) skips the
    # generic checks, which only seals, state images and damage reach.
    head = _FRAME_HEAD.unpack_from
    crc32 = zlib.crc32
    unpackb = msgpack.unpackb
    layouts = r.SIGNATURES
    word_crcs: dict[int, int] = {}  # crc32 of a frame's word, from the salt
    while True:
        if size - pos < FRAME_HEADER_SIZE:
            if size > pos:
                _damage(path, data, salt, pos, "record cut short", is_last, result)
            break
        word, crc = head(data, pos)
        length = word & FRAME_LENGTH_MASK
        if length == 0 or word & reserved:
            reason = "zero length" if length == 0 else "length above the record cap"
            _damage(path, data, salt, pos, reason, is_last, result)
            break
        offset, pos = pos, pos + FRAME_HEADER_SIZE + length
        if pos > size:
            pos = offset
            _damage(path, data, salt, pos, "record cut short", is_last, result)
            break
        payload = data[offset + FRAME_HEADER_SIZE : pos]
        word_crc = word_crcs.get(word)
        if word_crc is None:
            word_crc = word_crcs[word] = crc32(data[offset : offset + 4], salt)
        if crc32(payload, word_crc) != crc:
            pos = offset
            _damage(path, data, salt, pos, "checksum mismatch", is_last, result)
            break
        if sealed:
            raise JournalCorrupt(path, offset, "record after the segment's seal")
        block = bool(word & FRAME_BLOCK)
        if block:
            try:
                payloads: tuple[bytes, ...] | list[bytes] = decode_block(payload, salt)
            except FrameError as exc:
                raise JournalCorrupt(path, offset, exc.reason) from None
        else:
            payloads = (payload,)
        inner = 1 if block else 0  # a record's place in its block, 1-based
        for payload in payloads:
            try:  # unpack_record, inlined: the same options
                rec = unpackb(payload, raw=False, strict_map_key=True, use_list=True)
            except Exception as exc:  # msgpack raises several types; none is ours
                raise JournalCorrupt(path, offset, f"undecodable record: {exc}") from None
            rtypes = layouts.get(tuple(map(type, rec))) if type(rec) is list else None
            if rtypes is None or rec[0] not in rtypes:
                # Not a common record layout: a seal, a state image, or damage.
                seal_seq = r.check_seal(rec)
                if seal_seq is not None:
                    if seal_seq != next_seq or block:
                        raise JournalCorrupt(path, offset, "seal's sequence number is wrong")
                    sealed = True
                    continue
                try:
                    r.check(rec)
                except r.RecordError as exc:
                    raise JournalCorrupt(path, offset, str(exc)) from None
            if compacted:
                if rec[1] != 0:
                    raise JournalCorrupt(path, offset, "a compacted record with a sequence number")
            elif rec[1] != next_seq:
                raise JournalCorrupt(path, offset, f"sequence number {rec[1]}, expected {next_seq}")
            else:
                next_seq = rec[1] + 1
            result.records += 1
            if inner:
                yield rec, pack_loc(0, 0, inner) | base_loc | offset
                inner += 1
            else:
                yield rec, base_loc | offset
    if not sealed and not is_last:
        raise JournalCorrupt(path, pos, "segment ends without a seal")
    result.next_seq = next_seq
    end = pos if result.torn_at is None or not is_last else result.torn_at
    result.segments.append(Segment(number, header, end, sealed, name))


def _damage(
    path: str, data: bytes, salt: int, offset: int, reason: str, is_last: bool,
    result: ScanResult,
) -> None:
    """Decide whether damage at ``offset`` is a torn tail or corruption."""
    if not is_last:
        raise JournalCorrupt(path, offset, reason)
    view = memoryview(data)
    # A batch-start frame's word has bit 31 set and bits 24-30 clear, so its
    # fourth byte is exactly 0x80: jump between those bytes, not byte by byte.
    marker = data.find(_BATCH_START_BYTE, offset + 1 + 3)
    while marker != -1:
        pos = marker - 3
        found = check_frame_at(view, pos, salt)
        if found is not None and found[0]:
            raise JournalCorrupt(
                path, offset, f"{reason}, and a later commit at byte {pos} proves "
                "these bytes were once durable",
            )
        marker = data.find(_BATCH_START_BYTE, marker + 1)
    result.torn_at = offset
    result.torn_bytes = len(data) - offset


def read_record_at(storage: Storage, salts: dict[str, int], loc: int) -> list[Any]:
    """Read back and check the record at a packed location.

    ``salts`` maps segment file names to their salts. A location inside a
    compacted block names the compacted segment of its number.
    """
    segment, offset = unpack_loc(loc)
    inner = loc_inner(loc)
    name = compacted_name(segment) if inner else segment_name(segment)
    header = storage.read_at(name, offset, FRAME_HEADER_SIZE)
    if len(header) == FRAME_HEADER_SIZE and name in salts:
        salt = salts[name]
        length = int.from_bytes(header[:4], "little") & FRAME_LENGTH_MASK
        frame = header + storage.read_at(name, offset + FRAME_HEADER_SIZE, length)
        decoder = FrameDecoder(salt, blocks=bool(inner))
        decoder.feed(frame)
        try:
            found = decoder.next_frame()
            if found is not None:
                payloads = decode_block(found.payload, salt) if inner else [found.payload]
                return r.check(unpack_record(payloads[max(inner - 1, 0)]))
        except Exception:
            pass
    raise JournalCorrupt(_path(storage, name), offset, "record expected here is unreadable")
