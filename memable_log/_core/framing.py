"""Frames: how records sit in a segment. Pure: bytes in, frames out.

A frame is an 8-byte header and a payload::

    word  u32 little-endian   bits 0-23 payload length, bit 31 batch start,
                              bit 30 block (compacted segments), bit 29
                              batch end (version 4), bits 24-28 zero
    crc   u32 little-endian   crc32 over the 4 word bytes then the payload,
                              started from the segment's salt
    payload                   one msgpack-encoded record

The checksum covers the length, so a damaged length is caught like damaged
data; it is seeded by the segment's random salt, so bytes left from an older
generation of a file never pass as records. A length of zero or above
MAX_RECORD is damage, never an allocation.

The "batch start" bit marks the first frame of each commit batch (the frames
written by one write and made durable by one fsync). Recovery uses it: a
valid batch start after a damaged frame proves the damaged frame was once
fsynced, so the damage is corruption, not a torn tail. Since version 4 the
"batch end" bit marks a batch's last frame (a batch of one frame has both):
a reader takes a batch's records only once its end is there, so a power cut
that kept the first frames of a batch and lost the rest leaves none of it
(segment_reader.py applies that rule; frames here only carry the bits).

FrameDecoder is incremental (feed bytes as they come: whole, byte by byte)
and reports a frame, "need more bytes", or FrameError; it decides nothing
about torn tails. The segment reader (_storage/segment_reader.py) and
``decode_block`` cut frames out of their buffers in place instead, with
FrameDecoder's checks in its order; tests/storage/test_scan_fast.py holds
them to the same verdicts (FrameDecoder is its reference) and
``read_record_at`` uses it to read one frame back.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .format import (
    FRAME_BATCH_END,
    FRAME_BATCH_START,
    FRAME_BLOCK,
    FRAME_HEADER_SIZE,
    FRAME_LENGTH_MASK,
    FRAME_RESERVED_MASK,
    MAX_RECORD,
)

_WORD = struct.Struct("<I")
_FRAME_HEADER = struct.Struct("<II")


class Frame(NamedTuple):
    offset: int  # file offset of the frame header
    batch_start: bool
    payload: bytes
    block: bool = False  # a zstd block of inner frames (compacted segments)
    batch_end: bool = False  # the last frame of its commit batch (version 4)

    @property
    def end(self) -> int:
        return self.offset + FRAME_HEADER_SIZE + len(self.payload)


class FrameError(ValueError):
    """Bytes at ``offset`` are not a valid frame."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"bad frame at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def frame_crc(word: int, payload: bytes | memoryview, salt: int) -> int:
    return zlib.crc32(payload, zlib.crc32(_WORD.pack(word), salt))


def encode_frame(
    payload: bytes, salt: int, batch_start: bool = False, block: bool = False,
    batch_end: bool = False,
) -> bytes:
    """The frame for ``payload`` in a segment with ``salt``."""
    length = len(payload)
    if not 0 < length <= MAX_RECORD:
        raise ValueError(f"record of {length} bytes: must be 1..{MAX_RECORD}")
    word = (
        length | (FRAME_BATCH_START if batch_start else 0) | (FRAME_BLOCK if block else 0)
        | (FRAME_BATCH_END if batch_end else 0)
    )
    return _FRAME_HEADER.pack(word, frame_crc(word, payload, salt)) + payload


def encode_batch(payloads: list[bytes], salt: int) -> list[bytes]:
    """The frames of one commit batch: the first marked its start, the last its end."""
    last = len(payloads) - 1
    return [
        encode_frame(payload, salt, batch_start=i == 0, batch_end=i == last)
        for i, payload in enumerate(payloads)
    ]


def check_frame_at(
    data: bytes | memoryview, pos: int, salt: int, *, batch_end: bool = True
) -> tuple[bool, int] | None:
    """Whether a complete valid plain frame starts at ``pos`` of ``data``.

    Returns (batch_start, end position) or None. Used to look past damage.
    ``batch_end=False``: the batch end bit is not allowed (versions before 4).
    """
    if pos + FRAME_HEADER_SIZE > len(data):
        return None
    word, crc = _FRAME_HEADER.unpack_from(data, pos)
    length = word & FRAME_LENGTH_MASK
    reserved = FRAME_RESERVED_MASK | FRAME_BLOCK | (0 if batch_end else FRAME_BATCH_END)
    if length == 0 or word & reserved:
        return None
    end = pos + FRAME_HEADER_SIZE + length
    if end > len(data):
        return None
    if frame_crc(word, data[pos + FRAME_HEADER_SIZE : end], salt) != crc:
        return None
    return bool(word & FRAME_BATCH_START), end


class FrameDecoder:
    """Incremental frame decoder for one segment.

    ``base_offset`` is the file offset of the first byte to be fed (normally
    the end of the segment header), so frames and errors carry file offsets.
    Block frames are accepted only with ``blocks=True`` (compacted segments),
    the batch end bit unless ``batch_end=False`` (segments before version
    4, and compacted ones, never set it). It decodes frames; what batches mean is the
    segment reader's business.
    """

    __slots__ = ("_buf", "_pos", "_base", "_salt", "_reserved")

    def __init__(
        self, salt: int, base_offset: int = 0, *, blocks: bool = False, batch_end: bool = True
    ) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._base = base_offset
        self._salt = salt
        self._reserved = (
            FRAME_RESERVED_MASK | (0 if blocks else FRAME_BLOCK)
            | (0 if batch_end else FRAME_BATCH_END)
        )

    @property
    def offset(self) -> int:
        """File offset of the next byte not yet decoded."""
        return self._base + self._pos

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet decoded into frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pos == len(self._buf):
            # Everything before was consumed: take the new bytes as they are.
            self._base += self._pos
            self._buf, self._pos = data, 0
            return
        if not isinstance(self._buf, bytearray) or self._pos > 65536:
            rest = bytearray(self._buf[self._pos :])
            self._base += self._pos
            self._buf, self._pos = rest, 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed.

        Raises FrameError (and stays put) if the bytes at the current offset
        cannot be a frame.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < FRAME_HEADER_SIZE:
            return None
        word, crc = _FRAME_HEADER.unpack_from(buf, pos)
        length = word & FRAME_LENGTH_MASK
        if length == 0:
            raise FrameError(self._base + pos, "zero length")
        if word & self._reserved:
            raise FrameError(self._base + pos, "length above the record cap")
        start = pos + FRAME_HEADER_SIZE
        end = start + length
        if end > len(buf):
            return None
        payload = bytes(buf[start:end])
        if frame_crc(word, payload, self._salt) != crc:
            raise FrameError(self._base + pos, "checksum mismatch")
        self._pos = end
        return Frame(
            self._base + pos, bool(word & FRAME_BATCH_START), payload, bool(word & FRAME_BLOCK),
            bool(word & FRAME_BATCH_END),
        )


# Blocks: compaction packs runs of frames into one zstd-compressed frame.
BLOCK_TARGET = 64 * 1024  # uncompressed bytes per block, about
_MAX_BLOCK = 4 * MAX_RECORD  # decompressed bytes a block may claim
_BLOCK_CHUNK = 256 * 1024  # decompressed bytes read at a time


def encode_block(payloads: list[bytes], salt: int) -> bytes:
    """One block frame holding ``payloads`` as inner frames, zstd-compressed."""
    import zstandard  # loaded when first needed: see codec.Codec

    inner = b"".join(encode_frame(p, salt) for p in payloads)
    return encode_frame(zstandard.ZstdCompressor(level=3).compress(inner), salt, block=True)


def decode_block(payload: bytes, salt: int) -> list[bytes]:
    """The inner payloads of a block frame; FrameError(offset 0) if damaged."""
    # Read in chunks: ``read(n)`` allocates n bytes up front, and a 64 MiB
    # buffer per block would make every start-up pay for the cap.
    import zstandard

    chunks: list[bytes] = []
    size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(payload)
        while chunk := reader.read(_BLOCK_CHUNK):
            size += len(chunk)
            if size > _MAX_BLOCK:
                raise FrameError(0, "block larger than the cap")
            chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise FrameError(0, f"undecodable block: {exc}") from None
    return _split_block(b"".join(chunks), salt)


def _split_block(inner: bytes, salt: int) -> list[bytes]:
    """The payloads of a block's inner frames: FrameDecoder's checks, in its
    order, on bytes that are all there (a block is read whole)."""
    out = []
    pos, size = 0, len(inner)
    word_crcs: dict[int, int] = {}  # crc32 of a frame's word, from the salt
    while size - pos >= FRAME_HEADER_SIZE:
        word, crc = _FRAME_HEADER.unpack_from(inner, pos)
        length = word & FRAME_LENGTH_MASK
        if length == 0:
            raise FrameError(pos, "zero length")
        if word & (FRAME_RESERVED_MASK | FRAME_BLOCK | FRAME_BATCH_END):
            raise FrameError(pos, "length above the record cap")
        end = pos + FRAME_HEADER_SIZE + length
        if end > size:
            break
        payload = inner[pos + FRAME_HEADER_SIZE : end]
        word_crc = word_crcs.get(word)
        if word_crc is None:
            word_crc = word_crcs[word] = zlib.crc32(_WORD.pack(word), salt)
        if zlib.crc32(payload, word_crc) != crc:
            raise FrameError(pos, "checksum mismatch")
        out.append(payload)
        pos = end
    if pos != size or not out:
        raise FrameError(pos, "block cut short or empty")
    return out
