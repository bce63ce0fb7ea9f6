"""Read-only access to a journal, for operators and tools.

Theory of operation. ``read_journal(path)`` walks the journal's segments in
order with the same checks and the same torn-tail policy as start-up (it
is start-up's walk, ``_storage/segments.iter_scan``), and yields each
record as a ``RecordView``. It takes no lock and opens every
file read-only, so it works while an engine holds the journal and never
blocks or changes it. What it shows is a snapshot: records appended after a
segment was read are not seen.

A reader and a live writer can meet at the end of the last segment, where a
write may be in progress; that looks exactly like a torn tail (an incomplete
final frame), so it is reported the same way: iteration stops, and the
reader's ``torn`` attribute says where and how much was left out. Damage
anywhere else raises ``JournalCorrupt`` (file, byte offset) after every
record before it has been yielded.

A compacted journal starts with a compacted segment (``cmp-<k>.mlog``): the
history of segments up to ``k`` rewritten as the records that rebuild its
state, each with sequence number 0. The reader yields those first, then the
plain segments after ``k``; leftovers a compaction has not deleted yet are
skipped (``skipped``). ``JournalReader.instances()`` replays the journal
through the engine's own index and returns each instance's status.
``JournalReader.replay()`` does what the engine's start does: it loads the
index snapshot (``index.snap``) when the engine would trust it and reads
only the records after it (else every record), and returns a ``Replay``:
the index, asked per instance (statuses, steps, and stored values, a large
one read back at its record's location rather than by a pass).

``follow_journal(path)`` keeps reading: it yields the records there are,
then each new one as a writer appends it, across segment roll-over and
compaction. It holds each segment open while it reads it (a segment that
compaction deletes stays readable through the open file) and decodes only
complete frames, so it never shows a partial or a repeated record. Both
read every segment with the same segment reader
(``_storage/segment_reader.py``), so they apply the same rules; the
follower (``_storage/follower.py``) only adds what following needs.

User values (inputs, step results, signal payloads, workflow results) are
stored as opaque blobs; ``decode_value`` turns one into a JSON-ready value
for display, without running any code and without constructing objects.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import msgpack

from ._core import records as r
from ._core.errors import EngineError, JournalCorrupt, UnknownInstance
from ._core.format import (
    LOCK_NAME,
    TEMP_SUFFIX,
    compacted_name,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
)
from ._core.index import STEP_DONE_AT as _DONE_AT
from ._core.index import (
    Index,
    InstanceEntry,
    child_id,
    entry_kind,
    entry_loc,
    loc_inner,
    unpack_loc,
)
from ._core.index import unpack_steps as _unpack_steps
from ._core.lifecycle import COMPLETED as _COMPLETED
from ._core.lifecycle import STATE_NAMES
from ._core.records import RecordView, view
from ._storage.files import FileStorage, Storage
from ._storage.follower import DEFAULT_INTERVAL as DEFAULT_INTERVAL
from ._storage.follower import FollowGap as FollowGap
from ._storage.follower import JournalFollower as JournalFollower
from ._storage.segments import Resume, ScanResult, iter_scan, read_record_at

if TYPE_CHECKING:  # the listing's modules load when a listing is asked for
    from datetime import datetime

    from ._core.status import InstanceStatus, StepStatus

__all__ = [
    "FollowGap",
    "JournalFollower",
    "JournalReader",
    "NotAJournal",
    "Replay",
    "RecordView",
    "TornTail",
    "decode_value",
    "follow_journal",
    "read_journal",
]

VALUE_TAG_MSGPACK: Final = 0x00
"""A value blob's first byte for a plain msgpack body (docs/format.md, "Values")."""
VALUE_TAG_ZSTD: Final = 0x01
"""A value blob's first byte for a zstd-compressed msgpack body."""
DEFAULT_MAX_DECODED: Final = 64 * 1024 * 1024
"""``decode_value``'s cap on a decompressed value, in bytes: a display helper
must not be made to allocate gigabytes by a small, highly compressible blob."""


class NotAJournal(EngineError):
    """The path is missing, or is not a journal directory.

    ``path`` is the path given; ``reason`` says what was found instead.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"{path}: not a memable_log journal ({reason}); give the journal "
            "directory (the path passed to Engine.builder().open())"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TornTail:
    """Bytes at the end of the last segment that do not form a complete record.

    They are the remains of a write that was never acknowledged (a crash),
    or a write still in progress if an engine holds the journal. The next
    engine to open the journal cuts them off; readers just leave them out.

    ``file`` is the segment's path, ``segment`` its number, ``offset`` the
    byte offset where the incomplete data starts and ``size`` its length.
    """

    file: str
    segment: int
    offset: int
    size: int


class JournalReader(Iterator[RecordView]):
    """An iterator over a journal's records, in sequence order.

    Returned by ``read_journal``. Each item is a ``RecordView`` carrying the
    segment number and the byte offset of the record's frame. Records of a
    compacted segment come first, with seq 0 (their history was rewritten),
    then the plain segments' records in sequence order. Iteration stops
    quietly at a torn tail (see ``torn``) and raises ``JournalCorrupt`` (or
    its subclass ``JournalFormatError`` for a segment written by a newer
    format version) for damage elsewhere, after yielding every record
    before it.

    Once iteration has finished, ``done`` is true and ``torn``, ``next_seq``,
    ``segments``, ``files``, ``skipped``, ``records`` and ``compacted``
    describe the whole journal. ``instances()`` reads the journal through
    the engine's index instead of yielding records.

    ``read_journal(path)`` makes one for a directory; ``JournalReader(storage)``
    reads any storage, such as the in-memory one tests use.
    """

    def __init__(self, storage: Storage, *, snapshot: bool = True) -> None:
        self._storage = storage
        self._snapshot = snapshot
        self._resumed = False
        self._result = ScanResult()
        self._records = iter_scan(storage, self._result)
        self._done = False
        self._failed = False
        self._started = False
        self._compacted = 0
        self._count = 0
        self._created: set[str] = set()  # instances seen created so far

    def __iter__(self) -> JournalReader:
        return self

    def __next__(self) -> RecordView:
        rec, loc = self._next_raw()
        segment, offset = unpack_loc(loc)
        return view(rec, segment, offset)

    def _next_raw(self) -> tuple[list[Any], int]:
        self._started = True
        if self._failed:
            raise StopIteration
        try:
            rec, loc = next(self._records)
        except StopIteration:
            # After an error the generator is closed and just stops: that
            # is not the end of the journal.
            self._done = not self._failed
            raise
        except BaseException:
            self._failed = True
            raise
        self._count += 1
        if rec[r.SEQ] == 0:
            self._compacted += 1
        # The writer refuses a record for an instance never created (its
        # index cannot apply it): so does the reader.
        if rec[r.TYPE] == r.CREATED or rec[r.TYPE] == r.CHILD_CREATED:
            self._created.add(rec[r.INSTANCE])
        elif rec[r.INSTANCE] not in self._created and rec[r.TYPE] not in r.ENGINE_LEVEL:
            raise self._corrupt(loc, f"record for unknown instance {rec[r.INSTANCE]!r}")
        return rec, loc

    def _corrupt(self, loc: int, reason: str) -> JournalCorrupt:
        """The error for the record at ``loc``; iteration ends with it."""
        self._failed = True
        segment, offset = unpack_loc(loc)
        name = compacted_name(segment)
        if not loc_inner(loc) and name not in self._storage.list():
            name = segment_name(segment)
        return JournalCorrupt(f"{self._storage.location}/{name}", offset, reason)

    def instances(
        self,
        state: str | None = None,
        *,
        workflow: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[InstanceStatus]:
        """Replay the journal into the engine's index; return its instances.

        Each record goes through the same ``apply`` the engine uses at
        start-up, so the result is what ``engine.instances()`` would say
        for this journal, in order of creation, with the same filters
        (see ``Engine.instances``). Call it on a fresh reader, instead of
        iterating; afterwards ``done``, ``torn`` and the other attributes
        describe the journal as usual.

        Raises ``JournalCorrupt`` where iterating would, and for a record the
        index cannot apply (one for an instance that was never created);
        ``RuntimeError`` if iteration has already begun; ValueError and
        TypeError for a bad filter, before anything is read.
        """
        from ._core.listing import select

        select({}, state, workflow=workflow, prefix=prefix, since=since, until=until,
               limit=limit, newest_first=newest_first)  # bad filters fail before the read
        return self._replay(snapshot=False).instances(
            state, workflow=workflow, prefix=prefix, since=since, until=until, limit=limit,
            newest_first=newest_first)

    def steps(self, instance_id: str) -> list[StepStatus]:
        """Replay the journal as ``instances`` does; the steps of one instance.

        What ``engine.steps(instance_id)`` would say for this journal.
        Raises ``UnknownInstance`` if the journal has no such instance, and
        what ``instances`` raises.
        """
        return self._replay(snapshot=False).steps(instance_id)

    def replay(self) -> Replay:
        """Replay the journal into the engine's index, as the engine's start does.

        Starts from the index snapshot (``index.snap``) when the engine
        would trust it (its checksum, every segment it covers unchanged,
        the same format version and inline limit) and reads only the
        records after it; otherwise, or if those records turn out damaged,
        reads the whole journal (``resumed`` says which). Call it on a fresh
        reader, instead of iterating; afterwards ``done``, ``torn`` and the
        other attributes describe the journal (``records`` counts the
        records the snapshot covered too; ``compacted`` only those read).

        ``instances()`` and ``steps()`` read every record instead (so that
        the counters describe every record of the journal).

        Raises what ``instances`` raises.
        """
        return self._replay(snapshot=self._snapshot)

    def _replay(self, *, snapshot: bool) -> Replay:
        if self._started:
            raise RuntimeError("replay() reads the journal from the start: use a fresh reader")
        from ._storage.snapshot import load as load_snapshot

        index = Index()
        resume = load_snapshot(self._storage, index) if snapshot else None
        if resume is not None:
            self._restart(resume, index)
            try:
                return self._apply_all(index)
            except JournalCorrupt:  # as the engine's start: the full scan decides
                index = Index()
            self._restart(None, index)
        return self._apply_all(index)

    def _restart(self, resume: Resume | None, index: Index) -> None:
        """Read from ``resume`` (None: the start) into ``index``."""
        self._result = ScanResult()
        self._records = iter_scan(self._storage, self._result, resume=resume)
        self._failed = self._done = False
        self._resumed = resume is not None
        self._count = index.records
        self._compacted = 0
        self._created = set(index.instances)

    def _apply_all(self, index: Index) -> Replay:
        while True:
            try:
                rec, loc = self._next_raw()
            except StopIteration:
                break
            try:
                index.apply(rec, loc)
            except r.RecordError as exc:
                raise self._corrupt(loc, str(exc)) from None
        return Replay(self._storage, index, self._result, resumed=self._resumed)

    @property
    def location(self) -> str:
        """The journal directory being read (for messages)."""
        return self._storage.location

    @property
    def done(self) -> bool:
        """True once every record has been yielded (no damage stopped it)."""
        return self._done

    @property
    def torn(self) -> TornTail | None:
        """The torn tail that ended iteration, or None if there was none.

        Only meaningful once ``done`` is true.
        """
        result = self._result
        last = result.last
        if result.torn_at is None or last is None:
            return None
        return TornTail(
            file=f"{self._storage.location}/{last.name or segment_name(last.number)}",
            segment=last.number,
            offset=result.torn_at,
            size=result.torn_bytes,
        )

    @property
    def zero_tail(self) -> tuple[str, int, int] | None:
        """(file, offset, size) of the zeros after the last segment's frames, if any.

        Space a writer preallocated and has not written yet: not damage,
        not a torn tail. Only meaningful once ``done`` is true.
        """
        last = self._result.last
        if self._result.torn_at is not None or last is None:
            return None
        name = last.name or segment_name(last.number)
        size = self._storage.size(name) - last.end
        return (f"{self._storage.location}/{name}", last.end, size) if size > 0 else None

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended record will take.

        Only meaningful once ``done`` is true.
        """
        return self._result.next_seq

    @property
    def segments(self) -> list[int]:
        """The numbers of the segments read so far, in order."""
        return [seg.number for seg in self._result.segments]

    @property
    def files(self) -> list[str]:
        """The file names of the segments read so far, in order.

        A compacted journal's first one is its compacted segment,
        ``cmp-<k>.mlog``; the others are plain ``seg-<n>.mlog`` segments.
        """
        return [seg.name or segment_name(seg.number) for seg in self._result.segments]

    @property
    def skipped(self) -> list[str]:
        """Files in the directory that are not part of the journal's walk.

        Segments (and older compacted segments) that the newest compacted
        segment replaced but that are not deleted yet, and temporary files
        of a roll-over or a compaction in progress. The next engine to
        open the journal deletes them. Known once iteration has begun.
        """
        return self._result.superseded + self._result.temp_files

    @property
    def records(self) -> int:
        """How many records have been read so far."""
        return self._count

    @property
    def compacted(self) -> int:
        """How many of the records read so far came from a compacted segment."""
        return self._compacted


class Replay:
    """The journal as the engine's index holds it: ``JournalReader.replay()``.

    What ``engine.status``, ``engine.instances`` and ``engine.steps`` would
    say for the journal as it was read, and each instance's stored values
    (inputs, results, step values, events) as blobs for ``decode_value``.
    Small values are kept in the index; a large one is read back from its
    record's location in the journal (one read, not a pass over the
    journal), so a value read after a compaction deleted its file raises
    ``OSError`` or ``JournalCorrupt``: replay again then. Every method
    raises ``UnknownInstance`` for an id the journal does not hold.

    ``next_seq`` is the sequence number of the next record (follow from
    there); ``resumed`` says whether the read started from the index
    snapshot.
    """

    def __init__(self, storage: Storage, index: Index, result: ScanResult, *,
                 resumed: bool) -> None:
        self._storage = storage
        self._index = index
        self.next_seq: int = result.next_seq
        self.resumed: bool = resumed
        self._salts = {seg.name or segment_name(seg.number): seg.header.salt
                       for seg in result.segments}

    def __len__(self) -> int:
        return len(self._index.instances)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._index.instances

    def instances(
        self,
        state: str | None = None,
        *,
        workflow: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[InstanceStatus]:
        """As ``JournalReader.instances`` (the same filters), without reading again."""
        from ._core.listing import select

        return select(self._index.instances, state, workflow=workflow, prefix=prefix,
                      since=since, until=until, limit=limit, newest_first=newest_first)

    def ids(self) -> list[str]:
        """Every instance's id, in order of creation (the order of ``instances()``)."""
        return list(self._index.instances)

    def children(self, instance_id: str) -> list[str]:
        """The ids of the children the instance started (``ctx.child``), in order."""
        return [child_id(instance_id, key) for key in self._entry(instance_id).child_keys()]

    def status(self, instance_id: str) -> InstanceStatus:
        """What ``engine.status(instance_id)`` would say."""
        from ._core.status import status_of

        return status_of(instance_id, self._entry(instance_id))

    def steps(self, instance_id: str) -> list[StepStatus]:
        """What ``engine.steps(instance_id)`` would say."""
        from ._core.status import steps_of

        return steps_of(self._entry(instance_id))

    def step_value(self, instance_id: str, key: str) -> bytes | None:
        """The stored value of a done step (a blob); None if ``key`` is not a done step."""
        return self.step_values(instance_id, [key]).get(key)

    def step_values(self, instance_id: str, keys: Iterable[str]) -> dict[str, bytes]:
        """The stored values (blobs) of those of ``keys`` that are done steps."""
        table = self._entry(instance_id).table
        steps = table if isinstance(table, dict) else _unpack_steps(table, intern=False)
        found = {}
        for key in keys:
            entry = steps.get(key)
            if isinstance(entry, bytes):
                found[key] = entry
            elif entry is not None and entry_kind(entry) == _DONE_AT:
                found[key] = self._blob(entry_loc(entry), r.STEP_DONE_VALUE)
        return found

    def input(self, instance_id: str) -> bytes:
        """The instance's input (a blob)."""
        entry = self._entry(instance_id)
        return self._blob(entry.input, r.CREATED_INPUT)

    def result(self, instance_id: str) -> bytes | None:
        """The result of a completed instance (a blob); None for any other state."""
        entry = self._entry(instance_id)
        if entry.state != _COMPLETED or entry.outcome is None:
            return None
        return self._blob(entry.outcome, r.COMPLETED_RESULT)

    def events(self, instance_id: str) -> list[tuple[str, int, bytes]]:
        """Its event stream (``ctx.publish``): (key, ts_ms, value blob), in order."""
        return [(key, ts, self._blob(value, r.PUBLISHED_VALUE))
                for key, ts, value in self._entry(instance_id).events or ()]

    def _entry(self, instance_id: str) -> InstanceEntry:
        entry = self._index.instances.get(instance_id)
        if entry is None:
            raise UnknownInstance(instance_id)
        return entry

    def _blob(self, where: bytes | int, field: int) -> bytes:
        """An inline blob, or the value in field ``field`` of the record at ``where``."""
        if isinstance(where, bytes):
            return where
        loc = where
        value = read_record_at(self._storage, self._salts, loc)[field]
        if type(value) is not bytes:
            segment, offset = unpack_loc(loc)
            raise JournalCorrupt(f"{self._storage.location}/{segment_name(segment)}", offset,
                                 "the record there holds no value")
        return value


def read_journal(path: str | os.PathLike[str]) -> JournalReader:
    """Open the journal directory at ``path`` for reading, without a lock.

    Returns a ``JournalReader``: iterate it for the records (``RecordView``
    objects, in sequence order), then look at its ``torn`` attribute for a
    torn tail that was left out. Nothing is ever written, created or locked.

    Raises ``NotAJournal`` at once if ``path`` is missing, is not a
    directory, or holds neither a segment nor a lock file. Iterating raises
    ``JournalCorrupt`` for damage outside the torn tail,
    ``JournalFormatError`` for a segment from a newer format version, and
    ``OSError`` if a file cannot be read.
    """
    text = os.fspath(path)
    _check_journal_dir(text)
    return JournalReader(FileStorage(text, create=False))


def _journal_file(name: str) -> bool:
    # A journal whose first segment was never created holds just a LOCK (or a
    # temporary segment): an empty journal, not a stranger's directory.
    if name == LOCK_NAME or _segment_file(name):
        return True
    return name.endswith(TEMP_SUFFIX) and _segment_file(name[: -len(TEMP_SUFFIX)])


def _segment_file(name: str) -> bool:
    return parse_segment_name(name) is not None or parse_compacted_name(name) is not None


def _check_journal_dir(text: str) -> None:
    if not os.path.exists(text):
        raise NotAJournal(text, "no such file or directory")
    if not os.path.isdir(text):
        raise NotAJournal(text, "not a directory")
    if not any(_journal_file(name) for name in os.listdir(text)):
        raise NotAJournal(text, "the directory holds no segment files")


def follow_journal(
    path: str | os.PathLike[str],
    *,
    interval: float = DEFAULT_INTERVAL,
    sleep: Callable[[float], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    on_gap: Callable[[FollowGap], None] | None = None,
    wait_for_journal: bool = False,
) -> JournalFollower:
    """Follow the journal directory at ``path``: its records, then new ones as they come.

    Returns a ``JournalFollower``, an iterator that ends only when closed:
    when it has yielded every complete record it calls ``on_wait`` (a
    chance to flush output), then waits ``interval`` seconds (or calls
    ``sleep(interval)`` if given), and looks again. Like ``read_journal``
    it takes no lock and writes nothing, so it runs beside an engine
    without slowing it. ``on_gap`` is called with a ``FollowGap`` if
    compaction deleted records before they could be read. ``close()`` may
    be called from any thread, even while it waits in another.

    Raises ``NotAJournal`` at once as ``read_journal`` does (a directory
    with only a lock file is an empty journal: it waits for the first
    segment). With ``wait_for_journal=True``, a path that does not exist
    yet, or a directory that holds no journal file yet, is waited for in
    the same way (``waiting_for_journal`` is true meanwhile): start the
    follower before the program that creates the journal. A path that is
    not a directory still raises ``NotAJournal``. Iterating raises
    ``JournalCorrupt`` for damage and ``OSError`` if the directory or a
    file cannot be read.
    """
    text = os.fspath(path)
    ready: Callable[[], bool] | None = None
    if wait_for_journal:
        _journal_ready(text)  # a path that is not a directory fails now
        ready = functools.partial(_journal_ready, text)
    else:
        _check_journal_dir(text)
    return JournalFollower(
        text, interval=interval, sleep=sleep, on_wait=on_wait, on_gap=on_gap, ready=ready
    )


def _journal_ready(text: str) -> bool:
    """Whether a journal is at ``text`` now; False if nothing is there yet.

    Raises NotAJournal if something other than a directory is there.
    """
    try:
        names = os.listdir(text)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise NotAJournal(text, "not a directory") from None
    return any(_journal_file(name) for name in names)


# -- values -----------------------------------------------------------------


class _Ext:
    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data


class _Pairs(list[tuple[Any, Any]]):
    """A msgpack map as its pairs: keys may be unhashable, or repeat."""


def decode_value(blob: bytes, *, max_size: int = DEFAULT_MAX_DECODED) -> Any:
    """Decode a user value blob into a JSON-ready value, for display only.

    A blob is a tag byte then a body: ``0x00`` plain msgpack, ``0x01``
    zstd-compressed msgpack. The result is built from None, bool, int, float,
    str, list and dict (with str keys) only, so ``json.dumps`` accepts it.
    msgpack values that JSON cannot hold become one-key markers:

    * bytes: ``{"$bytes": "<hex>"}``;
    * an ext type: ``{"$ext": code, "hex": "<hex of its data>"}``, never
      turned into an object (for the timestamp ext, code -1, the canonical
      encoding of the timestamp);
    * a map with a key that is not a str, a repeated key, or a key starting
      with ``$``: ``{"$map": [[key, value], ...]}``;
    * NaN and infinities: ``{"$float": "nan" | "inf" | "-inf"}``.

    A blob that cannot be decoded (unknown tag, bad msgpack, trailing bytes,
    a decompressed size above ``max_size``) is never an error here: it
    becomes ``{"$raw": "<hex of the whole blob>", "$error": "<why>"}``.
    """
    if not blob:
        return _raw(blob, "empty value blob")
    tag = blob[0]
    body = bytes(blob[1:])
    try:
        if tag == VALUE_TAG_ZSTD:
            body = _decompress(body, max_size)
        elif tag != VALUE_TAG_MSGPACK:
            return _raw(blob, f"unknown value tag {tag:#04x}")
        value = msgpack.unpackb(
            body, raw=False, strict_map_key=False, use_list=True,
            object_pairs_hook=_Pairs, ext_hook=_Ext,
        )
        return _to_json(value)
    except RecursionError:
        return _raw(blob, "value nested too deeply to show")
    except Exception as exc:  # msgpack and zstd raise many types; all mean "bad blob"
        return _raw(blob, f"undecodable value: {type(exc).__name__}: {exc}")


def _raw(blob: bytes, reason: str) -> dict[str, str]:
    return {"$raw": bytes(blob).hex(), "$error": reason}


def _decompress(body: bytes, max_size: int) -> bytes:
    import zstandard  # loaded when first needed: see _core.codec.Codec

    declared = zstandard.frame_content_size(body)
    if declared > max_size:
        raise ValueError(f"decompresses to {declared} bytes, above the {max_size}-byte cap")
    out = bytearray()
    # Stream with a cap: the declared size may be absent or a lie.
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
        while chunk := reader.read(min(1 << 20, max_size + 1 - len(out))):
            out += chunk
            if len(out) > max_size:
                raise ValueError(f"decompresses to more than the {max_size}-byte cap")
    return bytes(out)


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, _Pairs):
        keys = [k for k, _ in value]
        plain = all(type(k) is str and not k.startswith("$") for k in keys)
        if plain and len(set(keys)) == len(keys):
            return {k: _to_json(v) for k, v in value}
        return {"$map": [[_to_json(k), _to_json(v)] for k, v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, _Ext):
        return {"$ext": value.code, "hex": value.data.hex()}
    if isinstance(value, msgpack.Timestamp):
        return {"$ext": -1, "hex": value.to_bytes().hex()}
    raise TypeError(f"unexpected decoded type {type(value).__name__}")  # pragma: no cover


# -- names for programs that read journals ------------------------------------
# What memable-dump (or any program) needs to name what it reads, without
# reaching into the private modules that define them.

RECORD_TYPES: Final[Mapping[int, str]] = MappingProxyType(dict(r.TYPE_NAMES))
"""Record type codes and their names, as ``RecordView.type`` shows them.

A ``state_image`` record's ``done_waits`` field maps keys to such codes.
"""

INSTANCE_STATES: Final[tuple[str, ...]] = tuple(STATE_NAMES)
"""Instance state names, as ``InstanceStatus.state`` shows them.

A ``state_image`` record's ``state`` field is an index into this tuple.
"""


def is_segment_file(name: str) -> bool:
    """Whether ``name`` is the file name of a segment of a journal.

    Args:
        name: a file name (no directory), such as ``seg-0000000042.mlog`` or
            ``cmp-0000000041.mlog``.

    Returns:
        True for a plain or a compacted segment's name; False for anything
        else (the lock file, temporary files, the index snapshot, the inbox).
    """
    return _segment_file(name)


__all__ += ["DEFAULT_INTERVAL", "DEFAULT_MAX_DECODED", "INSTANCE_STATES", "RECORD_TYPES",
            "VALUE_TAG_MSGPACK", "VALUE_TAG_ZSTD", "is_segment_file"]
