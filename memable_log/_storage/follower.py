"""Following a journal: its records, then each new one as a writer appends it.

Theory of operation. The follower walks the segments as the scan does and
reads each one with a ``SegmentReader`` (segment_reader.py), so every
per-segment rule is the scan's; what is its own is how it meets a journal
that changes under it:

* It reads a segment through a file it holds open, and holds later
  segments open as soon as they appear (up to _AHEAD of them): a
  compaction deleting a file changes nothing for a reader that holds it.
  A segment it never got to open may be compacted away; it then goes on
  with the next one there is and reports the records it lost (FollowGap).
* Each time the file has changed (size or mtime), it reads again from the
  end of the last complete frame: the bytes of a torn tail that a
  restarting writer cut off are never mixed with what it wrote after the
  cut. A segment with a zero tail (preallocated: a writer overwrites its
  zeros, so the size stays put and the mtime may not move between two
  commits) is read again whenever the bytes at that end are no longer
  zero; a read stops at the zeros rather than read the whole tail.
* Bad or incomplete bytes at the end of the segment a writer appends to
  may be a write in progress or a torn tail about to be cut: it waits,
  unless a later commit in the segment proves them durable (the scan's
  last-segment rule). Once the next segment exists, or for a compacted
  segment, the segment is complete (a writer seals a segment, its torn
  tail cut, before the next appears; a compacted one is whole before its
  rename): it reads it once more, in case a cut landed just then, and
  whatever is still wrong is corruption (the scan's rule for a segment
  that is not the last).
* Before the first segment it may have to wait for the journal itself
  (``ready``, given by the reader: the directory may not exist yet).

Closing. A follower usually runs in a thread of its own while another
(an event loop) decides when to stop, so ``close()`` may come from any
thread at any moment, even while the walk is blocked in its wait. It never
touches the walk while the walk runs: it sets ``_stop`` (which also ends
the default wait, an ``Event.wait``), and the thread running the walk
notices it at its next wait or record, leaves the walk and closes the files
itself. Only a walk that is not running is closed there and then. A lock
held around each step of the walk tells which case it is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Final

from .._core import records as r
from .._core.errors import JournalCorrupt
from .._core.format import (
    HEADER_SIZE,
    SegmentHeader,
    compacted_name,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
)
from .._core.index import unpack_loc
from .._core.records import RecordView, view
from .segment_reader import Damage, SegmentReader, read_header

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
    """A segment file the follower holds open, and its reader."""

    __slots__ = ("fd", "header", "judged", "name", "number", "path", "proven", "reader",
                 "rechecked", "seen", "zeros")

    def __init__(self, fd: int, path: str, name: str, number: int, header: SegmentHeader) -> None:
        self.fd = fd
        self.path = path
        self.name = name
        self.number = number
        self.header = header
        self.reader: SegmentReader | None = None  # once placed in the walk
        self.seen: tuple[int, int] | None = None  # (size, mtime) when last read
        self.judged: tuple[int, int] | None = None  # ``seen`` when bad bytes were last judged
        self.rechecked: int | None = None  # offset of what was wrong, read again once complete
        self.zeros = False  # the last read ended at a zero tail
        self.proven: int | None = None  # offset of damage a later commit proved, once

    def place(self, after: int | None) -> SegmentReader:
        """Check the header against the walk (see SegmentReader); closes the file if wrong."""
        try:
            self.reader = SegmentReader(self.path, self.number, self.header, after=after)
        except BaseException:
            os.close(self.fd)
            raise
        return self.reader


class _Stopped(Exception):
    """Raised inside the walk when ``close()`` was called: leave it."""


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
    proves the bytes were complete.

    ``close()`` ends the follow and releases the open files. It may be
    called from any thread at any time: while the iterator is blocked in
    its wait in another thread (the usual way to follow from trio code,
    ``trio.to_thread.run_sync(next, follower)``), the wait ends at once,
    iteration stops (``StopIteration``) and that thread closes the files
    as it returns. A ``sleep`` passed in cannot be interrupted: iteration
    stops as soon as it returns.
    """

    def __init__(
        self,
        path: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        sleep: Callable[[float], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        on_gap: Callable[[FollowGap], None] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._dir = path
        self._interval = interval
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._on_wait = on_wait
        self._on_gap = on_gap
        self._ready = ready  # whether the journal is there yet (None: it is)
        self._waiting_for_journal = ready is not None
        self._ahead: dict[int, int] = {}  # segment number -> open fd
        self._current: _Open | None = None
        self.next_seq = 1
        # Instances seen created: a record for another is damage, as for
        # the reader and the writer (None after a gap: their creation may
        # be in what was skipped).
        self._created: set[str] | None = set()
        self._records = self._follow()
        self._walking = threading.Lock()  # held while a thread runs the walk

    def __iter__(self) -> JournalFollower:
        return self

    def __next__(self) -> RecordView:
        with self._walking:
            if self._stop.is_set():
                self._records.close()
                raise StopIteration
            rec = next(self._records)
        if self._stop.is_set():
            self._close_idle()  # closed while we read: the files go now
        return rec

    def close(self) -> None:
        """Stop following and close every file held open; from any thread, at any time.

        If another thread is running the follower (blocked in its wait, or
        reading), it stops there: its wait ends at once, its ``next()``
        raises ``StopIteration`` and it closes the files as it returns.
        """
        self._stop.set()
        self._close_idle()

    def _close_idle(self) -> None:
        """Close the walk unless a thread is running it (that thread will)."""
        if self._walking.acquire(blocking=False):
            try:
                self._records.close()
            finally:
                self._walking.release()

    @property
    def waiting_for_journal(self) -> bool:
        """True while there is no journal at the path yet (``wait_for_journal``)."""
        return self._waiting_for_journal

    @property
    def location(self) -> str:
        """The journal directory being followed (for messages)."""
        return self._dir

    # The walk ----------------------------------------------------------------

    def _follow(self) -> Generator[RecordView, None, None]:
        try:
            self._await_journal()
            seg = self._current = self._first()
            while True:
                yield from self._read(seg)
                reader = seg.reader
                assert reader is not None
                if reader.sealed and reader.ended() is None:
                    following = self._next_segment(seg)
                    if following is not None:
                        os.close(seg.fd)
                        seg = self._current = following
                        continue
                elif reader.compacted or self._next_appeared(seg.number):
                    self._recheck(seg)
                    continue
                elif reader.ended() is not None:
                    self._judge(seg)
                elif os.fstat(seg.fd).st_nlink == 0:
                    raise JournalCorrupt(
                        seg.path, reader.pos, "the segment was deleted before it was sealed "
                        "(was the journal removed or replaced while being followed?)",
                    )
                self._wait()
        except _Stopped:
            return
        finally:
            if self._current is not None:
                os.close(self._current.fd)
                self._current = None
            for fd in self._ahead.values():
                os.close(fd)
            self._ahead.clear()

    def _wait(self) -> None:
        self._idle()
        self._open_ahead(os.listdir(self._dir))

    def _idle(self) -> None:
        """Call on_wait, then sleep; raise _Stopped if closed meanwhile."""
        if self._on_wait is not None:
            self._on_wait()
        if self._stop.is_set():
            raise _Stopped
        self._sleep(self._interval)
        if self._stop.is_set():
            raise _Stopped

    def _await_journal(self) -> None:
        """Wait until there is a journal at the path (see ``ready``)."""
        if self._ready is None:
            return
        while not self._ready():
            self._idle()
        self._waiting_for_journal = False

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
            try:
                reader = seg.place(after=None)
            except JournalCorrupt:
                misses += 1
                if misses < _LISTING_RETRIES:
                    continue  # the listing may have missed a compacted segment
                raise
            self.next_seq = reader.next_seq
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
            header = read_header(path, name, number, os.pread(fd, HEADER_SIZE, 0))
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

    def _next_appeared(self, number: int) -> bool:
        """Whether the segment after ``number`` exists (or did: we hold it open)."""
        following = number + 1
        return following in self._ahead or os.path.exists(
            os.path.join(self._dir, segment_name(following))
        )

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
        gap = skipped_to is not None and first > self.next_seq
        following.place(after=first if gap else self.next_seq)
        if gap:
            self._created = None
            if self._on_gap is not None:
                self._on_gap(FollowGap(first_seq=self.next_seq, next_seq=first))
        self.next_seq = first
        return following

    # One segment -------------------------------------------------------------

    def _read(self, seg: _Open) -> Iterator[RecordView]:
        """Yield the complete records written to ``seg`` since it was last read.

        Reading starts afresh at the end of the last complete frame every
        time, so bytes of a torn tail seen before a writer cut them off are
        never mixed with what it wrote after the cut.
        """
        reader = seg.reader
        assert reader is not None
        stat = os.fstat(seg.fd)
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == seg.seen and not (seg.zeros and _written(seg.fd, reader.pos)):
            return
        seg.seen = stamp
        reader.rewind()
        offset = reader.pos
        # Read to the end even past damage (proof() looks at what follows
        # it), but not through a zero tail: nothing is written there yet.
        while not reader.zero_tail and (chunk := os.pread(seg.fd, _READ_CHUNK, offset)):
            offset += len(chunk)
            reader.feed(chunk)
            for rec, loc in reader.records():
                created = self._created
                if created is not None:
                    if rec[r.TYPE] == r.CREATED or rec[r.TYPE] == r.CHILD_CREATED:
                        created.add(rec[r.INSTANCE])
                    elif rec[r.INSTANCE] not in created and rec[r.TYPE] not in r.ENGINE_LEVEL:
                        raise JournalCorrupt(
                            seg.path, unpack_loc(loc)[1],
                            f"record for unknown instance {rec[r.INSTANCE]!r}",
                        )
                if not reader.compacted:
                    self.next_seq = rec[r.SEQ] + 1
                yield view(rec, seg.number, unpack_loc(loc)[1])
        seg.zeros = reader.zero_tail

    def _judge(self, seg: _Open) -> None:
        """Bad bytes where a writer appends: damage if a later commit proves it.

        Otherwise a torn tail or a write in progress, to wait out. Judged
        once for each state of the file. A proof counts only when a second
        read finds it again: in a preallocated segment one read can meet
        the zeros a write had not reached yet and, further on, the next
        commit that came after it (a read is not atomic against writes).
        """
        reader = seg.reader
        damage = reader.ended() if reader is not None else None
        if reader is None or damage is None or seg.judged == seg.seen:
            return
        seg.judged = seg.seen
        proven = reader.proof(damage)
        if proven is not None:
            if seg.proven == damage.offset:
                raise proven
            seg.proven, seg.seen, seg.judged = damage.offset, None, None  # read again first

    def _recheck(self, seg: _Open) -> None:
        """A complete segment that is not cleanly sealed: read it once more, then fail.

        The first time, it only asks for the segment to be read again (a
        writer's cut or seal may have landed just after the last read);
        the same fault found again is corruption.
        """
        reader = seg.reader
        assert reader is not None
        damage = reader.ended()
        if damage is None:
            damage = Damage(reader.pos, "segment ends without a seal")
        if seg.rechecked == damage.offset:
            raise JournalCorrupt(seg.path, damage.offset, damage.reason)
        seg.rechecked, seg.seen = damage.offset, None




def _written(fd: int, pos: int) -> bool:
    """Whether a frame (or anything) was written at ``pos``, where zeros were."""
    return os.pread(fd, 8, pos).count(0) != 8
