"""Index snapshots: start without reading the whole journal.

A snapshot is a derived file, ``index.snap``: the Index as it stood at a
position in the journal, so start-up loads it and scans only the records
after that position. It is checked before use and never trusted blindly:

* its crc32 must hold (a damaged file is ignored);
* every segment file it covers must still be the one it saw (same name, in
  the same order in today's walk, same salt in its header) and hold the
  same bytes (a crc32 of each, up to the position: about 25 ms per 100 MB,
  so damage anywhere is still found at open, by the full scan that follows);
* its inline limit must equal the engine's.

Anything else (missing, damaged, stale after a compaction, taken with other
settings) falls back to the full scan, which gives the same index. Written
at clean shutdown and after every compaction, as a temp file, fsynced and
renamed (losing it costs only a slower start).

File: ``MAGIC``, u32 crc32 of the body, then the body: a msgpack array
``[1, inline_limit, [segment name, offset, next_seq, records],
[[name, salt, length, crc32], ...], {instance: [fields...]}]``. Locations of records inside
compacted blocks exceed 64 bits and are written as ``[high, low]`` pairs.
"""

from __future__ import annotations

import struct
import sys
import zlib
from typing import Any

import msgpack

from ._format import HEADER_SIZE, HeaderError, compacted_name, segment_name, unpack_header
from ._index import Index, InstanceEntry
from ._reader import Resume, ScanResult, Segment, plan_walk
from ._storage import Storage

SNAPSHOT_NAME = "index.snap"
MAGIC = b"MMBLSNP1"
_CRC = struct.Struct("<I")
_LOW = (1 << 64) - 1


class SnapshotInvalid(ValueError):
    """The snapshot cannot be used; the message says why (for the log)."""


def _out(value: Any) -> Any:
    if type(value) is int and value > _LOW:
        return [value >> 64, value & _LOW]
    return value


def _in(value: Any) -> Any:
    if type(value) is list:
        return value[0] << 64 | value[1]
    return value


def _table(table: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if table is None else {k: _out(v) for k, v in table.items()}


Position = tuple[str, int, int, int]  # segment name, offset, next_seq, records


Covered = tuple[str, int, int, int]  # segment name, salt, length, crc32 of those bytes


def encode(index: Index, position: Position, segments: list[Covered]) -> bytes:
    """The snapshot file's bytes for ``index`` as of ``position``."""
    instances = {
        iid: [
            e.workflow, e.state, e.created_ms, e.updated_ms, _out(e.input), _out(e.outcome),
            list(e.error) if e.error is not None else None, e.wait_key, e.status, e.deadline_ms,
            _table(e.steps), _table(e.signals), e.timers, e.done_waits, e.last_seq,
        ]
        for iid, e in index.instances.items()
    }
    body: bytes = msgpack.packb(
        [1, index.inline_limit, list(position), [list(s) for s in segments], instances],
        use_bin_type=True,
    )
    return MAGIC + _CRC.pack(zlib.crc32(body)) + body


def decode_into(index: Index, data: bytes) -> tuple[Position, list[Covered]]:
    """Fill ``index`` from a snapshot; return its position and segments."""
    head = len(MAGIC) + _CRC.size
    if len(data) < head or not data.startswith(MAGIC):
        raise SnapshotInvalid("not a snapshot")
    if zlib.crc32(data[head:]) != _CRC.unpack_from(data, len(MAGIC))[0]:
        raise SnapshotInvalid("checksum mismatch")
    try:
        version, inline_limit, position, segments, instances = msgpack.unpackb(
            data[head:], raw=False, strict_map_key=True, use_list=True
        )
    except Exception as exc:  # msgpack raises several types; a crc collision is all it takes
        raise SnapshotInvalid(f"undecodable: {exc}") from None
    if version != 1:
        raise SnapshotInvalid(f"version {version}")
    if inline_limit != index.inline_limit:
        raise SnapshotInvalid("taken with another inline limit")
    intern = sys.intern
    built: dict[str, InstanceEntry] = {}
    new = InstanceEntry.__new__
    for iid, f in instances.items():
        e = new(InstanceEntry)
        e.workflow = intern(f[0])
        e.state, e.created_ms, e.updated_ms = f[1], f[2], f[3]
        e.input, e.outcome = _in(f[4]), _in(f[5])
        e.error = tuple(f[6]) if f[6] is not None else None
        e.wait_key, e.status, e.deadline_ms = f[7], f[8], f[9]
        e.steps = {intern(k): _in(v) for k, v in f[10].items()}
        e.signals = None if f[11] is None else {k: _in(v) for k, v in f[11].items()}
        e.timers, e.done_waits, e.last_seq = f[12], f[13], f[14]
        built[iid] = e
    index.instances = built
    name, offset, next_seq, records = position
    index.records = records
    return (name, offset, next_seq, records), [
        (n, salt, length, crc) for n, salt, length, crc in segments
    ]


def covered(storage: Storage, name: str, salt: int, length: int) -> Covered:
    return (name, salt, length, zlib.crc32(storage.read_at(name, 0, length)))


def current_segments(storage: Storage, salts: dict[str, int], end: int) -> list[Covered]:
    """Every segment in today's walk, the last one up to ``end``, for a snapshot."""
    walk = plan_walk(storage, ScanResult())
    return [
        covered(storage, name, salts[name], end if i == len(walk) - 1 else storage.size(name))
        for i, (name, _) in enumerate(walk)
    ]


def resume_point(storage: Storage, position: Position, segments: list[Covered]) -> Resume:
    """Check the snapshot against the journal as it is; where to scan from."""
    walk = plan_walk(storage, ScanResult())
    names = [name for name, _ in walk]
    seen = [seg[0] for seg in segments]
    name, offset, next_seq, records = position
    if names[: len(seen)] != seen or not seen or seen[-1] != name:
        raise SnapshotInvalid("the journal's segments changed since")
    restored = []
    for (seg_name, salt, length, crc), (_, number) in zip(segments, walk, strict=False):
        data = storage.read_at(seg_name, 0, length)
        if len(data) != length or zlib.crc32(data) != crc:
            raise SnapshotInvalid(f"{seg_name} changed since")
        try:
            header = unpack_header(data)
        except HeaderError as exc:
            raise SnapshotInvalid(f"{seg_name}: {exc}") from None
        if header.salt != salt:
            raise SnapshotInvalid(f"{seg_name} was rewritten since")
        restored.append(Segment(number, header, length, True, seg_name))
    if restored[-1].end != offset:
        raise SnapshotInvalid("the snapshot's position is not where it says")
    return Resume(len(seen) - 1, offset, next_seq, records, restored[:-1])


def load(storage: Storage, index: Index) -> Resume | None:
    """Fill ``index`` from a valid snapshot and return where to resume, or None."""
    if SNAPSHOT_NAME not in storage.list():
        return None
    try:
        position, segments = decode_into(index, storage.read(SNAPSHOT_NAME))
        return resume_point(storage, position, segments)
    except (SnapshotInvalid, OSError, ValueError, TypeError, KeyError, IndexError):
        index.instances = {}
        index.records = 0
        return None


def write(storage: Storage, data: bytes) -> None:
    """Replace the snapshot durably enough: temp, fsync, rename, dir fsync."""
    temp = SNAPSHOT_NAME + ".tmp"
    if temp in storage.list():
        storage.remove(temp)
    file = storage.create(temp)
    try:
        file.write(data)
        file.sync()
    finally:
        file.close()
    storage.rename(temp, SNAPSHOT_NAME)
    storage.sync_dir()


def write_after_compaction(
    storage: Storage, index: Index, upto: int, cmp_salt: int, next_seq: int, next_salt: int
) -> None:
    """The snapshot of ``cmp-<upto>``'s index: resume at the start of segment upto+1."""
    cmp_name, next_name = compacted_name(upto), segment_name(upto + 1)
    position = (next_name, HEADER_SIZE, next_seq, index.records)
    segments = [
        covered(storage, cmp_name, cmp_salt, storage.size(cmp_name)),
        covered(storage, next_name, next_salt, HEADER_SIZE),
    ]
    write(storage, encode(index, position, segments))
