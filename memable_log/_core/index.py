"""The in-memory index: what the journal says, by instance and key. Pure.

``Index.apply(rec, loc)`` is the one way records change the index: start-up
replay calls it for every record in the journal, the appender for every
record it has just made durable. So the index after a restart is, by
construction, the index before it. What a record does to an instance's
state (running, suspended, ...) and its wait is decided by lifecycle.py,
its table and its conditions; apply records the data (steps, signals,
timers, outcomes). Besides apply, the index changes only by the methods a
running compaction calls (``retire``, ``restore``, ``repoint``, ``settle``),
each of which leaves it what a full scan of the journal's files would give.

Layout, chosen for memory (a million entries must fit in ~100 bytes each)
and for start-up from a snapshot (a million entries in well under a second).
``instances`` maps an instance id to an ``InstanceEntry`` (a slotted
object). Its step table maps a key to either

* ``bytes``: a completed step's value blob, kept inline when it is small;
* ``int``: ``loc << 2 | kind``, where ``loc`` packs the record's place in the
  journal (``inner << 64 | segment << 40 | offset``, ``inner`` for records
  inside a compacted block) and kind is STEP_DONE_AT (a value to read back
  on demand), STEP_FAILED_AT, STEP_STARTED_AT or CHILD_AT (a child's
  ``child_started`` or, once it ended, ``child_ended``: SPEC-NEXT §2; a
  child's key is memoised in the step table, so it shares the key space,
  the compaction and the snapshot of steps).

Large values never stay in memory; the engine reads them back by location.

Two forms of the step table. *Materialised*, it is a dict (keys interned:
most instances share their keys); ``entry.steps`` always answers with it.
*Packed*, it is one ``bytes`` object: a msgpack map, the table as it was
when last packed (absent if it never was), then a stream of operations
applied since, each a key then a value, in the order apply met them. A
value sets the key (a STEP_STARTED_AT value only if the key is absent, as
apply does); nil forgets the key, or every key with the prefix when it
ends in ``*``. Locations beyond 64 bits travel as msgpack ext type
``BIG_INT``. The map is built and read by msgpack in C (``pack_steps``,
``unpack_steps``), so an instance of many steps comes to rest, and is
read again, at a fraction of a microsecond a step. Replaying the map and
the stream builds the very dict apply would have built, in the same
order, so nothing observable depends on the form. Snapshots store packed
tables as they are: a change to this form is a new snapshot version
(_storage/snapshot.py; version 5 brought the map).

Why two forms: a dict of nine steps with small inline values costs ~900
bytes (the dict, and a 33-byte-header object per value); packed, the same
table is one object of ~350. And most instances of a long-lived journal are
finished or waiting: nobody reads their steps until a restart, a signal or
a compaction. A snapshot keeps packed tables as the bytes they are, so a
start builds one object per instance, none per step.

Which form when:

* A new instance starts packed (empty), and apply appends operations to a
  packed table while it is under ``APPEND_LIMIT`` bytes: a full scan builds
  packed tables without a dict per instance (an append costs ~0.2 us more
  than a dict insert, with each key's msgpack bytes cached per index).
  Past the limit the table materialises, since each append copies it.
* The first read of ``entry.steps`` materialises the table and keeps it:
  the engine reads the steps of an instance it runs, and apply then updates
  the dict in place.
* When an instance comes to rest (finished, suspended or sleeping), apply
  packs its table again; so too after any record for a finished instance
  (a forget). Readers that only count (``memoised_steps``) decode without
  keeping the dict; ``repoint`` packs again a table at rest it re-pointed,
  and ``repack`` does so for any other reader that materialises in bulk.

Nobody holds ``entry.steps`` across an ``apply``: callers read it anew (the
engine's context, compaction's re-pointing), so a table packed under them
is never written to by mistake.

Step times (``engine.steps``). Beside the step table, each instance keeps
``meta``: a msgpack stream appended at each step outcome (and at-most-once
marker), an array of five an outcome: the key, its first attempt's start less
the instance's ``created_ms``, its end (the record's time) less its start
(nil for a marker), its attempts, and nil or ``[error type, message]``
for a failure. The step table stays as it is (the replay of memoised steps
reads only it); ``step_meta`` pairs each key of the table with its latest
outcome of the same kind. About 15 bytes a step with a short key. It is
``bytes`` while under ``META_LIMIT`` and a ``bytearray`` past it (each
append to bytes copies them), bytes again when the instance comes to rest.
``tries`` holds, for a step whose attempts failed and that has no outcome
yet, its first attempt's start and every failed attempt's (type, message):
what the engine needs to continue the count after a restart; the outcome
drops it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

import msgpack

from . import lifecycle as lc
from . import records as r
from .records import (
    ATTEMPT_FAILED_MESSAGE,
    ATTEMPT_FAILED_STARTED_MS,
    ATTEMPT_FAILED_TYPE,
    CANCELLED_FOR_REASON,
    CHILD_CREATED_PARENT,
    COMPLETED_RESULT,
    CREATED_INPUT,
    CREATED_WORKFLOW,
    FAILED_MESSAGE,
    FAILED_TYPE,
    IMAGE_DONE_WAITS,
    IMAGE_STATE,
    IMAGE_V1_DEADLINE,
    IMAGE_V1_DONE_WAITS,
    IMAGE_V1_STATUS,
    IMAGE_V1_TIMERS,
    IMAGE_V1_WAIT_KEY,
    IMAGE_WAITS,
    INSTANCE,
    KEY,
    OPTIONS_CONCURRENCY_KEY,
    OPTIONS_DEADLINE,
    OPTIONS_PRIORITY,
    PUBLISHED_VALUE,
    SEQ,
    SIGNALLED_PAYLOAD,
    STATUS_SET_CALL,
    STATUS_SET_TEXT,
    STEP_DONE_ATTEMPTS,
    STEP_DONE_STARTED_MS,
    STEP_DONE_VALUE,
    STEP_FAILED_ATTEMPTS,
    STEP_FAILED_MESSAGE,
    STEP_FAILED_STARTED_MS,
    STEP_FAILED_TYPE,
    SUSPENDED_DEADLINE,
    SUSPENDED_STATUS,
    TIMER_SET_DEADLINE,
    TS,
    TYPE,
)
from .rest import decode as decode_rest
from .wire import ext_hook, wire

OFFSET_BITS = 40
STEP_DONE_AT = 0
STEP_FAILED_AT = 1
STEP_STARTED_AT = 2
CHILD_AT = 3
DEFAULT_INLINE_LIMIT = 256
# Appending to a packed table copies it: past this size apply materialises it.
APPEND_LIMIT = 4096
# The same for the step meta stream: past this size it grows as a bytearray.
META_LIMIT = 1024
# The error type of a cancelled instance's entry when its cancel had a reason.
CANCELLED_ERROR: Final = "WorkflowCancelled"

Entry = bytes | int
PublishedEvent = tuple[str, int, Entry]  # key, ts_ms, value blob or loc
Tries = tuple[int, tuple[tuple[str, str], ...]]
"""A step's failed attempts, while it has no outcome: its first attempt's
start (ms) and each failed attempt's (error type, message), in order."""
Flow = tuple[int, int | None, str | None]
"""An instance's flow-control options: priority, timeout deadline (ms), key."""
StepMeta = tuple[int, int | None, int, tuple[str, str] | None]
"""A step outcome's times: started_ms, finished_ms (None for an at-most-once
marker), attempts, and (error type, message) for a failure."""


SEGMENT_BITS = 24
INNER_SHIFT = OFFSET_BITS + SEGMENT_BITS  # 64
_AT_REST = lc.PARKED | lc.FINISHED
_BIN8 = [bytes((0xC4, n)) for n in range(256)]
_KEY_CACHE = 4096  # distinct keys whose msgpack bytes an index keeps
_FINISHED = lc.FINISHED
_RULES = lc.RULES  # inlined lc.advance: apply runs per record
_ONLY_ON_A_MOVE = lc.ONLY_ON_A_MOVE


def pack_loc(segment: int, offset: int, inner: int = 0) -> int:
    """A record's place: segment, frame offset, and for a record inside a
    compacted block, its 1-based position in the block (0: not in a block)."""
    return inner << INNER_SHIFT | segment << OFFSET_BITS | offset


def unpack_loc(loc: int) -> tuple[int, int]:
    """(segment, frame offset) of a location."""
    return (loc >> OFFSET_BITS) & ((1 << SEGMENT_BITS) - 1), loc & ((1 << OFFSET_BITS) - 1)


def loc_inner(loc: int) -> int:
    """The 1-based position inside a compacted block, or 0."""
    return loc >> INNER_SHIFT


def entry_kind(entry: Entry) -> int:
    """STEP_DONE_AT, STEP_FAILED_AT, STEP_STARTED_AT or CHILD_AT."""
    return STEP_DONE_AT if type(entry) is bytes else entry & 3  # type: ignore[operator]


def entry_loc(entry: int) -> int:
    return entry >> 2


def child_id(parent_id: str, key: str) -> str:
    """The id of the child that instance ``parent_id`` starts under ``key``."""
    return f"{parent_id}/{key}"


# -- the packed form -----------------------------------------------------------------


def forget(steps: dict[str, Any], pattern: str) -> None:
    """Drop ``pattern``'s key, or every key with its prefix if it ends in ``*``."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        for key in [k for k in steps if k.startswith(prefix)]:
            del steps[key]
    else:
        steps.pop(pattern, None)


def pack_steps(steps: dict[str, Entry]) -> bytes:
    """The packed form of a materialised step table: one msgpack map.

    Built by msgpack in C, not a key at a time: an instance of 1,000 steps
    comes to rest in ~0.2 ms instead of ~1 ms."""
    try:
        return _packb(steps)
    except OverflowError:  # a location beyond 64 bits (inside a compacted block)
        return _packb({key: wire(value) for key, value in steps.items()})


def unpack_steps(packed: bytes, intern: bool = True) -> dict[str, Entry]:
    """Replay a packed step table into the dict apply would have built.

    A table packed at rest is a map (msgpack reads it back in C, its keys
    interned), possibly followed by operations appended since; an older
    table (a snapshot's, or one that never came to rest) is operations only.
    ``intern=False`` leaves the keys of operations as decoded: for a dict
    that is only read once and dropped (interning a new key costs ~0.2 us)."""
    if not packed:
        return {}
    if packed[0] in _MAP_HEADS:
        try:
            base = _unpackb(packed, raw=False, use_list=False, ext_hook=ext_hook)
        except msgpack.ExtraData as more:
            return _replay(dict(more.unpacked), bytes(more.extra), intern)
        if type(base) is not dict:
            raise ValueError("a packed step table's map is not a map")
        return base
    return _replay({}, packed, intern)


def _replay(steps: dict[str, Entry], ops: bytes, intern: bool) -> dict[str, Entry]:
    """``steps`` with the operations of the stream ``ops`` applied in order."""
    unpacker = msgpack.Unpacker(
        raw=False, use_list=False, ext_hook=ext_hook, max_buffer_size=len(ops)
    )
    unpacker.feed(ops)
    items = list(unpacker)
    keys, values = items[0::2], items[1::2]
    same: Callable[[str], str] = sys.intern if intern else str
    if not steps:
        steps = dict(zip(map(same, keys), values, strict=True))  # ValueError: ends after a key
        if len(steps) == len(values) and None not in values:
            # Each key once, none forgotten: what the loop below would build
            # (a STEP_STARTED_AT value set on an absent key), at C speed.
            return steps
        steps = {}
    elif len(keys) != len(values):
        raise ValueError("a packed step table ends after a key")
    for key, value in zip(keys, values, strict=True):
        if value is None:
            forget(steps, key)
        elif type(value) is int and value & 3 == STEP_STARTED_AT:
            steps.setdefault(same(key), value)
        else:
            steps[same(key)] = value
    return steps


_packb: Callable[[Any], bytes] = msgpack.packb  # a Packer per call: safe in any thread
_unpackb = msgpack.unpackb
_MAP_HEADS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])  # fixmap, map 16, map 32


def step_meta(
    created_ms: int, steps: Mapping[str, Entry], meta: bytes | bytearray
) -> dict[str, StepMeta]:
    """The times of each step in ``steps`` (an instance's table), from its
    meta stream: the latest outcome of the key of the kind its entry has
    (an outcome forgotten and run again is followed by the new one)."""
    found: dict[str, StepMeta] = {}
    if not meta:
        return found
    unpacker = msgpack.Unpacker(raw=False, use_list=False, max_buffer_size=len(meta))
    unpacker.feed(meta)
    items = list(unpacker)
    for key, since, took, attempts, error in items:  # ValueError: not a meta stream
        entry = steps.get(key)
        if entry is None:
            continue
        kind = STEP_STARTED_AT if took is None else (
            STEP_DONE_AT if error is None else STEP_FAILED_AT)
        if entry_kind(entry) == kind:
            started = created_ms + since
            found[key] = (started, None if took is None else started + took, attempts,
                          None if error is None else (error[0], error[1]))
    return found


class InstanceEntry:
    """Everything the index knows about one instance."""

    __slots__ = (
        "workflow", "state", "created_ms", "updated_ms", "input", "outcome",
        "error", "pending", "status", "deadline_ms", "table", "signals",
        "waits", "done_waits", "last_seq", "events", "status_calls", "meta", "tries",
        "parent",
        "flow",
        "rest",
    )

    def __init__(self, workflow: str, ts_ms: int, input_: Entry) -> None:
        self.workflow = workflow
        self.state = lc.RUNNING
        self.created_ms = ts_ms
        self.updated_ms = ts_ms
        self.input: Entry = input_  # blob, or loc of the created record
        self.outcome: Entry | None = None  # result blob, or loc of the record
        self.error: tuple[str, str] | None = None
        # Set while parked (lifecycle.py): the keys it waits on, the first
        # pending suspension's status text, the earliest pending deadline.
        self.pending: tuple[str, ...] | None = None
        self.status: str | None = None
        self.deadline_ms: int | None = None
        # The step table, packed or materialised (module comment); read .steps.
        self.table: dict[str, Entry] | bytes = b""
        self.signals: dict[str, Entry] | None = None  # key -> payload
        # Every wait registered and not ended, in the order first reached:
        # key -> (kind, deadline_ms, status); its deadline never moves.
        self.waits: dict[str, lc.Wait] | None = None
        # keys whose wait ended by its deadline: key -> TIMER_FIRED or SUSPEND_TIMED_OUT
        self.done_waits: dict[str, int] | None = None
        self.last_seq = 0  # seq of its latest record (0: only compacted history)
        # Its event stream (ctx.publish), in publish order, only once it has
        # one: (key, ts_ms, value blob or loc of the record); an event's seq
        # is its position, from 1.
        self.events: list[PublishedEvent] | None = None
        # The call number of the latest status_set (see records.STATUS_SET).
        self.status_calls = 0
        # Step times and in-flight failed attempts (module comment).
        self.meta: bytes | bytearray = b""
        self.tries: dict[str, Tries] | None = None
        self.parent: str | None = None  # the parent's id, for a child (child_created)
        # Flow control (``options``): (priority, timeout deadline_ms or None,
        # concurrency key or None); None for an invoke with no options.
        self.flow: Flow | None = None
        # A finished instance loaded from the snapshot: its other fields,
        # packed, until one is read (rest.py); None once they are fields.
        self.rest: bytes | memoryview | None = None

    def __getattr__(self, name: str) -> Any:
        """A field not set: one of the rest of an entry loaded packed, decoded now."""
        if name != "rest" and self.rest is not None:
            decode_rest(self)
            return object.__getattribute__(self, name)
        raise AttributeError(f"'InstanceEntry' object has no attribute {name!r}")

    @property
    def steps(self) -> dict[str, Entry]:
        """The step table as a dict: key -> entry (materialised here if packed)."""
        table = self.table
        if isinstance(table, dict):
            return table
        steps = self.table = unpack_steps(table)
        return steps

    @steps.setter
    def steps(self, steps: dict[str, Entry]) -> None:
        self.table = steps

    @property
    def packed(self) -> bool:
        """Whether the step table is in its packed form."""
        return type(self.table) is bytes

    def pack(self) -> None:
        """Put the step table in its packed form (the dict is dropped)."""
        table = self.table
        if isinstance(table, dict):
            self.table = pack_steps(table)
        if type(self.meta) is bytearray:
            self.meta = bytes(self.meta)

    def has_step(self, key: str) -> bool:
        """Whether the step table has ``key`` (a packed table stays packed)."""
        table = self.table
        steps = table if isinstance(table, dict) else unpack_steps(table, intern=False)
        return key in steps

    def memoised_steps(self) -> int:
        """How many steps have an outcome (at-most-once markers and children excluded)."""
        table = self.table
        steps = table if isinstance(table, dict) else unpack_steps(table, intern=False)
        # entry_kind inlined (engine.instances() counts every instance's steps):
        # STEP_STARTED_AT and CHILD_AT are the kinds with bit 2 set.
        markers = [e for e in steps.values() if type(e) is int and e & 2]
        return len(steps) - len(markers)

    def child_keys(self) -> list[str]:
        """The keys of every child it started (their ids: ``child_id``)."""
        table = self.table
        steps = table if isinstance(table, dict) else unpack_steps(table, intern=False)
        return [key for key, e in steps.items() if type(e) is int and e & 3 == CHILD_AT]


# -- engine-level tables: schedules and debounce (SPEC-NEXT §4, time) ---------------
# Engine-level records (records.ENGINE_LEVEL) belong to no instance; apply
# keeps their state in two index-wide tables. Their inputs stay inline
# whatever their size (schedules are few, and engine.schedules() is sync):
# nothing of them is a location, so compaction never re-points them.


class ScheduleEntry(NamedTuple):
    """A schedule: its ticks strictly after ``after_ms`` are still to start
    (``after_ms``: when it was set, then each tick started)."""

    workflow: str
    cron: str
    input: bytes
    catch_up: bool
    after_ms: int


class DebounceEntry(NamedTuple):
    """A debounce key's latest call: its ``n``, and while the start is
    pending, its input and ``due_ms`` (None once the start was made);
    ``ts_ms`` is its record's time."""

    n: int
    input: bytes
    due_ms: int | None
    ts_ms: int


class Index:
    """(instance, key) -> where the answer is. See the module comment."""

    __slots__ = ("instances", "inline_limit", "records", "_pack", "_keys",
                 "schedules", "debounces", "handovers")

    def __init__(self, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.instances: dict[str, InstanceEntry] = {}
        self.inline_limit = inline_limit
        self.records = 0
        # Engine-level tables (above): schedule name -> its entry;
        # (workflow, debounce key) -> its entry.
        self.schedules: dict[str, ScheduleEntry] = {}
        self.debounces: dict[tuple[str, str], DebounceEntry] = {}
        # Inbox hand-overs applied (handover_applied): file name -> the
        # instance acted on; the inbox skips (and deletes) a name found here.
        self.handovers: dict[str, str] = {}
        # One packer per index: an index is used by one thread at a time.
        self._pack: Callable[[Any], bytes] = msgpack.Packer().pack
        self._keys: dict[str, bytes] = {}  # a key's msgpack bytes (keys repeat)

    def apply(self, rec: list[Any], loc: int) -> None:
        """Fold one well-formed record (see records.check) into the index."""
        rtype = rec[TYPE]
        self.records += 1
        if rtype == r.CREATED:
            if rec[INSTANCE] not in self.instances:
                entry = InstanceEntry(
                    sys.intern(rec[CREATED_WORKFLOW]), rec[TS],
                    self._blob_or_loc(rec[CREATED_INPUT], loc),
                )
                entry.last_seq = rec[SEQ]
                self.instances[rec[INSTANCE]] = entry
            return
        inst = self.instances.get(rec[INSTANCE])
        if inst is None:
            if rtype == r.CHILD_CREATED:  # a child's ``created`` (not on the hot path)
                self._child_created(rec, loc)
                return
            engine_level = _ENGINE_APPLY.get(rtype)
            if engine_level is not None and rec[INSTANCE] == r.ENGINE:
                engine_level(self, rec)
                return
            raise r.RecordError(f"record for unknown instance {rec[INSTANCE]!r}")
        if inst.rest is not None:  # loaded packed: its fields before any changes
            decode_rest(inst)
        inst.updated_ms = rec[TS]
        inst.last_seq = rec[SEQ]
        rule = _RULES.get(rtype)
        if rule is None:  # the bulk of the records: steps, which leave the state be
            _APPLY[rtype](self, inst, rec, loc)
            if inst.state in _FINISHED and type(inst.table) is dict:
                inst.pack()  # a forget after the end: at rest again
            return
        # The lifecycle decides the state (its conditions read the record's
        # fields); the index then records the data, an outcome or a
        # restart's clearing of it only if the record moved the state.
        if rule(inst, rec) or rtype not in _ONLY_ON_A_MOVE:
            _APPLY[rtype](self, inst, rec, loc)
        if type(inst.table) is dict and inst.state in _AT_REST:
            inst.pack()  # at rest: nobody reads its steps for a while

    def repack(self, ids: Iterable[str] | None = None) -> int:
        """Pack the step tables of instances at rest that a reader
        materialised (all, or those of ``ids``); return how many."""
        instances = self.instances
        packed = 0
        for iid in instances if ids is None else ids:
            inst = instances.get(iid)
            if inst is not None and type(inst.table) is dict and inst.state in _AT_REST:
                inst.pack()
                packed += 1
        return packed

    # -- what compaction does to a live index ----------------------------------------
    # A running engine's compaction takes expired instances out (retire) and,
    # if the rewrite never became visible, puts them back (restore); once it
    # did, it re-points locations at the new file (repoint) and settles
    # last_seq (settle). Each keeps the index what a full scan of the new
    # files would build.

    def retire(self, instance_id: str) -> InstanceEntry | None:
        """Take an instance out of the index; its entry, or None if absent."""
        return self.instances.pop(instance_id, None)

    def restore(self, entries: Mapping[str, InstanceEntry]) -> None:
        """Put retired entries back; an id present again keeps its present entry."""
        instances = self.instances
        for iid, entry in entries.items():
            instances.setdefault(iid, entry)

    def repoint(self, moved: Iterable[Move], upto: int) -> int:
        """Re-point entries that point into what ``cmp-<upto>`` replaced.

        ``moved`` are the new file's locations (``moves``). An entry still at
        an old location was last written in the compacted prefix, so the
        compacted file holds its counterpart, of the same kind and inlined
        alike: its move. Entries written since (later segments) are left
        alone. A step table at rest is left packed. Returns how many entries
        changed.
        """
        changed = 0
        instances = self.instances
        for iid, inp, out, steps, signals, events in moved:
            entry = instances.get(iid)
            if entry is None:
                continue
            if inp is not None and _old(entry.input, 0, upto):
                entry.input, changed = inp, changed + 1
            if out is not None and _old(entry.outcome, 0, upto):
                entry.outcome, changed = out, changed + 1
            if steps:
                table = entry.steps
                for key, value in steps.items():
                    if _old(table.get(key), 2, upto):
                        table[key], changed = value, changed + 1
                if entry.state in _AT_REST:
                    entry.pack()
            if signals and entry.signals:
                table = entry.signals
                for key, value in signals.items():
                    if _old(table.get(key), 0, upto):
                        table[key], changed = value, changed + 1
            if events and entry.events:
                changed += _repoint_events(entry.events, events, upto)
        return changed

    def settle(self, ids: Iterable[str], next_seq: int) -> None:
        """Instances of ``ids`` with no record after the compacted history
        (``next_seq`` is the seq after it) take its ``last_seq``, 0, as a
        full scan would give."""
        instances = self.instances
        for iid in ids:
            entry = instances.get(iid)
            if entry is not None and entry.last_seq < next_seq:
                entry.last_seq = 0

    def _blob_or_loc(self, blob: bytes, loc: int) -> Entry:
        return blob if len(blob) <= self.inline_limit else loc

    def _key_bytes(self, key: str) -> bytes:
        packed = self._keys.get(key)
        if packed is None:
            packed = self._pack(key)
            if len(self._keys) < _KEY_CACHE:
                self._keys[key] = packed
        return packed

    def _append(self, inst: InstanceEntry, key: str, value: Entry | None) -> bool:
        """Log one operation onto a small packed table; False if it is not one."""
        table = inst.table
        if type(table) is bytes and len(table) < APPEND_LIMIT:
            inst.table = b"".join((table, self._key_bytes(key), self._pack(wire(value))))
            return True
        return False

    # One function per record type: the data it records (the state is the
    # lifecycle's, decided before).

    def _step_done(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        # Its times onto the meta stream (module comment): one msgpack call.
        started = rec[STEP_DONE_STARTED_MS]
        op = self._pack((key, started - inst.created_ms, rec[TS] - started,
                         rec[STEP_DONE_ATTEMPTS], None))
        meta = inst.meta
        if type(meta) is bytes and len(meta) < META_LIMIT:
            inst.meta = meta + op
        else:
            self._grow(inst, op)
        if inst.tries is not None:
            self._settled(inst, key)
        blob = rec[STEP_DONE_VALUE]
        size = len(blob)
        if size <= self.inline_limit:
            table = inst.table
            # The bulk of a scan: an inline value onto a small packed table
            # (by hand: a msgpack bin 8 is 0xc4, its length, its bytes).
            if type(table) is bytes and size < 256 and len(table) < APPEND_LIMIT:
                packed_key = self._keys.get(key) or self._key_bytes(key)
                inst.table = b"".join((table, packed_key, _BIN8[size], blob))
                return
            value: Entry = blob
        else:
            value = loc << 2 | STEP_DONE_AT
            if self._append(inst, key, value):
                return
        inst.steps[sys.intern(key)] = value

    def _step_failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        started = rec[STEP_FAILED_STARTED_MS]
        self._note(inst, key, started, rec[TS] - started, rec[STEP_FAILED_ATTEMPTS],
                   (rec[STEP_FAILED_TYPE], rec[STEP_FAILED_MESSAGE]))
        if inst.tries is not None:
            self._settled(inst, key)
        value = loc << 2 | STEP_FAILED_AT
        if not self._append(inst, key, value):
            inst.steps[sys.intern(key)] = value

    def _step_started(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        self._note(inst, key, rec[TS], None, 1, None)
        value = loc << 2 | STEP_STARTED_AT
        if not self._append(inst, key, value):
            inst.steps.setdefault(sys.intern(key), value)

    # Version 2's outcomes: one attempt, started when written.
    def _step_done_v2(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        self._step_done(inst, [*rec, rec[TS], 1], loc)

    def _step_failed_v2(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        self._step_failed(inst, [*rec, rec[TS], 1, None], loc)

    def _attempt_failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        error = (rec[ATTEMPT_FAILED_TYPE], rec[ATTEMPT_FAILED_MESSAGE])
        if inst.tries is None:
            inst.tries = {}
        known = inst.tries.get(key)
        if known is None:
            inst.tries[sys.intern(key)] = (rec[ATTEMPT_FAILED_STARTED_MS], (error,))
        else:
            inst.tries[key] = (known[0], (*known[1], error))

    def _note(
        self, inst: InstanceEntry, key: str, started: int, took: int | None, attempts: int,
        error: tuple[str, str] | None,
    ) -> None:
        """Append one outcome's times to the meta stream."""
        op = self._pack((key, started - inst.created_ms, took, attempts, error))
        meta = inst.meta
        if type(meta) is bytes and len(meta) < META_LIMIT:
            inst.meta = meta + op
        else:
            self._grow(inst, op)

    @staticmethod
    def _grow(inst: InstanceEntry, op: bytes) -> None:
        meta = inst.meta
        if type(meta) is bytes:
            meta = inst.meta = bytearray(meta)
        meta += op

    @staticmethod
    def _settled(inst: InstanceEntry, pattern: str) -> None:
        """Drop the failed attempts of ``pattern``'s step (or prefix, ``*``)."""
        tries = inst.tries
        if tries is None:
            return
        forget(tries, pattern)
        if not tries:
            inst.tries = None

    def _forgot(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        if inst.tries is not None:
            self._settled(inst, rec[KEY])
        if not self._append(inst, rec[KEY], None):
            forget(inst.steps, rec[KEY])
        if inst.done_waits is not None:
            self._forget_children(inst, rec[KEY])

    @staticmethod
    def _forget_children(inst: InstanceEntry, pattern: str) -> None:
        """A forgotten child key loses its recorded end too: the re-run
        adopts the child again and records its outcome anew."""
        table = inst.done_waits
        assert table is not None
        prefix = pattern[:-1] if pattern.endswith("*") else None
        for key in [k for k, v in table.items() if v == r.CHILD_ENDED and (
            k == pattern or (prefix is not None and k.startswith(prefix))
        )]:
            del table[key]
        if not table:
            inst.done_waits = None

    # A wait ends once, by whichever record came first: a signal after its
    # suspension timed out, or a timeout after its signal, records nothing.
    # An ended wait's registration is dropped: its deadline can matter no
    # more (a re-run finds the signal or the end first), and most finished
    # instances then keep no wait table at all.

    def _signalled(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        if inst.done_waits is not None and key in inst.done_waits:
            return
        if inst.signals is None:
            inst.signals = {}
        inst.signals.setdefault(key, self._blob_or_loc(rec[SIGNALLED_PAYLOAD], loc))
        self._unregister(inst, key)

    def _wait_done(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        if inst.signals is not None and key in inst.signals:
            return
        if inst.done_waits is None:
            inst.done_waits = {}
        inst.done_waits.setdefault(key, rec[TYPE])
        self._unregister(inst, key)

    def _suspension(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key, text = rec[KEY], rec[SUSPENDED_STATUS]
        if text is not None and not (inst.waits is not None and key in inst.waits) and (
            not lc.resolved(inst, key)
        ):
            inst.status = text  # the latest text recorded (by a registration that counts)
        self._register(inst, rec[KEY], (
            lc.WAIT_SIGNAL, rec[SUSPENDED_DEADLINE], rec[SUSPENDED_STATUS]
        ))

    def _timer(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        self._register(inst, rec[KEY], (lc.WAIT_TIMER, rec[TIMER_SET_DEADLINE], None))

    def _suspension_v1(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        # Version 1 had no registration: each of its records stated the
        # wait as it then was (the lifecycle takes its deadline and status),
        # so a later one replaces an earlier one for the same key.
        self._unregister(inst, rec[KEY])
        self._suspension(inst, rec, loc)

    def _timer_v1(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        self._unregister(inst, rec[KEY])
        self._timer(inst, rec, loc)

    @staticmethod
    def _register(inst: InstanceEntry, key: str, wait: lc.Wait) -> None:
        """The first registration of a key wins: its deadline never moves.
        A wait that has already ended is not registered again."""
        if lc.resolved(inst, key):
            return
        if inst.waits is None:
            inst.waits = {}
        inst.waits.setdefault(sys.intern(key), wait)

    @staticmethod
    def _unregister(inst: InstanceEntry, key: str) -> None:
        waits = inst.waits
        if waits is not None and waits.pop(key, None) is not None and not waits:
            inst.waits = None

    # Children (SPEC-NEXT §2). The child's key is memoised in the parent's
    # step table (CHILD_AT: its child_started, then its child_ended); the
    # child wait is registered by child_started and ended by child_ended,
    # which records CHILD_ENDED in done_waits (so lifecycle.resolved sees it).
    # The first end wins; a child_started after its child's end (a parent
    # adopting a child whose start batch was torn) adds nothing.

    def _child_created(self, rec: list[Any], loc: int) -> None:
        entry = InstanceEntry(
            sys.intern(rec[CREATED_WORKFLOW]), rec[TS], self._blob_or_loc(rec[CREATED_INPUT], loc),
        )
        entry.parent = rec[CHILD_CREATED_PARENT]
        entry.last_seq = rec[SEQ]
        self.instances[rec[INSTANCE]] = entry

    def _child_started(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        if lc.resolved(inst, key):
            return
        self._register(inst, key, (lc.WAIT_CHILD, None, None))
        value = loc << 2 | CHILD_AT
        if not self._append(inst, key, value):
            inst.steps[sys.intern(key)] = value

    def _child_ended(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[KEY]
        if inst.done_waits is None:
            inst.done_waits = {}
        elif key in inst.done_waits:
            return
        inst.done_waits[sys.intern(key)] = r.CHILD_ENDED
        value = loc << 2 | CHILD_AT
        if not self._append(inst, key, value):
            inst.steps[sys.intern(key)] = value
        self._unregister(inst, key)

    def _completed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        inst.outcome = self._blob_or_loc(rec[COMPLETED_RESULT], loc)

    def _failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        inst.outcome, inst.error = loc, (rec[FAILED_TYPE], rec[FAILED_MESSAGE])

    def _restarted(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        inst.outcome = inst.error = None

    def _state_image(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        # The state and the pending waits are the lifecycle's; the tables are set as is.
        inst.waits = {
            sys.intern(k): (w[0], w[1], w[2]) for k, w in rec[IMAGE_WAITS].items()
        } or None
        inst.done_waits = {sys.intern(k): v for k, v in rec[IMAGE_DONE_WAITS].items()} or None
        self._status_from_image(inst)

    @staticmethod
    def _status_from_image(inst: InstanceEntry) -> None:
        # A compaction of version 3 writes the status text as a status_set
        # before the image, and a wait with a text set one then; one of
        # version 1 or 2 kept the text only in the image's waits: the
        # latest registered counts, as its suspended record did.
        if inst.status is None:
            for _, _, text in (inst.waits or {}).values():
                if text is not None:
                    inst.status = text

    def _state_image_v1(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        # Version 1 kept timers' deadlines, and the one wait's in the image.
        waits: dict[str, lc.Wait] = {
            sys.intern(k): (lc.WAIT_TIMER, v, None) for k, v in rec[IMAGE_V1_TIMERS].items()
        }
        key = rec[IMAGE_V1_WAIT_KEY]
        if rec[IMAGE_STATE] == lc.SUSPENDED and key is not None:
            waits.setdefault(sys.intern(key), (
                lc.WAIT_SIGNAL, rec[IMAGE_V1_DEADLINE], rec[IMAGE_V1_STATUS]
            ))
        inst.done_waits = {sys.intern(k): v for k, v in rec[IMAGE_V1_DONE_WAITS].items()} or None
        inst.waits = {k: w for k, w in waits.items() if not lc.resolved(inst, k)} or None
        self._status_from_image(inst)

    def _state_only(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        """parked, cancelled: the lifecycle records all there is (and a
        child_created for an id that exists: nothing)."""

    # -- flow control (SPEC-NEXT §4) --
    # An invoke's options are the entry's ``flow``; ``queued`` and
    # ``dequeued`` move only the state (the lifecycle's); a cancel with a
    # reason keeps the reason as the entry's error, ("WorkflowCancelled", reason).

    def _options(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        key = rec[OPTIONS_CONCURRENCY_KEY]
        inst.flow = (rec[OPTIONS_PRIORITY], rec[OPTIONS_DEADLINE],
                     None if key is None else sys.intern(key))

    def _cancelled_for(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        inst.error = (CANCELLED_ERROR, rec[CANCELLED_FOR_REASON])

    # -- talking to the outside (SPEC-NEXT §3) --
    # The status text is the latest recorded, by set_status or a suspension's
    # status= (``_suspension``); nothing else clears it. Events append to the
    # instance's stream in journal order (the writer never writes a key twice).

    def _status_set(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        inst.status = rec[STATUS_SET_TEXT]
        inst.status_calls = rec[STATUS_SET_CALL]

    def _published(self, inst: InstanceEntry, rec: list[Any], loc: int) -> None:
        event = (sys.intern(rec[KEY]), rec[TS], self._blob_or_loc(rec[PUBLISHED_VALUE], loc))
        if inst.events is None:
            inst.events = [event]
        else:
            inst.events.append(event)


    # -- engine-level records: schedules and debounce --
    # A tick for a schedule removed meanwhile changes nothing; a later tick
    # never moves after_ms back.

    def _schedule_set(self, rec: list[Any]) -> None:
        self.schedules[rec[r.SCHEDULE_SET_NAME]] = ScheduleEntry(
            rec[r.SCHEDULE_SET_WORKFLOW], rec[r.SCHEDULE_SET_CRON], rec[r.SCHEDULE_SET_INPUT],
            rec[r.SCHEDULE_SET_CATCH_UP], rec[r.SCHEDULE_SET_AFTER_MS],
        )

    def _schedule_removed(self, rec: list[Any]) -> None:
        self.schedules.pop(rec[r.SCHEDULE_REMOVED_NAME], None)

    def _schedule_ticked(self, rec: list[Any]) -> None:
        name = rec[r.SCHEDULE_TICKED_NAME]
        entry = self.schedules.get(name)
        if entry is not None and rec[r.SCHEDULE_TICKED_TICK_MS] > entry.after_ms:
            self.schedules[name] = ScheduleEntry(
                entry.workflow, entry.cron, entry.input, entry.catch_up,
                rec[r.SCHEDULE_TICKED_TICK_MS],
            )

    def _debounce_set(self, rec: list[Any]) -> None:
        self.debounces[rec[r.DEBOUNCE_SET_WORKFLOW], rec[r.DEBOUNCE_SET_DEBOUNCE_KEY]] = (
            DebounceEntry(rec[r.DEBOUNCE_SET_N], rec[r.DEBOUNCE_SET_INPUT],
                          rec[r.DEBOUNCE_SET_DUE_MS], rec[TS])
        )

    def _handover_applied(self, rec: list[Any]) -> None:
        self.handovers[rec[r.HANDOVER_APPLIED_NAME]] = rec[r.HANDOVER_APPLIED_INSTANCE_ID]


Move = tuple[str, int | None, int | None, dict[str, int], dict[str, int], dict[int, int]]
"""An instance's new locations: (id, input, outcome, steps, signals, events
by seq); only the entries that are locations (inline values never move)."""


def moves(fresh: Index) -> Iterator[Move]:
    """Every location in ``fresh`` (a compacted segment's index), by instance."""
    for iid, e in fresh.instances.items():
        steps = {k: v for k, v in e.steps.items() if type(v) is int}
        signals = {k: v for k, v in (e.signals or {}).items() if type(v) is int}
        events = {i: ev[2] for i, ev in enumerate(e.events or (), 1) if type(ev[2]) is int}
        inp = e.input if type(e.input) is int else None
        out = e.outcome if type(e.outcome) is int else None
        if steps or signals or events or inp is not None or out is not None:
            yield iid, inp, out, steps, signals, events


def _repoint_events(stream: list[PublishedEvent], moved: dict[int, int], upto: int) -> int:
    """Re-point the events (by seq) whose value is at an old location."""
    changed = 0
    for seq, loc in moved.items():
        if seq <= len(stream):
            key, ts, where = stream[seq - 1]
            if _old(where, 0, upto):
                stream[seq - 1] = (key, ts, loc)
                changed += 1
    return changed


def _old(value: Entry | None, shift: int, upto: int) -> bool:
    """Whether ``value`` is a location that ``cmp-<upto>`` replaced: in a plain
    segment up to ``upto``, or in an older compacted one."""
    if type(value) is not int:
        return False
    loc = value >> shift
    segment = unpack_loc(loc)[0]
    return segment < upto or (segment == upto and loc_inner(loc) == 0)


_Apply = Callable[[Index, InstanceEntry, list[Any], int], None]
# Record type -> what apply records for it besides the state (``created``
# makes the entry, in apply itself).
_APPLY: dict[int, _Apply] = {
    r.STEP_DONE: Index._step_done,
    r.STEP_FAILED: Index._step_failed,
    r.STEP_DONE_V2: Index._step_done_v2,
    r.STEP_FAILED_V2: Index._step_failed_v2,
    r.ATTEMPT_FAILED: Index._attempt_failed,
    r.STEP_STARTED: Index._step_started,
    r.FORGOT: Index._forgot,
    r.SUSPENDED: Index._suspension,
    r.TIMER_SET: Index._timer,
    r.PARKED: Index._state_only,
    r.SIGNALLED: Index._signalled,
    r.TIMER_FIRED: Index._wait_done,
    r.SUSPEND_TIMED_OUT: Index._wait_done,
    r.COMPLETED: Index._completed,
    r.FAILED: Index._failed,
    r.CANCELLED: Index._state_only,
    r.RESTARTED: Index._restarted,
    r.STATE_IMAGE: Index._state_image,
    r.SUSPENDED_V1: Index._suspension_v1,
    r.TIMER_SET_V1: Index._timer_v1,
    r.STATE_IMAGE_V1: Index._state_image_v1,
    r.STATUS_SET: Index._status_set,
    r.PUBLISHED: Index._published,
    r.CHILD_CREATED: Index._state_only,  # an id created already: the first creation stands
    r.CHILD_STARTED: Index._child_started,
    r.CHILD_ENDED: Index._child_ended,
    r.OPTIONS: Index._options,
    r.QUEUED: Index._state_only,
    r.DEQUEUED: Index._state_only,
    r.CANCELLED_FOR: Index._cancelled_for,
}
# Engine-level record types (records.ENGINE_LEVEL): what apply records.
_ENGINE_APPLY: dict[int, Callable[[Index, list[Any]], None]] = {
    r.SCHEDULE_SET: Index._schedule_set,
    r.SCHEDULE_REMOVED: Index._schedule_removed,
    r.SCHEDULE_TICKED: Index._schedule_ticked,
    r.DEBOUNCE_SET: Index._debounce_set,
    r.HANDOVER_APPLIED: Index._handover_applied,
}
# Every record type apply knows (tests/core/test_records.py holds it to SCHEMA).
APPLIED: Final = frozenset({r.CREATED, *_APPLY, *_ENGINE_APPLY})
