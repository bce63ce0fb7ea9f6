"""The in-memory index: what the journal says, by instance and key. Pure.

``Index.apply(rec, loc)`` is the one way the index changes: start-up replay
calls it for every record in the journal, the appender for every record it
has just made durable. So the index after a restart is, by construction,
the index before it.

Layout, chosen for memory (a million entries must fit in ~100 bytes each)
and for start-up from a snapshot (a million entries in well under a second).
``instances`` maps an instance id to an ``InstanceEntry`` (a slotted
object). Its step table maps a key to either

* ``bytes``: a completed step's value blob, kept inline when it is small;
* ``int``: ``loc << 2 | kind``, where ``loc`` packs the record's place in the
  journal (``inner << 64 | segment << 40 | offset``, ``inner`` for records
  inside a compacted block) and kind is STEP_DONE_AT (a value to read back
  on demand), STEP_FAILED_AT or STEP_STARTED_AT.

Large values never stay in memory; the engine reads them back by location.

Two forms of the step table. *Materialised*, it is a dict (keys interned:
most instances share their keys); ``entry.steps`` always answers with it.
*Packed*, it is one ``bytes`` object: a msgpack stream of operations, each
a key then a value, in the order apply met them. A value sets the key (a
STEP_STARTED_AT value only if the key is absent, as apply does); nil
forgets the key, or every key with the prefix when it ends in ``*``.
Locations beyond 64 bits travel as msgpack ext type ``BIG_INT``. Replaying
the stream (``unpack_steps``) builds the very dict apply would have built,
in the same order, so nothing observable depends on the form. Snapshots
store packed tables as they are: a change to this form is a new snapshot
version (_snapshot.py).

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
  keeping the dict; one that materialises tables at rest in bulk (the
  re-pointing after a compaction) can pack them again with ``repack``.

Nobody holds ``entry.steps`` across an ``apply``: callers read it anew (the
engine's context, compaction's re-pointing), so a table packed under them
is never written to by mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from . import lifecycle as lc
from . import records as r

OFFSET_BITS = 40
STEP_DONE_AT = 0
STEP_FAILED_AT = 1
STEP_STARTED_AT = 2
DEFAULT_INLINE_LIMIT = 256
# Appending to a packed table copies it: past this size apply materialises it.
APPEND_LIMIT = 4096
BIG_INT = 1  # msgpack ext type: an unsigned int beyond 64 bits, big-endian bytes

Entry = bytes | int


SEGMENT_BITS = 24
INNER_SHIFT = OFFSET_BITS + SEGMENT_BITS  # 64
_U64 = (1 << 64) - 1
_AT_REST = lc.WAITING | lc.FINISHED
_BIN8 = [bytes((0xC4, n)) for n in range(256)]
_KEY_CACHE = 4096  # distinct keys whose msgpack bytes an index keeps
_TRANSITIONS = lc.TRANSITIONS  # inlined lc.next_state: apply runs per record


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
    """STEP_DONE_AT, STEP_FAILED_AT or STEP_STARTED_AT."""
    return STEP_DONE_AT if type(entry) is bytes else entry & 3  # type: ignore[operator]


def entry_loc(entry: int) -> int:
    return entry >> 2


# -- the packed form -----------------------------------------------------------------


def wire(value: Any) -> Any:
    """``value`` as msgpack can carry it: an int beyond 64 bits as ext BIG_INT."""
    if type(value) is int and value > _U64:
        return msgpack.ExtType(BIG_INT, value.to_bytes((value.bit_length() + 7) // 8, "big"))
    return value


def ext_hook(code: int, data: bytes) -> int:
    """msgpack ``ext_hook`` that reads BIG_INT back; ValueError for any other."""
    if code != BIG_INT:
        raise ValueError(f"unknown msgpack ext type {code}")
    return int.from_bytes(data, "big")


def forget(steps: dict[str, Entry], pattern: str) -> None:
    """Drop ``pattern``'s key, or every key with its prefix if it ends in ``*``."""
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        for key in [k for k in steps if k.startswith(prefix)]:
            del steps[key]
    else:
        steps.pop(pattern, None)


def pack_steps(steps: dict[str, Entry]) -> bytes:
    """The packed form of a materialised step table (one set per key)."""
    pack = msgpack.Packer().pack
    parts = []
    for key, value in steps.items():
        parts.append(pack(key))
        parts.append(pack(wire(value)))
    return b"".join(parts)


def unpack_steps(packed: bytes, intern: bool = True) -> dict[str, Entry]:
    """Replay a packed step table into the dict apply would have built.

    ``intern=False`` leaves the keys as decoded: for a dict that is only
    read once and dropped (interning a new key costs ~0.2 us)."""
    steps: dict[str, Entry] = {}
    if not packed:
        return steps
    unpacker = msgpack.Unpacker(
        raw=False, use_list=False, ext_hook=ext_hook, max_buffer_size=len(packed)
    )
    unpacker.feed(packed)
    ops = list(unpacker)
    keys, values = ops[0::2], ops[1::2]
    same: Callable[[str], str] = sys.intern if intern else str
    steps = dict(zip(map(same, keys), values, strict=True))  # ValueError: ends after a key
    if len(steps) == len(values) and None not in values:
        # Each key once, none forgotten: what the loop below would build
        # (a STEP_STARTED_AT value set on an absent key), at C speed. The
        # common case: a table packed again at rest (pack_steps) is one set per key.
        return steps
    steps = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:
            forget(steps, key)
        elif type(value) is int and value & 3 == STEP_STARTED_AT:
            steps.setdefault(same(key), value)
        else:
            steps[same(key)] = value
    return steps


class InstanceEntry:
    """Everything the index knows about one instance."""

    __slots__ = (
        "workflow", "state", "created_ms", "updated_ms", "input", "outcome",
        "error", "wait_key", "status", "deadline_ms", "table", "signals",
        "timers", "done_waits", "last_seq",
    )

    def __init__(self, workflow: str, ts_ms: int, input_: Entry) -> None:
        self.workflow = workflow
        self.state = lc.RUNNING
        self.created_ms = ts_ms
        self.updated_ms = ts_ms
        self.input: Entry = input_  # blob, or loc of the created record
        self.outcome: Entry | None = None  # result blob, or loc of the record
        self.error: tuple[str, str] | None = None
        self.wait_key: str | None = None  # the key a suspension or timer waits on
        self.status: str | None = None
        self.deadline_ms: int | None = None
        # The step table, packed or materialised (module comment); read .steps.
        self.table: dict[str, Entry] | bytes = b""
        self.signals: dict[str, Entry] | None = None  # key -> payload
        self.timers: dict[str, int] | None = None  # key -> deadline_ms
        # keys whose wait ended: timers fired, suspensions timed out
        self.done_waits: dict[str, int] | None = None
        self.last_seq = 0  # seq of its latest record (0: only compacted history)

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

    def memoised_steps(self) -> int:
        """How many steps have an outcome (at-most-once markers excluded)."""
        table = self.table
        steps = table if isinstance(table, dict) else unpack_steps(table, intern=False)
        # entry_kind inlined (engine.instances() counts every instance's steps)
        markers = [e for e in steps.values() if type(e) is int and e & 3 == STEP_STARTED_AT]
        return len(steps) - len(markers)


class Index:
    """(instance, key) -> where the answer is. See the module comment."""

    __slots__ = ("instances", "inline_limit", "records", "_pack", "_keys")

    def __init__(self, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.instances: dict[str, InstanceEntry] = {}
        self.inline_limit = inline_limit
        self.records = 0
        # One packer per index: an index is used by one thread at a time.
        self._pack: Callable[[Any], bytes] = msgpack.Packer().pack
        self._keys: dict[str, bytes] = {}  # a key's msgpack bytes (keys repeat)

    def apply(self, rec: list[Any], loc: int) -> None:
        """Fold one well-formed record (see _records.check) into the index."""
        rtype = rec[0]
        self.records += 1
        if rtype == r.CREATED:
            if rec[3] not in self.instances:
                entry = InstanceEntry(sys.intern(rec[4]), rec[2], self._blob_or_loc(rec[5], loc))
                entry.last_seq = rec[1]
                self.instances[rec[3]] = entry
            return
        inst = self.instances.get(rec[3])
        if inst is None:
            raise r.RecordError(f"record for unknown instance {rec[3]!r}")
        inst.updated_ms = rec[2]
        inst.last_seq = rec[1]
        before = inst.state
        # False: an early signal, an old key, a signalled suspension, a state image.
        if _APPLY[rtype](self, inst, rec, loc):
            new_state = _TRANSITIONS.get((before, rtype), before)
            if new_state != before:
                if new_state not in lc.WAITING:
                    inst.wait_key = inst.status = inst.deadline_ms = None
                inst.state = new_state
            elif before not in lc.FINISHED:
                return  # the bulk of the records: a step of a running instance
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

    # One function per record type: what it changes besides the state. Each
    # returns whether the record may change the state (see _lifecycle).

    def _step_done(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        blob = rec[5]
        size = len(blob)
        if size <= self.inline_limit:
            table = inst.table
            # The bulk of a scan: an inline value onto a small packed table
            # (by hand: a msgpack bin 8 is 0xc4, its length, its bytes).
            if type(table) is bytes and size < 256 and len(table) < APPEND_LIMIT:
                key = rec[4]
                packed_key = self._keys.get(key) or self._key_bytes(key)
                inst.table = b"".join((table, packed_key, _BIN8[size], blob))
                return True
            value: Entry = blob
        else:
            value = loc << 2 | STEP_DONE_AT
            if self._append(inst, rec[4], value):
                return True
        inst.steps[sys.intern(rec[4])] = value
        return True

    def _step_failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        value = loc << 2 | STEP_FAILED_AT
        if not self._append(inst, rec[4], value):
            inst.steps[sys.intern(rec[4])] = value
        return True

    def _step_started(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        value = loc << 2 | STEP_STARTED_AT
        if not self._append(inst, rec[4], value):
            inst.steps.setdefault(sys.intern(rec[4]), value)
        return True

    def _suspended(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.signals is not None and rec[4] in inst.signals:
            return False  # its signal came first: the instance keeps running
        if inst.state == lc.RUNNING:
            inst.wait_key, inst.status, inst.deadline_ms = rec[4], rec[5], rec[6]
        return True

    def _signalled(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.signals is None:
            inst.signals = {}
        inst.signals.setdefault(rec[4], self._blob_or_loc(rec[5], loc))
        return bool(rec[4] == inst.wait_key)

    def _timer_set(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.timers is None:
            inst.timers = {}
        inst.timers.setdefault(rec[4], rec[5])
        # Concurrent timers (a nursery in the workflow): sleep until the earliest.
        if inst.state == lc.RUNNING or (
            inst.state == lc.SLEEPING and inst.deadline_ms is not None
            and rec[5] < inst.deadline_ms
        ):
            inst.wait_key, inst.status, inst.deadline_ms = rec[4], None, rec[5]
        return True

    def _wait_done(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.done_waits is None:
            inst.done_waits = {}
        inst.done_waits.setdefault(rec[4], rec[0])
        return bool(rec[4] == inst.wait_key)

    def _forgot(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if not self._append(inst, rec[4], None):
            forget(inst.steps, rec[4])
        return True

    def _completed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.state in lc.LIVE:
            inst.outcome = self._blob_or_loc(rec[4], loc)
        return True

    def _failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.state in lc.LIVE:
            inst.outcome, inst.error = loc, (rec[4], rec[5])
        return True

    def _cancelled(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        return True  # only the state changes

    def _state_image(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        # Compaction's summary of what the state machine had reached: set as is.
        inst.state = rec[4]
        inst.wait_key, inst.status, inst.deadline_ms = rec[5], rec[6], rec[7]
        inst.timers = {sys.intern(k): v for k, v in rec[8].items()} or None
        inst.done_waits = {sys.intern(k): v for k, v in rec[9].items()} or None
        return False

    def _restarted(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        if inst.state in lc.FINISHED:
            inst.outcome = inst.error = None
        return True


_Apply = Callable[[Index, InstanceEntry, list[Any], int], bool]
_APPLY: dict[int, _Apply] = {
    r.STEP_DONE: Index._step_done,
    r.STEP_FAILED: Index._step_failed,
    r.STEP_STARTED: Index._step_started,
    r.SUSPENDED: Index._suspended,
    r.SIGNALLED: Index._signalled,
    r.TIMER_SET: Index._timer_set,
    r.TIMER_FIRED: Index._wait_done,
    r.SUSPEND_TIMED_OUT: Index._wait_done,
    r.FORGOT: Index._forgot,
    r.COMPLETED: Index._completed,
    r.FAILED: Index._failed,
    r.CANCELLED: Index._cancelled,
    r.RESTARTED: Index._restarted,
    r.STATE_IMAGE: Index._state_image,
}
