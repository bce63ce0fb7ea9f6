"""Generated journals, good and damaged, for the tests that compare readers.

Hypothesis strategies: ``journals()`` draws a journal's files (maybe a
compacted segment first, then one to three plain segments, some sealed),
with records of every type, record-shaped junk, raw payloads, blocks and
seals, some in the wrong places, in commit batches that are mostly well
formed (version 4 marks each batch's last frame) and sometimes not;
``damaged(files)`` then flips bits, cuts, inserts and appends bytes (valid
later commits among them).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import strategies as st

from memable_log._core import records as r
from memable_log._core.format import (
    FORMAT_VERSION,
    FRAME_BATCH_END,
    FRAME_BATCH_START,
    FRAME_BLOCK,
    FRAME_RESERVED_MASK,
    SEG_COMPACTED,
    SegmentHeader,
    compacted_name,
    pack_header,
    segment_name,
)
from memable_log._core.framing import encode_block, encode_frame

SALT = 0x5EED_CAFE


ints = st.integers(-(2**63), 2**64 - 1)
small_text = st.text(max_size=6)
msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | small_text
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(small_text, inner, max_size=3),
    max_leaves=8,
)
_FIELD_VALUES: dict[type, st.SearchStrategy[Any]] = {
    int: ints | st.booleans(),
    str: small_text,
    bytes: st.binary(max_size=8),
    type(None): st.none(),
    dict: st.dictionaries(small_text, st.sampled_from([
        0, 1, r.TIMER_FIRED, r.SUSPEND_TIMED_OUT, 99, [0, None, None], [1, 5, "s"], [2, 1, None],
    ]), max_size=2),
    list: st.lists(small_text, max_size=3),
    bool: st.booleans(),  # schedule_set's catch_up
}


@st.composite
def well_typed(draw: st.DrawFn) -> list[Any]:
    """A record of a random type with fields of allowed types (seq set later)."""
    rtype = draw(st.sampled_from(sorted(r.SCHEMA)))
    fields = [draw(st.one_of(*(_FIELD_VALUES[t] for t in allowed)))
              for _, allowed in r.SCHEMA[rtype][1]]
    if rtype in (r.STATE_IMAGE, r.STATE_IMAGE_V1):
        fields[0] = draw(st.integers(-1, 8))
    # An engine-level record (schedules, debounce) mostly names no instance.
    instance = draw(st.sampled_from([r.ENGINE, r.ENGINE, "i"]) if rtype in r.ENGINE_LEVEL
                    else small_text)
    return [rtype, 0, draw(ints), instance, *fields]


@st.composite
def odd_record(draw: st.DrawFn) -> list[Any]:
    """Record-shaped but maybe wrong: types, length, first four fields."""
    rec = draw(well_typed())
    choice = draw(st.integers(0, 5))
    if choice == 0:
        rec[draw(st.integers(0, len(rec) - 1))] = draw(msgpack_values)
    elif choice == 1:
        rec.append(draw(msgpack_values))
    elif choice == 2 and len(rec) > 1:
        rec.pop()
    elif choice == 3:
        rec[0] = draw(st.sampled_from([True, False, 1.0, 0, 16, -1, "1", None]))
    elif choice == 4:
        return draw(st.lists(msgpack_values, max_size=8))
    return rec


# An item of a segment: ("rec", record, keep_seq), ("raw", payload bytes),
# ("seal", delta) or ("block", [records, or None for a seal]); each with a
# batch-start bit. Blocks belong in compacted segments only.
items = st.one_of(
    st.tuples(st.just("rec"), well_typed(), st.just(False)),
    st.tuples(st.just("rec"), well_typed(), st.just(False)),
    st.tuples(st.just("rec"), odd_record(), st.booleans()),
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("seal"), st.sampled_from([0, 0, 0, 1, -1])),
    st.tuples(st.just("block"), st.lists(
        well_typed() | well_typed() | odd_record() | st.none(), min_size=1, max_size=4)),
)


def frame_of(payload: bytes, batch_start: bool, batch_end: bool = False) -> bytes:
    return encode_frame(payload, SALT, batch_start=batch_start, batch_end=batch_end)


def packed(rec: Any) -> bytes:
    return msgpack.packb(rec, use_bin_type=True)  # type: ignore[no-any-return]


@st.composite
def segment_body(draw: st.DrawFn, first_seq: int, compacted: bool) -> tuple[bytes, int]:
    """Frames of one segment and the seq after them.

    Plain segments mostly hold well-formed commit batches (a seal alone in
    its own); sometimes each frame's batch bits are drawn at random.
    Compacted segments draw the start bit alone (they have no batches).
    """
    # Each frame as (payload, batch start, batch end, block bytes or None).
    frames: list[tuple[bytes, bool, bool, bytes | None]] = []
    seq = first_seq
    well_formed = not compacted and draw(st.integers(0, 4)) > 0
    opened = False

    def end_last() -> None:
        payload, start, _, block = frames[-1]
        frames[-1] = payload, start, True, block

    def add(payload: bytes, seal: bool = False) -> None:
        nonlocal opened
        if not well_formed:
            end = not compacted and draw(st.integers(0, 3)) == 0
            frames.append((payload, draw(st.booleans()), end, None))
            return
        if seal and opened:  # close the batch before the seal
            end_last()
        end = seal or draw(st.booleans())
        frames.append((payload, not opened, end, None))
        opened = not end

    for item in draw(st.lists(items, max_size=8)):
        if item[0] == "rec":
            rec = item[1]
            if type(rec) is list and len(rec) > 1 and not item[2]:
                rec[1] = 0 if compacted else seq
                seq += not compacted
            add(packed(rec))
        elif item[0] == "raw":
            add(item[1])
        elif item[0] == "seal":
            add(packed([0, seq + item[1]]), seal=True)
        else:
            inner = []
            for rec in item[1]:
                if rec is None:
                    rec = [0, seq]
                elif type(rec) is list and len(rec) > 1:
                    rec[1] = 0 if compacted else seq
                    seq += not compacted
                inner.append(packed(rec))
            frames.append((b"", False, False, encode_block(inner, SALT)))
    if well_formed and opened and draw(st.integers(0, 3)) > 0:
        end_last()  # mostly, the last batch ends
    out = bytearray()
    for payload, start, end, block in frames:
        out += block if block is not None else frame_of(payload, start, end)
    return bytes(out), seq


@st.composite
def journals(draw: st.DrawFn) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    number, seq = 1, 1
    if draw(st.booleans()):  # start with a compacted segment
        number = draw(st.integers(1, 3))
        first_seq = draw(st.integers(1, 40))
        body, _ = draw(segment_body(first_seq, compacted=True))
        if draw(st.booleans()):
            body += frame_of(packed([0, first_seq]), True)  # compacted: no batch ends
        header = SegmentHeader(FORMAT_VERSION, SEG_COMPACTED, SALT, number, first_seq)
        files[compacted_name(number)] = pack_header(header) + body
        if number > 1 and draw(st.booleans()):  # superseded by the compacted one
            files[segment_name(number - 1)] = draw(st.binary(max_size=60))
        seq = first_seq
        number += 1
    for i in range(draw(st.integers(1, 3))):
        body, next_seq = draw(segment_body(seq, compacted=False))
        last = i == 2 or draw(st.booleans())
        if not last or draw(st.integers(0, 4)) == 0:
            body += frame_of(packed([0, next_seq]), True, True)
        header = SegmentHeader(FORMAT_VERSION, 0, SALT, number, seq)
        files[segment_name(number)] = pack_header(header) + body
        seq, number = next_seq, number + 1
        if last:
            break
    return files


@st.composite
def damaged(draw: st.DrawFn, files: dict[str, bytes]) -> dict[str, bytes]:
    """Zero to three mutations of the files' bytes."""
    out = {name: bytearray(data) for name, data in files.items()}
    names = sorted(out)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names))
        data = out[name]
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.integers(0, 5))
        if kind == 0 and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == 1:
            del data[where:]
        elif kind == 2:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3:
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == 4:  # a valid commit after whatever damage comes before it
            data += frame_of(draw(st.binary(min_size=1, max_size=8)), True, True)
        elif kind == 5 and len(data) > where + 4:  # a damaged length
            word = struct.unpack_from("<I", data, where)[0] ^ draw(st.sampled_from(
                [FRAME_BLOCK, FRAME_RESERVED_MASK, 0x00FF_FFFF, FRAME_BATCH_START,
                 FRAME_BATCH_END]))
            struct.pack_into("<I", data, where, word)
    return {name: bytes(data) for name, data in out.items()}
