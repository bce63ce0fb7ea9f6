"""The in-memory index: what the journal says, by instance and key. Pure.

``Index.apply(rec, loc)`` is the one way the index changes: start-up replay
calls it for every record in the journal, the appender for every record it
has just made durable. So the index after a restart is, by construction,
the index before it.

Layout, chosen for memory (a million entries must fit in ~100 bytes each):
``instances`` maps an instance id to an ``InstanceEntry`` (a slotted
object); its ``steps`` dict maps a key (interned: most instances share their
keys) to either

* ``bytes``: a completed step's value blob, kept inline when it is small;
* ``int``: ``loc << 2 | kind``, where ``loc`` packs the record's place in the
  journal (``inner << 64 | segment << 40 | offset``, ``inner`` for records
  inside a compacted block) and kind is STEP_DONE_AT (a value to read back
  on demand), STEP_FAILED_AT or STEP_STARTED_AT.

Large values never stay in memory; the engine reads them back by location.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from . import _lifecycle as lc
from . import _records as r

OFFSET_BITS = 40
STEP_DONE_AT = 0
STEP_FAILED_AT = 1
STEP_STARTED_AT = 2
DEFAULT_INLINE_LIMIT = 256

Entry = bytes | int


SEGMENT_BITS = 24
INNER_SHIFT = OFFSET_BITS + SEGMENT_BITS  # 64


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


class InstanceEntry:
    """Everything the index knows about one instance."""

    __slots__ = (
        "workflow", "state", "created_ms", "updated_ms", "input", "outcome",
        "error", "wait_key", "status", "deadline_ms", "steps", "signals",
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
        self.steps: dict[str, Entry] = {}
        self.signals: dict[str, Entry] | None = None  # key -> payload
        self.timers: dict[str, int] | None = None  # key -> deadline_ms
        # keys whose wait ended: timers fired, suspensions timed out
        self.done_waits: dict[str, int] | None = None
        self.last_seq = 0  # seq of its latest record (0: only compacted history)

    def memoised_steps(self) -> int:
        return sum(1 for e in self.steps.values() if entry_kind(e) != STEP_STARTED_AT)


class Index:
    """(instance, key) -> where the answer is. See the module comment."""

    __slots__ = ("instances", "inline_limit", "records")

    def __init__(self, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.instances: dict[str, InstanceEntry] = {}
        self.inline_limit = inline_limit
        self.records = 0

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
        if not _APPLY[rtype](self, inst, rec, loc):
            return  # an early signal, an old key, a signalled suspension
        new_state = lc.next_state(inst.state, rtype)
        if new_state != inst.state:
            if new_state not in lc.WAITING:
                inst.wait_key = inst.status = inst.deadline_ms = None
            inst.state = new_state

    def _blob_or_loc(self, blob: bytes, loc: int) -> Entry:
        return blob if len(blob) <= self.inline_limit else loc

    # One function per record type: what it changes besides the state. Each
    # returns whether the record may change the state (see _lifecycle).

    def _step_done(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        inst.steps[sys.intern(rec[4])] = (
            rec[5] if len(rec[5]) <= self.inline_limit else loc << 2 | STEP_DONE_AT
        )
        return True

    def _step_failed(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        inst.steps[sys.intern(rec[4])] = loc << 2 | STEP_FAILED_AT
        return True

    def _step_started(self, inst: InstanceEntry, rec: list[Any], loc: int) -> bool:
        inst.steps.setdefault(sys.intern(rec[4]), loc << 2 | STEP_STARTED_AT)
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
        pattern: str = rec[4]
        if pattern.endswith("*"):
            prefix = pattern[:-1]
            for key in [k for k in inst.steps if k.startswith(prefix)]:
                del inst.steps[key]
        else:
            inst.steps.pop(pattern, None)
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
