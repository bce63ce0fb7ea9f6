"""Compaction: the sealed part of the journal, rewritten as the state it amounts to.

Theory of operation. Segments up to a sealed segment ``k`` are scanned into
a fresh Index (their *prefix state*). For every instance kept, the records
that rebuild exactly that state through ``Index.apply`` are synthesised:
``created``, one record per memoised step outcome, per signal, a
``state_image`` (state, pending waits, registered waits, finished waits) and, for a finished
instance, its outcome. Superseded records (forgotten keys, at-most-once
markers replaced by results, consumed suspensions, retries) simply have no
counterpart. Instances past retention are left out.

The records go, as zstd-compressed blocks of frames, into ``cmp-<k>.mlog``:
written as a temp file, fsynced, renamed into place, directory fsynced.
From that rename on, readers use it instead of every segment up to ``k``,
which become leftovers; ``finish`` deletes them (and the writer deletes any
that a crash left behind). A crash at any point leaves a journal that opens
with the same contents.

The new file's locations come back as *moves* (``moves``), so a running
engine can re-point its index entries (``Index.repoint``) before the old
files go. ``compact_prefix`` is the whole rewrite over a Storage; a running engine
runs it in a child process (child.py), since it is CPU work that
would otherwise hold the GIL against the engine's own commits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Generator, Iterator
from typing import Any, Final

import msgpack

from .._core import index as ix
from .._core import lifecycle as lc
from .._core import records as r
from .._core.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SEG_COMPACTED,
    SegmentHeader,
    compacted_name,
    pack_header,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
    unpack_header,
)
from .._core.framing import BLOCK_TARGET, encode_block, encode_frame
from .._core.index import Index, InstanceEntry, pack_loc
from .._core.index import Move as Move  # the child sends these over a pipe
from .._core.index import moves as moves
from .._storage import snapshot as _snapshot
from .._storage.crashpoints import crashpoint
from .._storage.files import Storage
from .._storage.segments import ScanResult, iter_scan, read_record_at

ReadRecord = Callable[[int], list[Any]]

# A compacted segment is fsynced every this many bytes as it is written, not
# only at the end: an fsync of the engine's small segment may have to wait
# for the file system to write out every dirty page of the big one (ext4's
# ordered mode), so the writeback is kept in small pieces.
SYNC_EVERY = 1 << 20


def prefix_state(storage: Storage, upto: int, inline_limit: int) -> tuple[Index, ScanResult]:
    """The index of segments up to ``upto`` (sealed), and the scan's result."""
    index = Index(inline_limit)
    result = ScanResult()
    for rec, loc in iter_scan(storage, result, upto):
        index.apply(rec, loc)
    return index, result


def expired(index: Index, now_ms: int, retention_ms: int | None) -> set[str]:
    """Finished instances last changed more than ``retention_ms`` ago."""
    if retention_ms is None:
        return set()
    cutoff = now_ms - retention_ms
    return {
        iid for iid, e in index.instances.items()
        if e.state in lc.FINISHED and e.updated_ms <= cutoff
    }


# The record types synthesize writes, and those it never writes because what
# they did is in what it writes: a forget in the step table it leaves out, a
# restart in the state and the cleared outcome, a suspension, a timer and
# the end of a wait in the state image. Every record type is in exactly one
# (tests/core/test_records.py).
SYNTHESISED: Final = frozenset({
    r.CREATED, r.STEP_DONE, r.STEP_FAILED, r.STEP_STARTED, r.SIGNALLED, r.STATE_IMAGE,
    r.COMPLETED, r.FAILED, r.CANCELLED,
    r.STATUS_SET, r.PUBLISHED,  # the latest status text; every event, in order
    r.ATTEMPT_FAILED,
    r.CHILD_CREATED, r.CHILD_STARTED, r.CHILD_ENDED,  # a child's creation; the parent's memo
    r.OPTIONS, r.CANCELLED_FOR,  # an invoke's options; a cancel's reason
    r.SCHEDULE_SET, r.DEBOUNCE_SET,  # each schedule, each debounce key's latest call
    r.HANDOVER_APPLIED,  # each hand-over applied to an instance that is kept
})
SUPERSEDED: Final = frozenset({
    r.SUSPENDED, r.TIMER_SET, r.PARKED, r.TIMER_FIRED, r.SUSPEND_TIMED_OUT, r.FORGOT,
    r.RESTARTED, r.SUSPENDED_V1, r.TIMER_SET_V1, r.STATE_IMAGE_V1,
    r.STEP_DONE_V2, r.STEP_FAILED_V2,
    r.QUEUED, r.DEQUEUED,  # in the state image (queued) or the state (running)
    r.SCHEDULE_REMOVED, r.SCHEDULE_TICKED,  # in the schedules kept, and their after_ms
})


def synthesize(index: Index, read: ReadRecord, drop: Container[str] = ()) -> Iterator[list[Any]]:
    """Records that rebuild ``index`` (less ``drop``) when applied in order."""
    for iid, entry in index.instances.items():
        if iid not in drop:
            yield from _instance_records(iid, entry, read)
    yield from engine_records(index)
    for name, iid in index.handovers.items():  # they go with their instance
        if iid in index.instances and iid not in drop:
            yield [r.HANDOVER_APPLIED, 0, 0, r.ENGINE, name, iid]


def engine_records(index: Index) -> Iterator[list[Any]]:
    """The engine-level records that rebuild the schedules and debounce
    tables: a schedule's last tick started is its ``after_ms`` (at that
    time); a debounce key keeps its latest call. Retention never drops
    them: a tick's or a debounce's instance may go, its counter stays."""
    for name, s in index.schedules.items():
        yield [r.SCHEDULE_SET, 0, s.after_ms, r.ENGINE, name, s.workflow, s.cron, s.input,
               s.catch_up, s.after_ms]
    for (workflow, key), d in index.debounces.items():
        yield [r.DEBOUNCE_SET, 0, d.ts_ms, r.ENGINE, workflow, key, d.n, d.input, d.due_ms]


def _instance_records(iid: str, e: InstanceEntry, read: ReadRecord) -> Iterator[list[Any]]:
    def blob(where: ix.Entry, field: int) -> bytes:
        """An inline blob, or ``field`` of the record at location ``where``."""
        return where if type(where) is bytes else read(where)[field]  # type: ignore[arg-type]

    ts = e.updated_ms
    if e.parent is None:
        yield [r.CREATED, 0, e.created_ms, iid, e.workflow, blob(e.input, r.CREATED_INPUT)]
    else:  # a child: its parent and key (the rest of its id) travel with it
        yield [r.CHILD_CREATED, 0, e.created_ms, iid, e.workflow,
               blob(e.input, r.CHILD_CREATED_INPUT), e.parent, iid[len(e.parent) + 1:]]
    if e.flow is not None:  # with its created, as the invoke wrote it
        yield [r.OPTIONS, 0, e.created_ms, iid, *e.flow]
    # Each event keeps its own time (``Event.at``) and its place (its seq),
    # and step outcomes their own times (engine.steps reads them), so the
    # last record written may not be at ``ts``: ``last`` follows it.
    last = e.created_ms
    for key, at, value in e.events or ():
        yield [r.PUBLISHED, 0, at, iid, key, blob(value, r.PUBLISHED_VALUE)]
        last = at
    step_last = yield from _step_records(iid, e, read)
    if step_last is not None:
        last = step_last
    for key, (started, errors) in (e.tries or {}).items():
        # A step with failed attempts and no outcome: a restart continues its count.
        for attempt, (etype, message) in enumerate(errors, 1):
            yield [r.ATTEMPT_FAILED, 0, ts, iid, key, attempt, etype, message, started]
            last = ts
    for key, payload in (e.signals or {}).items():
        yield [r.SIGNALLED, 0, ts, iid, key, blob(payload, r.SIGNALLED_PAYLOAD)]
        last = ts
    if e.status is not None:  # the latest text, with the latest set_status call's number
        yield [r.STATUS_SET, 0, ts, iid, e.status, e.status_calls]
        last = ts
    state = e.state if e.state in lc.LIVE else lc.RUNNING
    # Else the records above said it all, unless a later record (a forget,
    # a restart) moved updated_ms with nothing else to carry it.
    bare = e.state in lc.LIVE and last != ts
    if state != lc.RUNNING or e.waits or e.done_waits or bare:
        pending = list(e.pending or ()) if state != lc.RUNNING else []
        waits = {key: list(wait) for key, wait in (e.waits or {}).items()}
        yield [r.STATE_IMAGE, 0, ts, iid, state, pending, waits, dict(e.done_waits or {})]
    if e.state == lc.COMPLETED:
        assert e.outcome is not None
        yield [r.COMPLETED, 0, ts, iid, blob(e.outcome, r.COMPLETED_RESULT)]
    elif e.state == lc.FAILED:
        failed = read(e.outcome)  # type: ignore[arg-type]
        yield [
            r.FAILED, 0, ts, iid, failed[r.FAILED_TYPE], failed[r.FAILED_MESSAGE],
            failed[r.FAILED_TRACEBACK],
        ]
    elif e.state == lc.CANCELLED and e.error is not None:  # its reason (a timeout)
        yield [r.CANCELLED_FOR, 0, ts, iid, e.error[1]]
    elif e.state == lc.CANCELLED:
        yield [r.CANCELLED, 0, ts, iid]


def _step_records(
    iid: str, e: InstanceEntry, read: ReadRecord
) -> Generator[list[Any], None, int | None]:
    """A record per step outcome (or at-most-once marker), each at its own
    times (``ix.step_meta``); returns the time of the last one, if any."""
    steps = e.steps
    times = ix.step_meta(e.created_ms, steps, e.meta)
    ts = e.updated_ms
    last = None
    rec: list[Any]
    for key, step in steps.items():
        started, finished, attempts, _ = times.get(key, (ts, ts, 1, None))
        end = ts if finished is None else finished
        kind = ix.entry_kind(step)
        if kind == ix.CHILD_AT:  # a child's child_started or child_ended: kept as it is
            kept = read(ix.entry_loc(step))  # type: ignore[arg-type]
            rec = [kept[r.TYPE], 0, ts, *kept[r.INSTANCE:]]
        elif kind == ix.STEP_DONE_AT:
            value = step if type(step) is bytes else read(ix.entry_loc(step))[r.STEP_DONE_VALUE]  # type: ignore[arg-type]
            rec = [r.STEP_DONE, 0, end, iid, key, value, started, attempts]
        elif kind == ix.STEP_FAILED_AT:
            failed = read(ix.entry_loc(step))  # type: ignore[arg-type]
            etype, message = failed[r.STEP_FAILED_TYPE], failed[r.STEP_FAILED_MESSAGE]
            # A version 2 record: its one error.
            errors = failed[r.STEP_FAILED_ERRORS] if failed[r.TYPE] == r.STEP_FAILED else [
                [etype, message]]
            rec = [
                r.STEP_FAILED, 0, end, iid, key, etype, message,
                failed[r.STEP_FAILED_TRACEBACK], started, attempts, [list(x) for x in errors],
            ]
        else:
            rec = [r.STEP_STARTED, 0, started, iid, key]
        last = rec[r.TS]
        yield rec
    return last


def write_compacted(
    storage: Storage, upto: int, next_seq: int, records: Iterator[list[Any]], inline_limit: int
) -> tuple[Index, int]:
    """Write ``cmp-<upto>`` durably; return its index (new locations) and its salt."""
    salt = int.from_bytes(os.urandom(4), "little")
    name = compacted_name(upto)
    temp = name + ".tmp"
    index = Index(inline_limit)
    file = storage.create(temp)
    try:
        file.write(pack_header(SegmentHeader(FORMAT_VERSION, SEG_COMPACTED, salt, upto, next_seq)))
        offset = HEADER_SIZE
        payloads: list[bytes] = []
        pending: list[list[Any]] = []
        size = 0
        synced = 0

        def flush() -> int:
            nonlocal synced
            frame = encode_block(payloads, salt)
            for inner, rec in enumerate(pending, 1):
                index.apply(rec, pack_loc(upto, offset, inner))
            file.write(frame)
            payloads.clear()
            pending.clear()
            end = offset + len(frame)
            if end - synced >= SYNC_EVERY:
                file.sync()  # in small steps: see SYNC_EVERY
                synced = end
            return end

        for rec in records:
            payload = msgpack.packb(rec)
            payloads.append(payload)
            pending.append(rec)
            size += len(payload)
            if size >= BLOCK_TARGET:
                offset, size = flush(), 0
        if payloads:
            offset = flush()
        file.write(encode_frame(msgpack.packb([r.SEAL, next_seq]), salt))
        file.sync()
    finally:
        file.close()
    crashpoint("compact.after-temp-sync")
    storage.rename(temp, name)
    crashpoint("compact.after-rename")
    storage.sync_dir()
    return index, salt


def superseded_by(names: list[str], upto: int) -> list[str]:
    """The files that ``cmp-<upto>`` replaces: segments up to it, older compactions."""
    out = []
    for name in names:
        number = parse_segment_name(name)
        if number is not None and number <= upto:
            out.append(name)
        number = parse_compacted_name(name)
        if number is not None and number < upto:
            out.append(name)
    return out


def finish(storage: Storage, upto: int) -> list[str]:
    """Delete what ``cmp-<upto>`` replaced, durably; return the names deleted."""
    names = superseded_by(storage.list(), upto)
    for name in names:
        storage.remove(name)
        crashpoint("compact.after-remove")
    if names:
        storage.sync_dir()
    return names


def compact_prefix(
    storage: Storage,
    upto: int,
    inline_limit: int,
    drop: Container[str] = (),
    snapshot: bool = False,
) -> tuple[Index, int, int]:
    """Compact the sealed segments up to ``upto``, leaving out ``drop``.

    Scans them, writes ``cmp-<upto>`` durably and, with ``snapshot``, the
    index snapshot of the compacted history. Returns the new file's index,
    its salt and the seq after the compacted history. The files it replaces
    stay (leftovers) for ``finish``. Self-contained over a Storage, so it can
    run in another process (see _compact_process.py).
    """
    prefix, result = prefix_state(storage, upto, inline_limit)
    salts = {seg.name: seg.header.salt for seg in result.segments}

    def read(loc: int) -> list[Any]:
        return read_record_at(storage, salts, loc)

    fresh, salt = write_compacted(
        storage, upto, result.next_seq, synthesize(prefix, read, drop), inline_limit
    )
    if snapshot:
        next_name = segment_name(upto + 1)
        next_salt = unpack_header(storage.read_at(next_name, 0, HEADER_SIZE)).salt
        _snapshot.write_after_compaction(
            storage, fresh, upto, salt, result.next_seq, next_salt
        )
    return fresh, salt, result.next_seq


class CompactStats:
    """What an offline compaction did."""

    __slots__ = (
        "bytes_after", "bytes_before", "instances_dropped", "records_after", "records_before",
        "upto",
    )

    def __init__(self) -> None:
        self.upto = 0
        self.bytes_before = self.bytes_after = 0
        self.records_before = self.records_after = 0
        self.instances_dropped = 0


def journal_bytes(storage: Storage) -> int:
    return sum(storage.size(n) for n in storage.list() if n.endswith(".mlog"))


def compact_offline(
    storage: Storage,
    *,
    now_ms: int,
    retention_ms: int | None,
    inline_limit: int = ix.DEFAULT_INLINE_LIMIT,
) -> CompactStats:
    """Compact a journal no engine holds: everything, up to the live end.

    Takes the lock (JournalLocked if an engine holds it), seals the active
    segment if it has records, and compacts every sealed segment.
    """
    from .._journal.offline import OfflineJournal

    stats = CompactStats()
    with OfflineJournal(storage) as journal:
        stats.bytes_before = journal_bytes(storage)
        stats.records_before = journal.scan_result.records
        journal.writer.seal_and_roll()
        upto = journal.writer.segment - 1
        drop = expired(journal.index, now_ms, retention_ms)
        first = journal.scan_result.segments[0] if journal.scan_result.segments else None
        already = first is not None and first.name == compacted_name(upto)
        if upto >= 1 and not (already and not drop):
            salts = dict(journal.writer.salts)
            def read(loc: int) -> list[Any]:
                return read_record_at(storage, salts, loc)

            records = synthesize(journal.index, read, drop)
            fresh, salt = write_compacted(
                storage, upto, journal.writer.next_seq, records, inline_limit
            )
            finish(storage, upto)
            next_salt = journal.writer.salts[segment_name(upto + 1)]
            _snapshot.write_after_compaction(
                storage, fresh, upto, salt, journal.writer.next_seq, next_salt
            )
            stats.records_after = fresh.records
            stats.instances_dropped = len(drop)
        else:
            stats.records_after = stats.records_before
        stats.upto = upto
        stats.bytes_after = journal_bytes(storage)
    return stats
