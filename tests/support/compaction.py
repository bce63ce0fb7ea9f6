"""Helpers for the compaction tests: plausible histories, and every answer an index gives.

* ``History`` turns small integer choices (hypothesis draws them) into the
  journal records an engine could write: instances created, steps done
  (small and large values), failed or started, suspensions with and
  without a deadline, early and matching signals, timers set and fired,
  instances parked on several waits and woken by any one, timeouts, format
  version 1's records (a prefix of the history, if asked), forgets of a key
  or a prefix, completions, failures, cancels and restarts, interleaved
  across instances. A small model of each instance's lifecycle keeps the
  order one the engine could produce.
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
                steps[key] = ("failed", rec[5], rec[6], rec[7], rec[10])
            elif kind == ix.CHILD_AT:
                rec = read(ix.entry_loc(step))
                assert rec[0] in (r.CHILD_STARTED, r.CHILD_ENDED)
                assert rec[3:5] == [iid, key]
                steps[key] = ("child", rec[0], *rec[5:])
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
            value = _at(read, value, r.CREATED if e.parent is None else r.CHILD_CREATED, iid)[5]
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
            "pending": e.pending, "status": e.status, "deadline_ms": e.deadline_ms,
            "waits": e.waits, "done_waits": e.done_waits, "error": e.error,
            "input": value, "outcome": outcome, "steps": steps, "signals": signals,
            "memoised": e.memoised_steps(), "parent": e.parent,
            "events": _events(e, read, iid), "status_calls": e.status_calls,
            # engine.steps's times, and a step's failed attempts awaiting its outcome
            "step_meta": ix.step_meta(e.created_ms, e.steps, e.meta), "tries": e.tries,
        }
    # hand-overs applied go with their instance
    handovers = {name: iid for name, iid in index.handovers.items() if iid in out}
    if index.schedules or index.debounces or handovers:
        # Engine-level tables, under the id their records carry (r.ENGINE,
        # which no instance has): never finished, so never dropped.
        out[r.ENGINE] = {"state": "engine-level", "schedules": dict(index.schedules),
                         "debounces": dict(index.debounces), "handovers": handovers}
    return out


def _events(e: ix.InstanceEntry, read: Read, iid: str) -> list[tuple[str, int, bytes]] | None:
    """The event stream, values read back."""
    if e.events is None:
        return None
    return [
        (key, at, value if isinstance(value, bytes) else _at(read, value, r.PUBLISHED, iid, key)[5])
        for key, at, value in e.events
    ]


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
    kept = {iid: a for iid, a in full.items() if iid not in dropped}
    engine = kept.get(r.ENGINE)
    if engine is not None:  # a hand-over's marker goes with its instance
        handovers = {n: i for n, i in engine["handovers"].items() if i not in dropped}
        kept[r.ENGINE] = {**engine, "handovers": handovers}
        if not (handovers or engine["schedules"] or engine["debounces"]):
            del kept[r.ENGINE]
    return kept


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
    pending: tuple[str, ...] = ()
    steps: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)
    waits: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # kind, deadline
    done: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)  # published keys
    calls: int = 0  # the latest set_status call number
    tries: dict[str, tuple[int, int]] = field(default_factory=dict)  # step: started, failed
    parent: tuple[str, str] | None = None  # a child's parent and key

    def resolved(self, key: str) -> bool:
        return key in self.signals or key in self.done

    def open_waits(self) -> list[str]:
        """Registered waits that have not ended, in the order first reached."""
        return [k for k in self.waits if not self.resolved(k)]


class History:
    """Engine-plausible records from small integer choices (see the module comment).

    ``legacy`` ops (the first ones) write format version 1's records: a
    suspension or timer that registers its wait and parks on it at once.
    """

    def __init__(self, start_ms: int = START_MS, legacy: int = 0) -> None:
        self.now = start_ms
        self.records: list[list[Any]] = []
        self.insts: dict[str, _Inst] = {}
        # Engine-level: debounce key -> (n, pending); schedule names set.
        self.debounced: dict[str, tuple[int, bool]] = {}
        self._blobs = 0
        self._legacy = legacy  # ops left that write version 1 records

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
        legacy = self._legacy > 0
        self._legacy -= 1
        if not self.insts or code % 9 == 0:
            iid = f"i{len(self.insts)}"
            self.insts[iid] = _Inst()
            self._emit(r.CREATED, iid, f"wf{which % 2}", self.blob(large=extra == 3))
            self._flow(iid, self.insts[iid], which, key, extra)
            if key % 4 == 3:
                self._engine_level(which, extra)
            if key % 4 == 2 and extra == 1:  # an invoke handed over through the inbox
                self._emit(r.HANDOVER_APPLIED, r.ENGINE, f"{self.now:020d}-1-0.act", iid)
            return
        iid = sorted(self.insts)[which % len(self.insts)]
        inst = self.insts[iid]
        if inst.state == lc.QUEUED:
            self._queued(iid, inst, code // 9, key, extra)
        elif inst.state == lc.RUNNING:
            (self._running_v1 if legacy else self._running)(iid, inst, code // 9, key, extra)
        elif inst.state in lc.PARKED:
            self._parked(iid, inst, code // 9, key, extra, legacy)
        else:
            self._finished(iid, inst, code // 9, key, extra)

    def _engine_level(self, which: int, extra: int) -> None:
        """A schedule set, ticked or removed; a debounce call or its start
        (a tick's or a start's ``created`` is the one just written)."""
        name, key = f"s{which % 2}", f"k{which % 3}"
        n, pending = self.debounced.get(key, (0, False))
        if extra == 0:
            self._emit(r.SCHEDULE_SET, r.ENGINE, name, "wf0", "*/5 * * * *",
                       self.blob(large=which >= 4), which % 2 == 1, self.now)
        elif extra == 1:  # also for a name never set or removed: changes nothing
            self._emit(r.SCHEDULE_TICKED, r.ENGINE, name, self.now - which)
        elif extra == 2 or not pending:
            n = n if pending else n + 1
            self.debounced[key] = (n, True)
            self._emit(r.DEBOUNCE_SET, r.ENGINE, "wf1", key, n,
                       self.blob(large=which >= 4), self.now + 1000)
        else:
            self.debounced[key] = (n, False)
            self._emit(r.DEBOUNCE_SET, r.ENGINE, "wf1", key, n, b"", None)
            if which % 2:
                self._emit(r.SCHEDULE_REMOVED, r.ENGINE, name)

    # One method per state: what the engine could write next for the instance.

    def _flow(self, iid: str, inst: _Inst, which: int, key: int, extra: int) -> None:
        """Flow control at creation, in its batch: options, and queued."""
        if extra == 2:
            deadline = self.now + 60_000 if key % 2 else None
            self._emit(r.OPTIONS, iid, key - 1, deadline, f"k{which % 3}" if which % 2 else None)
        if which % 3 == 2:
            inst.state = lc.QUEUED
            self._emit(r.QUEUED, iid)

    def _queued(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 5
        if choice in (0, 1):
            inst.state = lc.RUNNING
            self._emit(r.DEQUEUED, iid)
        elif choice == 2:
            self._early_signal(iid, inst, key, extra)
        elif choice == 3:
            inst.state = lc.CANCELLED
            self._emit(r.CANCELLED_FOR, iid, "timeout")
            self._child_ended(iid, inst, self.records[-1])
        else:
            inst.state = lc.CANCELLED
            self._emit(r.CANCELLED, iid)
            self._child_ended(iid, inst, self.records[-1])

    def _running(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 12
        if self._common(iid, inst, choice, key, extra):
            return
        wait = WAIT_KEYS[key % len(WAIT_KEYS)]
        timer = TIMER_KEYS[key % len(TIMER_KEYS)]
        if choice == 4 and wait not in inst.waits and not inst.resolved(wait):
            # A suspension reached for the first time (its branch blocks).
            deadline = self.now + 5_000 * (extra + 1) if extra % 2 else None
            status = f"waiting for {wait}" if extra else None
            inst.waits[wait] = (lc.WAIT_SIGNAL, deadline)
            self._emit(r.SUSPENDED, iid, wait, status, deadline)
            if key % 4 != 3:  # the last branch to block: parked in the same batch
                self._park(iid, inst, 1 if key % 2 else 2)
        elif choice == 5 and timer not in inst.waits and not inst.resolved(timer):
            deadline = self.now + 3_000 * (extra + 1)
            inst.waits[timer] = (lc.WAIT_TIMER, deadline)
            self._emit(r.TIMER_SET, iid, timer, deadline)
            if key % 4 != 3:
                self._park(iid, inst, 1 if extra else 3)
        elif choice == 11 and key % 3 == 0:
            self._ends_in_memory(iid, inst, key, extra)
        elif choice == 11 and key % 3 == 1 and extra != 3:
            self._start_child(iid, inst, extra)
        elif choice == 11 and key % 3 == 2 and extra == 0:
            inst.state = lc.QUEUED  # woken, or resumed, with no slot
            self._emit(r.QUEUED, iid)
        elif choice == 11:
            self._park(iid, inst, extra)

    def _start_child(self, iid: str, inst: _Inst, extra: int) -> None:
        """A child started (one batch: its child_created, the parent's child_started)."""
        key = f"c{len(inst.waits)}"
        if key in inst.waits or key in inst.steps:
            return
        cid = f"{iid}/{key}"
        self.insts[cid] = _Inst(parent=(iid, key))
        inst.waits[key] = (lc.WAIT_CHILD, None)
        inst.steps.add(key)
        self._emit(r.CHILD_CREATED, cid, "child", self.blob(large=extra == 2), iid, key)
        self._emit(r.CHILD_STARTED, iid, key, cid)

    def _child_ended(self, iid: str, inst: _Inst, rec: list[Any]) -> None:
        """A child's outcome: its parent's child_ended in the same batch."""
        if inst.parent is None:
            return
        pid, key = inst.parent
        parent = self.insts[pid]
        if key in parent.done:
            return
        parent.done.add(key)
        if key in parent.pending:
            parent.state, parent.pending = lc.RUNNING, ()
        if rec[0] == r.COMPLETED:
            fields: tuple[Any, ...] = (lc.COMPLETED, rec[4], None, None)
        elif rec[0] == r.FAILED:
            fields = (lc.FAILED, rec[6].encode(), rec[4], rec[5])
        elif rec[0] == r.CANCELLED_FOR:
            fields = (lc.CANCELLED, b"", None, rec[4])
        else:
            fields = (lc.CANCELLED, b"", None, None)
        self._emit(r.CHILD_ENDED, pid, key, *fields)

    def _park(self, iid: str, inst: _Inst, extra: int) -> None:
        """Every branch waits: parked, on some of the open waits."""
        open_waits = inst.open_waits()
        if not open_waits:
            return
        keys = [k for i, k in enumerate(open_waits) if (extra >> i) & 1 or i == 0]
        if extra == 3 and (inst.signals or inst.done):
            # A wait resolved while parked was written: the instance stays.
            keys.append(sorted(inst.signals | inst.done)[0])
            keys = [k for k in inst.waits if k in keys] + [k for k in keys if k not in inst.waits]
            self._emit(r.PARKED, iid, keys)
            return
        kinds = {inst.waits[k][0] for k in keys}
        inst.state = lc.parked_state(kinds)
        inst.pending = tuple(keys)
        self._emit(r.PARKED, iid, keys)

    def _ends_in_memory(self, iid: str, inst: _Inst, key: int, extra: int) -> None:
        """A blocked branch's wait ends while the instance is in memory."""
        open_waits = inst.open_waits()
        if not open_waits:
            return
        wait = open_waits[key % len(open_waits)]
        kind, deadline = inst.waits[wait]
        if kind == lc.WAIT_CHILD:
            return  # only its child's end ends it
        if kind == lc.WAIT_SIGNAL and (deadline is None or extra % 2):
            inst.signals.add(wait)
            self._emit(r.SIGNALLED, iid, wait, self.blob(large=extra >= 2))
        elif deadline is not None:
            self.now = max(self.now, deadline)
            inst.done.add(wait)
            self._emit(r.TIMER_FIRED if kind == lc.WAIT_TIMER else r.SUSPEND_TIMED_OUT, iid, wait)

    def _common(self, iid: str, inst: _Inst, choice: int, key: int, extra: int) -> bool:
        """What a running instance writes in either format; whether it wrote."""
        step = STEP_KEYS[key % len(STEP_KEYS)]
        # A step's first attempt started a while ago; its failed attempts
        # (below) count towards its outcome's attempts.
        started, failures = inst.tries.pop(step, (self.now - 7 * key - 300 * extra, 0))
        if choice == 0:
            inst.steps.add(step)
            self._emit(r.STEP_DONE, iid, step, self.blob(large=extra >= 2), started,
                       failures + 1)
        elif choice == 1 and step not in inst.steps:
            # A failed attempt, tried again: the step has no outcome yet.
            inst.tries[step] = (started, failures + 1)
            self._emit(r.ATTEMPT_FAILED, iid, step, failures + 1, "OSError",
                       f"flaky {step} #{failures + 1}", started)
        elif choice == 1:
            self._emit(r.STEP_DONE, iid, step, self.blob(large=extra >= 2))
            self._talk(iid, inst, step, key, extra)
        elif choice == 2:
            inst.steps.add(step)
            errors = [["OSError", f"flaky {step} #{n}"] for n in range(1, failures + 1)]
            self._emit(r.STEP_FAILED, iid, step, "ValueError", f"bad {step}",
                       "Traceback (most recent call last):\n" + "  frame\n" * (extra * 40),
                       started, failures + 1, [*errors, ["ValueError", f"bad {step}"]])
        elif choice == 3 and step not in inst.steps:
            inst.steps.add(step)  # an at-most-once marker: the step may crash mid-way
            self._emit(r.STEP_STARTED, iid, step)
            if failures:
                inst.tries[step] = (started, failures)  # its failed attempts stay
        elif choice == 6:
            self._early_signal(iid, inst, key, extra)
        elif choice == 7:
            self._forget(iid, inst, key)
        elif choice == 8:
            inst.state = lc.COMPLETED
            self._emit(r.COMPLETED, iid, self.blob(large=extra >= 2))
            self._child_ended(iid, inst, self.records[-1])
        elif choice == 9:
            inst.state = lc.FAILED
            self._emit(r.FAILED, iid, "RuntimeError", f"{iid} gave up", "tb " * (extra * 50))
            self._child_ended(iid, inst, self.records[-1])
        elif choice == 10:
            inst.state = lc.CANCELLED
            if extra == 1:
                self._emit(r.CANCELLED_FOR, iid, "timeout")
            else:
                self._emit(r.CANCELLED, iid)
            self._child_ended(iid, inst, self.records[-1])
        else:
            return False
        return True

    def _talk(self, iid: str, inst: _Inst, step: str, key: int, extra: int) -> None:
        """After a step, maybe an event (once per key) and a status text."""
        event = f"e-{step}"
        if key % 2 == 1 and event not in inst.events:
            inst.events.add(event)
            self._emit(r.PUBLISHED, iid, event, self.blob(large=extra == 3))
        if extra % 2 == 1:
            inst.calls += 1 + key % 2
            self._emit(r.STATUS_SET, iid, f"after {step}", inst.calls)

    def _running_v1(self, iid: str, inst: _Inst, code: int, key: int, extra: int) -> None:
        choice = code % 12
        if self._common(iid, inst, choice, key, extra):
            return
        wait = WAIT_KEYS[key % len(WAIT_KEYS)]
        timer = TIMER_KEYS[key % len(TIMER_KEYS)]
        if choice in (4, 11) and wait not in inst.done:
            timeout = extra % 2 or choice == 11
            deadline = self.now + 5_000 * (extra + 1) if timeout else None
            status = f"waiting for {wait}" if extra else None
            inst.waits.setdefault(wait, (lc.WAIT_SIGNAL, deadline))
            if wait not in inst.signals:  # else the suspend records nothing, or lost a race
                inst.state, inst.pending = lc.SUSPENDED, (wait,)
            self._emit(r.SUSPENDED_V1, iid, wait, status, deadline)
        elif choice == 5 and timer not in inst.done:
            first = (lc.WAIT_TIMER, self.now + 3_000 * (extra + 1))
            deadline = inst.waits.setdefault(timer, first)[1]
            assert deadline is not None
            if deadline <= self.now:  # due at once: the re-run records it fired
                inst.done.add(timer)
                self._emit(r.TIMER_FIRED, iid, timer)
            else:
                inst.state, inst.pending = lc.SLEEPING, (timer,)
                self._emit(r.TIMER_SET_V1, iid, timer, deadline)

    def _parked(
        self, iid: str, inst: _Inst, code: int, key: int, extra: int, legacy: bool
    ) -> None:
        choice = code % 7
        signal_waits = [k for k in inst.pending if inst.waits[k][0] == lc.WAIT_SIGNAL]
        deadlines = [d for k in inst.pending if (d := inst.waits[k][1]) is not None]
        if choice == 0 and signal_waits:  # a pending signal wakes it
            wait = signal_waits[key % len(signal_waits)]
            inst.signals.add(wait)
            self._emit(r.SIGNALLED, iid, wait, self.blob(large=extra >= 2))
            inst.state, inst.pending = lc.RUNNING, ()
        elif choice in (0, 1) and deadlines:
            # The earliest deadline: the runner records every due wait.
            self.now = max(self.now, min(deadlines))
            for k in inst.pending:
                kind, deadline = inst.waits[k]
                if deadline is not None and deadline <= self.now:
                    inst.done.add(k)
                    self._emit(r.TIMER_FIRED if kind == lc.WAIT_TIMER else r.SUSPEND_TIMED_OUT,
                               iid, k)
            inst.state, inst.pending = lc.RUNNING, ()
        elif choice == 2 and legacy and inst.state == lc.SLEEPING:
            timer = TIMER_KEYS[key % len(TIMER_KEYS)]
            if timer not in inst.waits and timer not in inst.done:
                # Version 1: a second timer in a nursery, set as the first unwinds.
                deadline = self.now + 100 * (extra + 1)
                inst.waits[timer] = (lc.WAIT_TIMER, deadline)
                inst.pending += (timer,)
                self._emit(r.TIMER_SET_V1, iid, timer, deadline)
        elif choice == 3:
            self._early_signal(iid, inst, key, extra)
        elif choice == 4:
            inst.state, inst.pending = lc.CANCELLED, ()
            self._emit(r.CANCELLED, iid)
            self._child_ended(iid, inst, self.records[-1])
        elif choice == 5:
            self._forget(iid, inst, key)

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
            self._flow(iid, self.insts[iid], key, key, extra)

    def _early_signal(self, iid: str, inst: _Inst, key: int, extra: int) -> None:
        """A signal for a suspension key no branch waits on now (kept for it)."""
        wait = WAIT_KEYS[(key + 1) % len(WAIT_KEYS)]
        if not inst.resolved(wait) and wait not in inst.pending and (
            inst.waits.get(wait, (lc.WAIT_SIGNAL,))[0] == lc.WAIT_SIGNAL
        ):
            inst.signals.add(wait)
            self._emit(r.SIGNALLED, iid, wait, self.blob(large=extra == 1))

    def _forget(self, iid: str, inst: _Inst, key: int) -> None:
        pattern = FORGET_PATTERNS[key % len(FORGET_PATTERNS)]
        prefix = pattern[:-1] if pattern.endswith("*") else None
        inst.steps = {
            k for k in inst.steps
            if not (k == pattern or (prefix is not None and k.startswith(prefix)))
        }
        inst.tries = {
            k: v for k, v in inst.tries.items()
            if not (k == pattern or (prefix is not None and k.startswith(prefix)))
        }
        self._emit(r.FORGOT, iid, pattern)

def history(ops: list[tuple[int, int, int, int]], legacy: int = 0) -> History:
    """The history of ``ops``; the first ``legacy`` of them in format version 1's records."""
    made = History(legacy=legacy)
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
