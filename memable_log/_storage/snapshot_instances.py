"""The instances of an index snapshot: in columns, the rest of each finished
one packed in one bin, the other fields of each live one by id.

Why columns. A journal of a million records holds about a hundred thousand
instances, most of them finished, and the start builds an entry for each.
As a map of per-instance arrays, msgpack built a tuple, a bytes object (the
packed rest) and the fields of each one before the loop built its entry.
Here the fields every entry has at start (workflow, state, created and
updated times, parent) are columns: the numbers are packed arrays read in
one call each (``array.frombytes``), the ids and parents lists of str. A
finished instance's rest (_core/rest.py) is a slice of the rests that
follow the body, kept as a memoryview until its first read: nothing is
copied at load. A live
instance's other 16 fields come from a map by id, checked at load.

Layout (docs/format.md, "The index snapshot"), one msgpack array of nine:
ids (array of str, the index's order), workflow numbers (bin, u32 LE),
states (bin, u8), created_ms and updated_ms (bins, i64 LE), parents (array
of str or nil), the end of each instance's rest in the rests (bin, u64 LE;
a live instance's rest is empty), the rests' length, and the live
instances' fields (map id -> array of the 16 rest fields, in
``rest.REST``'s order). The rests themselves follow the snapshot's msgpack
body in the file, outside it, so a load takes them as a view of the file's
bytes: nothing is copied.

Checked at load, as the rest of the snapshot is: every column as long as
the ids, the states and workflow numbers in range, a finished state for a
packed rest and a live state for a map entry, ids and parents str (or nil),
a live instance's fields as ``rest.fill`` wants them. A finished
instance's rest is checked when it is decoded.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

from .._core import lifecycle as lc
from .._core.index import InstanceEntry
from .._core.rest import STATES, TEXT, MalformedEntry
from .._core.rest import fields as rest_fields
from .._core.rest import fill as fill_rest
from .._core.rest import pack as pack_rest

COLUMNS = 9
_BIG = sys.byteorder == "big"  # the columns are little-endian on disk


def _le(values: array[int]) -> bytes:
    if _BIG:
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _column(code: str, data: object, n: int) -> array[int]:
    if type(data) is not bytes:
        raise MalformedEntry("a column of the instances is not a bin")
    values = array(code)
    values.frombytes(data)
    if _BIG:
        values.byteswap()
    if len(values) != n:
        raise MalformedEntry("the instances' columns differ in length")
    return values


def encode(
    instances: dict[str, InstanceEntry], numbers: dict[str, int]
) -> tuple[list[Any], bytes]:
    """The snapshot's instances item, and the rests that follow the body;
    ``numbers`` gets each workflow's number."""
    ids, parents, live = [], [], {}
    workflows, states = array("I"), bytearray()
    created, updated, ends = array("q"), array("q"), array("Q")
    rests: list[bytes | memoryview] = []
    end = 0
    finished = lc.FINISHED
    for iid, e in instances.items():
        ids.append(iid)
        workflows.append(numbers.setdefault(e.workflow, len(numbers)))
        states.append(e.state)
        created.append(e.created_ms)
        updated.append(e.updated_ms)
        parents.append(e.parent)
        if e.state in finished:  # as it came if never read
            rest = pack_rest(e)
            rests.append(rest)
            end += len(rest)
        else:
            live[iid] = rest_fields(e)
        ends.append(end)
    return [ids, _le(workflows), bytes(states), _le(created), _le(updated), parents,
            _le(ends), end, live], b"".join(rests)


def decode(columns: Any, names: list[str], rests: memoryview) -> dict[str, InstanceEntry]:
    """The index's instances from the snapshot's item and the rests that
    follow its body (MalformedEntry if any check fails)."""
    if type(columns) is not tuple or len(columns) != COLUMNS:
        raise MalformedEntry("the instances are not the snapshot's nine columns")
    ids, workflows, states, created, updated, parents, ends, size, live = columns
    if type(ids) is not tuple or type(parents) is not tuple or type(live) is not dict or (
        type(states) is not bytes or size != len(rests)
    ):
        raise MalformedEntry("the instances' columns are malformed")
    n = len(ids)
    numbers = _column("I", workflows, n)
    created_ms, updated_ms, rest_ends = (_column(code, data, n) for code, data in (
        ("q", created), ("q", updated), ("Q", ends)))
    if len(states) != n or len(parents) != n or (n and (
        max(numbers) >= len(names) or not set(states) <= STATES
    )):
        raise MalformedEntry("the instances' columns are malformed")
    out: dict[str, InstanceEntry] = {}
    new = InstanceEntry.__new__
    finished = lc.FINISHED
    view = rests
    start = lives = 0
    for iid, number, state, c, u, parent, end in zip(
        ids, numbers, states, created_ms, updated_ms, parents, rest_ends, strict=True
    ):
        e = new(InstanceEntry)
        e.workflow, e.state, e.created_ms, e.updated_ms, e.parent = (
            names[number], state, c, u, parent)
        if type(iid) is not str or type(parent) not in TEXT:
            raise MalformedEntry(f"instance {iid!r} is malformed")
        if state in finished:
            e.rest = view[start:end]
        else:
            if end != start:
                raise MalformedEntry(f"instance {iid!r} is malformed")
            fill_rest(iid, e, live.get(iid))
            e.rest = None
            lives += 1
        start = end
        out[iid] = e
    if len(out) != n or len(live) != lives:
        raise MalformedEntry("the instances repeat an id, or name a live one twice")
    return out
