"""The rest of a finished instance's entry: packed in the snapshot, decoded
when first read; and the checks of an entry's fields.

Why. A journal of a million records holds about a hundred thousand finished
instances. At start the engine reads few fields of each: its state, its
workflow, its times and its parent (the resume scan, listings, retention,
the children's repair). Decoding and checking all of an entry's fields cost
about 4 us an instance, the bulk of a start from the snapshot; the *rest*
(every other field, ``REST``) kept as the one bytes object the snapshot
holds costs one allocation. ``InstanceEntry.__getattr__`` (only a slot not
set yet gets there) calls ``decode`` at the first read of any of them, and
``Index.apply`` before it changes the entry, so no field is written while
the rest is packed: the rest, if still packed, is what the snapshot writes
back unchanged.

The checks are the snapshot's load-time checks, moved here so a rest
decoded later is checked as a live instance's fields are at load (a
snapshot is never trusted: one crafted with a valid crc must not plant a
type the engine trips on). A malformed rest raises ``MalformedEntry`` at
each read (its entry keeps it), naming the snapshot to delete.

Threads: an entry is decoded by the thread that reads it. The live index
is read and changed on the engine's thread; what reads entries elsewhere
either reads only ``rest`` and fields already decoded (the snapshot's
writer) or reads entries no other thread holds (compaction's ``removed``
instances, taken out of the live index first; the offline compactor).
Two decodes of one entry would set equal fields, and nothing changes an
entry between them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from . import lifecycle as lc
from .errors import EngineError
from .wire import ext_hook, wire

if TYPE_CHECKING:
    from .index import Entry, InstanceEntry, PublishedEvent

REST = (
    "input", "outcome", "error", "pending", "status", "deadline_ms", "table", "signals",
    "waits", "done_waits", "last_seq", "events", "status_calls", "meta", "tries", "flow",
)
VALUE = frozenset({bytes, int})  # a blob, or where its record is
OUTCOME = frozenset({bytes, int, type(None)})
TEXT = frozenset({str, type(None)})
TIME = frozenset({int, type(None)})
STATES = frozenset(range(len(lc.STATE_NAMES)))


class MalformedEntry(ValueError):
    """An entry's fields, from a snapshot, are not what the index holds."""


class MalformedRest(MalformedEntry, EngineError):
    """A finished instance's packed fields, read after start, are malformed."""


def fields(e: InstanceEntry) -> tuple[Any, ...]:
    """The rest's fields of a decoded entry as msgpack carries them, in
    ``REST``'s order (a live instance's in the snapshot, a finished one's packed)."""
    from .index import pack_steps

    table = e.table
    return (
        wire(e.input), wire(e.outcome), e.error, e.pending, e.status, e.deadline_ms,
        table if type(table) is bytes else pack_steps(table),  # type: ignore[arg-type]
        wire_table(e.signals), e.waits, e.done_waits, e.last_seq, wire_events(e.events),
        e.status_calls, bytes(e.meta), e.tries, e.flow,
    )


def fill(iid: str | None, e: InstanceEntry, rest: Any) -> None:
    """Set the rest's fields of ``e`` from ``rest`` (``fields``' form,
    decoded), checked; MalformedEntry, and none of them set, if they are not
    what the index holds."""
    if type(rest) is not tuple or len(rest) != len(REST):
        raise MalformedEntry(f"{_who(iid)} is malformed")
    (
        e.input, e.outcome, e.error, e.pending, e.status, e.deadline_ms, e.table,
        e.signals, e.waits, e.done_waits, e.last_seq, e.events, e.status_calls,
        e.meta, e.tries, e.flow,
    ) = rest
    try:
        _check(iid, e)
    except MalformedEntry:
        for name in REST:  # nothing of it lands in the entry
            object.__delattr__(e, name)
        raise


def pack(e: InstanceEntry) -> bytes | memoryview:
    """The rest of ``e`` as the snapshot keeps it (the bytes it came as, if
    never decoded)."""
    if e.rest is not None:
        return e.rest
    packed: bytes = msgpack.packb(fields(e), use_bin_type=True)
    return packed


def wire_table(table: dict[str, Entry] | None) -> dict[str, Any] | None:
    """A table of values (signals) as msgpack carries it."""
    return None if table is None else {k: wire(v) for k, v in table.items()}


def wire_events(events: list[PublishedEvent] | None) -> list[Any] | None:
    """An event stream as msgpack carries it."""
    return None if events is None else [(k, ts, wire(v)) for k, ts, v in events]


def decode(e: InstanceEntry) -> None:
    """Decode and check ``e``'s packed rest into its fields (see the module
    comment); at once if it has none."""
    rest = e.rest
    if rest is None:
        return
    try:
        fill(None, e, msgpack.unpackb(rest, raw=False, strict_map_key=True, use_list=False,
                                      ext_hook=ext_hook))
    except (MalformedEntry, ValueError, TypeError) as exc:
        raise MalformedRest(
            f"a finished instance's entry in the index snapshot is malformed ({exc}); "
            "delete index.snap in the journal's directory and start again: the index "
            "is then rebuilt from the journal"
        ) from None
    e.rest = None


def _who(iid: str | None) -> str:
    return "its entry" if iid is None else f"instance {iid!r}"


def _check(iid: str | None, e: Any) -> None:
    """The rest's fields of an entry, looked into; the
    common ones inline, the tables only when it has them. Sets ``events``
    to the list the index keeps."""
    if not (
        type(e.last_seq) is int and type(e.table) is bytes and type(e.meta) is bytes
        and type(e.input) in VALUE and type(e.outcome) in OUTCOME
        and type(e.status) in TEXT and type(e.deadline_ms) in TIME
        and type(e.status_calls) is int
    ):
        raise MalformedEntry(f"{_who(iid)} is malformed")
    if e.error is not None or e.pending is not None or e.signals is not None or (
        e.waits is not None or e.done_waits is not None
    ):
        _check_tables(iid, e)
    if e.events is not None:
        e.events = _events(iid, e.events)
    if e.tries is not None:
        _check_tries(iid, e.tries)
    if e.flow is not None:
        _check_flow(iid, e.flow)


def _check_tables(iid: str | None, e: Any) -> None:
    """An error, the pending keys, the signals and the waits, looked into."""
    error, pending, waits = e.error, e.pending, e.waits
    ok = error is None or (
        type(error) is tuple and len(error) == 2 and all(type(x) is str for x in error)
    )
    ok = ok and (e.signals is None or (
        type(e.signals) is dict and all(type(v) in VALUE for v in e.signals.values())
    ))
    ok = ok and (e.done_waits is None or type(e.done_waits) is dict)
    ok = ok and (waits is None or type(waits) is dict)
    if pending is not None:
        ok = ok and type(pending) is tuple and waits is not None and all(
            type(k) is str and k in waits for k in pending
        )
    for key, wait in (waits or {}).items() if ok else ():
        ok = ok and type(key) is str and type(wait) is tuple and len(wait) == 3 and (
            wait[0] in (lc.WAIT_SIGNAL, lc.WAIT_TIMER, lc.WAIT_CHILD)
            and type(wait[1]) in TIME and type(wait[2]) in TEXT
        )
    if not ok:
        raise MalformedEntry(f"{_who(iid)} has a malformed table")


def _events(iid: str | None, stream: Any) -> list[PublishedEvent]:
    """A decoded event stream, checked, as the index keeps it (a list)."""
    if type(stream) is not tuple or not all(
        type(ev) is tuple and len(ev) == 3 and type(ev[0]) is str and type(ev[1]) is int
        and type(ev[2]) in VALUE for ev in stream
    ):
        raise MalformedEntry(f"{_who(iid)} has a malformed event stream")
    return list(stream)


def _check_flow(iid: str | None, flow: object) -> None:
    if not (
        type(flow) is tuple and len(flow) == 3 and type(flow[0]) is int
        and type(flow[1]) in TIME and type(flow[2]) in TEXT
    ):
        raise MalformedEntry(f"{_who(iid)} has malformed flow options")


def _check_tries(iid: str | None, tries: object) -> None:
    """A step's failed attempts: key -> (started_ms, ((type, message), ...))."""
    ok = type(tries) is dict and bool(tries)
    for key, value in tries.items() if ok else ():  # type: ignore[attr-defined]
        ok = ok and type(key) is str and type(value) is tuple and len(value) == 2 and (
            type(value[0]) is int and type(value[1]) is tuple and bool(value[1])
            and all(type(x) is tuple and len(x) == 2 and type(x[0]) is str
                    and type(x[1]) is str for x in value[1])
        )
    if not ok:
        raise MalformedEntry(f"{_who(iid)} has malformed failed attempts")
