"""One segment, read incrementally: every per-segment rule, in one place.

Theory of operation (the shape of leveldb's log reader). ``read_header``
checks what a segment's header says on its own: its bytes, its number, its
compacted flag against the file's name. A ``SegmentReader`` is made with
that header and the segment's place in the walk (first, or after a segment
that ended at some seq) and checks the header against it. It is then fed
the segment's bytes, whole (the start-up scan) or in pieces as they are
read (a follower), and ``records()`` yields (record, packed location) for
every record of every complete frame fed so far.

What the reader can judge alone it raises as ``JournalCorrupt``: a frame
whose checksum holds but whose payload is not a well-formed record, a
damaged block, a block outside a compacted segment, a record after the
seal, a seal or a sequence number out of order, a compacted record with a
sequence number. No torn write produces any of those.

What it cannot judge alone it reports and stops at: bytes that are not a
valid frame (``damage``), or bytes that do not make a whole frame yet.
Whether that is a torn tail or corruption depends on what only the caller
knows (whether more bytes may come, whether a later segment exists), so the
caller decides, with two questions it may ask: ``ended()``, what is wrong
with the end of a segment whose bytes are all there, and ``proof()``,
whether a later commit in the bytes fed proves that damage was once
durable (a batch is written only after the one before it was fsynced).

A run of zero bytes from the end of the last complete frame to the end of
the bytes fed is not damage: it is a *zero tail*, space a writer
preallocated and has not written yet (format.md, "Zero tail"). ``ended()``
says nothing is wrong then. Zeros followed by anything else are damage as
before (a torn write into preallocated space, or worse).

Nothing here does I/O. ``records()`` is start-up's hot loop: frames are cut
straight out of the buffer (FrameDecoder's checks, in its order), a record
whose field types match a known layout (r.SIGNATURES) skips the generic
check, and the reader's state lives in locals, stored back when it stops.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import msgpack

from .._core import records as r
from .._core.errors import JournalCorrupt, JournalFormatError
from .._core.format import (
    BATCH_END_VERSION,
    FRAME_BATCH_END,
    FRAME_BATCH_START,
    FRAME_BLOCK,
    FRAME_HEADER_SIZE,
    FRAME_LENGTH_MASK,
    FRAME_RESERVED_MASK,
    HEADER_SIZE,
    SEG_COMPACTED,
    HeaderError,
    NewerFormatError,
    SegmentHeader,
    unpack_header,
)
from .._core.framing import FrameError, check_frame_at, decode_block
from .._core.index import pack_loc

# The fourth byte of a batch-start frame's word: bit 31 set, bits 24-30
# clear but for the batch end bit (a batch of one frame, version 4; a
# version 3 segment's check_frame_at refuses that bit).
_BATCH_START_BYTE = re.compile(
    b"[" + re.escape(bytes([FRAME_BATCH_START >> 24]))
    + re.escape(bytes([(FRAME_BATCH_START | FRAME_BATCH_END) >> 24])) + b"]"
)
_FRAME_HEAD = struct.Struct("<II")  # a frame's word and crc (see _core/framing.py)
_INNER_ONE = pack_loc(0, 0, 1)  # added to a location per record inside a block


class Damage(NamedTuple):
    """Bytes at ``offset`` that are not a valid frame, and why."""

    offset: int
    reason: str


def read_header(path: str, name: str, number: int, data: bytes) -> SegmentHeader:
    """Check the header at the start of ``data``, the segment ``number`` named ``name``.

    Raises JournalFormatError for a newer format version, JournalCorrupt
    for any other bad header, a wrong segment number, or a compacted flag
    that does not match the name (``cmp-`` for compacted segments).
    """
    try:
        header = unpack_header(data)
    except NewerFormatError as exc:
        raise JournalFormatError(path, 0, str(exc)) from None
    except HeaderError as exc:
        raise JournalCorrupt(path, 0, str(exc)) from None
    if header.segment != number:
        raise JournalCorrupt(path, 0, f"header says segment {header.segment}")
    if bool(header.flags & SEG_COMPACTED) != name.startswith("cmp-"):
        raise JournalCorrupt(path, 0, "the segment's compacted flag does not match its name")
    return header


class SegmentReader:
    """Reads one segment's frames and records as its bytes are fed.

    ``header`` is the segment's, checked by ``read_header``. ``after`` is
    the seq the previous segment of the walk ended at (its ``next_seq``),
    or None if this is the walk's first segment; the header must agree
    (JournalCorrupt otherwise). With ``resume=(offset, next_seq)`` the
    reader starts at ``offset`` and takes everything before it as checked.

    Attributes: ``compacted``; ``sealed`` once the seal is read;
    ``next_seq``, the seq the next record must have (a compacted segment
    keeps its header's first_seq); ``count``, how many records were yielded;
    ``damage``, the bad frame that stopped it, or None.

    Commit batches (version 4 and later, plain segments): the records of a
    batch are yielded only once its last frame (the batch end bit) has been
    read. A batch whose end is not in the bytes fed holds the reader at its
    first frame: ``pos`` stays there (damage inside the batch keeps its own
    offset, for the message), so a torn tail is cut at the batch's start,
    never inside it. A power cut that kept some of a batch's frames leaves
    none of its records.
    """

    __slots__ = ("path", "number", "header", "compacted", "sealed", "next_seq", "count",
                 "damage", "_buf", "_base", "_pos", "_batched", "_stop")

    def __init__(
        self, path: str, number: int, header: SegmentHeader, *,
        after: int | None, resume: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.number = number
        self.header = header
        compacted = self.compacted = bool(header.flags & SEG_COMPACTED)
        if resume is None:
            _check_place(path, header, compacted, after)
        start, self.next_seq = resume if resume is not None else (HEADER_SIZE, header.first_seq)
        self.sealed = False
        self.count = 0
        self.damage: Damage | None = None
        self._batched = not compacted and header.version >= BATCH_END_VERSION
        # File offset where decoding stopped: ``pos``, or further on inside a
        # batch whose end was not fed (``pos`` is then that batch's start).
        self._stop = start
        self._buf: bytes | bytearray = b""
        self._base = start  # file offset of _buf[0]
        self._pos = 0  # index in _buf of the first byte not yet cut into a frame

    @property
    def pos(self) -> int:
        """File offset just past the last complete frame read (in a segment with
        commit batches, the last complete batch): where a torn tail starts."""
        return self._base + self._pos

    @property
    def end(self) -> int:
        """File offset just past the last byte fed."""
        return self._base + len(self._buf)

    def feed(self, data: bytes, at: int | None = None) -> None:
        """Give the reader more of the segment's bytes.

        They follow the bytes fed before; or, with ``at``, they are the
        segment's bytes from file offset ``at`` (no later than ``pos``),
        taken without a copy: the scan hands over the whole file this way.
        """
        if at is not None:
            if self._pos < len(self._buf) or at > self.pos:
                raise ValueError("feed(at=...) needs every byte fed before to be read")
            self._pos, self._base, self._buf = self.pos - at, at, data
        elif not data:
            pass
        elif self._pos >= len(self._buf):
            self._base, self._pos, self._buf = self.pos, 0, data
        else:
            # Part of a frame is waiting: keep it, and the bytes after any
            # damage (proof() looks there), in one growing buffer.
            if not isinstance(self._buf, bytearray) or self._pos > 65536:
                self._base, self._buf = self.pos, bytearray(self._buf[self._pos :])
                self._pos = 0
            self._buf += data

    def rewind(self) -> None:
        """Forget the bytes fed after ``pos`` and any damage seen in them.

        A follower calls it before it reads a segment again: a restarting
        writer may have cut a torn tail there and written new frames.
        """
        self._base, self._pos, self._buf = self.pos, 0, b""
        self._stop = self._base
        self.damage = None

    def ended(self) -> Damage | None:
        """What is wrong with the end, if the bytes fed are all the segment has.

        The damage that stopped the reader, or a frame cut short after the
        last complete one; None if the bytes end on a frame boundary, or
        only zeros follow it (a zero tail).
        """
        damage = self.damage
        batch_open = self._stop > self.pos
        if damage is None and self.end > self._stop:
            damage = Damage(self._stop, "record cut short")
        elif damage is None and batch_open:
            damage = Damage(self.pos, "commit batch cut short")
        if damage is not None and self.zero_tail:
            # Unused space; but a batch whose end lies in it was cut short.
            return Damage(self.pos, "commit batch cut short") if batch_open else None
        return damage

    @property
    def zero_tail(self) -> bool:
        """True if bytes follow the last complete frame and every one of them is zero.

        (The last complete frame read, even one of a batch still open.)"""
        start = (self._stop if self.damage is None else self.damage.offset) - self._base
        tail = len(self._buf) - start
        return tail > 0 and self._buf.count(0, start) == tail

    def proof(self, damage: Damage) -> JournalCorrupt | None:
        """``damage`` as corruption, if a later commit in the bytes fed proves it.

        A batch is written only after the one before it was fsynced, so a
        valid batch-start frame anywhere after the damage means the damaged
        bytes were once durable: no torn tail. None if there is no such frame.
        """
        data, base = self._buf, self._base
        # Jump between the bytes that can be a batch-start word's fourth.
        with memoryview(data) as view:
            for marker in _BATCH_START_BYTE.finditer(data, damage.offset - base + 1 + 3):
                at = marker.start() - 3
                found = check_frame_at(view, at, self.header.salt, batch_end=self._batched)
                if found is not None and found[0]:
                    return JournalCorrupt(
                        self.path, damage.offset, f"{damage.reason}, and a later commit at "
                        f"byte {base + at} proves these bytes were once durable",
                    )
        return None

    def records(self) -> Iterator[tuple[list[Any], int]]:
        """Yield (record, packed location) for each record of the complete frames fed.

        Stops at the end of the complete frames, or at bad bytes (then
        ``damage`` says where); raises JournalCorrupt for a bad record.
        """
        if self.damage is not None:
            return
        data, base, pos = self._buf, self._base, self._pos
        size = len(data)
        path = self.path
        salt = self.header.salt
        compacted, sealed, next_seq = self.compacted, self.sealed, self.next_seq
        batched = self._batched
        # Bits a frame may not have here: blocks only in compacted segments,
        # the batch end bit only in plain segments of version 4 and later.
        reserved = FRAME_RESERVED_MASK | (0 if compacted else FRAME_BLOCK) | (
            0 if batched else FRAME_BATCH_END
        )
        start_bit, end_bit = FRAME_BATCH_START, FRAME_BATCH_END
        one_frame_batch = start_bit | end_bit
        # The batch of several frames being read (batched segments): its
        # records wait in ``pending`` until its end frame; ``open_at`` is its
        # first frame's index in data (-1: none open), ``open_seq`` the seq
        # it starts at. A batch of one frame is yielded as it is read.
        pending: list[tuple[list[Any], int]] = []
        open_at, open_seq = -1, next_seq
        loc_zero = pack_loc(self.number, 0) + base  # + a frame's index in data
        count = 0
        head = _FRAME_HEAD.unpack_from
        header_size, length_mask, inner_one = FRAME_HEADER_SIZE, FRAME_LENGTH_MASK, _INNER_ONE
        type_at, seq_at = r.TYPE, r.SEQ  # locals: a module attribute per record costs
        crc32 = zlib.crc32
        unpackb = msgpack.unpackb
        layouts = r.SIGNATURES
        word_crcs: dict[int, int] = {}  # crc32 of a frame's word, from the salt
        try:
            while size - pos >= header_size:
                word, crc = head(data, pos)
                length = word & length_mask
                if length == 0 or word & reserved:
                    reason = "zero length" if length == 0 else "length above the record cap"
                    self.damage = Damage(base + pos, reason)
                    break
                offset, pos = pos, pos + header_size + length
                if pos > size:
                    pos = offset  # not all there yet
                    break
                payload = data[offset + header_size : pos]
                word_crc = word_crcs.get(word)
                if word_crc is None:
                    word_crc = word_crcs[word] = crc32(data[offset : offset + 4], salt)
                if crc32(payload, word_crc) != crc:
                    pos = offset
                    self.damage = Damage(base + pos, "checksum mismatch")
                    break
                if sealed:
                    raise JournalCorrupt(path, base + offset, "record after the segment's seal")
                hold = False  # a frame of a batch of several: its records wait for the end
                if batched:
                    if word & start_bit:
                        if open_at >= 0:
                            raise JournalCorrupt(
                                path, base + open_at, "a commit batch without its last frame, "
                                f"then another batch at byte {base + offset}",
                            )
                        if not word & end_bit:  # a batch of one frame is whole already
                            open_at, open_seq = offset, next_seq
                    elif open_at < 0:
                        raise JournalCorrupt(
                            path, base + offset, "a frame outside any commit batch"
                        )
                    hold = open_at >= 0
                block = bool(word & FRAME_BLOCK)
                if block:
                    try:
                        payloads: Sequence[bytes | bytearray] = decode_block(
                            bytes(payload), salt
                        )
                    except FrameError as exc:
                        raise JournalCorrupt(path, base + offset, exc.reason) from None
                    loc = inner_one + loc_zero + offset
                else:
                    payloads = (payload,)
                    loc = loc_zero + offset
                for payload in payloads:
                    try:  # segments.unpack_record, inlined: the same options
                        rec = unpackb(payload, raw=False, strict_map_key=True, use_list=True)
                    except Exception as exc:  # msgpack raises several types; none is ours
                        raise JournalCorrupt(
                            path, base + offset, f"undecodable record: {exc}"
                        ) from None
                    rtypes = layouts.get(tuple(map(type, rec))) if type(rec) is list else None
                    if rtypes is None or rec[type_at] not in rtypes:
                        # Not a common record layout: a seal, a state image, or damage.
                        seal_seq = r.check_seal(rec)
                        if seal_seq is not None:
                            if seal_seq != next_seq or block:
                                raise JournalCorrupt(
                                    path, base + offset, "seal's sequence number is wrong"
                                )
                            if batched and word & one_frame_batch != one_frame_batch:
                                raise JournalCorrupt(
                                    path, base + offset, "a seal inside a commit batch"
                                )
                            sealed = True
                            continue
                        try:
                            r.check(rec)
                        except r.RecordError as exc:
                            raise JournalCorrupt(path, base + offset, str(exc)) from None
                    # Records of a compacted segment are history rewritten:
                    # their seq is 0, the header's first_seq follows them.
                    seq = rec[seq_at]
                    if compacted:
                        if seq != 0:
                            raise JournalCorrupt(
                                path, base + offset, "a compacted record with a sequence number"
                            )
                    elif seq != next_seq:
                        raise JournalCorrupt(
                            path, base + offset, f"sequence number {seq}, expected {next_seq}"
                        )
                    else:
                        next_seq = seq + 1
                    if hold:
                        pending.append((rec, loc))
                        continue
                    count += 1
                    yield rec, loc
                    if block:
                        loc += inner_one
                if hold and word & end_bit:
                    open_at = -1
                    count += len(pending)
                    yield from pending
                    pending.clear()
        finally:
            self._stop = base + pos  # where decoding stopped
            if open_at >= 0:  # the batch's end is not here (yet): none of it was read
                pos, next_seq = open_at, open_seq
            self._pos, self.sealed, self.next_seq = pos, sealed, next_seq
            self.count += count


def _check_place(path: str, header: SegmentHeader, compacted: bool, after: int | None) -> None:
    """The header against the segment's place in the walk."""
    if after is not None:
        if compacted:
            raise JournalCorrupt(path, 0, "a compacted segment after the first one")
        if header.first_seq != after:
            raise JournalCorrupt(
                path, 0, f"segment starts at seq {header.first_seq}, expected {after}"
            )
    elif not compacted and header.first_seq != 1:
        raise JournalCorrupt(
            path, 0, f"the first segment starts at seq {header.first_seq}: earlier "
            "segments are missing",
        )
