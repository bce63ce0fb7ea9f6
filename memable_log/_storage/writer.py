"""The segment writer: frames, writes and fsyncs batches. Synchronous.

``SegmentWriter.commit(payloads)`` writes a batch of record payloads with one
write and one fsync and returns where each landed. It is the only code that
appends to segments; the async journal runs it on a worker thread, and
offline tools (memable-signal without an engine) call it directly.

Preallocation. The active segment is zero-filled ahead of its records (in
steps of ``PREALLOCATE``, up to ``segment_size``: write the zeros, fsync),
so a commit overwrites space that is already part of the file and needs
only fdatasync: no size, no metadata to update per commit. The zeros after
the last frame are a *zero tail*, unused space that every reader skips
(segment_reader.py). A torn write into it leaves bytes that are not all
zero: a torn tail, as before.

Start-up (``recover``) makes recovery's decisions durable before anything new
is written: a torn tail is cut and the last segment fsynced (a killed process
may have left unsynced bytes there); leftover temporary files are removed and
the directory fsynced. A zero tail is kept and written over.

Batches. A commit's frames are one batch: the first carries the batch
start bit, the last the batch end bit (format version 4), and readers take
a batch whole or not at all. So a batch never straddles two segments.

Roll-over, when a batch would take the segment past ``segment_size``: before
any of the batch is written, write the seal frame alone (a batch of its
own), cut the zero tail, fsync, then create the next segment as a temp file
with its header, fsync it, rename it into place and fsync the directory
(its zeros come with its first commit, which pays one more fsync for them);
the whole batch then goes into the new segment. A batch larger than a
segment goes whole into an empty one, which grows past ``segment_size`` to
hold it. A segment is never visible without its
complete header, and a sealed one keeps no zero tail
(so older readers, which take zeros for a torn tail, see the layout they
know in every segment but the last). ``close`` cuts the active segment's
zero tail too: a journal at rest has none.

A writer made with ``preallocate=False`` (an offline tool's, which
commits a few batches and closes) appends instead: each commit writes past
the file's end and fsyncs (the size changed), the layout before
preallocation, which every reader knows.

After any OSError the writer is broken and refuses every later call: the
kernel may have dropped the dirty pages of a failed fsync, so retrying could
acknowledge bytes that are gone. Reopen to recover.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import NoReturn

import msgpack

from .._core import records as r
from .._core.errors import JournalFailed
from .._core.format import (
    BATCH_END_VERSION,
    FORMAT_VERSION,
    HEADER_SIZE,
    SegmentHeader,
    pack_header,
    segment_name,
)
from .._core.framing import encode_batch, encode_frame
from .._core.index import pack_loc
from .crashpoints import crashpoint
from .files import FileHandle, Storage
from .segments import ScanResult

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
PREALLOCATE = 1024 * 1024  # zeros written ahead of the records at a time
_SEAL_ROOM = 32  # a seal frame is 8 + at most 11 bytes


class SegmentWriter:
    def __init__(
        self, storage: Storage, segment_size: int = DEFAULT_SEGMENT_SIZE, *,
        preallocate: bool = True,
    ) -> None:
        if segment_size < 4096:
            raise ValueError("segment_size must be at least 4096 bytes")
        self.storage = storage
        self.segment_size = segment_size
        self.segment = 0
        self.next_seq = 1
        self.broken: str | None = None
        self._salt = 0
        self._version = FORMAT_VERSION  # the active segment's format version
        self._size = 0  # end of the last frame
        self._allocated = 0  # end of the file: zeros from _size on
        self._writing = False  # a write began and has not ended (it raised)
        # False for a writer of a few commits (an offline tool's): it appends
        # and fsyncs, as before preallocation, rather than zero-fill 1 MiB
        # to cut it again at close.
        self._preallocate_ahead = preallocate
        self._records_in_segment = 0
        self._file: FileHandle | None = None
        self.salts: dict[str, int] = {}  # segment file name -> salt, for reads
        # Called (on the committing thread) as a batch's fsync begins: the
        # journal tells background work on the event loop that the GIL is
        # free for the fsync's length (Journal.between_commits).
        self.before_sync: Callable[[], None] | None = None

    def recover(self, scan: ScanResult) -> None:
        """Make the scan's decisions durable and open the segment to append."""
        try:
            last = scan.last
            # Always fsync the last segment and the directory: a killed
            # process can leave records, a seal or a renamed segment visible
            # but not durable, and what we opened with must be before we
            # build on it (a new segment after an unsynced seal, say).
            if last is not None:
                file = self.storage.open_append(last.name)  # it may be a cmp- segment
                try:
                    if scan.torn_at is not None:
                        file.truncate(scan.torn_at)
                    elif last.sealed and self.storage.size(last.name) > last.end:
                        file.truncate(last.end)  # a roll-over's cut, not yet durable
                    file.sync()
                finally:
                    file.close()
            for name in scan.temp_files + scan.superseded:
                self.storage.remove(name)
            self.storage.sync_dir()
            self.next_seq = scan.next_seq
            self.salts = {seg.name: seg.header.salt for seg in scan.segments}
            if last is not None and not last.sealed and last.header.version < FORMAT_VERSION:
                # Records of this version never go into an older version's
                # segment (an older reader would misread them): seal it.
                self.segment, self._salt, self._size = last.number, last.header.salt, last.end
                self._version = last.header.version
                self._records_in_segment = 1
                self._open(segment_name(last.number))
                self.seal_and_roll()
                return
            if last is None or last.sealed:
                self._new_segment(last.number + 1 if last else 1)
                return
            self.segment, self._salt, self._size = last.number, last.header.salt, last.end
            self._version = last.header.version
            self._records_in_segment = int(last.end > HEADER_SIZE)
            self._open(segment_name(last.number))
        except OSError as exc:
            self._break(exc)

    def commit(self, payloads: list[bytes]) -> list[int]:
        """Append ``payloads`` durably; return each one's packed location."""
        if self.broken is not None:
            raise JournalFailed(self.broken)
        try:
            return self._commit(payloads)
        except OSError as exc:
            self._break(exc)

    def _commit(self, payloads: list[bytes]) -> list[int]:
        if not payloads:
            return []
        frames = encode_batch(payloads, self._salt)  # raises for a bad payload, first
        size = sum(map(len, frames))
        if self._size + size + _SEAL_ROOM > self.segment_size and self._records_in_segment:
            self._seal_and_roll()  # the batch goes whole into the next segment
            frames = encode_batch(payloads, self._salt)  # its salt
        locs = []
        at = self._size
        for frame in frames:
            locs.append(pack_loc(self.segment, at))
            at += len(frame)
        self._write(frames, records=len(frames))
        return locs

    @property
    def size(self) -> int:
        """Bytes in the active segment (all of them durable after a commit)."""
        return self._size

    def seal_and_roll(self) -> None:
        """Seal the active segment (if it has records) and start the next one."""
        if self.broken is not None:
            raise JournalFailed(self.broken)
        if not self._records_in_segment:
            return
        try:
            self._seal_and_roll()
        except OSError as exc:
            self._break(exc)

    def _seal_and_roll(self) -> None:
        seal = msgpack.packb((r.SEAL, self.next_seq))
        if self._version >= BATCH_END_VERSION:
            frames = encode_batch([seal], self._salt)
        else:  # an older segment, sealed before this version appends: no batch ends there
            frames = [encode_frame(seal, self._salt, batch_start=True)]
        self._write(frames, records=0, seal=True)
        crashpoint("roll.after-seal")
        self._roll()

    def _write(self, frames: list[bytes], records: int, seal: bool = False) -> None:
        """Write a batch over the zero tail and make it durable (sealing: cut the rest)."""
        file = self._file
        assert file is not None
        data = b"".join(frames)
        end = self._size + len(data)
        self._writing = True
        grows = end > self._allocated
        if grows and not seal and self._preallocate_ahead:
            self._preallocate(end)
            grows = False
        crashpoint("writer.torn-write", _At(file, self._size), data)
        file.write_at(self._size, data)
        crashpoint("writer.before-fsync")
        if self.before_sync is not None:
            self.before_sync()
        if seal:
            if self._allocated > end:
                file.truncate(end)
            file.sync()
            self._allocated = end
        elif grows:  # appended past the file's end: its size changed
            file.sync()
            self._allocated = end
        else:
            file.sync_data()
        crashpoint("writer.after-fsync")
        self._size = end
        self._writing = False
        self._records_in_segment += records
        self.next_seq += records

    def _preallocate(self, end: int) -> None:
        """Zero-fill the active segment to hold ``end`` bytes, and more ahead; fsync."""
        assert self._file is not None
        limit = max(self.segment_size, end)
        target = min(max(end, self._allocated) + PREALLOCATE, limit)
        self._file.write_at(self._allocated, bytes(target - self._allocated))
        crashpoint("writer.after-preallocate")
        self._file.sync()  # the size changed: fsync, not fdatasync
        self._allocated = target

    def _open(self, name: str) -> None:
        self._file = self.storage.open_append(name)
        self._allocated = self.storage.size(name)

    def _roll(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        self._new_segment(self.segment + 1)

    def _new_segment(self, number: int) -> None:
        salt = int.from_bytes(os.urandom(4), "little")
        header = SegmentHeader(FORMAT_VERSION, 0, salt, number, self.next_seq)
        name = segment_name(number)
        temp = name + ".tmp"
        file = self.storage.create(temp)
        try:
            crashpoint("roll.after-temp-create")
            file.write(pack_header(header))  # zeros come with its first commit
            file.sync()
        finally:
            file.close()
        crashpoint("roll.after-temp-sync")
        self.storage.rename(temp, name)
        crashpoint("roll.after-rename")
        self.storage.sync_dir()
        self.segment, self._salt, self._size = number, salt, HEADER_SIZE
        self._version = FORMAT_VERSION
        self.salts[name] = salt
        self._records_in_segment = 0
        self._file = self.storage.open_append(name)
        self._allocated = HEADER_SIZE

    def _break(self, exc: OSError) -> NoReturn:
        code = errno.errorcode.get(exc.errno or 0)
        self.broken = (
            f"{exc.strerror or exc}"
            + (f" ({code})" if code and code not in f"{exc.strerror}" else "")
            + (f" [{exc.filename}]" if exc.filename else "")
        )
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        raise JournalFailed(self.broken) from exc

    def close(self) -> None:
        """Close the active segment, its zero tail cut (a journal at rest has none)."""
        if self._file is not None:
            try:
                if self.broken is None and not self._writing and self._allocated > self._size:
                    self._file.truncate(self._size)
                    self._file.sync()
            except OSError:
                pass  # the zeros stay: unused space, skipped by every reader
            finally:
                self._file.close()
                self._file = None
        if self.broken is None:
            self.broken = "closed"


class _At:
    """A file seen through ``write``, writing at a fixed offset (for a crash point)."""

    __slots__ = ("_file", "_offset")

    def __init__(self, file: FileHandle, offset: int) -> None:
        self._file, self._offset = file, offset

    def write(self, data: bytes) -> None:
        self._file.write_at(self._offset, data)
