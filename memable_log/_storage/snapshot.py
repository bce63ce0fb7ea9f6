"""Index snapshots: start without reading the whole journal.

A snapshot is a derived file, ``index.snap``: the Index as it stood at a
position in the journal, so start-up loads it and scans only the records
after that position. It is checked before use and never trusted blindly:

* its crc32 must hold (a damaged file is ignored);
* every segment file it covers must still be the one it saw (same name, in
  the same order in today's walk, same salt in its header) and hold the
  same bytes (a crc32 of each, up to the position: about 25 ms per 100 MB,
  so damage anywhere is still found at open, by the full scan that follows);
* its format version must be this one's, and its inline limit the engine's.

Anything else (missing, damaged, stale after a compaction, taken with other
settings, an older version) falls back to the full scan, which gives the
same index. Written at clean shutdown and after every compaction, as a temp
file, fsynced and renamed (losing it costs only a slower start).

File: ``MAGIC``, u32 crc32 of all that follows, the body (one msgpack
array), then the finished instances' rests (snapshot_instances.py)::

    [6, inline_limit, [segment name, offset, next_seq, records],
     [[name, salt, length, crc32], ...], [workflow name, ...],
     instances (snapshot_instances.py: columns; a finished instance's rest
                packed, a live one's other fields by id),
     {"schedules": {name: [workflow, cron, input, catch_up, after_ms]},
      "debounces": [[workflow, debounce key, n, input, due_ms, ts_ms], ...],
      "handovers": {hand-over file name: instance id}}]

(``events``: nil, or the event stream as ``[key, ts_ms, value]`` arrays.)

Load does as little per instance as it can, since a million-record journal
holds a hundred thousand of them (snapshot_instances.py): the fields every
entry has at start are columns; a finished instance's rest stays a slice
of one bin until a field of it is read (_core/rest.py: checked then); the
step table is the packed form of _index.py, a msgpack bin kept as the bytes
object it decodes to (decoded only when the engine first reads it, if
ever); workflow names are numbers into one list (interned once, not once
per instance). Locations beyond 64 bits (records inside compacted blocks)
are msgpack ext type ``BIG_INT``, so only they cost a Python call at load.
The garbage collector is paused while the entries are built: they are all
new and all kept, so its passes would find nothing.
"""

from __future__ import annotations

import gc
import io
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack

from .._core.format import (
    HEADER_SIZE,
    SNAPSHOT_NAME,
    HeaderError,
    compacted_name,
    segment_name,
    unpack_header,
)
from .._core.index import (
    DebounceEntry,
    Index,
    ScheduleEntry,
)
from .._core.rest import TIME, MalformedEntry
from .._core.wire import ext_hook
from .files import Storage
from .segments import Resume, ScanResult, Segment, plan_walk
from .snapshot_instances import decode as decode_instances
from .snapshot_instances import encode as encode_instances

MAGIC = b"MMBLSNP1"
VERSION = 6  # 3: waits and pending (format version 2); 4: format version 3;
# 5: a packed step table may begin with a map (_core/index.py); 6: finished
# instances' rest packed (_core/rest.py)
_CRC = struct.Struct("<I")


class SnapshotInvalid(ValueError):
    """The snapshot cannot be used; the message says why (for the log)."""


Position = tuple[str, int, int, int]  # segment name, offset, next_seq, records


Covered = tuple[str, int, int, int]  # segment name, salt, length, crc32 of those bytes


def encode(index: Index, position: Position, segments: list[Covered]) -> bytes:
    """The snapshot file's bytes for ``index`` as of ``position``."""
    numbers: dict[str, int] = {}
    instances, rests = encode_instances(index.instances, numbers)
    body: bytes = msgpack.packb(
        [VERSION, index.inline_limit, position, segments, list(numbers), instances,
         _engine_tables(index)],
        use_bin_type=True,
    )
    return MAGIC + _CRC.pack(zlib.crc32(rests, zlib.crc32(body))) + body + rests


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The garbage collector off for the block (nested and threaded uses
    count: it comes back on with the last one out, if it was on)."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def decode_into(
    index: Index, data: bytes, on_header: Callable[[Position, list[Covered]], None] | None = None
) -> tuple[Position, list[Covered]]:
    """Fill ``index`` from a snapshot; return its position and segments.

    ``on_header`` is called with them as soon as they are decoded, before
    the instances (the bulk of the work): ``load`` checks the segments
    meanwhile, on another thread.
    """
    head = len(MAGIC) + _CRC.size
    if len(data) < head or not data.startswith(MAGIC):
        raise SnapshotInvalid("not a snapshot")
    if zlib.crc32(memoryview(data)[head:]) != _CRC.unpack_from(data, len(MAGIC))[0]:
        raise SnapshotInvalid("checksum mismatch")
    with _gc_paused():
        # Read from the file's bytes, not fed a copy: the rests after the
        # body are used in place.
        file = io.BytesIO(data)
        file.seek(head)
        unpacker = msgpack.Unpacker(
            file, raw=False, strict_map_key=True, use_list=False, ext_hook=ext_hook,
            max_buffer_size=len(data),
        )
        try:
            fields = unpacker.read_array_header()
            version = unpacker.unpack() if fields else "?"
            if version != VERSION:
                raise SnapshotInvalid(f"version {version}")
            if fields != _FIELDS:
                # 6: written before the engine-level tables (schedules, debounce)
                raise SnapshotInvalid(f"{fields} fields, not {_FIELDS}")
            inline_limit, position, segments = (unpacker.unpack() for _ in range(3))
        except SnapshotInvalid:
            raise
        except Exception as exc:  # msgpack raises several types; a crc collision is all it takes
            raise SnapshotInvalid(f"undecodable: {exc}") from None
        if inline_limit != index.inline_limit:
            raise SnapshotInvalid("taken with another inline limit")
        name, offset, next_seq, records = position
        where = (name, offset, next_seq, records)
        covered = [(n, salt, length, crc) for n, salt, length, crc in segments]
        if on_header is not None:
            on_header(where, covered)
        try:
            workflows, instances, tables = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
        except Exception as exc:
            raise SnapshotInvalid(f"undecodable: {exc}") from None
        _load_engine_tables(index, tables)
        if type(workflows) is not tuple or not all(type(w) is str for w in workflows):
            raise SnapshotInvalid("malformed workflow names")
        rests = memoryview(data)[head + unpacker.tell():]
        try:
            entries = decode_instances(instances, [sys.intern(w) for w in workflows], rests)
        except MalformedEntry as exc:
            raise SnapshotInvalid(str(exc)) from None
    index.instances = entries
    index.records = records
    return where, covered


_FIELDS = 7  # the body array's length


# -- engine-level tables (schedules, debounce, hand-overs applied): after the instances
# {"schedules": {name: [workflow, cron, input, catch_up, after_ms]},
#  "debounces": [[workflow, debounce key, n, input, due_ms, ts_ms], ...],
#  "handovers": {hand-over file name: instance id}} (a snapshot without it is invalid)


def _engine_tables(index: Index) -> dict[str, Any]:
    return {
        "schedules": {name: tuple(e) for name, e in index.schedules.items()},
        "debounces": [(*key, *e) for key, e in index.debounces.items()],
        "handovers": dict(index.handovers),
    }


def _load_engine_tables(index: Index, tables: Any) -> None:
    """Fill the schedules and debounce tables, every field checked."""
    if type(tables) is not dict or set(tables) != {"schedules", "debounces", "handovers"}:
        raise SnapshotInvalid("malformed engine-level tables")
    schedules, debounces = tables["schedules"], tables["debounces"]
    handovers = tables["handovers"]
    if type(schedules) is not dict or type(debounces) is not tuple or (
        type(handovers) is not dict
        or not all(type(k) is str and type(v) is str for k, v in handovers.items())
    ):
        raise SnapshotInvalid("malformed engine-level tables")
    index.handovers = dict(handovers)
    for name, e in schedules.items():
        if not (type(name) is str and type(e) is tuple and len(e) == 5 and type(e[0]) is str
                and type(e[1]) is str and type(e[2]) is bytes and type(e[3]) is bool
                and type(e[4]) is int):
            raise SnapshotInvalid(f"schedule {name!r} is malformed")
        index.schedules[name] = ScheduleEntry(*e)
    for d in debounces:
        if not (type(d) is tuple and len(d) == 6 and type(d[0]) is str and type(d[1]) is str
                and type(d[2]) is int and type(d[3]) is bytes and type(d[4]) in TIME
                and type(d[5]) is int):
            raise SnapshotInvalid(f"debounce entry {d!r:.80} is malformed")
        index.debounces[d[0], d[1]] = DebounceEntry(*d[2:])


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
    # ``data`` is now the resumed segment's first ``offset`` bytes: the scan
    # goes on from them rather than read them again.
    return Resume(len(seen) - 1, offset, next_seq, records, restored[:-1], data)


def load(storage: Storage, index: Index) -> Resume | None:
    """Fill ``index`` from a valid snapshot and return where to resume, or None.

    The covered segments are read and crc-checked on a second thread while
    this one decodes the instances: reads and zlib's crc32 let go of the
    GIL, so on two cores the check costs the start almost nothing.
    """
    if SNAPSHOT_NAME not in storage.list():
        return None
    checked: list[Resume | BaseException] = []
    threads: list[threading.Thread] = []

    def check(position: Position, segments: list[Covered]) -> None:
        try:
            checked.append(resume_point(storage, position, segments))
        except BaseException as exc:  # raised on the loading thread, below
            checked.append(exc)

    def start_check(position: Position, segments: list[Covered]) -> None:
        thread = threading.Thread(target=check, args=(position, segments), daemon=True)
        thread.start()
        threads.append(thread)

    try:
        try:
            decode_into(index, storage.read(SNAPSHOT_NAME), start_check)
        finally:
            for thread in threads:
                thread.join()
        outcome = checked[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    except (SnapshotInvalid, OSError, ValueError, TypeError, KeyError, IndexError):
        index.instances = {}
        index.records = 0
        index.schedules = {}
        index.debounces = {}
        index.handovers = {}
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
