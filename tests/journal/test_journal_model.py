"""The journal against a model: a hypothesis state machine.

The machine drives the real journal on a MemoryStorage, one ``trio.run``
per rule (open, act, close), beside a model: per instance, the step values
the index should hold, and the history (every record known to be durable,
in seq order). Rules append steps, forget keys (exact or ``prefix*``),
append concurrently, cut power somewhere inside an action (the open and
its recovery included) with some tear of the unsynced bytes, and reopen
cleanly.

After a power cut the history grows by the acknowledged records plus,
possibly, some of the records that were appended but not acknowledged:
only a prefix of them (in seq order), and only whole records. The
invariant, checked read-only after every rule (so a torn tail is left for
the next rule's recovery to cut): replaying the journal gives exactly the
history, and the index built from it holds exactly the model's values,
inline or read back from their location.
"""

from __future__ import annotations

import random
from typing import Any

import trio
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support.powerloss import SECTOR, is_power_cut

from memable_log._core import records as r
from memable_log._core.index import STEP_DONE_AT, Index, entry_kind, entry_loc
from memable_log._journal.journal import Journal
from memable_log._storage.memory import MemoryStorage, TearFn
from memable_log._storage.segments import scan

SEGMENT_SIZE = 4096
KEYS = ("a", "ab", "abc", "b", "b1", "c")
PATTERNS = (*KEYS, "a*", "ab*", "b*", "*", "z*")
values = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=700))

Steps = dict[str, dict[str, bytes]]


def apply(model: Steps, rec: list[Any]) -> None:
    """What a record does to the model (the index's step values)."""
    if rec[0] == r.CREATED:
        model.setdefault(rec[3], {})
    elif rec[0] == r.STEP_DONE:
        model[rec[3]][rec[4]] = rec[5]
    elif rec[0] == r.FORGOT:
        steps, pattern = model[rec[3]], rec[4]
        if pattern.endswith("*"):
            for key in [k for k in steps if k.startswith(pattern[:-1])]:
                del steps[key]
        else:
            steps.pop(pattern, None)


class Action:
    """Groups of records to append in one session: a group of one is a
    plain append, a larger group is appended concurrently by one task per
    record. Records whose append returned are ``acked``."""

    def __init__(self, groups: list[list[list[Any]]]) -> None:
        self.groups = groups
        self.acked: list[list[Any]] = []

    @property
    def attempted(self) -> list[list[Any]]:
        """Every record the journal gave a seq to, in seq order."""
        recs = [rec for group in self.groups for rec in group if rec[1]]
        return sorted(recs, key=lambda rec: rec[1])

    async def run(self, storage: MemoryStorage) -> None:
        async def append(rec: list[Any]) -> None:
            await journal.append(rec)
            self.acked.append(list(rec))

        async with Journal(storage, segment_size=SEGMENT_SIZE) as journal:
            for group in self.groups:
                async with trio.open_nursery() as nursery:
                    for rec in group:
                        nursery.start_soon(append, rec)


def tear_fn(mode: str, fraction: float, seed: int) -> TearFn | None:
    """One way the unsynced bytes of each file land (see powerloss_helpers)."""
    if mode == "drop":
        return None
    if mode == "all":
        return lambda name, data: data
    if mode == "prefix":
        return lambda name, data: data[: int(len(data) * fraction)]
    if mode == "zero-first-sector":
        return lambda name, data: bytes(min(len(data), SECTOR)) + data[SECTOR:]
    if mode == "zero-tail":
        return lambda name, data: data[: int(len(data) * fraction)] + bytes(
            len(data) - int(len(data) * fraction)
        )
    assert mode == "garbage"
    return lambda name, data: data[: int(len(data) * fraction)] + random.Random(seed).randbytes(
        len(data)
    )


class JournalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.storage = MemoryStorage()
        self.model: Steps = {}
        self.history: list[list[Any]] = []
        self.instances = 0
        # The last session closed cleanly, so reopening changes no bytes.
        # Not yet: the first open creates the first segment.
        self.clean = False

    # -- helpers ------------------------------------------------------------

    def _commit(self, action: Action) -> None:
        """Run ``action`` to completion: every record is acknowledged."""
        trio.run(action.run, self.storage)
        assert len(action.acked) == len(action.attempted) == sum(map(len, action.groups))
        self._extend(action.attempted)
        self.clean = True

    def _extend(self, recs: list[list[Any]]) -> None:
        first = len(self.history) + 1
        assert [rec[1] for rec in recs] == list(range(first, first + len(recs)))
        for rec in recs:
            apply(self.model, rec)
        self.history += recs

    def _step(self, data: st.DataObject) -> list[Any]:
        inst = data.draw(st.sampled_from(sorted(self.model)), label="instance")
        if data.draw(st.integers(0, 4), label="kind") == 0:
            return r.make(r.FORGOT, 5, inst, data.draw(st.sampled_from(PATTERNS), label="pattern"))
        key = data.draw(st.sampled_from(KEYS), label="key")
        return r.make(r.STEP_DONE, 5, inst, key, data.draw(values, label="value"))

    def _create(self) -> list[Any]:
        self.instances += 1
        return r.make(r.CREATED, 5, f"inst-{self.instances}", "wf", b"in")

    # -- rules --------------------------------------------------------------

    @initialize(count=st.integers(1, 3))
    def first_instances(self, count: int) -> None:
        self._commit(Action([[self._create()] for _ in range(count)]))

    @rule()
    def create(self) -> None:
        self._commit(Action([[self._create()]]))

    @rule(data=st.data())
    def append_steps(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, 3), label="count")
        self._commit(Action([[self._step(data)] for _ in range(count)]))

    @rule(data=st.data())
    def append_concurrently(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(2, 6), label="count")
        self._commit(Action([[self._step(data) for _ in range(count)]]))

    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        inst = data.draw(st.sampled_from(sorted(self.model)), label="instance")
        pattern = data.draw(st.sampled_from(PATTERNS), label="pattern")
        self._commit(Action([[r.make(r.FORGOT, 5, inst, pattern)]]))

    @rule(
        data=st.data(),
        cut=st.integers(1, 9),
        mode=st.sampled_from(
            ["drop", "all", "prefix", "zero-first-sector", "zero-tail", "garbage"]
        ),
        fraction=st.floats(0, 1),
        seed=st.integers(0, 2**32 - 1),
    )
    def crash_mid_append(
        self, data: st.DataObject, cut: int, mode: str, fraction: float, seed: int
    ) -> None:
        groups = [
            [self._step(data) for _ in range(data.draw(st.integers(1, 4), label="width"))]
            for _ in range(data.draw(st.integers(1, 3), label="groups"))
        ]
        action = Action(groups)
        self.storage.crash_at = self.storage.ops + cut
        try:
            trio.run(action.run, self.storage)
        except BaseException as exc:
            if not is_power_cut(exc):
                raise
            event("power cut inside the action")
        self.storage = self.storage.crash(tear_fn(mode, fraction, seed))
        self.clean = False
        records: list[list[Any]] = []
        scan(self.storage, lambda rec, loc: records.append(rec))
        assert records[: len(self.history)] == self.history, "durable history changed"
        survivors = records[len(self.history) :]
        attempted = action.attempted
        assert survivors == attempted[: len(survivors)], "a record was never appended"
        acked = {rec[1] for rec in action.acked}
        assert all(seq <= len(records) for seq in acked), "an acknowledged record was lost"
        if len(survivors) > len(acked):
            event("unacknowledged records survived the cut")
        self._extend(survivors)

    @rule()
    def reopen(self) -> None:
        before = {name: self.storage.read(name) for name in self.storage.list()}

        async def check() -> None:
            async with Journal(self.storage, segment_size=SEGMENT_SIZE) as journal:
                assert journal.next_seq == len(self.history) + 1
                got: Steps = {}
                for inst, entry in journal.index.instances.items():
                    got[inst] = {}
                    for key, value in entry.steps.items():
                        if not isinstance(value, bytes):
                            assert entry_kind(value) == STEP_DONE_AT
                            rec = await journal.read(entry_loc(value))
                            assert rec[3:5] == [inst, key]
                            value = rec[5]
                        got[inst][key] = value
                assert got == self.model

        trio.run(check)
        if self.clean:
            after = {name: self.storage.read(name) for name in self.storage.list()}
            assert after == before, "reopening a cleanly closed journal changed it"
        self.clean = True

    # -- invariant ----------------------------------------------------------

    @invariant()
    def journal_matches_model(self) -> None:
        index = Index()
        records: list[list[Any]] = []
        at: dict[int, list[Any]] = {}  # location -> the record scanned there

        def on_record(rec: list[Any], loc: int) -> None:
            records.append(rec)
            at[loc] = rec
            index.apply(rec, loc)

        result = scan(self.storage, on_record)
        assert records == self.history
        if result.torn_at is not None:
            event("torn tail left for the next open to cut")
        got: Steps = {}
        for inst, entry in index.instances.items():
            got[inst] = {}
            for key, value in entry.steps.items():
                if not isinstance(value, bytes):
                    assert entry_kind(value) == STEP_DONE_AT
                    rec = at[entry_loc(value)]
                    assert rec[3:5] == [inst, key]
                    value = rec[5]
                got[inst][key] = value
        assert got == self.model


# Derandomized: the same examples every run, so the suite is reproducible.
JournalMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, derandomize=True
)
TestJournalModel = JournalMachine.TestCase
