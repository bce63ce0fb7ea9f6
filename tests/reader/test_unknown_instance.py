"""The reader refuses what the writer refuses: a record for an instance
that was never created (issue 13 k). Before, ``read_journal`` yielded it
while an engine would not open the same journal."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from memable_log import JournalCorrupt, read_journal
from memable_log._core import records as r
from memable_log._core.format import segment_name
from memable_log._storage.files import FileStorage
from memable_log._storage.segments import ScanResult
from memable_log._storage.writer import SegmentWriter


def write_raw(path: Path, recs: list[list[object]]) -> None:
    """Records written as they are, past the index's checks (a crafted journal)."""
    writer = SegmentWriter(FileStorage(path))
    writer.recover(ScanResult())
    for seq, rec in enumerate(recs, 1):
        rec[r.SEQ] = seq
    writer.commit([msgpack.packb(rec, use_bin_type=True) for rec in recs])
    writer.close()


def test_a_record_for_an_instance_never_created_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    write_raw(path, [
        r.make(r.CREATED, 1, "known", "wf", b"\x00\xc0"),
        r.make(r.STEP_DONE, 2, "known", "a", b"\x00\x01"),
        r.make(r.STEP_DONE, 3, "ghost", "a", b"\x00\x01"),
        r.make(r.STEP_DONE, 4, "known", "b", b"\x00\x02"),
    ])
    reader = read_journal(path)
    seen = [(next(reader).instance, "first"), (next(reader).instance, "second")]
    with pytest.raises(JournalCorrupt, match="record for unknown instance 'ghost'") as info:
        next(reader)
    assert seen == [("known", "first"), ("known", "second")]  # everything before it
    assert segment_name(1) in str(info.value)
    assert not reader.done
    assert list(reader) == []  # and it stays ended
    with pytest.raises(JournalCorrupt, match="unknown instance 'ghost'"):
        read_journal(path).instances()


def test_records_of_created_instances_read_as_before(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    write_raw(path, [
        r.make(r.CREATED, 1, "a", "wf", b"\x00\xc0"),
        r.make(r.CREATED, 2, "b", "wf", b"\x00\xc0"),
        r.make(r.STEP_DONE, 3, "a", "k", b"\x00\x01"),
        r.make(r.COMPLETED, 4, "b", b"\x00\x01"),
    ])
    reader = read_journal(path)
    assert [v.type for v in reader] == ["created", "created", "step_done", "completed"]
    assert reader.done
