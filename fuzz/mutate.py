"""Byte-mutation campaign: damaged and hostile journals open or raise JournalCorrupt.

Base journals are made by the engine itself (the in-memory operations of
_workload.py on 4 KiB segments): one segment; several rolled-over segments
with large values; and one left with a torn tail by a power cut. Hypothesis
then mutates them, one to three mutations per case:

* bit flips, truncations, runs of zeros, runs of random bytes, inserted
  bytes, garbage appended, a segment file deleted or duplicated under the
  next number;
* a segment header rewritten with a *valid* checksum but hostile fields
  (segment number, first sequence number, format version, salt, flags);
* a frame replaced, inserted or appended with a *correct checksum* around a
  hostile payload: deeply nested arrays and maps, huge declared array, map,
  str, bin and ext sizes, ext types (timestamps too), invalid UTF-8, maps
  with non-str keys, arbitrary msgpack values, and record-shaped arrays
  with wrong field types, unknown types, wrong sequence numbers, unknown
  instances, odd values (huge deadlines, undecodable value blobs).

For every case:

* opening (lock, scan, index, recovery: ``OfflineJournal``, the same code
  the engine runs when it starts) either succeeds, dropping a torn tail, or
  raises ``JournalCorrupt`` (``JournalFormatError`` is one); any other
  exception is a violation, as is a hang (over ``--case-seconds`` of real
  time) or a traced memory peak above a bound (tracemalloc);
* the public reader (``JournalReader``) reaches the same verdict: one
  torn-tail policy. Two differences are counted, not failed: with an index
  snapshot the open does not read what it covers (``snapshot_disagreements``),
  and a record that only an index refuses (one for an instance never
  created) reads fine record by record (``index_only``);
* after a successful open the journal opens again with no torn tail (the
  recovery was made durable);
* for one case in ``--engine-every``, an engine also starts on the mutated
  journal, lets every resumed instance run until all tasks wait, and stops:
  it may raise only JournalCorrupt. (A snapshot rewritten with a valid
  checksum is trusted field by field; what the engine then raises is
  counted in ``snapshot_trusted``: fuzz/README.md.)

Run from the repository root::

    .venv/bin/python fuzz/mutate.py --cases 100000 --seed 0

The summary counts the cases by verdict and gives the largest memory peak.
A violation stops the run (Hypothesis shrinks it to a minimal case, which is
printed) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

import msgpack
import trio
import trio.testing
from _forking import in_workers
from _ledger import MemoryLedger
from _summary import finish
from _workload import Acks, collect, memory_engine, run_ops
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from memable_log import JournalCorrupt, ManualClock, MemoryStorage
from memable_log._core import records as r
from memable_log._core.format import (
    FRAME_BATCH_END,
    FRAME_BATCH_START,
    FRAME_HEADER_SIZE,
    FRAME_LENGTH_MASK,
    HEADER_SIZE,
    pack_header,
    parse_compacted_name,
    parse_segment_name,
    segment_name,
    unpack_header,
)
from memable_log._core.framing import encode_frame
from memable_log._core.index import Index
from memable_log._journal.offline import OfflineJournal
from memable_log._storage.segments import scan
from memable_log.reader import JournalReader

MEMORY_FLOOR = 16 * 1024 * 1024  # bytes any case may use
MEMORY_PER_INPUT_BYTE = 64  # plus this much per byte of journal


# -- base journals, made by the engine --------------------------------------------

Files = dict[str, bytes]


def _files(storage: MemoryStorage) -> Files:
    return {name: storage.read(name) for name in storage.list()}


async def _make(ops: tuple[str, ...], crash_at: int | None, compaction: bool) -> MemoryStorage:
    storage = MemoryStorage(crash_at=crash_at)
    acks, ledger = Acks(), MemoryLedger()
    engine = memory_engine(storage, ManualClock(), ledger, collect(acks), compaction=compaction)
    try:
        async with engine:
            await run_ops(engine, ops, acks, ledger)
    except BaseException:
        if crash_at is None:
            raise
    if crash_at is None:
        return storage
    # The last write lands halfway: a torn tail.
    return storage.crash(lambda name, data: data[: len(data) // 2])


async def _count(ops: tuple[str, ...]) -> int:
    storage = await _make(ops, None, False)
    return storage.ops


def base_journals() -> list[tuple[str, Files]]:
    """(name, files) of journals made by the engine; see the module comment."""

    def make(ops: tuple[str, ...], crash_at: int | None = None, compaction: bool = False
             ) -> Files:
        storage = trio.run(_make, ops, crash_at, compaction,
                           clock=trio.testing.MockClock(autojump_threshold=0))
        return _files(storage)

    every = ("invoke", "step", "signal", "timer", "cancel", "forget")
    rolled = make(every)
    bases = [
        ("one-segment", _segments_only(make(("step",)))),
        ("rolled", _segments_only(rolled)),
        ("compacted", _segments_only(make(every, compaction=True))),
    ]
    if SNAPSHOT in rolled:  # the engine leaves an index snapshot at a clean stop
        bases.append(("snapshot", rolled))
    # Cut the power at the latest operation that leaves a torn tail.
    total = trio.run(_count, every, clock=trio.testing.MockClock(autojump_threshold=0))
    for n in range(total, 0, -1):
        files = make(every, crash_at=n)
        if _read_verdict(files) == "torn":
            bases.append(("torn", _segments_only(files)))
            break
    return bases


def _segments_only(files: Files) -> Files:
    return {name: data for name, data in files.items() if _number(name) is not None}


SNAPSHOT = "index.snap"  # the engine's index snapshot, a derived file


def _number(name: str) -> int | None:
    """The number of a segment or compacted segment file."""
    number = parse_segment_name(name)
    return number if number is not None else parse_compacted_name(name)


# -- frames in a segment ------------------------------------------------------------


def frames_of(data: bytes) -> list[tuple[int, int, bool, bool]]:
    """(offset, end, batch_start, batch_end) of each frame by its length word (unchecked)."""
    out, pos = [], HEADER_SIZE
    while pos + FRAME_HEADER_SIZE <= len(data):
        word = int.from_bytes(data[pos : pos + 4], "little")
        end = pos + FRAME_HEADER_SIZE + (word & FRAME_LENGTH_MASK)
        if end > len(data) or end == pos + FRAME_HEADER_SIZE:
            break
        out.append((pos, end, bool(word & FRAME_BATCH_START), bool(word & FRAME_BATCH_END)))
        pos = end
    return out


def salt_of(data: bytes) -> int:
    try:
        return unpack_header(data).salt
    except Exception:
        return 0


def marks_batch_ends(data: bytes) -> bool:
    """Whether the segment's frames carry the batch end bit (version 4, plain)."""
    try:
        header = unpack_header(data)
    except Exception:
        return True
    return header.version >= 4 and not header.flags & 1


# -- hostile payloads ------------------------------------------------------------------

_HUGE_HEADS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G elements
    b"\xdc\xff\xff",  # array16
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xde\xff\xff",  # map16
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\xc7\xff\x05",  # ext8
]
_ODD = [
    b"\xa2\xff\xfe",  # invalid UTF-8
    b"\x81\x01\x02",  # a map with an int key
    b"\x81\x90\x01",  # a map with an unhashable key
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext (32-bit)
    b"\xd7\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # timestamp ext (64-bit), out of range
    b"\xc7\x0c\xff" + b"\xff" * 12,  # timestamp ext (96-bit)
    b"\xd4\x05\x00",  # fixext 1
    b"\xc1",  # never used
    b"\x95\x01\x01",  # an array cut short
    b"\x93\x00\x01\x02\xc0",  # trailing bytes
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
]
_RECORD_PREFIX = b"\x96\x01\x01\x00\xa1x"  # [1, 1, 0, "x", ... (a created record)


def msgpack_values() -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats() | st.text(max_size=20) | st.binary(max_size=20))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=12,
    )


# Built once: making a strategy is far dearer than drawing from it.
_VALUES = msgpack_values()
_FIELDS = st.lists(
    st.one_of(_VALUES, st.sampled_from(
        [b"\x07junk", b"", b"\x01\x00\x00", 2**63, -(2**63), "*", "mixed", None]
    )),
    max_size=5,
)
_RTYPES = st.sampled_from([*r.SCHEMA, 0, 15, 99, -1])
_INSTANCES = st.sampled_from(["invoke0", "step0", "x", "", "signal0"])
_TS = st.integers(-(2**63), 2**63 - 1)
_PREFIXES = st.sampled_from([b"", _RECORD_PREFIX])
_DEEP_UNITS = st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdd\x00\x00\x00\x01"])
_PAYLOAD_KINDS = st.sampled_from(["deep", "huge", "odd", "value", "record", "raw"])
_RAW = st.binary(min_size=1, max_size=64)


def record_like(draw: st.DrawFn, seq: int) -> bytes:
    """A record-shaped array: a real type, often the right seq, fields of any type."""
    rtype = draw(_RTYPES)
    seq_value = draw(st.sampled_from([seq, seq, seq + 1, 0, -1, 2**64 - 1]))
    rec = [rtype, seq_value, draw(_TS), draw(_INSTANCES), *draw(_FIELDS)]
    data: bytes = msgpack.packb(rec, use_bin_type=True)
    return data


def hostile_payload(draw: st.DrawFn, seq: int) -> tuple[str, bytes]:
    kind = draw(_PAYLOAD_KINDS)
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        return kind, draw(_PREFIXES) + draw(_DEEP_UNITS) * depth + b"\xc0"
    if kind == "huge":
        return kind, draw(_PREFIXES) + draw(st.sampled_from(_HUGE_HEADS)) + draw(
            st.binary(max_size=8))
    if kind == "odd":
        return kind, draw(_PREFIXES) + draw(st.sampled_from(_ODD))
    if kind == "value":
        data: bytes = msgpack.packb(draw(_VALUES), use_bin_type=True)
        return kind, data
    if kind == "record":
        return kind, record_like(draw, seq)
    return kind, draw(_RAW)


# -- mutations -------------------------------------------------------------------------


def _seq_of_frame(data: bytes, offset: int, end: int) -> int:
    try:
        rec = msgpack.unpackb(data[offset + FRAME_HEADER_SIZE : end])
        return int(rec[1])
    except Exception:
        return 1


def mutation(draw: st.DrawFn, files: Files) -> str:
    """Apply one mutation to ``files`` in place; describe it."""
    names = sorted(files)
    name = draw(st.sampled_from(names))
    data = bytearray(files[name])
    size = len(data)
    kinds = ["flip", "truncate", "zeros", "garbage", "insert", "append"]
    if name == SNAPSHOT:
        kinds += ["snapshot", "snapshot", "snapshot"]
    else:
        kinds += ["header", "frame", "frame", "frame", "drop", "duplicate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        pos = draw(st.integers(0, max(size - 1, 0)))
        bit = draw(st.integers(0, 7))
        if size:
            data[pos] ^= 1 << bit
        what = f"flip bit {bit} at {pos}"
    elif kind == "truncate":
        cut = draw(st.integers(0, size))
        del data[cut:]
        what = f"truncate to {cut}"
    elif kind in ("zeros", "garbage"):
        pos = draw(st.integers(0, size))
        length = draw(st.integers(1, 600))
        fill = bytes(length) if kind == "zeros" else draw(st.binary(min_size=length,
                                                                     max_size=length))
        data[pos : pos + length] = fill
        what = f"{kind} x{length} at {pos}"
    elif kind == "insert":
        pos = draw(st.integers(0, size))
        blob = draw(st.binary(min_size=1, max_size=64))
        data[pos:pos] = blob
        what = f"insert {len(blob)} bytes at {pos}"
    elif kind == "append":
        blob = draw(st.binary(min_size=1, max_size=300))
        data += blob
        what = f"append {len(blob)} bytes"
    elif kind == "header":
        what = _mutate_header(draw, data)
    elif kind == "frame":
        what = _mutate_frame(draw, data)
    elif kind == "snapshot":
        what = _mutate_snapshot(draw, data)
    elif kind == "drop" and len(names) > 1:
        del files[name]
        return f"{name}: deleted"
    else:
        number = max((n for n in map(_number, names) if n is not None), default=0) + 1
        files[segment_name(number)] = bytes(data)
        return f"{name}: copied as segment {number}"
    files[name] = bytes(data)
    return f"{name}: {what}"


def _mutate_snapshot(draw: st.DrawFn, data: bytearray) -> str:
    """Rewrite the snapshot's body with a *valid* checksum and a hostile part."""
    magic, head = data[:8], 12
    try:
        body = msgpack.unpackb(bytes(data[head:]), raw=False, strict_map_key=False)
    except Exception:
        body = None
    how = draw(st.sampled_from(
        ["value", "top", "instance"] if type(body) is list and body else ["value"]
    ))
    if how == "value":
        body = draw(_VALUES)
        what = "snapshot body replaced"
    elif how == "top":
        at = draw(st.integers(0, len(body) - 1))
        body[at] = draw(_VALUES)
        what = f"snapshot element {at} replaced"
    else:
        instances = body[-1] if body and type(body[-1]) is dict else {}
        if not instances:
            return "snapshot without instances, left alone"
        iid = draw(st.sampled_from(sorted(instances)))
        fields = instances[iid]
        if type(fields) is not list or not fields:
            return f"snapshot {iid} has no fields, left alone"
        at = draw(st.integers(0, len(fields) - 1))
        fields[at] = draw(_VALUES)
        what = f"snapshot {iid} field {at} replaced"
    packed = msgpack.packb(body, use_bin_type=True)
    data[:] = bytes(magic) + struct.pack("<I", zlib.crc32(packed)) + packed
    return what


def _mutate_header(draw: st.DrawFn, data: bytearray) -> str:
    """Rewrite the header with a valid checksum and one hostile field."""
    try:
        header = unpack_header(bytes(data))
    except Exception:
        return "header unreadable, left alone"
    which = draw(st.sampled_from(["segment", "first_seq", "version", "salt", "flags"]))
    value = draw(st.sampled_from([0, 1, 2, 3, 2**16 - 1, 2**32 - 1, 2**63, 2**64 - 1]))
    limits = {"version": 2**16 - 1, "flags": 2**16 - 1, "salt": 2**32 - 1,
              "segment": 2**64 - 1, "first_seq": 2**64 - 1}
    value = min(value, limits[which])
    try:
        data[:HEADER_SIZE] = pack_header(header._replace(**{which: value}))
    except (struct.error, OverflowError, ValueError):
        return f"header {which}={value} cannot be packed, left alone"
    return f"header {which}={value}"


def _mutate_frame(draw: st.DrawFn, data: bytearray) -> str:
    """A correctly checksummed frame around a hostile payload."""
    frames = frames_of(bytes(data))
    salt = salt_of(bytes(data))
    ends = marks_batch_ends(bytes(data))
    where = draw(st.sampled_from(["replace", "insert", "append"] if frames else ["append"]))
    if where == "append":
        seq = _seq_of_frame(bytes(data), *frames[-1][:2]) + 1 if frames else 1
        kind, payload = hostile_payload(draw, seq)
        data += encode_frame(payload, salt, batch_start=True, batch_end=ends)
        return f"append a {kind} frame {payload[:40]!r}"
    index = draw(st.integers(0, len(frames) - 1))
    offset, end, batch_start, batch_end = frames[index]
    seq = _seq_of_frame(bytes(data), offset, end)
    kind, payload = hostile_payload(draw, seq)
    # A replacement keeps the frame's batch bits; an insertion is a commit of its own.
    frame = encode_frame(payload, salt, batch_start=batch_start or where == "insert",
                         batch_end=batch_end or (ends and where == "insert"))
    if where == "replace":
        data[offset:end] = frame
    else:
        data[offset:offset] = frame
    return f"{where} frame {index} with a {kind} frame {payload[:40]!r}"


class Case:
    """A mutated journal; its repr (in Hypothesis reports) is the recipe, not the bytes."""

    def __init__(self, base: str, files: Files, notes: list[str]) -> None:
        self.base, self.files, self.notes = base, files, notes

    @property
    def hostile_snapshot(self) -> bool:
        """Whether a snapshot body was rewritten with a valid checksum."""
        return any(note.startswith(f"{SNAPSHOT}: snapshot") for note in self.notes)

    def __repr__(self) -> str:
        return f"Case({self.base!r}, {self.notes!r})"


class Bases(list[tuple[str, Files]]):
    """The base journals; short in Hypothesis reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} base journals: {', '.join(name for name, _ in self)}>"


@st.composite
def cases(draw: st.DrawFn, bases: Bases) -> Case:
    base, original = draw(st.sampled_from(bases))
    files = dict(original)
    notes = [mutation(draw, files) for _ in range(draw(st.integers(1, 3)))]
    return Case(base, files, notes)


# -- one case ---------------------------------------------------------------------------


class Hang(Exception):
    """A case ran past its time limit."""


def _storage(files: Files) -> MemoryStorage:
    storage = MemoryStorage()
    for name, data in sorted(files.items()):
        handle = storage.create(name)
        handle.write(data)
        handle.sync()
    storage.sync_dir()
    return storage


def _read_verdict(files: Files) -> str:
    """What the public reader makes of it: "ok", "torn" or "corrupt"."""
    reader = JournalReader(_storage(files))
    try:
        for _ in reader:
            pass
    except JournalCorrupt:
        return "corrupt"
    return "torn" if reader.torn is not None else "ok"


def _only_the_index_refuses(files: Files) -> bool:
    """Every record reads, but applying them to an index raises JournalCorrupt."""
    scan(_storage(files))
    try:
        scan(_storage(files), Index().apply)
    except JournalCorrupt:
        return True
    return False


def _open_verdict(storage: MemoryStorage) -> str:
    """Open it as the engine does: "ok", "torn" or "corrupt"."""
    try:
        with OfflineJournal(storage) as journal:
            torn = journal.scan_result.torn_at is not None
    except JournalCorrupt:
        return "corrupt"
    return "torn" if torn else "ok"


async def _engine_run(storage: MemoryStorage) -> None:
    engine = memory_engine(storage, ManualClock(), MemoryLedger(), collect(Acks()))
    async with engine:
        await trio.testing.wait_all_tasks_blocked()


def _engine_verdict(storage: MemoryStorage) -> str | None:
    """None if an engine starts, runs and stops on it, or raises JournalCorrupt."""
    try:
        trio.run(_engine_run, storage, clock=trio.testing.MockClock(autojump_threshold=0))
    except JournalCorrupt:
        return None
    except BaseException as exc:
        return f"the engine raised {exc!r}"
    return None


@dataclass
class Stats:
    cases: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    engine_runs: int = 0
    index_only: int = 0  # refused by opening, read by the record-level reader
    snapshot_disagreements: Counter[str] = field(default_factory=Counter)  # reader/open
    snapshot_trusted: Counter[str] = field(default_factory=Counter)  # hostile snapshots
    peak: int = 0  # largest traced memory peak of a case, bytes
    peak_ratio: float = 0.0  # largest peak per byte of input
    slowest: float = 0.0
    slowest_case: str = ""
    violations: list[str] = field(default_factory=list)


def run_case(files: Files, *, engine: bool, stats: Stats, case_seconds: float) -> str | None:
    """Check one mutated journal; a violation, or None."""
    size = sum(map(len, files.values())) or 1
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0] if tracing else 0
    started = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, case_seconds)
    try:
        read = _read_verdict(files)
        storage = _storage(files)
        opened = _open_verdict(storage)
        if read != opened:
            if opened == "corrupt" and _only_the_index_refuses(files):
                # The reader checks frames and records one by one; a record
                # that cannot follow the ones before it (an instance never
                # created) is refused only where an index is built.
                stats.index_only += 1
            elif SNAPSHOT not in files:
                return f"the reader says {read}, opening says {opened}"
            else:
                # A snapshot spares the open from reading what it covers, so
                # damage there is found later, when a record is read back.
                stats.snapshot_disagreements[f"{read}/{opened}"] += 1
        if opened != "corrupt":
            again = _open_verdict(storage)
            if again != "ok":
                return f"opened once ({opened}), the second open says {again}"
            if engine:
                stats.engine_runs += 1
                problem = _engine_verdict(storage)
                if problem is not None:
                    return problem
        stats.verdicts[opened] += 1
    except Hang:
        return f"no verdict after {case_seconds} s"
    except Exception as exc:
        return f"raised {exc!r}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.monotonic() - started
    stats.slowest = max(stats.slowest, elapsed)
    if tracing:
        peak = tracemalloc.get_traced_memory()[1] - before
        stats.peak = max(stats.peak, peak)
        stats.peak_ratio = max(stats.peak_ratio, peak / size)
        if peak > MEMORY_FLOOR + MEMORY_PER_INPUT_BYTE * size:
            return f"memory peak {peak} bytes for {size} bytes of journal"
    return None


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


# -- the campaign ----------------------------------------------------------------------


def campaign(
    n_cases: int, seed: int, *, engine_every: int = 10, case_seconds: float = 10.0,
    trace: bool = True, progress: Callable[[str], None] | None = None,
) -> Stats:
    """Run ``n_cases`` Hypothesis cases; stops at the first violation (shrunk)."""
    bases = Bases(base_journals())
    stats = Stats()

    @hypothesis_seed(seed)
    @settings(
        max_examples=n_cases, database=None, deadline=None, derandomize=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(bases), engine=st.integers(1, max(engine_every, 1)))
    def one(case: Case, engine: int) -> None:
        stats.cases += 1
        if progress is not None and stats.cases % 10_000 == 0:
            progress(f"{stats.cases} cases: {dict(stats.verdicts)}")
        slowest = stats.slowest
        problem = run_case(case.files, engine=engine == 1, stats=stats,
                           case_seconds=case_seconds)
        if stats.slowest > slowest:
            stats.slowest_case = f"{case!r}, engine={engine == 1}"
        if problem is not None and case.hostile_snapshot and problem.startswith("the engine"):
            # Known and reported (fuzz/README.md): a snapshot whose checksum
            # holds is trusted field by field. Counted, not a violation.
            stats.snapshot_trusted[problem.split("(")[0]] += 1
            return
        if problem is not None:
            raise AssertionError(f"{case!r}: {problem}")

    if trace:
        tracemalloc.start()
    try:
        one()
    except AssertionError as exc:
        stats.violations.append(str(exc))
    finally:
        if trace:
            tracemalloc.stop()
    return stats


def campaign_jobs(n_cases: int, seed: int, jobs: int, **options: Any) -> Stats:
    """``campaign`` in ``jobs`` forked workers (seeds ``seed``, ``seed + 1``, ...)."""

    def work(j: int) -> dict[str, Any]:
        share = n_cases // jobs + (1 if j < n_cases % jobs else 0)
        stats = campaign(share, seed + j, **options)
        return {**asdict(stats), "verdicts": dict(stats.verdicts),
                "snapshot_disagreements": dict(stats.snapshot_disagreements),
                "snapshot_trusted": dict(stats.snapshot_trusted)}

    total = Stats()
    for data in in_workers(list(range(max(jobs, 1))), work):
        if "worker_error" in data:
            total.violations.append(data["worker_error"])
            continue
        total.cases += data["cases"]
        total.verdicts.update(data["verdicts"])
        total.snapshot_disagreements.update(data["snapshot_disagreements"])
        total.snapshot_trusted.update(data["snapshot_trusted"])
        total.engine_runs += data["engine_runs"]
        total.index_only += data["index_only"]
        total.peak = max(total.peak, data["peak"])
        total.peak_ratio = max(total.peak_ratio, data["peak_ratio"])
        if data["slowest"] > total.slowest:
            total.slowest, total.slowest_case = data["slowest"], data["slowest_case"]
        total.violations += data["violations"]
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--engine-every", type=int, default=10,
                        help="start an engine on one case in this many")
    parser.add_argument("--case-seconds", type=float, default=10.0)
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stats = campaign_jobs(args.cases, args.seed, args.jobs, engine_every=args.engine_every,
                          case_seconds=args.case_seconds,
                          progress=lambda line: print(line, flush=True))
    summary = {
        "campaign": "mutate", "seed": args.seed, "cases": stats.cases,
        "verdicts": dict(sorted(stats.verdicts.items())), "engine_runs": stats.engine_runs,
        "index_only": stats.index_only,
        "snapshot_disagreements": dict(stats.snapshot_disagreements),
        "snapshot_trusted": dict(stats.snapshot_trusted),
        "max_peak_bytes": stats.peak, "max_peak_per_input_byte": round(stats.peak_ratio, 1),
        "slowest_case_seconds": round(stats.slowest, 3), "slowest_case": stats.slowest_case,
        "violations": len(stats.violations), "seconds": round(time.monotonic() - started, 1),
    }
    return finish(summary, stats.violations, args.json, show=None)


if __name__ == "__main__":
    sys.exit(main())
