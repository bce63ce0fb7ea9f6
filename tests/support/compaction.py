"""Helpers for the compaction tests: plausible histories, and every answer an index gives.

* ``History`` turns small integer choices (hypothesis draws them) into the
  journal records an engine could write: instances created, steps done
  (small and large values), failed or started, suspensions with and
  without a deadline, early and matching signals, timers set and fired,
  timeouts, forgets of a key or a prefix, completions, failures, cancels
  and restarts, interleaved across instances. A small model of each
  instance's lifecycle keeps the order one the engine could produce.
* ``answers(index, read)``: everything a query can learn from an index,
  with every value that sits at a location read back (and the record there
  checked to be the right one), so two indexes compare equal exactly when
  no query can tell them apart.
* ``reference(records)``: the answers of records applied without a
  journal; ``stored(storage)``: the answers of a journal as it opens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio.testing import MockClock

from memable_log._core import index as ix
from memable_log._core import lifecycle as lc
from memable_log._core import records as r
from memable_log._core.index import Index
from memable_log._storage.files import Storage
from memable_log._storage.segments import ScanResult, read_record_at, scan

START_MS = 1_700_000_000_000
INLINE = ix.DEFAULT_INLINE_LIMIT

STEP_KEYS = ("fetch", "search:1", "search:2", "load:v1")
WAIT_KEYS = ("approve", "review")
TIMER_KEYS = ("nap", "cool")
FORGET_PATTERNS = ("fetch", "search:*", "load:v1", "nothing", "*")

Read = Callable[[int], list[Any]]
Answers = dict[str, dict[str, Any]]


# -- answers -------------------------------------------------------------------------


def _at(read: Read, loc: int, rtype: int, iid: str, key: str | None = None) -> list[Any]:
    rec = read(loc)
    assert (rec[0], rec[3]) == (rtype, iid), f"location {loc:#x} holds {rec[:5]!r}"
    if key is not None:
        assert rec[4] == key, f"location {loc:#x} holds {rec[:5]!r}, not key {key!r}"
    return rec


def answers(index: Index, read: Read) -> Answers:
    """Every answer the index gives, values resolved (see the module comment)."""
    out: Answers = {}
    for iid, e in index.instances.items():
        steps: dict[str, tuple[Any, ...]] = {}
        for key, step in e.steps.items():
            kind = ix.entry_kind(step)
            if isinstance(step, bytes):
                steps[key] = ("done", step)
            elif kind == ix.STEP_DONE_AT:
                steps[key] = ("done", _at(read, ix.entry_loc(step), r.STEP_DONE, iid, key)[5])
            elif kind == ix.STEP_FAILED_AT:
                rec = _at(read, ix.entry_loc(step), r.STEP_FAILED, iid, key)
                steps[key] = ("failed", rec[5], rec[6], rec[7])
            else:
                _at(read, ix.entry_loc(step), r.STEP_STARTED, iid, key)
                steps[key] = ("started",)
        signals = {}
        for key, payload in (e.signals or {}).items():
            if isinstance(payload, int):
                payload = _at(read, payload, r.SIGNALLED, iid, key)[5]
            signals[key] = payload
        value = e.input
        if isinstance(value, int):
            value = _at(read, value, r.CREATED, iid)[5]
        outcome: Any = None
        if e.outcome is not None:
            if e.state == lc.COMPLETED:
                outcome = e.outcome if isinstance(e.outcome, bytes) else _at(
                    read, e.outcome, r.COMPLETED, iid
                )[4]
            else:
                assert e.state == lc.FAILED, f"{iid}: an outcome in state {e.state}"
                assert isinstance(e.outcome, int)
                outcome = tuple(_at(read, e.outcome, r.FAILED, iid)[4:7])
        out[iid] = {
            "workflow": e.workflow, "state": lc.STATE_NAMES[e.state],
            "created_ms": e.created_ms, "updated_ms": e.updated_ms,
            "wait_key": e.wait_key, "status": e.status, "deadline_ms": e.deadline_ms,
            "timers": e.timers, "done_waits": e.done_waits, "error": e.error,
            "input": value, "outcome": outcome, "steps": steps, "signals": signals,
            "memoised": e.memoised_steps(),
        }
    return out


def reference(records: list[list[Any]], inline_limit: int = INLINE) -> Answers:
    """The answers of ``records`` applied in order to a fresh index (no journal)."""
    index = Index(inline_limit)
    at: dict[int, list[Any]] = {}
    for n, rec in enumerate(records, 1):
        at[n] = rec
        index.apply(rec, n)
    return answers(index, at.__getitem__)


def stored(storage: Storage, inline_limit: int = INLINE) -> Answers:
    """The answers of the journal in ``storage``, as a journal opening it sees them."""
    index = Index(inline_limit)
    result = scan(storage, index.apply)
    return answers(index, reader(storage, result))


def reader(storage: Storage, result: ScanResult) -> Read:
    salts = {seg.name: seg.header.salt for seg in result.segments}
    return lambda loc: read_record_at(storage, salts, loc)


def without(full: Answers, dropped: set[str]) -> Answers:
    return {iid: a for iid, a in full.items() if iid not in dropped}


def expired_ids(full: Answers, now_ms: int, retention_ms: int) -> set[str]:
    """Finished instances unchanged for longer than the retention period."""
    return {
        iid for iid, a in full.items()
        if a["state"] in ("completed", "failed", "cancelled")
        and a["updated_ms"] <= now_ms - retention_ms
    }


# -- histories -----------------------------------------------------------------------


@dataclass
class _Inst:
    state: int = lc.RUNNING
    wait_key: str | None = None
    deadline: int | None = None
    steps: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)
    timers: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


class History:
    """Engine-plausible records from small integer choices (see the module comment)."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now = start_ms
        self.records: list[list[Any]] = []
        self.insts: dict[str, _Inst] = {}
        self._blobs = 0

    def blob(self, large: bool) -> bytes:
        """A value unique in the history: small (inline) or above the inline limit."""
        self._blobs += 1
        tag = self._blobs.to_bytes(4, "little")
        return tag * (75 + self._blobs * 37 % 300) if large else tag + b"v" * (self._blobs % 9)

    def _emit(self, rtype: int, iid: str, *fields: Any) -> None:
        self.records.append(r.make(rtype, self.now, iid, *fields))

    def run(self, ops: list[tuple[int, int, int, int]]) -> list[list[Any]]:
        """Apply every choice; return the records made by these ones."""
        first = len(self.records)
        for op in ops:
            self.op(*op)
        return self.records[first:]

    def op(self, code: int, which: int, key: int, extra: int) -> None:
        self.now += 1 + 997 * extra + 13 * key
        if not self.insts or code % 9 == 0:
            iid = f"i{len(self.insts)}"
            self.insts[iid] = _Inst()
            self._emit(r.CREATED, iid, f"wf{which % 2}", self.blob(large=extra == 3))
            return
        iid = sorted(self.insts)[which % len(self.insts)]
        inst = self.insts[iid]
        actions = {
            lc.RUNNING: self._running, lc.SUSPENDED: self._suspended,
            lc.SLEEPING: self._sleeping,
        }.get(inst.state, self._finished)
        actions(iid, inst, code // 9, key, extra)

    # One method per state: what the engine could write next for the instance.

    def _running(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        step = STEP_KEYS[key % len(STEP_KEYS)]
        wait = WAIT_KEYS[key % len(WAIT_KEYS)]
        timer = TIMER_KEYS[key % len(TIMER_KEYS)]
        choice = code % 12
        if choice in (0, 1):
            inst.steps.add(step)
            self._emit(r.STEP_DONE, iid, step, self.blob(large=extra >= 2))
        elif choice == 2:
            inst.steps.add(step)
            self._emit(r.STEP_FAILED, iid, step, "ValueError", f"bad {step}",
                       "Traceback (most recent call last):\n" + "  frame\n" * (extra * 40))
        elif choice == 3 and step not in inst.steps:
            inst.steps.add(step)  # an at-most-once marker: the step may crash mid-way
            self._emit(r.STEP_STARTED, iid, step)
        elif choice in (4, 11) and wait not in inst.done:
            timeout = extra % 2 or choice == 11
            deadline = self.now + 5_000 * (extra + 1) if timeout else None
            status = f"waiting for {wait}" if extra else None
            if wait not in inst.signals:  # else the suspend records nothing, or lost a race
                inst.state, inst.wait_key, inst.deadline = lc.SUSPENDED, wait, deadline
            self._emit(r.SUSPENDED, iid, wait, status, deadline)
        elif choice == 5 and timer not in inst.done:
            deadline = inst.timers.setdefault(timer, self.now + 3_000 * (extra + 1))
            if deadline <= self.now:  # due at once: the re-run records it fired
                inst.done.add(timer)
                self._emit(r.TIMER_FIRED, iid, timer)
            else:
                inst.state, inst.wait_key, inst.deadline = lc.SLEEPING, timer, deadline
                self._emit(r.TIMER_SET, iid, timer, deadline)
        elif choice == 6:
            self._early_signal(iid, inst, key, extra)
        elif choice == 7:
            self._forget(iid, inst, key)
        elif choice == 8:
            inst.state = lc.COMPLETED
            self._emit(r.COMPLETED, iid, self.blob(large=extra >= 2))
        elif choice == 9:
            inst.state = lc.FAILED
            self._emit(r.FAILED, iid, "RuntimeError", f"{iid} gave up", "tb " * (extra * 50))
        elif choice == 10:
            inst.state = lc.CANCELLED
            self._emit(r.CANCELLED, iid)
        else:
            inst.steps.add(step)
            self._emit(r.STEP_DONE, iid, step, self.blob(large=extra == 0))

    def _suspended(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 7
        assert inst.wait_key is not None
        if choice in (0, 1, 6):  # the awaited signal wakes it
            inst.signals.add(inst.wait_key)
            self._emit(r.SIGNALLED, iid, inst.wait_key, self.blob(large=extra >= 2))
            inst.state, inst.wait_key, inst.deadline = lc.RUNNING, None, None
        elif choice in (2, 5) and inst.deadline is not None:
            self.now = max(self.now, inst.deadline)
            inst.done.add(inst.wait_key)
            self._emit(r.SUSPEND_TIMED_OUT, iid, inst.wait_key)
            inst.state, inst.wait_key, inst.deadline = lc.RUNNING, None, None
        elif choice == 3:
            self._early_signal(iid, inst, key, extra)
        elif choice == 4:
            inst.state = lc.CANCELLED
            self._emit(r.CANCELLED, iid)
        elif choice == 5:
            self._forget(iid, inst, key)

    def _sleeping(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 5
        assert inst.wait_key is not None
        assert inst.deadline is not None
        if choice in (0, 1):  # due: the poller resumes it
            self.now = max(self.now, inst.deadline)
            inst.done.add(inst.wait_key)
            self._emit(r.TIMER_FIRED, iid, inst.wait_key)
            inst.state, inst.wait_key, inst.deadline = lc.RUNNING, None, None
        elif choice == 2:
            timer = TIMER_KEYS[key % len(TIMER_KEYS)]
            if timer not in inst.timers and timer not in inst.done:
                # A second timer in a nursery of the workflow, set as the first unwinds.
                deadline = self.now + 100 * (extra + 1)
                inst.timers[timer] = deadline
                if deadline < inst.deadline:
                    inst.wait_key, inst.deadline = timer, deadline
                self._emit(r.TIMER_SET, iid, timer, deadline)
        elif choice == 3:
            inst.state = lc.CANCELLED
            self._emit(r.CANCELLED, iid)
        else:
            self._early_signal(iid, inst, key, extra)

    def _finished(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 4
        if choice == 0:
            inst.state = lc.RUNNING
            self._emit(r.RESTARTED, iid)
        elif choice == 1:
            self._forget(iid, inst, key)
        elif choice == 2:
            self._early_signal(iid, inst, key, extra)
        else:  # most finished instances stay as they are: a new one starts
            iid = f"i{len(self.insts)}"
            self.insts[iid] = _Inst()
            self._emit(r.CREATED, iid, f"wf{key % 2}", self.blob(large=extra == 3))

    def _early_signal(self, iid: str, inst: _Inst, key: int, extra: int) -> None:
        wait = WAIT_KEYS[(key + 1) % len(WAIT_KEYS)]
        if wait not in inst.signals and wait not in inst.done and wait != inst.wait_key:
            inst.signals.add(wait)
            self._emit(r.SIGNALLED, iid, wait, self.blob(large=extra == 1))

    def _forget(self, iid: str, inst: _Inst, key: int) -> None:
        pattern = FORGET_PATTERNS[key % len(FORGET_PATTERNS)]
        prefix = pattern[:-1] if pattern.endswith("*") else None
        inst.steps = {
            k for k in inst.steps
            if not (k == pattern or (prefix is not None and k.startswith(prefix)))
        }
        self._emit(r.FORGOT, iid, pattern)


def history(ops: list[tuple[int, int, int, int]]) -> History:
    made = History()
    made.run(ops)
    return made


def copy_records(records: list[list[Any]]) -> list[list[Any]]:
    """Fresh lists (appending sets each record's seq in place)."""
    return [list(rec) for rec in records]


async def step_value(engine: Any, iid: str, key: str) -> Any:
    """The decoded memoised value of a done step (read back if not inline)."""
    entry = engine._host.index.instances[iid].steps[key]
    assert ix.entry_kind(entry) == ix.STEP_DONE_AT
    return await engine._host.value(entry if type(entry) is bytes else ix.entry_loc(entry), 5)


class CompactionWatch:
    """Counts the background compactions of a running engine as they end.

    Wraps the engine's ``Compaction.compact`` (a test seam, installed right
    after ``async with engine:`` starts, before any roll-over).
    """

    def __init__(self, engine: Any) -> None:
        compaction = engine._backend.compaction
        assert compaction is not None, "background compaction is off"
        self.compaction = compaction
        self.engine = engine
        self.done = 0
        self._event = trio.Event()
        original = compaction.compact

        async def compact(*args: Any) -> None:
            await original(*args)
            self.done += 1
            self._event, event = trio.Event(), self._event
            event.set()

        compaction.compact = compact

    async def next(self) -> None:
        """Wait for the next compaction to end."""
        await self._event.wait()

    async def through_sealed(self) -> int:
        """Wait until every segment sealed by now is compacted; return the last one."""
        journal = self.engine._backend.journal
        target = journal.writer.segment - 1
        # On a MockClock a missing compaction lets the clock jump here at once.
        with trio.fail_after(patience()):
            while self.compaction.compacted_upto < target:
                await self.next()
        return int(target)


def patience() -> float:
    """How long to wait before calling an engine stuck: long on a MockClock (free)."""
    return 1e8 if isinstance(trio.lowlevel.current_clock(), MockClock) else 30.0
