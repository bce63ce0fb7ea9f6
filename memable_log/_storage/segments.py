"""Reading a journal: the walk over its segments, and what damage means.

``plan_walk`` picks the segment files to read, in order (a compacted
segment first, leftovers skipped). ``scan`` walks them, reading each with a
``SegmentReader`` (segment_reader.py: every per-segment rule, the fast loop
included), and hands each record to a callback. The reader reports bad
bytes; the walk decides what they mean:

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
  is corruption wherever it is: no torn write produces it (the reader
  raises it).

The scan reads but never writes, so readers (memable-dump) use it as well;
``iter_scan`` is the same walk as a generator, for readers that stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .._core import records as r
from .._core.errors import JournalCorrupt
from .._core.format import (
    FRAME_HEADER_SIZE,
    FRAME_LENGTH_MASK,
    SegmentHeader,
    compacted_name,
    is_temp_name,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
)
from .._core.framing import FrameDecoder, check_frame_at, decode_block
from .._core.index import loc_inner, unpack_loc
from .files import Storage
from .segment_reader import SegmentReader, read_header

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
    result.temp_files = [n for n in names if is_temp_name(n)]
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
    if resume is not None:
        result.segments = list(resume.segments)
        result.records = resume.records
    for i, (name, number) in enumerate(walk):
        if resume is not None and i < resume.index:
            continue
        if i and number != walk[i - 1][1] + 1:
            raise JournalCorrupt(
                _path(storage, segment_name(walk[i - 1][1] + 1)), 0,
                f"segment {walk[i - 1][1] + 1} is missing",
            )
        is_last = i == len(walk) - 1 and upto is None
        if resume is not None and i == resume.index:
            reader, data = _open_segment(
                storage, name, number, result, (resume.offset, resume.next_seq), resume.head
            )
        else:
            reader, data = _open_segment(storage, name, number, result, None, b"")
        # Straight from the reader: a generator in between costs start-up
        # time on every record.
        try:
            yield from reader.records()
        finally:
            result.records += reader.count
        _close_segment(reader, name, data, is_last, result)


def _path(storage: Storage, name: str) -> str:
    return f"{storage.location}/{name}"


def _open_segment(
    storage: Storage, name: str, number: int, result: ScanResult,
    resume: tuple[int, int] | None, known: bytes,
) -> tuple[SegmentReader, bytes]:
    """A reader for the segment, its header checked, fed the segment's bytes."""
    path = _path(storage, name)
    if known and (rest := storage.size(name) - len(known)) >= 0:
        # The bytes before the resume offset were read (and checked) already.
        data = known + storage.read_at(name, len(known), rest) if rest else known
    else:
        data = storage.read(name)
    header = read_header(path, name, number, data)
    # Resumed from a snapshot: what came before was checked when it was taken.
    after = result.next_seq if result.segments else None
    reader = SegmentReader(path, number, header, after=after, resume=resume)
    reader.feed(data, at=0)
    return reader, data


def _close_segment(
    reader: SegmentReader, name: str, data: bytes, is_last: bool, result: ScanResult
) -> None:
    """The walk's policy for the end of a segment read to its end."""
    path = reader.path
    # A compacted segment is fsynced whole before its rename makes it
    # visible: damage in it, or a missing seal, is never a torn tail.
    is_last = is_last and not reader.compacted
    damage = reader.ended()
    if damage is not None:
        if not is_last:
            raise JournalCorrupt(path, damage.offset, damage.reason)
        proven = reader.proof(damage)
        if proven is not None:
            raise proven
        # The tail starts after the last complete batch, at or before the damage.
        result.torn_at = reader.pos
        result.torn_bytes = len(data) - reader.pos
    if not reader.sealed and not is_last:
        raise JournalCorrupt(path, reader.pos, "segment ends without a seal")
    result.next_seq = reader.next_seq
    end = reader.pos if result.torn_at is None or not is_last else result.torn_at
    result.segments.append(Segment(reader.number, reader.header, end, reader.sealed, name))


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


_SPAN = 1 << 20  # bytes of one segment read at once for a read-ahead


def read_records_at(storage: Storage, salts: dict[str, int], locs: list[int]) -> list[list[Any]]:
    """``read_record_at`` for each of ``locs``, in order (a read-ahead's window).

    Records of a plain segment that lie within ``_SPAN`` bytes of each other
    are read with one read of the bytes from the first to the last, and each
    frame is checked as ``read_record_at`` checks it (its words, its
    checksum with the segment's salt, a well-formed record); any other
    location is read on its own.
    """
    out: list[list[Any]] = []
    i = 0
    while i < len(locs):
        segment, first = unpack_loc(locs[i])
        name = segment_name(segment)
        j = i + 1
        if not loc_inner(locs[i]) and name in salts:
            while j < len(locs) and not loc_inner(locs[j]):
                seg, offset = unpack_loc(locs[j])
                if seg != segment or not first <= offset < first + _SPAN:
                    break
                j += 1
        if j - i == 1:
            out.append(read_record_at(storage, salts, locs[i]))
        else:
            out += _read_span(storage, name, salts[name], [unpack_loc(loc)[1] for loc in locs[i:j]])
        i = j
    return out


def _read_span(storage: Storage, name: str, salt: int, offsets: list[int]) -> list[list[Any]]:
    """The records of frames at ``offsets`` of one plain segment (none below the first)."""
    first = offsets[0]
    data = storage.read_at(name, first, max(offsets) - first + FRAME_HEADER_SIZE)
    last = max(offsets) - first
    if len(data) == last + FRAME_HEADER_SIZE:  # the last frame's payload, too
        length = int.from_bytes(data[last : last + 4], "little") & FRAME_LENGTH_MASK
        data += storage.read_at(name, first + len(data), length)
    out = []
    for offset in offsets:
        at = offset - first
        found = check_frame_at(data, at, salt)  # its words, completeness and checksum
        try:
            if found is None:
                raise ValueError("not a valid frame")
            out.append(r.check(unpack_record(data[at + FRAME_HEADER_SIZE : found[1]])))
        except Exception:
            raise JournalCorrupt(
                _path(storage, name), offset, "record expected here is unreadable"
            ) from None
    return out
