"""Record types and their wire form. Pure.

A record is a msgpack array ``[type, seq, ts_ms, instance, *fields]``:
``seq`` is the journal's dense sequence number (given by the appender),
``ts_ms`` the engine's wall clock in milliseconds, ``instance`` the instance
id. User values (inputs, results, signal payloads) are opaque *blobs* here:
bytes produced by codec.py, never decoded by the journal.

The seal (type 0) is not a record of the history: it is the last frame of a
full segment, ``[0, next_seq]``.

In hot loops (start-up replay, the step path) records stay plain lists;
``RecordView`` is the readable form for tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

SEAL: Final = 0
CREATED: Final = 1
STEP_DONE: Final = 2
STEP_FAILED: Final = 3
STEP_STARTED: Final = 4
SUSPENDED: Final = 5
SIGNALLED: Final = 6
TIMER_SET: Final = 7
TIMER_FIRED: Final = 8
SUSPEND_TIMED_OUT: Final = 9
FORGOT: Final = 10
COMPLETED: Final = 11
FAILED: Final = 12
CANCELLED: Final = 13
RESTARTED: Final = 14
STATE_IMAGE: Final = 15  # written by compaction only

_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))

# type -> (name, ((field name, allowed types), ...)) for the fields after
# the common four. Names are those used by memable-dump and docs/format.md.
SCHEMA: Final[dict[int, tuple[str, tuple[tuple[str, tuple[type, ...]], ...]]]] = {
    CREATED: ("created", (("workflow", (str,)), ("input", (bytes,)))),
    STEP_DONE: ("step_done", (("key", (str,)), ("value", (bytes,)))),
    STEP_FAILED: (
        "step_failed",
        (("key", (str,)), ("error_type", (str,)), ("message", (str,)),
         ("traceback", (str,))),
    ),
    STEP_STARTED: ("step_started", (("key", (str,)),)),
    SUSPENDED: (
        "suspended",
        (("key", (str,)), ("status", _OPT_STR), ("deadline_ms", _OPT_INT)),
    ),
    SIGNALLED: ("signalled", (("key", (str,)), ("payload", (bytes,)))),
    TIMER_SET: ("timer_set", (("key", (str,)), ("deadline_ms", (int,)))),
    TIMER_FIRED: ("timer_fired", (("key", (str,)),)),
    SUSPEND_TIMED_OUT: ("suspend_timed_out", (("key", (str,)),)),
    FORGOT: ("forgot", (("key", (str,)),)),
    COMPLETED: ("completed", (("result", (bytes,)),)),
    FAILED: (
        "failed",
        (("error_type", (str,)), ("message", (str,)), ("traceback", (str,))),
    ),
    CANCELLED: ("cancelled", ()),
    RESTARTED: ("restarted", ()),
    STATE_IMAGE: (
        "state_image",
        (("state", (int,)), ("wait_key", _OPT_STR), ("status", _OPT_STR),
         ("deadline_ms", _OPT_INT), ("timers", (dict,)), ("done_waits", (dict,))),
    ),
}

# Where each field sits in a record list, by name (records stay plain lists
# in hot loops; these are the only spelling of a position outside this
# module): ``rec[r.KEY]``, ``rec[r.STEP_DONE_VALUE]``. A test checks every
# one against SCHEMA.
TYPE: Final = 0
SEQ: Final = 1
TS: Final = 2
INSTANCE: Final = 3
FIELDS: Final = 4  # where a type's own fields (SCHEMA) begin
# KEY: every keyed record (step_*, suspended, signalled, timer_*, suspend_timed_out, forgot)
KEY: Final = 4
CREATED_WORKFLOW: Final = 4
CREATED_INPUT: Final = 5
STEP_DONE_VALUE: Final = 5
STEP_FAILED_TYPE: Final = 5
STEP_FAILED_MESSAGE: Final = 6
STEP_FAILED_TRACEBACK: Final = 7
SUSPENDED_STATUS: Final = 5
SUSPENDED_DEADLINE: Final = 6
SIGNALLED_PAYLOAD: Final = 5
TIMER_SET_DEADLINE: Final = 5
COMPLETED_RESULT: Final = 4
FAILED_TYPE: Final = 4
FAILED_MESSAGE: Final = 5
FAILED_TRACEBACK: Final = 6
IMAGE_STATE: Final = 4
IMAGE_WAIT_KEY: Final = 5
IMAGE_STATUS: Final = 6
IMAGE_DEADLINE: Final = 7
IMAGE_TIMERS: Final = 8
IMAGE_DONE_WAITS: Final = 9
SEAL_NEXT_SEQ: Final = 1  # a seal is [SEAL, next_seq]

TYPE_NAMES: Final[dict[int, str]] = {t: s[0] for t, s in SCHEMA.items()}
TYPE_BY_NAME: Final[dict[str, int]] = {n: t for t, n in TYPE_NAMES.items()}
TYPE_NAMES_WITH_SEAL: Final[dict[int, str]] = {SEAL: "seal", **TYPE_NAMES}

_CHECKS: Final[dict[int, tuple[int, tuple[tuple[type, ...], ...]]]] = {
    t: (FIELDS + len(fields), tuple(types for _, types in fields))
    for t, (_, fields) in SCHEMA.items()
}


def _signatures() -> dict[tuple[type, ...], frozenset[int]]:
    """Every exact type layout ``check`` accepts, with the types that have it.

    ``check`` tests fields with isinstance, so an int field also takes a
    bool; that is the only subclass msgpack produces. STATE_IMAGE is left
    out: its tables need a closer look (``_check_image``).
    """
    widened: dict[type, tuple[type, ...]] = {int: (int, bool)}
    out: dict[tuple[type, ...], set[int]] = {}
    for rtype, (_, fields) in _CHECKS.items():
        if rtype == STATE_IMAGE:
            continue
        layouts: list[tuple[type, ...]] = [(int, int, int, str)]
        for allowed in fields:
            options = [t for a in allowed for t in widened.get(a, (a,))]
            layouts = [(*layout, t) for layout in layouts for t in options]
        for layout in layouts:
            out.setdefault(layout, set()).add(rtype)
    return {layout: frozenset(rtypes) for layout, rtypes in out.items()}


# type(field) for each field -> the record types with that layout: one dict
# lookup checks a record's length and every field's type at once (the scan
# and the step path check every record).
SIGNATURES: Final[dict[tuple[type, ...], frozenset[int]]] = _signatures()


class RecordError(ValueError):
    """A decoded payload is not a well-formed record."""


def check(rec: Any) -> list[Any]:
    """Return ``rec`` if it is a well-formed record list, else RecordError."""
    if type(rec) is list:
        # Fast path; any other input takes the full walk below, which also
        # words the error.
        rtypes = SIGNATURES.get(tuple(map(type, rec)))
        if rtypes is not None and rec[TYPE] in rtypes:
            return rec
    if type(rec) is not list or len(rec) < FIELDS:
        raise RecordError("payload is not a record array")
    rtype = rec[TYPE]
    spec = _CHECKS.get(rtype) if type(rtype) is int else None
    if spec is None:
        raise RecordError(f"unknown record type {rtype!r}")
    length, types = spec
    if len(rec) != length:
        raise RecordError(
            f"{TYPE_NAMES[rtype]} record has {len(rec)} fields, expected {length}"
        )
    if type(rec[SEQ]) is not int or type(rec[TS]) is not int or type(rec[INSTANCE]) is not str:
        raise RecordError("record seq, time or instance has the wrong type")
    for value, allowed in zip(rec[FIELDS:], types, strict=False):
        if not isinstance(value, allowed):
            raise RecordError(
                f"{TYPE_NAMES[rtype]} record has a field of type {type(value).__name__}"
            )
    if rtype == STATE_IMAGE:
        _check_image(rec)
    return rec


_N_STATES = 6  # see lifecycle.STATE_NAMES
_WAIT_KINDS = frozenset({TIMER_FIRED, SUSPEND_TIMED_OUT})


def _check_image(rec: list[Any]) -> None:
    if not 0 <= rec[IMAGE_STATE] < _N_STATES:
        raise RecordError(f"state_image record has unknown state {rec[IMAGE_STATE]!r}")
    for table, kinds in ((rec[IMAGE_TIMERS], None), (rec[IMAGE_DONE_WAITS], _WAIT_KINDS)):
        for key, value in table.items():
            if type(key) is not str or type(value) is not int or (
                kinds is not None and value not in kinds
            ):
                raise RecordError("state_image record has a bad timers or done_waits entry")


def check_seal(rec: Any) -> int | None:
    """The next_seq of a seal record, or None if ``rec`` is not a seal."""
    if type(rec) is not list or len(rec) != 2 or rec[TYPE] != SEAL:
        return None
    next_seq = rec[SEAL_NEXT_SEQ]
    return next_seq if type(next_seq) is int else None
    return None


def check_key(key: object) -> str:
    """Return ``key`` if it can name a step, suspension or timer; else raise."""
    if type(key) is not str or not key:
        raise TypeError(f"a key must be a non-empty str, not {key!r}")
    if key.endswith("*"):
        raise ValueError(f"key {key!r} ends in '*', which engine.forget reads as a prefix")
    return key


def make(rtype: int, ts_ms: int, instance: str, *fields: Any) -> list[Any]:
    """A record list; its seq (0 here) is set by the journal on append."""
    return [rtype, 0, ts_ms, instance, *fields]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordView:
    """A record in readable form, with where it sits in the journal."""

    seq: int
    type: str
    ts_ms: int
    instance: str
    fields: dict[str, Any]
    segment: int
    offset: int


def view(rec: list[Any], segment: int, offset: int) -> RecordView:
    name, fields = SCHEMA[rec[TYPE]]
    return RecordView(
        seq=rec[SEQ], type=name, ts_ms=rec[TS], instance=rec[INSTANCE],
        fields={fname: value for (fname, _), value in zip(fields, rec[FIELDS:], strict=False)},
        segment=segment, offset=offset,
    )
