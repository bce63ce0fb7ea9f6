"""Read-only access to a journal, for operators and tools.

Theory of operation. ``read_journal(path)`` walks the journal's segments in
order with the same checks and the same torn-tail policy as start-up
(``_reader.iter_scan``: there is one implementation of that policy), and
yields each record as a ``RecordView``. It takes no lock and opens every
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

``follow_journal(path)`` keeps reading: it yields the records there are,
then each new one as a writer appends it, across segment roll-over and
compaction. It holds each segment open while it reads it (a segment that
compaction deletes stays readable through the open file) and decodes only
complete frames, so it never shows a partial or a repeated record.

User values (inputs, step results, signal payloads, workflow results) are
stored as opaque blobs; ``decode_value`` turns one into a JSON-ready value
for display, without running any code and without constructing objects.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import msgpack
import zstandard

from ._core import records as r
from ._core.errors import EngineError, JournalCorrupt, JournalFormatError
from ._core.format import (
    HEADER_SIZE,
    LOCK_NAME,
    SEG_COMPACTED,
    TEMP_SUFFIX,
    HeaderError,
    SegmentHeader,
    compacted_name,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
    unpack_header,
)
from ._core.framing import FrameDecoder, FrameError, decode_block
from ._core.index import Index, loc_inner, unpack_loc
from ._core.lifecycle import STATE_NAMES
from ._core.records import RecordView, view
from ._core.status import InstanceStatus, status_of
from ._storage.files import FileStorage, Storage
from ._storage.segments import ScanResult, _damage, iter_scan, unpack_record

__all__ = [
    "FollowGap",
    "JournalFollower",
    "JournalReader",
    "NotAJournal",
    "RecordView",
    "TornTail",
    "decode_value",
    "follow_journal",
    "read_journal",
]

# Value blob tags, as written by the codec (see docs/format.md).
VALUE_TAG_MSGPACK: Final = 0x00
VALUE_TAG_ZSTD: Final = 0x01
# Cap on a decompressed value shown by decode_value: a display helper must not
# be made to allocate gigabytes by a small, highly compressible blob.
DEFAULT_MAX_DECODED: Final = 64 * 1024 * 1024


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

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._result = ScanResult()
        self._records = iter_scan(storage, self._result)
        self._done = False
        self._failed = False
        self._started = False
        self._compacted = 0

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
        if rec[1] == 0:
            self._compacted += 1
        return rec, loc

    def instances(self) -> list[InstanceStatus]:
        """Replay the journal into the engine's index; return every instance.

        Each record goes through the same ``apply`` the engine uses at
        start-up, so the result is what ``engine.instances()`` would say
        for this journal, in order of creation. Call it on a fresh reader,
        instead of iterating; afterwards ``done``, ``torn`` and the other
        attributes describe the journal as usual.

        Raises ``JournalCorrupt`` where iterating would, and for a record the
        index cannot apply (one for an instance that was never created);
        ``RuntimeError`` if iteration has already begun.
        """
        if self._started:
            raise RuntimeError("instances() reads the journal from the start: use a fresh reader")
        index = Index()
        while True:
            try:
                rec, loc = self._next_raw()
            except StopIteration:
                break
            try:
                index.apply(rec, loc)
            except r.RecordError as exc:
                self._failed = True
                segment, offset = unpack_loc(loc)
                name = compacted_name(segment) if loc_inner(loc) else segment_name(segment)
                raise JournalCorrupt(
                    f"{self._storage.location}/{name}", offset, str(exc)
                ) from None
        return [status_of(iid, entry) for iid, entry in index.instances.items()]

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
        return self._result.records

    @property
    def compacted(self) -> int:
        """How many of the records read so far came from a compacted segment."""
        return self._compacted


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


# -- following ----------------------------------------------------------------

DEFAULT_INTERVAL: Final = 0.1  # seconds between looks for new records
_READ_CHUNK = 1 << 20  # bytes read at a time
_AHEAD = 32  # most segments held open ahead of the one being read
_LISTING_RETRIES = 3  # a directory listing can miss a file renamed during it


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowGap:
    """Records a follower could not show: compacted before it could read them.

    The records numbered ``first_seq`` up to ``next_seq - 1`` were in
    segments that a compaction rewrote and deleted before the follower
    opened them (it fell behind by more than a compaction cycle). Their
    effect lives on in the compacted segment; the records themselves are
    gone. ``next_seq`` is the number of the next record the follower shows.
    """

    first_seq: int
    next_seq: int


class _Open:
    """A segment file the follower holds open, and how far it has read it."""

    __slots__ = ("bad", "compacted", "fd", "header", "judged", "name", "number", "path", "pos",
                 "rechecked", "sealed", "seen")

    def __init__(self, fd: int, path: str, name: str, number: int, header: SegmentHeader) -> None:
        self.fd = fd
        self.path = path
        self.name = name
        self.number = number
        self.header = header
        self.compacted = bool(header.flags & SEG_COMPACTED)
        self.pos = HEADER_SIZE  # end of the last complete frame read
        self.sealed = False
        self.seen: tuple[int, int] | None = None  # (size, mtime) when last read
        self.bad: tuple[int, str] | None = None  # (offset, reason) of a bad frame
        self.judged: tuple[int, int] | None = None  # ``seen`` when ``bad`` was judged
        self.rechecked: int | None = None  # bad offset read again after the next segment came


class JournalFollower(Iterator[RecordView]):
    """An endless iterator over a journal's records: those there are, then new ones.

    Returned by ``follow_journal``. It yields what ``read_journal`` would,
    then waits at the end of the last segment and yields each record as a
    writer appends it, moving to the next segment when the current one is
    sealed. Only complete frames with a valid checksum are decoded, so a
    write in progress or a torn tail is never shown; a torn tail that the
    next writer cuts off is simply read again from the cut.

    Every record yielded after the compacted ones (seq 0, only at the
    start) has a sequence number one above the previous one's, unless a
    gap is reported: history that a compaction rewrites while it follows
    is never shown again. A segment is read through a file it holds open, so a
    compaction deleting it changes nothing; segments after it are opened
    as soon as they appear. Only if it falls behind by more than a whole
    compaction cycle are records lost to it: it calls ``on_gap`` with a
    ``FollowGap`` and goes on with the segments that are left.

    ``next_seq`` is the sequence number of the next plain record it
    expects. Damage raises ``JournalCorrupt``, as when reading: in the
    segment being written, only once a later commit (or the next segment)
    proves the bytes were complete. ``close()`` releases the open files.
    """

    def __init__(
        self,
        path: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[], None] | None = None,
        on_gap: Callable[[FollowGap], None] | None = None,
    ) -> None:
        self._dir = path
        self._interval = interval
        self._sleep = sleep
        self._on_wait = on_wait
        self._on_gap = on_gap
        self._ahead: dict[int, int] = {}  # segment number -> open fd
        self._current: _Open | None = None
        self.next_seq = 1
        self._records = self._follow()

    def __iter__(self) -> JournalFollower:
        return self

    def __next__(self) -> RecordView:
        return next(self._records)

    def close(self) -> None:
        """Stop following and close every file held open."""
        self._records.close()

    @property
    def location(self) -> str:
        """The journal directory being followed (for messages)."""
        return self._dir

    # The walk ----------------------------------------------------------------

    def _follow(self) -> Generator[RecordView, None, None]:
        try:
            seg = self._current = self._first()
            while True:
                yield from self._read(seg)
                if seg.bad is not None:
                    if self._judge(seg):
                        continue
                elif seg.sealed:
                    following = self._next_segment(seg)
                    if following is not None:
                        os.close(seg.fd)
                        seg = self._current = following
                        continue
                elif seg.compacted:  # complete before it was renamed into place
                    raise JournalCorrupt(seg.path, seg.pos, "segment ends without a seal")
                elif os.fstat(seg.fd).st_nlink == 0:
                    raise JournalCorrupt(
                        seg.path, seg.pos, "the segment was deleted before it was sealed "
                        "(was the journal removed or replaced while being followed?)",
                    )
                self._wait()
        finally:
            if self._current is not None:
                os.close(self._current.fd)
                self._current = None
            for fd in self._ahead.values():
                os.close(fd)
            self._ahead.clear()

    def _wait(self) -> None:
        if self._on_wait is not None:
            self._on_wait()
        self._sleep(self._interval)
        self._open_ahead(os.listdir(self._dir))

    def _first(self) -> _Open:
        """The segment to start with: the compacted one if any, else the first."""
        misses = 0
        while True:
            names = os.listdir(self._dir)
            compacted = sorted(n for n in map(parse_compacted_name, names) if n is not None)
            plain = sorted(n for n in map(parse_segment_name, names) if n is not None)
            if compacted:
                name, number = compacted_name(compacted[-1]), compacted[-1]
            elif plain:
                name, number = segment_name(plain[0]), plain[0]
            else:
                self._wait()  # an empty journal: no segment yet
                continue
            seg = self._open(name, number)
            if seg is None:
                continue  # replaced by a newer compaction since the listing
            if not seg.compacted and seg.header.first_seq != 1:
                os.close(seg.fd)
                misses += 1
                if misses < _LISTING_RETRIES:
                    continue  # the listing may have missed a compacted segment
                raise JournalCorrupt(
                    seg.path, 0, f"the first segment starts at seq {seg.header.first_seq}: "
                    "earlier segments are missing",
                )
            self.next_seq = seg.header.first_seq
            self._open_ahead(names, after=number)
            return seg

    def _open(self, name: str, number: int, fd: int | None = None) -> _Open | None:
        """Open a segment and check its header; None if it no longer exists."""
        path = os.path.join(self._dir, name)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        try:
            header = unpack_header(os.pread(fd, HEADER_SIZE, 0))
            if header.segment != number:
                raise JournalCorrupt(path, 0, f"header says segment {header.segment}")
            if bool(header.flags & SEG_COMPACTED) != name.startswith("cmp-"):
                raise JournalCorrupt(
                    path, 0, "the segment's compacted flag does not match its name"
                )
        except HeaderError as exc:
            os.close(fd)
            cls = JournalFormatError if "version" in str(exc) else JournalCorrupt
            raise cls(path, 0, str(exc)) from None
        except BaseException:
            os.close(fd)
            raise
        return _Open(fd, path, name, number, header)

    def _open_ahead(self, names: list[str], after: int | None = None) -> None:
        """Hold later segments open, so a compaction cannot delete them unread."""
        if after is None:
            if self._current is None:
                return
            after = self._current.number
        for number in sorted(n for n in map(parse_segment_name, names) if n is not None):
            if len(self._ahead) >= _AHEAD:
                break
            if number > after and number not in self._ahead:
                try:
                    self._ahead[number] = os.open(
                        os.path.join(self._dir, segment_name(number)), os.O_RDONLY
                    )
                except FileNotFoundError:
                    continue

    def _next_segment(self, seg: _Open) -> _Open | None:
        """The segment after ``seg`` (sealed), or None if it is not there yet."""
        number = seg.number + 1
        fd = self._ahead.pop(number, None)
        following = self._open(segment_name(number), number, fd)
        skipped_to = None
        if following is None:
            names = os.listdir(self._dir)
            top = max((n for n in map(parse_compacted_name, names) if n is not None), default=0)
            if top < number:
                return None  # a roll-over in progress: the next segment comes
            # Compacted and deleted before we opened it: go on with the
            # lowest segment still held open or present after the compacted
            # one (a newer compaction may delete that too: try the next).
            plain = (n for n in map(parse_segment_name, names) if n is not None and n > top)
            for later in sorted({*self._ahead, *plain}):
                following = self._open(segment_name(later), later, self._ahead.pop(later, None))
                if following is not None:
                    skipped_to = later
                    break
            if following is None:
                return None
        first = following.header.first_seq
        if following.compacted or first < self.next_seq or (
            first > self.next_seq and skipped_to is None
        ):
            os.close(following.fd)
            raise JournalCorrupt(
                following.path, 0, f"segment starts at seq {first}, expected {self.next_seq}"
            )
        if first > self.next_seq and self._on_gap is not None:
            self._on_gap(FollowGap(first_seq=self.next_seq, next_seq=first))
        self.next_seq = first
        return following

    # One segment -------------------------------------------------------------

    def _read(self, seg: _Open) -> Iterator[RecordView]:
        """Yield the complete records written to ``seg`` since it was last read.

        Decoding starts afresh at the end of the last complete frame every
        time, so bytes of a torn tail seen before a writer cut them off are
        never mixed with what it wrote after the cut.
        """
        stat = os.fstat(seg.fd)
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == seg.seen:
            return
        seg.seen, seg.bad = stamp, None
        decoder = FrameDecoder(seg.header.salt, seg.pos, blocks=seg.compacted)
        offset = seg.pos
        while chunk := os.pread(seg.fd, _READ_CHUNK, offset):
            offset += len(chunk)
            decoder.feed(chunk)
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameError as exc:
                    seg.bad = (exc.offset, exc.reason)
                    return
                if frame is None:
                    break
                records = self._records_of(seg, frame.offset, frame.payload, frame.block)
                seg.pos = frame.end
                yield from records

    def _records_of(
        self, seg: _Open, offset: int, payload: bytes, block: bool
    ) -> list[RecordView]:
        """Check one frame's records (and advance ``next_seq``); the same rules as reading."""
        if seg.sealed:
            raise JournalCorrupt(seg.path, offset, "record after the segment's seal")
        try:
            payloads = decode_block(payload, seg.header.salt) if block else [payload]
        except FrameError as exc:
            raise JournalCorrupt(seg.path, offset, exc.reason) from None
        out = []
        for item in payloads:
            try:
                rec = unpack_record(item)
            except Exception as exc:  # msgpack raises several types; none is ours
                raise JournalCorrupt(seg.path, offset, f"undecodable record: {exc}") from None
            seal = r.check_seal(rec)
            expected = seg.header.first_seq if seg.compacted else self.next_seq
            if seal is not None:
                if seal != expected or block:
                    raise JournalCorrupt(seg.path, offset, "seal's sequence number is wrong")
                seg.sealed = True
                continue
            try:
                r.check(rec)
                if seg.compacted and rec[1] != 0:
                    raise r.RecordError("a compacted record with a sequence number")
                if not seg.compacted and rec[1] != expected:
                    raise r.RecordError(f"sequence number {rec[1]}, expected {expected}")
            except r.RecordError as exc:
                raise JournalCorrupt(seg.path, offset, str(exc)) from None
            if not seg.compacted:
                self.next_seq += 1
            out.append(view(rec, seg.number, offset))
        return out

    def _judge(self, seg: _Open) -> bool:
        """Bad bytes where the writer appends: a torn tail to wait out, or damage.

        The reader's rule decides (a later valid commit proves the bytes
        were once durable), and so does the next segment's existence: a
        segment is sealed, its torn tail cut, before the next one appears,
        so bad bytes that are still there when read again after that are
        damage. Returns True when the segment should be read again now.
        """
        assert seg.bad is not None
        offset, reason = seg.bad
        if seg.judged != seg.seen:
            seg.judged = seg.seen
            size = os.fstat(seg.fd).st_size
            _damage(seg.path, os.pread(seg.fd, size, 0), seg.header.salt, offset, reason, True,
                    ScanResult())
        if seg.compacted or os.path.exists(os.path.join(self._dir, segment_name(seg.number + 1))):
            if seg.rechecked == offset:
                raise JournalCorrupt(seg.path, offset, reason)
            seg.rechecked, seg.seen = offset, None  # the cut may have landed just now
            return True
        return False


def follow_journal(
    path: str | os.PathLike[str],
    *,
    interval: float = DEFAULT_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[], None] | None = None,
    on_gap: Callable[[FollowGap], None] | None = None,
) -> JournalFollower:
    """Follow the journal directory at ``path``: its records, then new ones as they come.

    Returns a ``JournalFollower``, an iterator that never ends by itself:
    when it has yielded every complete record it calls ``on_wait`` (a
    chance to flush output), then ``sleep(interval)``, and looks again. Like
    ``read_journal`` it takes no lock and writes nothing, so it runs beside
    an engine without slowing it. ``on_gap`` is called with a ``FollowGap``
    if compaction deleted records before they could be read.

    Raises ``NotAJournal`` at once as ``read_journal`` does (a directory
    with only a lock file is an empty journal: it waits for the first
    segment). Iterating raises ``JournalCorrupt`` for damage and
    ``OSError`` if the directory or a file cannot be read.
    """
    text = os.fspath(path)
    _check_journal_dir(text)
    return JournalFollower(text, interval=interval, sleep=sleep, on_wait=on_wait, on_gap=on_gap)


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


__all__ += ["INSTANCE_STATES", "RECORD_TYPES", "is_segment_file"]
