"""memable_log.reader: the read-only journal API, and docs/format.md against it.

Journals here are real directories written by the real Journal, so the
reader is tested on the bytes the writer produces; damage is made by editing
those bytes. The independent reader and the worked example printed in
docs/format.md are run against the library, so the document cannot drift.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from memable_log import JournalCorrupt, JournalFormatError, JournalLocked
from memable_log._compaction.compactor import compact_offline
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._core.format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    pack_header,
    segment_name,
    unpack_header,
)
from memable_log._core.index import loc_inner
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log._storage.segments import ScanResult, iter_scan
from memable_log.reader import (
    NotAJournal,
    RecordView,
    TornTail,
    decode_value,
    read_journal,
)

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "format.md"
SEG1 = segment_name(1)


def numbered(n: int, size: int = 40) -> list[Any]:
    """A CREATED record of instance inst-n: any prefix of them replays cleanly."""
    return r.make(r.CREATED, 1_700_000_000_000 + n, f"inst-{n}", "wf", bytes([0]) + b"x" * size)


async def write(path: Path, recs: list[list[Any]], *, segment_size: int = 1 << 20) -> None:
    """Append ``recs`` one commit each to the journal at ``path``, then close it."""
    async with Journal(FileStorage(path), segment_size=segment_size) as journal:
        for rec in recs:
            await journal.append(rec)


def listing(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def frame_offsets(path: Path, segment: int) -> list[int]:
    return [v.offset for v in read_journal(path) if v.segment == segment]


# -- records -------------------------------------------------------------------


async def test_records_come_in_order_with_their_fields_and_places(journal_dir: Path) -> None:
    codec = Codec()
    recs = [
        r.make(r.CREATED, 1_000, "a", "wf", codec.encode({"x": 1})),
        r.make(r.STEP_DONE, 1_001, "a", "fetch:v1", codec.encode([1, 2])),
        r.make(r.SUSPENDED, 1_002, "a", "approve", "waiting", None),
        r.make(r.SIGNALLED, 1_003, "a", "approve", codec.encode(True)),
        r.make(r.STEP_FAILED, 1_004, "a", "load", "ValueError", "bad", "tb"),
        r.make(r.COMPLETED, 1_005, "a", codec.encode(None)),
    ]
    await write(journal_dir, recs)
    reader = read_journal(journal_dir)
    views = list(reader)
    assert [v.seq for v in views] == [1, 2, 3, 4, 5, 6]
    assert [v.type for v in views] == [
        "created", "step_done", "suspended", "signalled", "step_failed", "completed",
    ]
    assert all(isinstance(v, RecordView) for v in views)
    assert views[0].fields == {"workflow": "wf", "input": codec.encode({"x": 1})}
    assert views[2].fields == {"key": "approve", "status": "waiting", "deadline_ms": None}
    assert views[4].fields["error_type"] == "ValueError"
    assert [v.ts_ms for v in views] == [1_000, 1_001, 1_002, 1_003, 1_004, 1_005]
    assert {v.instance for v in views} == {"a"}
    # Places: segment 1, the first frame right after the header, each next
    # frame right after the previous one's payload.
    data = (journal_dir / SEG1).read_bytes()
    assert views[0].segment == 1
    assert views[0].offset == HEADER_SIZE
    for view in views:
        length = struct.unpack_from("<I", data, view.offset)[0] & 0xFFFFFF
        payload = data[view.offset + 8 : view.offset + 8 + length]
        assert msgpack.unpackb(payload)[1] == view.seq
    assert reader.done
    assert reader.torn is None
    assert reader.next_seq == 7
    assert reader.segments == [1]


async def test_records_span_segments_in_sequence(journal_dir: Path) -> None:
    recs = [numbered(i, size=200) for i in range(120)]
    await write(journal_dir, recs, segment_size=4096)
    reader = read_journal(journal_dir)
    views = list(reader)
    assert [v.seq for v in views] == list(range(1, 121))
    assert [v.instance for v in views] == [f"inst-{i}" for i in range(120)]
    segments = sorted({v.segment for v in views})
    assert len(segments) > 3
    assert reader.segments == segments
    # A new segment's first record sits right after its header.
    firsts = {}
    for view in views:
        firsts.setdefault(view.segment, view.offset)
    assert set(firsts.values()) == {HEADER_SIZE}
    assert reader.next_seq == 121


async def test_an_empty_journal_yields_nothing(journal_dir: Path) -> None:
    await write(journal_dir, [])
    reader = read_journal(journal_dir)
    assert list(reader) == []
    assert reader.done
    assert reader.torn is None
    assert reader.next_seq == 1


def test_a_directory_with_only_a_lock_file_is_an_empty_journal(tmp_path: Path) -> None:
    (tmp_path / "LOCK").write_bytes(b"")
    reader = read_journal(tmp_path)
    assert list(reader) == []
    assert reader.done


# -- not a journal ---------------------------------------------------------------


def test_missing_path_is_not_a_journal(tmp_path: Path) -> None:
    with pytest.raises(NotAJournal, match="no such file") as info:
        read_journal(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()  # the reader never creates it


def test_a_file_is_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hello")
    with pytest.raises(NotAJournal, match="not a directory"):
        read_journal(tmp_path / "f")


def test_a_directory_without_segments_is_not_a_journal(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAJournal, match="no segment files"):
        read_journal(tmp_path)


# -- torn tails --------------------------------------------------------------------


async def test_torn_tail_stops_iteration_quietly_and_is_reported(journal_dir: Path) -> None:
    await write(journal_dir, [numbered(i) for i in range(5)])
    seg = journal_dir / SEG1
    whole = seg.read_bytes()
    last = frame_offsets(journal_dir, 1)[-1]
    seg.write_bytes(whole[: last + 11])  # the last frame cut short
    before = listing(journal_dir)
    reader = read_journal(journal_dir)
    views = list(reader)
    assert [v.seq for v in views] == [1, 2, 3, 4]
    assert reader.torn == TornTail(file=str(seg), segment=1, offset=last, size=11)
    assert reader.next_seq == 5
    assert listing(journal_dir) == before  # nothing cut, nothing written


async def test_reader_beside_a_writer_sees_whole_records_at_every_cut(
    journal_dir: Path, tmp_path: Path
) -> None:
    """A write in progress looks like a torn tail at any byte: never an error.

    Each prefix of the last segment is what a reader could see while a
    writer is half-way through appending the following bytes.
    """
    await write(journal_dir, [numbered(i, size=10) for i in range(4)])
    whole = (journal_dir / SEG1).read_bytes()
    ends = [*frame_offsets(journal_dir, 1)[1:], len(whole)]
    copy = tmp_path / "copy"
    copy.mkdir()
    for cut in range(HEADER_SIZE, len(whole) + 1):
        (copy / SEG1).write_bytes(whole[:cut])
        reader = read_journal(copy)
        complete = sum(1 for end in ends if end <= cut)
        assert [v.seq for v in reader] == list(range(1, complete + 1))
        expected_tail = cut - (ends[complete - 1] if complete else HEADER_SIZE)
        if expected_tail:
            assert reader.torn is not None
            assert reader.torn.size == expected_tail
        else:
            assert reader.torn is None


async def test_leftover_temporary_segment_is_ignored_and_left_alone(journal_dir: Path) -> None:
    await write(journal_dir, [numbered(i) for i in range(3)])
    (journal_dir / (segment_name(2) + ".tmp")).write_bytes(b"half a header")
    before = listing(journal_dir)
    assert [v.seq for v in read_journal(journal_dir)] == [1, 2, 3]
    assert listing(journal_dir) == before


# -- corruption ------------------------------------------------------------------


async def test_damage_in_a_sealed_segment_raises_after_the_records_before_it(
    journal_dir: Path,
) -> None:
    await write(journal_dir, [numbered(i, size=200) for i in range(60)], segment_size=4096)
    offsets = frame_offsets(journal_dir, 1)
    damaged = offsets[3]
    seg = journal_dir / SEG1
    data = bytearray(seg.read_bytes())
    data[damaged + 20] ^= 0x01
    seg.write_bytes(bytes(data))
    before = listing(journal_dir)
    seen: list[int] = []

    def read_all() -> None:
        for view in read_journal(journal_dir):
            seen.append(view.seq)

    with pytest.raises(JournalCorrupt) as info:
        read_all()
    assert seen == [1, 2, 3]
    assert info.value.file == str(seg)
    assert info.value.offset == damaged
    assert "checksum" in info.value.reason
    assert listing(journal_dir) == before


async def test_damage_before_a_later_commit_in_the_last_segment_is_corruption(
    journal_dir: Path,
) -> None:
    await write(journal_dir, [numbered(i) for i in range(5)])
    offsets = frame_offsets(journal_dir, 1)
    seg = journal_dir / SEG1
    data = bytearray(seg.read_bytes())
    data[offsets[1] + 9] ^= 0xFF  # every record was its own batch: later ones prove it
    seg.write_bytes(bytes(data))
    reader = read_journal(journal_dir)
    with pytest.raises(JournalCorrupt) as info:
        list(reader)
    assert info.value.offset == offsets[1]
    assert "once durable" in info.value.reason
    assert not reader.done
    assert list(reader) == []  # a failed reader stays failed: not "done"
    assert not reader.done


async def test_a_missing_segment_is_corruption(journal_dir: Path) -> None:
    await write(journal_dir, [numbered(i, size=200) for i in range(60)], segment_size=4096)
    (journal_dir / segment_name(2)).unlink()
    with pytest.raises(JournalCorrupt, match="segment 2 is missing"):
        list(read_journal(journal_dir))


async def test_a_newer_format_version_is_refused_clearly(journal_dir: Path) -> None:
    await write(journal_dir, [numbered(0)])
    seg = journal_dir / SEG1
    data = seg.read_bytes()
    header = unpack_header(data)
    seg.write_bytes(pack_header(header._replace(version=FORMAT_VERSION + 1)) + data[HEADER_SIZE:])
    with pytest.raises(JournalFormatError, match=r"newer than this library reads.*upgrade"):
        list(read_journal(journal_dir))


# -- no lock -----------------------------------------------------------------------


async def test_reads_while_a_journal_holds_the_lock_and_leaves_it_held(
    journal_dir: Path,
) -> None:
    async with Journal(FileStorage(journal_dir)) as journal:
        for i in range(3):
            await journal.append(numbered(i))
        assert [v.seq for v in read_journal(journal_dir)] == [1, 2, 3]
        # The writer still holds the lock, and keeps appending.
        with pytest.raises(JournalLocked):
            FileStorage(journal_dir).lock()
        await journal.append(numbered(3))
        assert [v.seq for v in read_journal(journal_dir)] == [1, 2, 3, 4]


# -- values --------------------------------------------------------------------------


def blob(value: Any, **packb: Any) -> bytes:
    return b"\x00" + msgpack.packb(value, use_bin_type=True, **packb)


def zblob(value: Any) -> bytes:
    return b"\x01" + zstandard.ZstdCompressor().compress(msgpack.packb(value))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, None),
        (True, True),
        (-5, -5),
        (2**64 - 1, 2**64 - 1),
        (1.5, 1.5),
        ("héllo", "héllo"),
        ([1, [2, "x"]], [1, [2, "x"]]),
        ({"a": 1, "b": [None]}, {"a": 1, "b": [None]}),
        (b"\x00\xff", {"$bytes": "00ff"}),
        ({"raw": b"ab"}, {"raw": {"$bytes": "6162"}}),
        ({1: "one"}, {"$map": [[1, "one"]]}),
        ({"$bytes": "zz"}, {"$map": [["$bytes", "zz"]]}),
        (float("inf"), {"$float": "inf"}),
        (float("-inf"), {"$float": "-inf"}),
        (msgpack.ExtType(1, b"\x92\xa1t\x01"), {"$ext": 1, "hex": "92a17401"}),
        (msgpack.ExtType(42, b""), {"$ext": 42, "hex": ""}),
    ],
)
def test_decode_value_shows_each_msgpack_type(value: Any, shown: Any) -> None:
    assert decode_value(blob(value)) == shown
    assert decode_value(zblob(value)) == shown


def test_decode_value_shows_nan_as_a_marker() -> None:
    assert decode_value(blob(math.nan)) == {"$float": "nan"}


def test_decode_value_keeps_repeated_and_unhashable_keys() -> None:
    # {[1]: 2, "a": 1, "a": 2}: neither is a valid Python dict.
    body = b"\x83\x91\x01\x02\xa1a\x01\xa1a\x02"
    assert decode_value(b"\x00" + body) == {"$map": [[[1], 2], ["a", 1], ["a", 2]]}


def test_decode_value_shows_a_timestamp_ext_as_its_bytes() -> None:
    stamp = msgpack.Timestamp(1, 0)
    shown = decode_value(blob(stamp))
    assert shown == {"$ext": -1, "hex": stamp.to_bytes().hex()}


def test_decode_value_never_calls_codec_hooks() -> None:
    calls: list[str] = []

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    def encode(obj: Any) -> tuple[str, Any]:
        return "point", obj.x

    def decode(tag: str, plain: Any) -> Any:
        calls.append(tag)
        return Point(plain)

    codec = Codec(encode, decode)
    written = codec.encode({"p": Point(7)})
    calls.clear()  # encode decodes what it wrote to check it reads back
    shown = decode_value(written)
    assert shown == {"p": {"$ext": 1, "hex": msgpack.packb(["point", 7]).hex()}}
    assert calls == []


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"", "empty value blob"),
        (b"\x07\xc0", "unknown value tag 0x07"),
        (b"\x00", "undecodable value"),  # no body
        (b"\x00\xc1", "undecodable value"),  # 0xc1 is never used by msgpack
        (b"\x00\xc0\xc0", "undecodable value"),  # trailing bytes
        (b"\x00\xa2\xff\xfe", "undecodable value"),  # a str that is not UTF-8
        (b"\x01notzstd", "undecodable value"),
    ],
)
def test_undecodable_blobs_are_shown_raw(bad: bytes, why: str) -> None:
    shown = decode_value(bad)
    assert shown["$raw"] == bad.hex()
    assert why in shown["$error"]


def test_decompression_is_capped() -> None:
    big = zblob("x" * 100_000)
    assert decode_value(big) == "x" * 100_000
    shown = decode_value(big, max_size=1000)
    assert shown["$raw"] == big.hex()
    assert "cap" in shown["$error"]
    # Without a declared size the stream is cut at the cap all the same.
    stream = zstandard.ZstdCompressor(write_content_size=False).compress(
        msgpack.packb("y" * 100_000)
    )
    assert zstandard.frame_content_size(stream) == -1
    assert "cap" in decode_value(b"\x01" + stream, max_size=1000)["$error"]
    assert decode_value(b"\x01" + stream) == "y" * 100_000


def test_deep_nesting_is_shown_raw_not_a_crash() -> None:
    deep = b"\x00" + b"\x91" * 1000 + b"\xc0"
    shown = decode_value(deep)
    assert shown == json.loads(json.dumps(shown))  # whatever it is, it is JSON


def test_codec_blobs_decode_to_the_codecs_values() -> None:
    codec = Codec(compress_threshold=16)
    value = {"rows": [{"id": i, "name": f"n{i}"} for i in range(50)], "ok": True}
    packed = codec.encode(value)
    assert packed[0] == 0x01  # large enough to be compressed
    assert decode_value(packed) == value
    small = codec.encode([1, "a", None])
    assert small[0] == 0x00
    assert decode_value(small) == [1, "a", None]


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200)
@given(value=msgpack_values, compressed=st.booleans())
def test_decode_value_output_is_always_strict_json(value: Any, compressed: bool) -> None:
    shown = decode_value(zblob(value) if compressed else blob(value))
    assert "$raw" not in (shown if isinstance(shown, dict) else {})
    json.dumps(shown, allow_nan=False)


@settings(max_examples=300)
@given(data=st.binary(max_size=64))
def test_decode_value_never_raises_on_any_bytes(data: bytes) -> None:
    for candidate in (data, b"\x00" + data, b"\x01" + data):
        json.dumps(decode_value(candidate), allow_nan=False)


# -- docs/format.md --------------------------------------------------------------


def doc_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in docs/format.md."""
    text = DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL)
    assert match is not None, f"no block marked {marker} in {DOC}"
    return match.group(1)


def doc_reader() -> tuple[Any, type[Exception]]:
    namespace: dict[str, Any] = {}
    exec(compile(doc_block("independent-reader"), str(DOC), "exec"), namespace)
    return namespace["read"], namespace["Corrupt"]


def library_view(path: Path) -> list[tuple[int, int, list[Any]]]:
    return [
        (v.segment, v.offset, [r.TYPE_BY_NAME[v.type], v.seq, v.ts_ms, v.instance,
                               *v.fields.values()])
        for v in read_journal(path)
    ]


async def test_doc_reader_reads_what_the_library_reads(journal_dir: Path) -> None:
    codec = Codec()
    recs = [numbered(i, size=150) for i in range(50)]
    recs += [
        r.make(r.STEP_DONE, 5, "inst-1", "k", codec.encode({"v": 1})),
        r.make(r.SUSPENDED, 6, "inst-1", "s", None, 99),
        r.make(r.CANCELLED, 7, "inst-2"),
    ]
    await write(journal_dir, recs, segment_size=4096)
    read, _ = doc_reader()
    ours = library_view(journal_dir)
    assert len({seg for seg, _, _ in ours}) > 2
    assert list(read(str(journal_dir))) == ours
    # A torn tail: both stop quietly at the same record.
    last = sorted(os.listdir(journal_dir))[-1]
    (journal_dir / last).write_bytes((journal_dir / last).read_bytes() + b"\x10\x00\x00\x80garbage")
    assert list(read(str(journal_dir))) == library_view(journal_dir) == ours


async def test_doc_reader_finds_the_corruption_the_library_finds(journal_dir: Path) -> None:
    await write(journal_dir, [numbered(i, size=150) for i in range(50)], segment_size=4096)
    offsets = frame_offsets(journal_dir, 2)
    seg = journal_dir / segment_name(2)
    data = bytearray(seg.read_bytes())
    data[offsets[2] + 3] ^= 0x10  # a length bit: the frame's checksum catches it
    seg.write_bytes(bytes(data))
    read, corrupt = doc_reader()
    with pytest.raises(JournalCorrupt) as ours:
        list(read_journal(journal_dir))
    with pytest.raises(corrupt) as theirs:
        list(read(str(journal_dir)))
    assert theirs.value.args[:2] == (seg.name, ours.value.offset)


async def compacted_journal(path: Path) -> None:
    """Several segments compacted into cmp-k (blocks, seq 0, a state image),
    then plain segments after it."""
    codec = Codec()
    recs = [numbered(i, size=150) for i in range(60)]
    recs += [
        r.make(r.STEP_DONE, 5, "inst-1", "k", codec.encode({"v": 1})),
        r.make(r.SUSPENDED, 6, "inst-1", "s", "waiting", 99),
        r.make(r.TIMER_SET, 7, "inst-2", "nap", 1_800_000_000_000),
        r.make(r.STEP_FAILED, 8, "inst-3", "load", "ValueError", "bad", "tb"),
        r.make(r.CANCELLED, 9, "inst-4"),
    ]
    await write(path, recs, segment_size=4096)
    compact_offline(FileStorage(path), now_ms=0, retention_ms=None)
    await write(path, [numbered(i, size=150) for i in range(60, 100)], segment_size=4096)


async def test_doc_reader_reads_a_compacted_journal_as_the_library_does(
    journal_dir: Path,
) -> None:
    await write(journal_dir, [numbered(i, size=150) for i in range(30)], segment_size=4096)
    leftover = (journal_dir / SEG1).read_bytes()
    await compacted_journal(journal_dir)
    read, _ = doc_reader()
    ours = library_view(journal_dir)
    names = sorted(os.listdir(journal_dir))
    assert names[1].startswith("cmp-")
    assert sum(1 for seg, _, rec in ours if rec[1] == 0) > 60  # rewritten history, seq 0
    offsets = [(seg, off) for seg, off, rec in ours if rec[1] == 0]
    assert len(set(offsets)) < len(offsets)  # records share block frames
    assert any(rec[0] == r.STATE_IMAGE for _, _, rec in ours)
    assert list(read(str(journal_dir))) == ours
    # A leftover the compaction did not delete yet is skipped by both.
    (journal_dir / SEG1).write_bytes(leftover)
    assert list(read(str(journal_dir))) == library_view(journal_dir) == ours
    # A torn tail: both stop quietly at the same record.
    last = sorted(os.listdir(journal_dir))[-1]
    (journal_dir / last).write_bytes((journal_dir / last).read_bytes() + b"\x10\x00\x00\x80junk")
    assert list(read(str(journal_dir))) == library_view(journal_dir) == ours


async def test_doc_reader_finds_damage_in_a_block_as_the_library_does(
    journal_dir: Path,
) -> None:
    await compacted_journal(journal_dir)
    cmp = next(journal_dir / n for n in os.listdir(journal_dir) if n.startswith("cmp-"))
    blocks = sorted({off for seg, off, rec in library_view(journal_dir) if rec[1] == 0})
    data = bytearray(cmp.read_bytes())
    data[blocks[-1] + 30] ^= 0x04  # inside the last block's compressed bytes
    cmp.write_bytes(bytes(data))
    read, corrupt = doc_reader()
    with pytest.raises(JournalCorrupt) as ours:
        list(read_journal(journal_dir))
    with pytest.raises(corrupt) as theirs:
        list(read(str(journal_dir)))
    assert ours.value.offset == blocks[-1]
    assert theirs.value.args[:2] == (cmp.name, ours.value.offset)


async def test_doc_record_at_resolves_every_location(journal_dir: Path) -> None:
    await compacted_journal(journal_dir)
    namespace: dict[str, Any] = {}
    exec(compile(doc_block("independent-reader"), str(DOC), "exec"), namespace)
    record_at = namespace["record_at"]
    found = list(iter_scan(FileStorage(journal_dir), ScanResult()))
    assert any(loc_inner(loc) > 1 for _, loc in found)  # inside blocks, not first
    assert any(loc_inner(loc) == 0 for _, loc in found)  # and in plain segments
    for rec, loc in found:
        assert record_at(str(journal_dir), loc) == rec


def test_doc_example_hex_is_a_real_journal(tmp_path: Path) -> None:
    data = bytes.fromhex("".join(
        line.split(maxsplit=1)[1] for line in doc_block("example-hex").splitlines()
    ))
    assert len(data) == 109
    (tmp_path / SEG1).write_bytes(data)
    (tmp_path / "LOCK").write_bytes(b"")
    reader = read_journal(tmp_path)
    views = list(reader)
    assert reader.torn is None
    assert [(v.segment, v.offset, v.seq, v.type, v.instance, v.ts_ms) for v in views] == [
        (1, 40, 1, "created", "i1", 1714564800000),
        (1, 70, 2, "step_done", "i1", 1714564800005),
    ]
    assert views[0].fields == {"workflow": "wf", "input": b"\x00\xc0"}
    assert views[1].fields == {
        "key": "k", "value": b"\x00\x2a", "started_ms": 1714564800001, "attempts": 1,
    }
    assert decode_value(views[0].fields["input"]) is None
    assert decode_value(views[1].fields["value"]) == 42
    assert unpack_header(data).salt == 0x062876E6
    read, _ = doc_reader()
    assert [off for _, off, _ in read(str(tmp_path))] == [40, 70]


def test_doc_record_table_matches_the_schema() -> None:
    text = DOC.read_text()
    table = text.split("<!-- record-types -->", 1)[1].strip().split("\n\n", 1)[0]
    names = {str: "str", bytes: "blob", int: "int", type(None): "nil", dict: "map", list: "array",
             bool: "bool"}
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[int(cells[0])] = (cells[1].strip("`"), cells[2])
    expected = {
        rtype: (
            name,
            ", ".join(
                f"`{field}` {' or '.join(names[t] for t in types)}" for field, types in fields
            ) or "(none)",
        )
        for rtype, (name, fields) in r.SCHEMA.items()
    }
    assert rows == expected
