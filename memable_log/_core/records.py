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
STEP_DONE_V2: Final = 2  # format version 2 and before: read, never written (below)
STEP_FAILED_V2: Final = 3  # format version 2 and before
STEP_STARTED: Final = 4
SUSPENDED_V1: Final = 5  # format version 1 only: read, never written (below)
SIGNALLED: Final = 6
TIMER_SET_V1: Final = 7  # format version 1 only
TIMER_FIRED: Final = 8
SUSPEND_TIMED_OUT: Final = 9
FORGOT: Final = 10
COMPLETED: Final = 11
FAILED: Final = 12
CANCELLED: Final = 13
RESTARTED: Final = 14
STATE_IMAGE_V1: Final = 15  # format version 1 only
SUSPENDED: Final = 16  # a suspension reached for the first time: its wait, registered
TIMER_SET: Final = 17  # a timer reached for the first time: its deadline, registered
PARKED: Final = 18  # every task of the instance waits: it leaves memory
STATE_IMAGE: Final = 19  # written by compaction only
# -- talking to the outside while running (SPEC-NEXT §3) --
STATUS_SET: Final = 23  # ctx.set_status: the instance's status text
PUBLISHED: Final = 24  # ctx.publish: one event of the instance's event stream
STEP_DONE: Final = 20  # a step's result, with its first attempt's start and its attempts
STEP_FAILED: Final = 21  # a step failed for good: every attempt's error
ATTEMPT_FAILED: Final = 22  # one failed attempt of a step that is tried again
# Issue 14, workflows that start workflows (SPEC-NEXT §2):
CHILD_CREATED: Final = 25  # a child's own creation: ``created`` and its parent
CHILD_STARTED: Final = 26  # in the parent: the child exists; its key is memoised
CHILD_ENDED: Final = 27  # in the parent: the child's outcome, memoised
# -- issue 15, flow control (SPEC-NEXT §4): capacity, priority, timeouts --
OPTIONS: Final = 28  # an invoke's options: priority, timeout's deadline, concurrency key
QUEUED: Final = 29  # the instance waits for capacity (running -> queued)
DEQUEUED: Final = 30  # a start out of the queue (queued -> running)
CANCELLED_FOR: Final = 31  # the instance was cancelled for a reason ("timeout")
# Issue 15, schedules and debounce (SPEC-NEXT §4, time). Engine-level
# records: they belong to no instance, and their ``instance`` field is
# ENGINE (the empty string, which no instance id can be).
SCHEDULE_SET: Final = 32  # engine.schedule: a schedule, new or replaced
SCHEDULE_REMOVED: Final = 33  # engine.unschedule
SCHEDULE_TICKED: Final = 34  # a tick started (its ``created`` is in the same batch)
DEBOUNCE_SET: Final = 35  # engine.debounce: a start pending; due_ms nil: it was made
# An operator action handed over through the inbox was applied: in the batch
# of the action's own records, after them, so a restart never applies it twice.
HANDOVER_APPLIED: Final = 36
ENGINE: Final = ""  # the ``instance`` field of an engine-level record
ENGINE_LEVEL: Final = frozenset({
    SCHEDULE_SET, SCHEDULE_REMOVED, SCHEDULE_TICKED, DEBOUNCE_SET, HANDOVER_APPLIED,
})

# Format version 1 wrote one wait per instance: its ``suspended`` and
# ``timer_set`` records both registered the wait and parked the instance on
# it, and its state image had one wait key. Version 2 registers each wait on
# its own (SUSPENDED, TIMER_SET) and parks with PARKED, which names every
# wait the instance is blocked in. The version 1 types keep their numbers
# and their meaning, so a version 1 journal reads as it always did.
LEGACY: Final = frozenset({SUSPENDED_V1, TIMER_SET_V1, STATE_IMAGE_V1})

# Format version 3 gave a step's outcome its first attempt's start and its
# number of attempts (STEP_DONE, STEP_FAILED: new types, the fields of the
# old ones and those after them) and journals each failed attempt that is
# tried again (ATTEMPT_FAILED). The version 2 types keep their numbers and
# their meaning: a step that ran once, started when its outcome was written.
LEGACY_V2: Final = frozenset({STEP_DONE_V2, STEP_FAILED_V2})

_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))

# type -> (name, ((field name, allowed types), ...)) for the fields after
# the common four. Names are those used by memable-dump and docs/format.md.
SCHEMA: Final[dict[int, tuple[str, tuple[tuple[str, tuple[type, ...]], ...]]]] = {
    CREATED: ("created", (("workflow", (str,)), ("input", (bytes,)))),
    STEP_DONE_V2: ("step_done_v2", (("key", (str,)), ("value", (bytes,)))),
    STEP_FAILED_V2: (
        "step_failed_v2",
        (("key", (str,)), ("error_type", (str,)), ("message", (str,)),
         ("traceback", (str,))),
    ),
    STEP_STARTED: ("step_started", (("key", (str,)),)),
    SUSPENDED_V1: (
        "suspended_v1",
        (("key", (str,)), ("status", _OPT_STR), ("deadline_ms", _OPT_INT)),
    ),
    SIGNALLED: ("signalled", (("key", (str,)), ("payload", (bytes,)))),
    TIMER_SET_V1: ("timer_set_v1", (("key", (str,)), ("deadline_ms", (int,)))),
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
    STATE_IMAGE_V1: (
        "state_image_v1",
        (("state", (int,)), ("wait_key", _OPT_STR), ("status", _OPT_STR),
         ("deadline_ms", _OPT_INT), ("timers", (dict,)), ("done_waits", (dict,))),
    ),
    SUSPENDED: (
        "suspended",
        (("key", (str,)), ("status", _OPT_STR), ("deadline_ms", _OPT_INT)),
    ),
    TIMER_SET: ("timer_set", (("key", (str,)), ("deadline_ms", (int,)))),
    PARKED: ("parked", (("keys", (list,)),)),
    STATE_IMAGE: (
        "state_image",
        (("state", (int,)), ("pending", (list,)), ("waits", (dict,)),
         ("done_waits", (dict,))),
    ),
    # ``call``: the set_status call's 1-based number in its run, so that a
    # re-run writes none of the texts an earlier run recorded (events.py).
    STATUS_SET: ("status_set", (("text", (str,)), ("call", (int,)))),
    PUBLISHED: ("published", (("key", (str,)), ("value", (bytes,)))),
    STEP_DONE: (
        "step_done",
        (("key", (str,)), ("value", (bytes,)), ("started_ms", (int,)), ("attempts", (int,))),
    ),
    STEP_FAILED: (
        "step_failed",
        (("key", (str,)), ("error_type", (str,)), ("message", (str,)),
         ("traceback", (str,)), ("started_ms", (int,)), ("attempts", (int,)),
         ("errors", (list,))),
    ),
    ATTEMPT_FAILED: (
        "attempt_failed",
        (("key", (str,)), ("attempt", (int,)), ("error_type", (str,)), ("message", (str,)),
         ("started_ms", (int,))),
    ),
    CHILD_CREATED: (
        "child_created",
        (("workflow", (str,)), ("input", (bytes,)), ("parent", (str,)), ("child_key", (str,))),
    ),
    CHILD_STARTED: ("child_started", (("key", (str,)), ("child_id", (str,)))),
    # -- flow control (issue 15) --
    OPTIONS: (
        "options",
        (("priority", (int,)), ("deadline_ms", _OPT_INT), ("concurrency_key", _OPT_STR)),
    ),
    QUEUED: ("queued", ()),
    DEQUEUED: ("dequeued", ()),
    CANCELLED_FOR: ("cancelled_for", (("reason", (str,)),)),
    CHILD_ENDED: (
        "child_ended",
        (("key", (str,)), ("state", (int,)), ("value", (bytes,)), ("error_type", _OPT_STR),
         ("message", _OPT_STR)),
    ),
    # -- schedules and debounce (engine-level: instance ENGINE) --
    # ``after_ms``: the schedule's ticks strictly after it are still to start.
    SCHEDULE_SET: (
        "schedule_set",
        (("name", (str,)), ("workflow", (str,)), ("cron", (str,)), ("input", (bytes,)),
         ("catch_up", (bool,)), ("after_ms", (int,))),
    ),
    SCHEDULE_REMOVED: ("schedule_removed", (("name", (str,)),)),
    SCHEDULE_TICKED: ("schedule_ticked", (("name", (str,)), ("tick_ms", (int,)))),
    DEBOUNCE_SET: (
        "debounce_set",
        (("workflow", (str,)), ("debounce_key", (str,)), ("n", (int,)), ("input", (bytes,)),
         ("due_ms", _OPT_INT)),
    ),
    # ``name``: the hand-over file's name in the inbox; ``instance_id``: the
    # instance it acted on (the marker goes when that instance does).
    HANDOVER_APPLIED: (
        "handover_applied", (("name", (str,)), ("instance_id", (str,))),
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
# KEY: every keyed record (step_*, attempt_failed, suspended*, signalled, timer_*,
# suspend_timed_out, forgot)
KEY: Final = 4
CREATED_WORKFLOW: Final = 4
CREATED_INPUT: Final = 5
STEP_DONE_VALUE: Final = 5  # step_done and step_done_v2
STEP_DONE_STARTED_MS: Final = 6
STEP_DONE_ATTEMPTS: Final = 7
STEP_FAILED_TYPE: Final = 5  # step_failed and step_failed_v2, to the traceback
STEP_FAILED_MESSAGE: Final = 6
STEP_FAILED_TRACEBACK: Final = 7
STEP_FAILED_STARTED_MS: Final = 8
STEP_FAILED_ATTEMPTS: Final = 9
STEP_FAILED_ERRORS: Final = 10
ATTEMPT_FAILED_ATTEMPT: Final = 5
ATTEMPT_FAILED_TYPE: Final = 6
ATTEMPT_FAILED_MESSAGE: Final = 7
ATTEMPT_FAILED_STARTED_MS: Final = 8
SUSPENDED_STATUS: Final = 5
SUSPENDED_DEADLINE: Final = 6
SIGNALLED_PAYLOAD: Final = 5
TIMER_SET_DEADLINE: Final = 5
COMPLETED_RESULT: Final = 4
FAILED_TYPE: Final = 4
FAILED_MESSAGE: Final = 5
FAILED_TRACEBACK: Final = 6
PARKED_KEYS: Final = 4
IMAGE_STATE: Final = 4  # state_image and state_image_v1
IMAGE_PENDING: Final = 5
IMAGE_WAITS: Final = 6
IMAGE_DONE_WAITS: Final = 7
IMAGE_V1_WAIT_KEY: Final = 5
IMAGE_V1_STATUS: Final = 6
IMAGE_V1_DEADLINE: Final = 7
IMAGE_V1_TIMERS: Final = 8
IMAGE_V1_DONE_WAITS: Final = 9
SEAL_NEXT_SEQ: Final = 1  # a seal is [SEAL, next_seq]
STATUS_SET_TEXT: Final = 4
STATUS_SET_CALL: Final = 5
PUBLISHED_VALUE: Final = 5
# child_created's workflow and input sit where created's do (CREATED_*)
CHILD_CREATED_WORKFLOW: Final = 4
CHILD_CREATED_INPUT: Final = 5
CHILD_CREATED_PARENT: Final = 6
CHILD_CREATED_CHILD_KEY: Final = 7  # its key in the parent (not KEY: not the first field)
CHILD_STARTED_CHILD_ID: Final = 5
CHILD_ENDED_STATE: Final = 5  # lifecycle.COMPLETED, FAILED or CANCELLED
CHILD_ENDED_VALUE: Final = 6  # the result blob if completed, else b""
CHILD_ENDED_ERROR_TYPE: Final = 7
CHILD_ENDED_MESSAGE: Final = 8  # a cancelled child's reason, if it had one
OPTIONS_PRIORITY: Final = 4
OPTIONS_DEADLINE: Final = 5
OPTIONS_CONCURRENCY_KEY: Final = 6
CANCELLED_FOR_REASON: Final = 4
SCHEDULE_SET_NAME: Final = 4  # and schedule_removed's, schedule_ticked's name
SCHEDULE_SET_WORKFLOW: Final = 5
SCHEDULE_SET_CRON: Final = 6
SCHEDULE_SET_INPUT: Final = 7
SCHEDULE_SET_CATCH_UP: Final = 8
SCHEDULE_SET_AFTER_MS: Final = 9
SCHEDULE_REMOVED_NAME: Final = 4
SCHEDULE_TICKED_NAME: Final = 4
SCHEDULE_TICKED_TICK_MS: Final = 5
DEBOUNCE_SET_WORKFLOW: Final = 4
DEBOUNCE_SET_DEBOUNCE_KEY: Final = 5
DEBOUNCE_SET_N: Final = 6
DEBOUNCE_SET_INPUT: Final = 7
DEBOUNCE_SET_DUE_MS: Final = 8
HANDOVER_APPLIED_NAME: Final = 4
HANDOVER_APPLIED_INSTANCE_ID: Final = 5

TYPE_NAMES: Final[dict[int, str]] = {t: s[0] for t, s in SCHEMA.items()}
TYPE_BY_NAME: Final[dict[str, int]] = {n: t for t, n in TYPE_NAMES.items()}
TYPE_NAMES_WITH_SEAL: Final[dict[int, str]] = {SEAL: "seal", **TYPE_NAMES}

_CHECKS: Final[dict[int, tuple[int, tuple[tuple[type, ...], ...]]]] = {
    t: (FIELDS + len(fields), tuple(types for _, types in fields))
    for t, (_, fields) in SCHEMA.items()
}


_N_STATES = 8  # see lifecycle.STATE_NAMES
_N_STATES_V1 = 6
_ENDED_BY = frozenset({TIMER_FIRED, SUSPEND_TIMED_OUT, CHILD_ENDED})
_N_WAIT_KINDS = 3  # lifecycle.WAIT_SIGNAL, WAIT_TIMER, WAIT_CHILD: a wait's kind is below this
_CHILD_ENDS = (3, 4, 5)  # lifecycle.COMPLETED, FAILED, CANCELLED


def _keys(value: object) -> bool:
    """A list of distinct non-empty str keys."""
    return (
        type(value) is list and all(type(k) is str and k for k in value)
        and len(set(value)) == len(value)
    )


def _check_parked(rec: list[Any]) -> None:
    if not rec[PARKED_KEYS] or not _keys(rec[PARKED_KEYS]):
        raise RecordError("parked record needs a list of one or more distinct keys")


def _check_done_waits(table: dict[Any, Any]) -> None:
    for key, value in table.items():
        if type(key) is not str or type(value) is not int or value not in _ENDED_BY:
            raise RecordError("state_image record has a bad done_waits entry")


def _check_image(rec: list[Any]) -> None:
    if type(rec[IMAGE_STATE]) is not int or not 0 <= rec[IMAGE_STATE] < _N_STATES:
        raise RecordError(f"state_image record has unknown state {rec[IMAGE_STATE]!r}")
    if not _keys(rec[IMAGE_PENDING]):
        raise RecordError("state_image record has a bad pending list")
    for key, wait in rec[IMAGE_WAITS].items():
        if not (
            type(key) is str and type(wait) is list and len(wait) == 3
            and type(wait[0]) is int and 0 <= wait[0] < _N_WAIT_KINDS
            and (wait[1] is None or type(wait[1]) is int)
            and (wait[2] is None or type(wait[2]) is str)
        ):
            raise RecordError("state_image record has a bad waits entry")
    if any(key not in rec[IMAGE_WAITS] for key in rec[IMAGE_PENDING]):
        raise RecordError("state_image record has a pending key with no wait")
    _check_done_waits(rec[IMAGE_DONE_WAITS])


def _check_image_v1(rec: list[Any]) -> None:
    if type(rec[IMAGE_STATE]) is not int or not 0 <= rec[IMAGE_STATE] < _N_STATES_V1:
        raise RecordError(f"state_image_v1 record has unknown state {rec[IMAGE_STATE]!r}")
    for key, value in rec[IMAGE_V1_TIMERS].items():
        if type(key) is not str or type(value) is not int:
            raise RecordError("state_image_v1 record has a bad timers entry")
    _check_done_waits(rec[IMAGE_V1_DONE_WAITS])


def _check_step_failed(rec: list[Any]) -> None:
    errors = rec[STEP_FAILED_ERRORS]
    if not errors or not all(
        type(e) is list and len(e) == 2 and type(e[0]) is str and type(e[1]) is str
        for e in errors
    ):
        raise RecordError("step_failed record needs a list of one or more [type, message]")
    if rec[STEP_FAILED_ATTEMPTS] < 1:
        raise RecordError("step_failed record has fewer than one attempt")


def _check_child_ended(rec: list[Any]) -> None:
    if rec[CHILD_ENDED_STATE] not in _CHILD_ENDS or type(rec[CHILD_ENDED_STATE]) is not int:
        raise RecordError(
            f"child_ended record has state {rec[CHILD_ENDED_STATE]!r}, not a finished one"
        )


def _check_child_created(rec: list[Any]) -> None:
    if not rec[CHILD_CREATED_PARENT] or not rec[CHILD_CREATED_CHILD_KEY]:
        raise RecordError("child_created record needs a non-empty parent and key")


def _check_engine_level(rec: list[Any]) -> None:
    """An engine-level record: instance ENGINE, names non-empty, n from 1."""
    name = TYPE_NAMES[rec[TYPE]]
    if rec[INSTANCE] != ENGINE:
        raise RecordError(f"{name} record names instance {rec[INSTANCE]!r}; it belongs to none")
    if not rec[FIELDS] or (
        rec[TYPE] in (SCHEDULE_SET, DEBOUNCE_SET, HANDOVER_APPLIED) and not rec[FIELDS + 1]
    ):
        raise RecordError(f"{name} record has an empty name")
    if rec[TYPE] == DEBOUNCE_SET and (type(rec[DEBOUNCE_SET_N]) is not int
                                      or rec[DEBOUNCE_SET_N] < 1):
        raise RecordError(f"debounce_set record has n {rec[DEBOUNCE_SET_N]!r}, not 1 or more")


# Record types whose lists or maps ``check`` looks into (or whose values it checks).
DEEP: Final = {
    PARKED: _check_parked, STATE_IMAGE: _check_image, STATE_IMAGE_V1: _check_image_v1,
    STEP_FAILED: _check_step_failed,
    CHILD_ENDED: _check_child_ended, CHILD_CREATED: _check_child_created,
    **dict.fromkeys(ENGINE_LEVEL, _check_engine_level),
}


def _signatures() -> dict[tuple[type, ...], frozenset[int]]:
    """Every exact type layout ``check`` accepts, with the types that have it.

    ``check`` tests fields with isinstance, so an int field also takes a
    bool; that is the only subclass msgpack produces. The types with a list
    or a map are left out: their contents need a closer look (``DEEP``).
    """
    widened: dict[type, tuple[type, ...]] = {int: (int, bool)}
    out: dict[tuple[type, ...], set[int]] = {}
    for rtype, (_, fields) in _CHECKS.items():
        if rtype in DEEP:
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
    deep = DEEP.get(rtype)
    if deep is not None:
        deep(rec)
    return rec




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
    """A record list; its seq (0 here) is set by the journal on append.

    A ``step_done`` or ``step_failed`` given only the fields of its version 2
    namesake gets the rest as version 2 meant them: one attempt, started
    when the record was written, its error the only one (tools and tests
    build records so; the engine gives every field)."""
    rec = [rtype, 0, ts_ms, instance, *fields]
    fill = _SHORT.get(rtype)
    if fill is not None and len(rec) == fill[0]:
        fill[1](rec)
    return rec


def _fill_done(rec: list[Any]) -> None:
    rec += (rec[TS], 1)


def _fill_failed(rec: list[Any]) -> None:
    rec += (rec[TS], 1, [[rec[STEP_FAILED_TYPE], rec[STEP_FAILED_MESSAGE]]])


_SHORT: Final = {
    STEP_DONE: (FIELDS + 2, _fill_done),
    STEP_FAILED: (FIELDS + 4, _fill_failed),
}


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
