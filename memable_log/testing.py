"""Helpers for testing your workflows: an in-memory engine, and crash tests.

``memory_engine`` builds an engine on a ``MemoryStorage`` with a
``ManualClock``: no disk, and, under trio's ``MockClock`` with
``autojump_threshold=0`` (pytest-trio's ``autojump_clock`` fixture), timers,
timeouts and retry delays take no real time. ``settle`` and
``wait_for_state`` wait for an instance to stop running without sleeping.

``crash_test`` checks that a workflow survives a power cut at every point of
its run. It runs the workflow once to completion as the *reference* (and a
second time, to check it is reproducible), counting the fsyncs. Then, for
every fsync ``n`` of that run, it runs the workflow from scratch on a fresh
``MemoryStorage`` twice more: once cut off right after fsync ``n`` took
effect (the record is durable, the code after it never ran), and once cut
off just before it (the step had run, its record was lost). Each time it
keeps only what was fsynced (``MemoryStorage.crash()``), starts a new engine
on that, drives the instance to its end and checks:

* the outcome (result, or failure type and message) equals the reference's;
* no step whose outcome was durable before the cut ran again after it
  (executions are counted at the engine's step seam);
* the journal holds no more step records than the reference's, and no key
  the reference never used: a key that changes between runs (built from
  the time, a random number, a counter) misses its memoised result and
  shows up as an extra key.

A violation raises ``CrashTestFailure`` naming the crash point, the key and
what diverged. The driver delivers the given signals whenever the instance
suspends on their key, and lets deadlines pass by advancing the manual
clock between engine lifetimes (a restart), so no timer costs real time.
Steps marked ``.at_most_once()`` that a cut interrupts end in
``StepInterrupted`` by design: there the outcome is not compared, but the
step must not have been called again.

Example (pytest with pytest-trio in trio mode)::

    from memable_log import Context
    from memable_log.testing import crash_test

    async def order(ctx: Context) -> str:
        stock = await ctx.step("reserve:v1").run(lambda: "reserved")
        ok = await ctx.suspend("approval:v1", status="waiting for a manager")
        await ctx.timer("cooldown:v1", 3600)
        return f"{stock}, approved={ok}"

    async def test_order_survives_crashes(autojump_clock):
        report = await crash_test(order, signals={"approval:v1": True})
        assert report.result == "reserved, approved=True"
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from ._core.errors import UnknownInstance
from ._core.status import ErrorInfo, InstanceStatus
from ._engine.builder import EngineBuilder
from ._engine.clock import ManualClock
from ._engine.context import Context
from ._engine.engine import Engine, host_of
from ._storage.memory import MemoryStorage, PowerCut
from .reader import JournalReader, RecordView

__all__ = [
    "CRASH_TEST_INSTANCE",
    "DEFAULT_START",
    "CrashTestFailure",
    "Configure",
    "CrashTestReport",
    "Workflow",
    "crash_test",
    "crash_test_sync",
    "memory_engine",
    "settle",
    "wait_for_state",
]

Workflow = Callable[[Context], Awaitable[Any]]
"""A workflow function: ``async def wf(ctx: Context) -> ...``."""
Configure = Callable[[EngineBuilder], EngineBuilder]
"""A builder's settings, as ``memory_engine`` and ``crash_test`` take them (``configure=``)."""

DEFAULT_START = 1_700_000_000.0
"""Where test clocks start: 2023-11-14T22:13:20Z, in epoch seconds."""

CRASH_TEST_INSTANCE = "crash-test"
"""The instance id ``crash_test`` gives the workflow unless told otherwise."""
_FINISHED = frozenset({"completed", "failed", "cancelled"})
_OUTCOME_RECORDS = frozenset({"step_done", "step_failed"})
_MOCK_PATIENCE = 3650 * 86_400.0  # virtual seconds before a stuck instance is reported
_KEY_ADVICE = (
    "A step's key must be the same on every run of the workflow: a key built from the "
    "time, a random number or a counter misses the memoised result after a restart, "
    "and the step runs again under a new key."
)
_TIMER_SLACK = 0.001  # past the deadline's millisecond, whatever the rounding


# -- an engine for tests ---------------------------------------------------------


def memory_engine(
    workflows: Mapping[str, Workflow] | None = None,
    *,
    storage: MemoryStorage | None = None,
    clock: ManualClock | None = None,
    configure: Configure | None = None,
) -> tuple[Engine, ManualClock]:
    """An engine on a ``MemoryStorage`` and a ``ManualClock``, workflows registered.

    Args:
        workflows: name -> workflow function, registered on the engine.
        storage: the journal's storage; a new ``MemoryStorage`` if None. Pass
            ``storage.crash()`` of an earlier engine's storage to restart
            after a simulated power cut.
        clock: the wall clock; a new ``ManualClock(DEFAULT_START)`` if None.
            Share one between engines to keep time moving forward across a
            restart, and ``clock.advance(seconds)`` between lifetimes to
            simulate downtime.
        configure: called with the builder before storage and clock are set,
            for other settings (``lambda b: b.codec(enc, dec)``).

    Returns:
        ``(engine, clock)``. Leaving and re-entering ``async with engine:``
        is a restart on the same journal.

    Run tests on trio's MockClock (``autojump_threshold=0``, pytest-trio's
    ``autojump_clock`` fixture) so sleeps on the engine's clock take no
    real time::

        async def test_cooldown(autojump_clock):
            engine, clock = memory_engine({"wf": wf})
            async with engine:
                iid = await engine.invoke("wf")
                assert await engine.wait(iid) == "done"   # a 1-hour timer, instantly
    """
    clock = clock if clock is not None else ManualClock(DEFAULT_START)
    builder = Engine.builder()
    if configure is not None:
        builder = configure(builder)
    engine = builder.in_memory(storage).clock(clock).build()
    for name, fn in (workflows or {}).items():
        engine.register(name, fn)
    return engine, clock


async def settle(engine: Engine, instance_id: str) -> InstanceStatus:
    """Wait until the instance stops running (suspended, sleeping, waiting or finished).

    Returns its status then. Waits on the engine's own change events, never
    by polling. Raises UnknownInstance for an unknown id. An instance that
    blocks forever inside a step never settles: wrap the call in
    ``trio.fail_after`` if that can happen.
    """
    while True:
        status = engine.status(instance_id)
        if status.state != "running":
            return status
        await host_of(engine).changed(instance_id).wait()


async def wait_for_state(engine: Engine, instance_id: str, *states: str) -> InstanceStatus:
    """Wait until the instance is in one of ``states``; return its status.

    ``states`` are state names (``"suspended"``, ``"sleeping"``,
    ``"completed"``...). Raises AssertionError when the instance finishes in
    another state (it would never get there by itself).
    """
    if not states:
        raise ValueError("name at least one state to wait for")
    while True:
        status = engine.status(instance_id)
        if status.state in states:
            return status
        if status.state in _FINISHED:
            raise AssertionError(
                f"instance {instance_id!r} finished as {status.state}"
                + (f" ({status.error.type}: {status.error.message})" if status.error else "")
                + f" instead of reaching {' or '.join(states)}"
            )
        await host_of(engine).changed(instance_id).wait()


# -- crash tests -----------------------------------------------------------------


class CrashTestFailure(AssertionError):
    """A crash test found a crash point where the workflow misbehaves.

    ``point`` describes the crash point (which fsync, what was durable),
    ``key`` names the step concerned (None if none stands out) and
    ``reason`` says what diverged from the reference run.
    """

    def __init__(self, workflow: str, point: str, key: str | None, reason: str) -> None:
        self.workflow = workflow
        self.point = point
        self.key = key
        self.reason = reason
        super().__init__(f"crash test of workflow {workflow!r} failed at {point}:\n{reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CrashTestReport:
    """What a passing ``crash_test`` checked.

    ``state`` is how the reference run ended (``"completed"`` or
    ``"failed"``), ``result`` its return value (None unless completed),
    ``error`` its failure (None unless failed). ``steps`` are the step keys
    the reference run recorded, in journal order; ``fsyncs`` how many fsyncs
    it made; ``crash_points`` how many crashed runs were checked (two per
    fsync). ``interrupted`` lists the at-most-once steps that some crash
    point interrupted (StepInterrupted, by design: outcome not compared).
    """

    state: str
    result: Any
    error: ErrorInfo | None
    steps: tuple[str, ...]
    fsyncs: int
    crash_points: int
    interrupted: tuple[str, ...]


_Outcome = tuple[Any, ...]  # ("completed", value) | ("failed", type, message) | ("cancelled",)


class _Lab:
    """Runs one workflow from scratch, over engine lifetimes, until done or cut."""

    def __init__(
        self,
        workflow: Workflow,
        name: str,
        input: Any,
        instance_id: str,
        signals: Mapping[str, Any],
        reset: Callable[[], object] | None,
        configure: Configure | None,
        max_lifetimes: int,
    ) -> None:
        self.workflow = workflow
        self.name = name
        self.input = input
        self.instance_id = instance_id
        self.signals = dict(signals)
        self.reset = reset
        self.configure = configure
        self.max_lifetimes = max_lifetimes

    async def fresh(self) -> ManualClock:
        """Reset the user's world for a run from scratch; a new clock for it."""
        if self.reset is not None:
            done = self.reset()
            if inspect.isawaitable(done):
                await done
        return ManualClock(DEFAULT_START)

    def engine(self, storage: MemoryStorage, clock: ManualClock, calls: Counter[str]) -> Engine:
        engine, _ = memory_engine(
            {self.name: self.workflow}, storage=storage, clock=clock, configure=self.configure
        )

        def count(instance_id: str, key: str) -> None:
            calls[key] += 1

        host_of(engine).on_step_call = count
        return engine

    async def drive(
        self, storage: MemoryStorage, clock: ManualClock, calls: Counter[str], point: str
    ) -> _Outcome | None:
        """Run the instance to its end; None if the storage lost power first."""
        for _ in range(self.max_lifetimes):
            engine = self.engine(storage, clock, calls)
            try:
                async with engine:
                    pause = await self._lifetime(engine, clock, point)
                    if pause is None:
                        return await _outcome(engine, self.instance_id)
            except BaseException as exc:
                if _is_power_cut(exc):
                    return None
                raise
            clock.advance(pause)  # the engine is down while its timer runs out
        raise CrashTestFailure(
            self.name, point, None,
            f"the instance did not finish within {self.max_lifetimes} engine lifetimes "
            "(each timer or timeout costs one); does it sleep in a loop? Raise "
            "max_lifetimes if it really needs more.",
        )

    async def _lifetime(self, engine: Engine, clock: ManualClock, point: str) -> float | None:
        """Drive one engine lifetime; the seconds to sleep before the next, None when done."""
        iid = self.instance_id
        try:
            engine.status(iid)
        except UnknownInstance:  # never invoked, or the invoke was lost in the cut
            await engine.invoke(self.name, self.input, instance_id=iid)
        status = await self._settle(engine, point, running_only=True)
        while status.state not in _FINISHED:
            key = status.key
            if status.state == "suspended" and key in self.signals:
                await engine.signal(self.name, iid, key, self.signals[key])
                status = await self._settle(engine, point, running_only=True)
                continue
            if status.deadline is not None:
                left = status.deadline.timestamp() - clock.now()
                if left > 0:
                    return left + _TIMER_SLACK
                # Due: the engine's poller resumes it; wait for that run to end.
                status = await self._settle(engine, point, running_only=False)
                continue
            raise CrashTestFailure(
                self.name, point, key,
                f"the instance is suspended on {key!r} with no timeout, and crash_test "
                f"has no signal for it: pass signals={{{key!r}: payload}}",
            )
        return None

    async def _settle(self, engine: Engine, point: str, *, running_only: bool) -> InstanceStatus:
        """``settle``, or (not running_only) first wait for the next run to end."""
        # On a MockClock a stuck instance lets the clock jump here at once.
        patience = _MOCK_PATIENCE if _on_mock_clock() else math.inf
        with trio.move_on_after(patience):
            if not running_only:
                await host_of(engine).changed(self.instance_id).wait()
            return await settle(engine, self.instance_id)
        raise CrashTestFailure(
            self.name, point, None,
            "the instance kept running and never settled; is a step waiting for "
            "something that never happens?",
        )


async def crash_test(
    workflow: Workflow,
    input: Any = None,
    *,
    signals: Mapping[str, Any] | None = None,
    name: str | None = None,
    instance_id: str = CRASH_TEST_INSTANCE,
    reset: Callable[[], object] | None = None,
    configure: Configure | None = None,
    max_lifetimes: int = 100,
) -> CrashTestReport:
    """Check that ``workflow`` survives a power cut at every crash point.

    See the module documentation for what is checked. The workflow runs many
    times (two reference runs, then two runs per fsync of the reference),
    each from scratch on a fresh in-memory journal, so its outcome must be
    reproducible: fix clocks and random seeds in the test, and pass
    ``reset`` to put fakes of the outside world back in their first state
    before each run.

    Args:
        workflow: the workflow function (``async def wf(ctx)``).
        input: the instance's input.
        signals: suspension key -> payload, delivered whenever the instance
            suspends on that key. A suspension with a timeout and no signal
            here times out (SuspendTimedOut); one without a timeout and no
            signal is reported as a failure.
        name: the name the workflow is registered under (``ctx.workflow``);
            defaults to the function's ``__name__``.
        instance_id: the instance's id (``ctx.instance_id``) in every run.
        reset: called (sync or async) before every run from scratch.
        configure: builder settings, e.g. ``lambda b: b.codec(enc, dec)``.
        max_lifetimes: engine lifetimes allowed per run (each timer or
            timeout the instance waits on costs one restart).

    Returns:
        A ``CrashTestReport`` describing the reference run and the checks.

    Raises:
        CrashTestFailure: a crash point where the outcome diverged, a step
            ran again after its result was durable, or keys changed.

    Run it under trio's MockClock with ``autojump_threshold=0`` (the
    ``autojump_clock`` fixture of pytest-trio) so retry delays and sleeps
    inside steps take no real time; ``crash_test_sync`` does that for you.
    """
    name = name if name is not None else getattr(workflow, "__name__", "workflow")
    lab = _Lab(workflow, name, input, instance_id, signals or {}, reset, configure, max_lifetimes)
    reference = await _reference(lab)
    interrupted: set[str] = set()
    points = 0
    for n in range(1, reference.fsyncs + 1):
        cut = MemoryStorage(crash_after_syncs=n)
        op = await _check_point(lab, reference, cut, n, before=False, interrupted=interrupted)
        points += 1
        if op is None:
            continue  # this run made fewer fsyncs (concurrent steps batched differently)
        # The same op, cut before it takes effect: whatever ran since is lost.
        cut = MemoryStorage(crash_at=op)
        await _check_point(lab, reference, cut, n, before=True, interrupted=interrupted)
        points += 1
    outcome = reference.outcome
    return CrashTestReport(
        state=outcome[0],
        result=outcome[1] if outcome[0] == "completed" else None,
        error=ErrorInfo(outcome[1], outcome[2]) if outcome[0] == "failed" else None,
        steps=tuple(reference.keys),
        fsyncs=reference.fsyncs,
        crash_points=points,
        interrupted=tuple(sorted(interrupted)),
    )


def crash_test_sync(
    workflow: Workflow,
    input: Any = None,
    *,
    signals: Mapping[str, Any] | None = None,
    name: str | None = None,
    instance_id: str = CRASH_TEST_INSTANCE,
    reset: Callable[[], object] | None = None,
    configure: Configure | None = None,
    max_lifetimes: int = 100,
) -> CrashTestReport:
    """``crash_test`` from synchronous code: its own ``trio.run`` on a MockClock.

    For test suites that do not run trio themselves; the arguments are
    those of ``crash_test``.
    """
    run = functools.partial(
        crash_test, workflow, input, signals=signals, name=name, instance_id=instance_id,
        reset=reset,
        configure=configure, max_lifetimes=max_lifetimes,
    )
    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


@dataclass
class _Reference:
    outcome: _Outcome
    keys: list[str]  # step outcome keys, in journal order
    calls: Counter[str]
    fsyncs: int


async def _reference(lab: _Lab) -> _Reference:
    runs = []
    for _ in range(2):
        clock = await lab.fresh()
        storage, calls = MemoryStorage(), Counter[str]()
        outcome = await lab.drive(storage, clock, calls, "the reference run (no crash)")
        assert outcome is not None
        runs.append(_Reference(outcome, _step_keys(_records(storage)), calls, storage.syncs))
    first, second = runs
    if first.outcome != second.outcome or len(first.keys) != len(second.keys):
        raise CrashTestFailure(
            lab.name, "the reference run (no crash)", None,
            "two runs without any crash differ:\n"
            f"the first {_show(first.outcome)} with {len(first.keys)} step record(s),\n"
            f"the second {_show(second.outcome)} with {len(second.keys)}.\n"
            "crash_test compares runs, so each must be reproducible: give steps fixed "
            "clocks and random seeds in the test, and pass reset= to put fakes of the "
            "outside world back in their first state before each run.",
        )
    only_first = [key for key in first.keys if key not in second.keys]
    only_second = [key for key in second.keys if key not in first.keys]
    if only_first or only_second:
        raise CrashTestFailure(
            lab.name, "the reference run (no crash)", (only_second or only_first)[0],
            "two runs without any crash recorded different step keys:\n"
            f"only the first: {', '.join(map(repr, only_first)) or 'none'}; "
            f"only the second: {', '.join(map(repr, only_second)) or 'none'}.\n"
            f"{_KEY_ADVICE} If keys come from step results, make those reproducible in "
            "the test.",
        )
    return first


async def _check_point(
    lab: _Lab,
    ref: _Reference,
    storage: MemoryStorage,
    n: int,
    *,
    before: bool,
    interrupted: set[str],
) -> int | None:
    """Run to the cut, recover, check. Returns the op the cut hit (None if not reached)."""
    clock = await lab.fresh()
    calls_before, calls_after = Counter[str](), Counter[str]()
    label = f"crash point {'before' if before else 'after'} fsync {n}"
    try:
        outcome = await lab.drive(storage, clock, calls_before, label)
        if outcome is not None:
            _check_run(lab, ref, label, outcome, _records(storage), calls_before, set())
            return None
        cut_op = storage.ops
        seen = _records(storage)
        crashed = storage.crash()
        durable = _records(crashed)
        point = _describe(label, before, seen, durable)
        done_keys = set(_step_keys(durable))
        started = {
            rec.fields["key"] for rec in durable if rec.type == "step_started"
        } - done_keys
        outcome = await lab.drive(crashed, clock, calls_after, point)
        assert outcome is not None
        for key in sorted(done_keys | started):
            if calls_after[key]:
                what = "its outcome" if key in done_keys else "its at-most-once start marker"
                raise CrashTestFailure(
                    lab.name, point, key,
                    f"step {key!r} ran again after the restart, although {what} was durable "
                    "before the power cut.\nThat breaks the engine's promise: please report "
                    "it as a bug of memable_log.",
                )
        interrupted.update(started)
        calls = calls_before + calls_after
        _check_run(lab, ref, point, outcome, _records(crashed), calls, started)
        return cut_op
    except BaseException as exc:
        if not isinstance(exc, CrashTestFailure):
            exc.add_note(f"raised during the crash test of workflow {lab.name!r}, {label}")
        raise


def _check_run(
    lab: _Lab,
    ref: _Reference,
    point: str,
    outcome: _Outcome,
    records: list[RecordView],
    calls: Counter[str],
    started: set[str],
) -> None:
    keys = _step_keys(records)
    counts = Counter(keys)
    twice = [key for key, count in counts.items() if count > 1]
    if started:
        # An interrupted at-most-once step ends in StepInterrupted by design,
        # and the workflow may take another path: only repeats are wrong.
        if twice:
            raise CrashTestFailure(
                lab.name, point, twice[0],
                f"step {twice[0]!r} was recorded {counts[twice[0]]} times: it ran again "
                "after its outcome was durable.\nThat breaks the engine's promise: please "
                "report it as a bug of memable_log.",
            )
        return
    extra = [key for key in dict.fromkeys(keys) if key not in ref.keys]
    if len(keys) > len(ref.keys) or extra:
        if extra:
            listing = ", ".join(repr(key) for key in extra)
            detail = (
                f"keys the reference run never used: {listing}.\n{_KEY_ADVICE}"
            )
        else:
            detail = f"recorded more than once: {', '.join(repr(k) for k in twice)}."
        raise CrashTestFailure(
            lab.name, point, extra[0] if extra else twice[0] if twice else None,
            f"the journal holds {len(keys)} step record(s) where the reference run held "
            f"{len(ref.keys)}; {detail}",
        )
    if outcome != ref.outcome:
        again = [
            (key, count) for key, count in calls.items()
            if count > ref.calls[key] and key not in started
        ]
        reason = (
            f"the outcome diverged: the reference run {_show(ref.outcome)},\n"
            f"this run {_show(outcome)}."
        )
        if again:
            listing = ", ".join(
                f"{key!r} ({count} times, {ref.calls[key]} in the reference run)"
                for key, count in again
            )
            reason += (
                f"\nSteps that executed more often than in the reference run: {listing}.\n"
                "A step that was running at a crash runs again: make its function "
                "idempotent (the same result and effect when repeated; pass an idempotency "
                "key to outside services), or mark it .at_most_once()."
            )
        raise CrashTestFailure(lab.name, point, again[0][0] if again else None, reason)


def _describe(
    label: str, before: bool, seen: list[RecordView], durable: list[RecordView]
) -> str:
    """Say where a cut happened, in terms of the instance's records."""
    last = durable[-1] if durable else None  # a crash test journal holds one instance
    where = f"last durable record: {_name(last)}" if last else "no record of the instance yet"
    if not before:
        return f"{label} (a power cut right after it took effect; {where})"
    lost = [_name(rec) for rec in seen[len(durable):]]
    if lost:
        return (
            f"{label} (a power cut before it took effect; written but lost: "
            f"{', '.join(lost)}; {where})"
        )
    return f"{label} (a power cut before it took effect; {where})"


def _name(rec: RecordView) -> str:
    key = rec.fields.get("key")
    return f"{rec.type} {key!r}" if key is not None else rec.type


def _show(outcome: _Outcome) -> str:
    if outcome[0] == "completed":
        return f"returned {outcome[1]!r}"
    if outcome[0] == "failed":
        return f"failed with {outcome[1]}: {outcome[2]}"
    return "was cancelled"


def _records(storage: MemoryStorage) -> list[RecordView]:
    return list(JournalReader(storage))


def _step_keys(records: list[RecordView]) -> list[str]:
    return [
        rec.fields["key"] for rec in records
        if rec.type in _OUTCOME_RECORDS
    ]


async def _outcome(engine: Engine, instance_id: str) -> _Outcome:
    status = engine.status(instance_id)
    if status.state == "completed":
        return ("completed", await engine.wait(instance_id))
    if status.state == "failed":
        assert status.error is not None
        return ("failed", status.error.type, status.error.message)
    return ("cancelled",)


def _is_power_cut(exc: BaseException) -> bool:
    """A PowerCut, bare or inside trio's exception groups (with nothing else but Cancelled).

    The one power-cut detector: the project's tests (tests/support/powerloss.py)
    and the power-loss campaign (fuzz/powerloss.py) import it from here.
    """
    if isinstance(exc, PowerCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        cuts, rest = exc.split(PowerCut)
        return cuts is not None and (
            rest is None or rest.subgroup(lambda e: not isinstance(e, trio.Cancelled)) is None
        )
    return False


def _on_mock_clock() -> bool:
    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
