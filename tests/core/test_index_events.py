"""The index's status text and event streams: apply, the snapshot, compaction.

An event's seq is its place in the instance's stream; the stream survives a
snapshot round trip and a compaction as it is (values inline or by
location, times, order); the status text is the latest recorded and
survives both too, with the number of the latest set_status call.
"""

from __future__ import annotations

from typing import Any

import pytest

from memable_log._compaction import compactor
from memable_log._core import index as ix
from memable_log._core import records as r
from memable_log._core.rest import REST
from memable_log._storage import snapshot as snap

BIG = bytes(range(256)) * 2  # above the inline limit: kept by location


def history() -> list[list[Any]]:
    recs = [
        r.make(r.CREATED, 1_000, "i", "wf", b"\x00\xc0"),
        r.make(r.PUBLISHED, 1_001, "i", "tok-0", b"\x00\xa1a"),
        r.make(r.STATUS_SET, 1_002, "i", "thinking", 1),
        r.make(r.PUBLISHED, 1_003, "i", "tok-1", BIG),
        r.make(r.SUSPENDED, 1_004, "i", "go", "waiting for go", None),
        r.make(r.PARKED, 1_004, "i", ["go"]),
        r.make(r.SIGNALLED, 1_005, "i", "go", b"\x00\xc3"),
        r.make(r.PUBLISHED, 1_006, "i", "tok-2", b"\x00\xa1c"),
        r.make(r.CREATED, 1_007, "quiet", "wf", b"\x00\xc0"),
    ]
    for seq, rec in enumerate(recs, 1):
        rec[r.SEQ] = seq
    return recs


def applied(recs: list[list[Any]]) -> tuple[ix.Index, dict[int, list[Any]]]:
    index = ix.Index()
    at = {}
    for n, rec in enumerate(recs, 1):
        loc = ix.pack_loc(1, 40 * n)
        at[loc] = rec
        index.apply(rec, loc)
    return index, at


def shown(index: ix.Index, read: Any) -> dict[str, Any]:
    return {
        iid: (
            e.status, e.status_calls, e.state, e.updated_ms,
            None if e.events is None else [
                (k, ts, v if type(v) is bytes else read(v)[r.PUBLISHED_VALUE])
                for k, ts, v in e.events
            ],
        )
        for iid, e in index.instances.items()
    }


def test_apply_keeps_the_stream_in_order_and_the_latest_text_in_any_state() -> None:
    index, at = applied(history())
    e = index.instances["i"]
    assert [k for k, _, _ in e.events or ()] == ["tok-0", "tok-1", "tok-2"]
    assert type(e.events[1][2]) is int  # type: ignore[index]
    assert at[e.events[1][2]][r.PUBLISHED_VALUE] == BIG  # type: ignore[index]
    assert (e.state, e.status, e.status_calls) == (0, "waiting for go", 1)  # running again
    assert index.instances["quiet"].events is None  # no stream, no list


def test_the_snapshot_round_trip_keeps_streams_and_status() -> None:
    index, at = applied(history())
    data = snap.encode(index, ("seg", 40, 10, index.records), [])
    fresh = ix.Index()
    snap.decode_into(fresh, data)
    assert shown(fresh, at.__getitem__) == shown(index, at.__getitem__)
    assert type(fresh.instances["i"].events) is list


@pytest.mark.parametrize("events", [
    (("k", 1),), (("k", "1", b"v"),), ((1, 1, b"v"),), (("k", 1, "v"),), "x",
])
def test_a_snapshot_with_a_malformed_stream_is_refused(events: Any) -> None:
    index, _ = applied(history())
    data = snap.encode(index, ("seg", 40, 10, index.records), [])
    fields = list(snap_body(data)[0][5][8]["i"])  # a live instance's fields
    fields[REST.index("events")] = events
    with pytest.raises(snap.SnapshotInvalid, match="event stream"):
        snap.decode_into(ix.Index(), reencode(data, "i", fields))


def snap_body(data: bytes) -> tuple[Any, bytes]:
    """The snapshot's msgpack body, and the finished instances' rests after it."""
    import msgpack

    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data[12:])
    body = unpacker.unpack()
    return body, data[12 + unpacker.tell():]


def reencode(data: bytes, iid: str, fields: list[Any]) -> bytes:
    import zlib

    import msgpack

    body, rests = snap_body(data)
    body[5][8][iid] = fields
    packed = msgpack.packb(body, use_bin_type=True) + rests
    return snap.MAGIC + zlib.crc32(packed).to_bytes(4, "little") + packed


def test_compaction_rebuilds_streams_times_and_status_as_a_full_scan() -> None:
    index, at = applied(history())
    synthesised = list(compactor.synthesize(index, at.__getitem__))
    again, at2 = applied(synthesised)
    assert shown(again, at2.__getitem__) == shown(index, at.__getitem__)
    # Each event keeps its own time: Event.at survives.
    times = [rec[r.TS] for rec in synthesised if rec[r.TYPE] == r.PUBLISHED]
    assert times == [1_001, 1_003, 1_006]
