"""On-disk constants of the journal, mirrored in docs/format.md.

A journal is a directory. It holds segment files named ``seg-<n>.mlog``
(n: ten decimal digits, no gaps) and a ``LOCK`` file. Every segment starts
with a fixed header; frames follow back to back (see _framing.py). A
*compacted* segment ``cmp-<n>.mlog`` (flag SEG_COMPACTED) holds the history
of segments up to and including n, rewritten; once it exists, those
segments (and older compacted ones) are leftovers, ignored by readers and
deleted by the writer.

Nothing here does I/O: this module only packs and checks headers.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import NamedTuple

MAGIC = b"MEMABLE\x1a"
# 2: each wait registered on its own, ``parked`` (records.py).
# 3: steps carry their start and attempts, failed attempts, status texts,
# events, child workflows (records.py).
# 4: the last frame of each commit batch is marked (FRAME_BATCH_END), so a
# batch is all or nothing for readers even when a power cut keeps only
# part of its bytes. An older segment stays readable; a writer never
# appends to one (it seals it first).
FORMAT_VERSION = 4
BATCH_END_VERSION = 4  # segments of this version and later mark batch ends

# magic, version, flags, salt, segment number, first sequence number,
# reserved, then a crc32 of those 36 bytes.
_HEADER = struct.Struct("<8sHHIQQI")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size  # 40

# Segment flags.
SEG_COMPACTED = 0x0001  # written by compaction: replaces every lower-numbered segment
SEG_KNOWN_FLAGS = SEG_COMPACTED

# Frame header: a 32-bit word (length | flags) and a crc32.
FRAME_HEADER_SIZE = 8
FRAME_BATCH_START = 0x8000_0000  # first frame of a commit batch
FRAME_BLOCK = 0x4000_0000  # compacted segments only: a zstd block of frames
FRAME_LENGTH_MASK = 0x00FF_FFFF  # 24 bits of length
FRAME_BATCH_END = 0x2000_0000  # last frame of a commit batch (version 4, plain segments)
FRAME_RESERVED_MASK = 0x1F00_0000  # must be zero
MAX_RECORD = FRAME_LENGTH_MASK  # 16 MiB - 1: longer is corruption

LOCK_NAME = "LOCK"
SNAPSHOT_NAME = "index.snap"  # the index snapshot (_storage/snapshot.py)
SEGMENT_SUFFIX = ".mlog"
TEMP_SUFFIX = ".tmp"
_SEGMENT_RE = re.compile(r"^seg-(\d{10})\.mlog$")
_COMPACTED_RE = re.compile(r"^cmp-(\d{10})\.mlog$")


class SegmentHeader(NamedTuple):
    version: int
    flags: int
    salt: int
    segment: int
    first_seq: int


def segment_name(number: int) -> str:
    """The file name of segment ``number``."""
    return f"seg-{number:010d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The segment number in ``name``, or None if it is not a segment."""
    match = _SEGMENT_RE.match(name)
    return int(match.group(1)) if match else None


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temp file this library writes (a segment, a
    compacted segment or the snapshot, before its rename). Any other file
    in the directory is not ours to delete, ``*.tmp`` or not."""
    if not name.endswith(TEMP_SUFFIX):
        return False
    stem = name[: -len(TEMP_SUFFIX)]
    return stem == SNAPSHOT_NAME or bool(_SEGMENT_RE.match(stem) or _COMPACTED_RE.match(stem))


def compacted_name(number: int) -> str:
    """The file name of the compacted segment covering segments up to ``number``."""
    return f"cmp-{number:010d}{SEGMENT_SUFFIX}"


def parse_compacted_name(name: str) -> int | None:
    match = _COMPACTED_RE.match(name)
    return int(match.group(1)) if match else None


def pack_header(header: SegmentHeader) -> bytes:
    body = _HEADER.pack(
        MAGIC, header.version, header.flags, header.salt, header.segment,
        header.first_seq, 0,
    )
    return body + _HEADER_CRC.pack(zlib.crc32(body))


class HeaderError(ValueError):
    """A segment header is unreadable: damaged, cut short or not ours.

    The message says why. Readers report it as corruption, except for its
    subclass NewerFormatError.
    """


class NewerFormatError(HeaderError):
    """A segment header from a format version newer than FORMAT_VERSION.

    Not damage: the journal is fine, this library is too old to read it.
    """


def unpack_header(data: bytes | memoryview) -> SegmentHeader:
    """Parse and check a segment header.

    Raises NewerFormatError for a version above FORMAT_VERSION, and
    HeaderError for anything else wrong with it (too short, bad magic,
    checksum, a version below 1, unknown flags).
    """
    if len(data) < HEADER_SIZE:
        raise HeaderError(f"segment shorter than its {HEADER_SIZE}-byte header")
    body = bytes(data[: _HEADER.size])
    (crc,) = _HEADER_CRC.unpack_from(data, _HEADER.size)
    magic, version, flags, salt, segment, first_seq, _ = _HEADER.unpack(body)
    if magic != MAGIC:
        raise HeaderError("not a memable_log segment (bad magic)")
    if zlib.crc32(body) != crc:
        raise HeaderError("segment header checksum mismatch")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"segment written in format version {version}, newer than this "
            f"library reads ({FORMAT_VERSION}); upgrade memable_log"
        )
    if version < 1:
        raise HeaderError(f"unknown format version {version}")
    if flags & ~SEG_KNOWN_FLAGS:
        raise HeaderError(f"unknown segment flags {flags:#06x}")
    return SegmentHeader(version, flags, salt, segment, first_seq)
