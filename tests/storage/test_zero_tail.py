"""Preallocated segments: a zero tail is unused space, not a torn record.

The writer zero-fills the active segment ahead of its records and commits
by overwriting the zeros (fdatasync, no size change). Every reader must
take the zeros after the last frame for the end of the segment, and still
take anything else there (a torn write into the zeros) for a torn tail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.journal import read_all, rec, storage_from

from memable_log._core.format import HEADER_SIZE, segment_name
from memable_log._core.framing import encode_frame
from memable_log._journal.journal import Journal
from memable_log._storage import writer as writer_mod
from memable_log._storage.files import FileStorage
from memable_log._storage.follower import JournalFollower
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.segments import scan
from memable_log._storage.writer import SegmentWriter

SEG1 = segment_name(1)


def _writer(storage: Any, segment_size: int = 1 << 20) -> SegmentWriter:
    writer = SegmentWriter(storage, segment_size)
    writer.recover(scan(storage))
    return writer


def _commit(writer: SegmentWriter, records: list[list[Any]]) -> None:
    for seq, record in enumerate(records, start=writer.next_seq):
        record[1] = seq
    writer.commit([msgpack.packb(record) for record in records])


def test_commits_overwrite_preallocated_zeros_without_growing_the_file(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    assert storage.size(SEG1) == HEADER_SIZE  # zeros come with the first commit
    records = [rec(i) for i in range(20)]
    _commit(writer, records[:1])
    size = storage.size(SEG1)
    assert storage.read(SEG1)[writer.size :] == bytes(size - writer.size)
    for record in records[1:]:
        _commit(writer, [record])
        assert storage.size(SEG1) == size  # an overwrite: no size, no metadata to sync
    result = scan(storage)
    assert (result.torn_at, result.next_seq) == (None, 21)
    assert result.last is not None
    assert result.last.end == writer.size < size
    assert read_all(storage) == records


def test_a_journal_at_rest_has_no_zero_tail(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    _commit(writer, [rec(0)])
    end = writer.size
    writer.close()
    assert storage.size(SEG1) == end
    again = _writer(storage)  # reopened: zeros again ahead of the records, at the next commit
    _commit(again, [rec(1)])
    assert storage.size(SEG1) > again.size
    assert read_all(storage) == [[*rec(0)[:1], 1, *rec(0)[2:]], [*rec(1)[:1], 2, *rec(1)[2:]]]


def _segment(records: int, tail: bytes) -> tuple[MemoryStorage, int]:
    """A journal of one segment: ``records`` records, then ``tail``."""
    storage = MemoryStorage()
    writer = _writer(storage)
    _commit(writer, [rec(i) for i in range(records)])
    end = writer.size
    data = storage.read(SEG1)[:end] + tail
    return storage_from({SEG1: data}), end


def test_zeros_after_the_last_frame_are_the_end_not_a_torn_tail() -> None:
    storage, end = _segment(3, bytes(5000))
    result = scan(storage)
    assert result.torn_at is None
    assert result.last is not None
    assert result.last.end == end
    assert len(read_all(storage)) == 3


def test_fewer_zeros_than_a_frame_header_are_the_end_too() -> None:
    storage, _ = _segment(3, bytes(5))
    assert scan(storage).torn_at is None


def test_a_frame_written_in_part_then_zeros_is_a_torn_tail_cut_on_open() -> None:
    frame = encode_frame(msgpack.packb(rec(9)), 0, batch_start=True, batch_end=True)
    storage, end = _segment(3, frame[:12] + bytes(4000))
    result = scan(storage)
    assert result.torn_at == end
    writer = _writer(storage)  # recovery cuts the torn bytes durably
    assert storage.crash().size(SEG1) == end
    _commit(writer, [rec(3)])
    assert len(read_all(storage.crash())) == 4


def test_a_zero_length_word_before_bytes_that_landed_is_a_torn_tail() -> None:
    # The first sector of a write lost, a later one landed: zeros, then not.
    frame = encode_frame(msgpack.packb(rec(9)), 0, batch_start=True, batch_end=True)
    storage, end = _segment(2, bytes(4) + frame[4:] + bytes(100))
    assert scan(storage).torn_at == end


def test_a_sealed_segment_followed_by_zeros_is_complete(tmp_path: Path) -> None:
    """A power cut after a roll-over's seal landed but before its cut of the
    zeros did: the sealed segment keeps a zero tail, which is not damage,
    and recovery cuts it before it starts the next segment."""
    storage = MemoryStorage()
    writer = _writer(storage, segment_size=4096)
    writer.close()
    writer = _writer(storage, segment_size=4096)
    _commit(writer, [rec(0)])
    data = bytearray(storage.read(SEG1))
    writer.seal_and_roll()
    sealed = storage.read(SEG1)
    data[: len(sealed)] = sealed
    crashed = storage_from({SEG1: bytes(data)})
    result = scan(crashed)
    assert result.torn_at is None
    assert result.last is not None
    assert result.last.sealed
    again = _writer(crashed, segment_size=4096)
    assert crashed.crash().read(SEG1) == sealed
    _commit(again, [rec(1)])
    assert len(read_all(crashed.crash())) == 2


def test_the_follower_waits_on_a_zero_tail_and_sees_records_written_into_it(
    tmp_path: Path,
) -> None:
    """The size never changes and the mtime may not either (a coarse clock):
    the follower must still see each new commit, and never call the zeros
    damage or a gap."""
    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    _commit(writer, [rec(0)])
    waits: list[int] = []
    follower = JournalFollower(str(tmp_path), sleep=lambda _: None,
                               on_wait=lambda: waits.append(1),
                               on_gap=lambda gap: pytest.fail(f"a gap: {gap}"))
    try:
        assert next(follower).seq == 1
        path = tmp_path / SEG1
        for n in range(1, 4):
            stamp = os.stat(path)
            _commit(writer, [rec(n)])
            os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # mtime unchanged
            assert os.stat(path).st_size == stamp.st_size
            before = len(waits)
            assert next(follower).seq == n + 1
            assert len(waits) - before <= 1
    finally:
        follower.close()


def test_the_follower_moves_on_from_a_sealed_segment_with_a_zero_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    writer = _writer(storage, segment_size=4096)
    _commit(writer, [rec(0)])
    follower = JournalFollower(str(tmp_path), sleep=lambda _: None)
    try:
        assert next(follower).seq == 1
        writer.seal_and_roll()
        # The seal's cut of the zeros undone, as a power cut could leave it.
        with open(tmp_path / SEG1, "ab") as f:
            f.write(bytes(300))
        _commit(writer, [rec(1)])
        assert next(follower).seq == 2
    finally:
        follower.close()


async def test_the_journal_extends_its_zeros_in_steps_and_reads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writer_mod, "PREALLOCATE", 512)
    storage = MemoryStorage()
    async with Journal(storage, segment_size=1 << 20) as journal:
        for i in range(40):
            await journal.append(rec(i, size=100))
        sizes = storage.size(SEG1)
    assert sizes < 1 << 20  # grown in steps, not to the whole segment
    assert len(read_all(storage.crash())) == 40


def _doc_reader() -> Any:
    """The independent reader of docs/format.md, run as written there."""
    import re

    doc = Path(__file__).parents[2] / "docs" / "format.md"
    match = re.search(r"<!-- independent-reader -->\n```python\n(.*?)\n```", doc.read_text(),
                      re.DOTALL)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), str(doc), "exec"), namespace)
    return namespace["read"]


def test_format_md_reader_skips_zero_tails_in_live_and_sealed_segments(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    writer = _writer(storage, segment_size=4096)
    _commit(writer, [rec(0), rec(1)])
    writer.seal_and_roll()
    with open(tmp_path / SEG1, "ab") as f:  # a sealed segment whose cut did not land
        f.write(bytes(100))
    _commit(writer, [rec(2)])
    assert storage.size(segment_name(2)) > writer.size  # the live segment's zeros
    read = _doc_reader()
    assert [rec_[1] for _, _, rec_ in read(str(tmp_path))] == [1, 2, 3]
    assert [rec_[1] for rec_ in read_all(storage)] == [1, 2, 3]


def test_reader_and_dump_stats_show_a_zero_tail_as_unused_not_torn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from support.dump import run

    from memable_log.reader import JournalReader

    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    _commit(writer, [rec(0), rec(1)])
    end, size = writer.size, storage.size(SEG1)
    reader = JournalReader(FileStorage(tmp_path, create=False))
    assert len(list(reader)) == 2
    assert reader.done
    assert reader.torn is None
    assert reader.zero_tail == (str(tmp_path / SEG1), end, size - end)
    code, lines, err = run(capsys, str(tmp_path), "--stats", "--json")
    assert code == 0, err
    got = json.loads(lines[0])
    assert got["torn_tail"] is None
    assert got["zero_tail"] == {"file": SEG1, "offset": end, "size": size - end}
    code, lines, err = run(capsys, str(tmp_path), "--stats")
    assert code == 0
    assert any(line.split() == ["torn", "tail", "none"] for line in lines)
    assert any(line.startswith("zero tail") and "not damage" in line for line in lines)
    writer.close()
    reader = JournalReader(FileStorage(tmp_path, create=False))
    list(reader)
    assert reader.zero_tail is None  # at rest: cut


# -- power cuts at every operation of a preallocated segment's life ------------------

_AFTERMATHS: dict[str, Any] = {
    "unsynced-lost": lambda s: s.crash(),
    "unsynced-landed": lambda s: s.crash(lambda name, data: data),
    "half-landed": lambda s: s.crash(lambda name, data: data[: len(data) // 2]),
    "zeros-landed": lambda s: s.crash(lambda name, data: bytes(len(data))),
    "first-sector-lost": lambda s: s.crash(lambda name, data: bytes(min(len(data), 16))
                                           + data[16:]),
}


async def _appends(storage: MemoryStorage, acked: list[list[Any]],
                   attempted: list[list[Any]], ends: list[int] | None = None) -> None:
    """Batches of 1-4 records over two lifetimes; ``ends`` gets the record
    count at the end of each batch attempted."""
    from memable_log._storage.memory import PowerCut

    n = 0
    try:
        for lifetime in range(2):  # the second reopens a segment cut at close
            async with Journal(storage, segment_size=4096) as journal:
                for size in (1, 3, 1, 2, 1, 1, 4, 1, 2, 1)[lifetime::2] * 4:
                    recs = [rec(i, size=150) for i in range(n, n + size)]
                    n += size
                    attempted += recs
                    if ends is not None:
                        ends.append(n)
                    await journal.append_many(recs)
                    acked += recs
    except* PowerCut:
        pass


def _survivors(after: MemoryStorage, acked: list[list[Any]], attempted: list[list[Any]],
               ends: list[int], when: str) -> list[list[Any]]:
    """The records a power cut left: every acknowledged one, then nothing but
    whole batches of those attempted, in order."""
    got = read_all(after)
    where = f"power cut at {when}"
    assert [g[3] for g in got[: len(acked)]] == [a[3] for a in acked], where
    assert [g[3] for g in got] == [a[3] for a in attempted[: len(got)]], where
    assert len(got) in ends, f"{where}: {len(got)} records, not whole batches {ends}"
    return got


async def test_a_power_cut_at_every_operation_of_preallocated_segments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Zero-fills in steps, overwrites, seals that cut the zeros, roll-overs,
    a close that cuts them and a reopen that fills again: at every operation
    a power cut, then every way the unsynced bytes can land. Every
    acknowledged record survives, the batch in flight is there whole or not
    at all (format version 4: its last frame is marked), and the journal
    opens and takes more records."""
    monkeypatch.setattr(writer_mod, "PREALLOCATE", 700)
    clean = MemoryStorage()
    await _appends(clean, [], [])
    total = clean.ops
    assert len([n for n in clean.list() if n.startswith("seg-")]) >= 3
    for crash_at in range(1, total + 1):
        for name, aftermath in _AFTERMATHS.items():
            storage = MemoryStorage(crash_at=crash_at)
            acked: list[list[Any]] = []
            attempted: list[list[Any]] = []
            ends = [0]
            await _appends(storage, acked, attempted, ends)
            after = aftermath(storage)
            got = _survivors(after, acked, attempted, ends, f"op {crash_at} of {total}, {name}")
            async with Journal(after, segment_size=4096) as journal:
                await journal.append(rec(999, size=150))
            assert [g[3] for g in read_all(after.crash())] == [g[3] for g in got] + ["inst-999"]


def test_the_follower_reads_again_before_it_calls_zeros_before_a_commit_damage(
    tmp_path: Path,
) -> None:
    """One read may meet the zeros a write has not reached yet and, after
    them, the next commit: that is no proof of damage until a second read
    finds the same (it then finds the first write complete)."""
    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    _commit(writer, [rec(0)])
    end = writer.size
    _commit(writer, [rec(1)])
    _commit(writer, [rec(2)])
    path = tmp_path / SEG1
    complete = path.read_bytes()
    second = complete[end : end + 16]
    with open(path, "r+b") as f:  # the read's view: the second commit's head not there yet
        f.seek(end)
        f.write(bytes(16))

    def sleep(_: float) -> None:
        with open(path, "r+b") as f:  # meanwhile the write completes
            f.seek(end)
            f.write(second)

    follower = JournalFollower(str(tmp_path), sleep=sleep)
    try:
        assert [next(follower).seq for _ in range(3)] == [1, 2, 3]
    finally:
        follower.close()


# -- an offline tool's writer appends: no zeros to fill for a few commits -------------


def _offline_appends(storage: MemoryStorage, acked: list[list[Any]],
                     attempted: list[list[Any]], sizes: list[int] | None = None,
                     ends: list[int] | None = None) -> None:
    from memable_log._journal.offline import OfflineJournal
    from memable_log._storage.memory import PowerCut

    n = 0
    try:
        for lifetime in range(2):  # a tool run, then another on what it left
            with OfflineJournal(storage, segment_size=4096) as journal:
                for size in (1, 3, 1, 2, 4, 1)[lifetime::2] * 3:
                    recs = [rec(i, size=150) for i in range(n, n + size)]
                    n += size
                    attempted += recs
                    if ends is not None:
                        ends.append(n)
                    journal.append(recs)
                    acked += recs
                    if sizes is not None:
                        sizes.append(storage.size(segment_name(journal.writer.segment))
                                     - journal.writer.size)
    except PowerCut:
        pass


def test_an_offline_journal_appends_without_a_zero_tail() -> None:
    storage = MemoryStorage()
    acked: list[list[Any]] = []
    beyond: list[int] = []
    _offline_appends(storage, acked, [], beyond)
    assert beyond
    assert set(beyond) == {0}  # the file ends at the last frame after each commit
    assert len([n for n in storage.list() if n.startswith("seg-")]) >= 2  # a roll-over too
    assert [g[3] for g in read_all(storage)] == [a[3] for a in acked]


def test_a_power_cut_at_every_operation_of_an_offline_journals_appends() -> None:
    clean = MemoryStorage()
    _offline_appends(clean, [], [])
    total = clean.ops
    for crash_at in range(1, total + 1):
        for name, aftermath in _AFTERMATHS.items():
            storage = MemoryStorage(crash_at=crash_at)
            acked: list[list[Any]] = []
            attempted: list[list[Any]] = []
            ends = [0]
            _offline_appends(storage, acked, attempted, ends=ends)
            when = f"op {crash_at} of {total}, {name}"
            _survivors(aftermath(storage), acked, attempted, ends, when)


def test_the_follower_yields_a_batch_only_once_its_last_frame_is_there(
    tmp_path: Path,
) -> None:
    """A follower beside a writer may read a batch half written: the first
    frames whole, the last still zeros. It yields none of the batch until
    the last frame (the batch end bit) is there, then all of it."""
    storage = FileStorage(tmp_path)
    writer = _writer(storage)
    _commit(writer, [rec(0)])
    start = writer.size
    _commit(writer, [rec(1), rec(2), rec(3)])
    path = tmp_path / SEG1
    complete = path.read_bytes()
    last = start + 2 * (len(complete[start : writer.size]) // 3)  # inside the third frame
    with open(path, "r+b") as f:  # the view of a write in progress
        f.seek(last)
        f.write(bytes(writer.size - last))
    events: list[object] = []

    def sleep(_: float) -> None:
        events.append("wait")
        with open(path, "r+b") as f:  # meanwhile the write completes
            f.seek(last)
            f.write(complete[last : writer.size])

    follower = JournalFollower(str(tmp_path), sleep=sleep)
    try:
        for _ in range(4):
            events.append(next(follower).seq)
    finally:
        follower.close()
    assert events[0] == 1
    assert events[1] == "wait"  # records 2 and 3 were whole, and held back
    assert [e for e in events if e != "wait"] == [1, 2, 3, 4]
