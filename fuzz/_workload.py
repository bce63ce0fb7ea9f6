"""The workload every crash campaign runs, and the invariants it checks.

One workflow, ``mixed``, does what its input (a *spec*, a small dict) says:

* ``steps``: steps ``s0..sN-1``; ``big``: that many steps ``big0..`` whose
  results (1800 bytes each) are too big to stay in the index, so they are
  read back from the journal (and fill 4 KiB segments: roll-overs);
* ``amo``: an at-most-once step ``charge`` (a ``StepInterrupted`` is caught
  and shows in the result as ``"interrupted"``);
* ``flaky``: a step ``flaky`` whose first ``FLAKY_FAILS`` attempts fail,
  retried up to ``FLAKY_MAX`` attempts with that delay (seconds): it
  succeeds at its last allowed attempt only if a restart continues the
  count. Its ledger key carries ``ctx.attempt`` (``flaky@3``), so the
  check sees every attempt's number;
* ``par``: that many steps ``p0..`` at once, in a nursery;
* ``suspend``: waits for the signal ``approve`` (its payload is fixed by the
  instance id); with ``remind`` beside a durable timer ``remind`` of that
  many seconds in another branch, whose step ``reminded`` runs when it
  fires (several waits at once: either may come first); ``timeout``: waits
  for a signal ``maybe`` that never comes, and its timeout is caught;
  ``hold``: waits for ``never`` (it ends only when cancelled); ``timer``: a
  durable timer ``nap`` of that many seconds;
* ``child``: a child (an instance of ``mixed`` itself, spec ``CHILD_SPEC``:
  one step) started and waited for under key ``kid``; ``fan``: that many
  such children at once through ``fan_out("fan", ..., concurrency=2)``;
  the children's sums show in the result as ``kids``, in order;
* then a step ``last``.

Every step body records ``instance key attempt`` in a ledger (see
_ledger.py) before it returns, and the workflow acknowledges each step right
after ``run`` returns. After each step it publishes the event ``e-<key>``
with the step's value and acknowledges that too, then sets the status text
``after <key>`` (a kill may land between a publish and the step after it):
each event key must be in the journal once, with its value, and an
acknowledged one never lost. ``expected_result`` computes the result from the spec
alone, so any run, crashed or not, must end with it.

``Acks`` collects acknowledgements: what the engine confirmed, and so what a
crash must never lose. The in-process campaigns fill it directly; the kill -9
child prints one line per acknowledgement and the parent parses them back
(``Acks.line`` / ``Acks.parse``). ``check`` compares the journal (as
``RecordView`` objects, read with the public reader), the ledger and the
acknowledgements.

``run_ops`` is the CrashMonkey-style driver of the in-memory campaigns: a
sequence of operations, each on its own instance (``forget`` works on the
latest earlier one). Run again after a crash with ``redo=True`` it finishes
the same work, as a client retrying unacknowledged calls would.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import trio
from _ledger import Entry, Forget, check_ledger, forgotten_between

from memable_log import (
    Context,
    Engine,
    EngineError,
    JournalFailed,
    SignalAlreadyDelivered,
    StepInterrupted,
    SuspendTimedOut,
    WorkflowCancelled,
)
from memable_log._core.codec import Codec
from memable_log.reader import RecordView

WORKFLOW = "mixed"
AMO_KEY = "charge"
FLAKY_KEY = "flaky"
FLAKY_FAILS = 2  # its first attempts fail ...
FLAKY_MAX = 3  # ... and it may make this many in all, across crashes
AT_MOST_ONCE = {AMO_KEY}
BIG_SIZE = 1800  # above the index's inline limit (256): read back by location
CHARGE = 1000
_CODEC = Codec()

Spec = dict[str, Any]
CHILD_SPEC: Spec = {"steps": 1}  # the spec of every child a spec's ``child``/``fan`` starts
FAN_CONCURRENCY = 2


class Ledger(Protocol):
    def record(self, instance: str, key: str) -> None: ...
    def size(self) -> int: ...


def step_value(instance: str, key: str) -> int:
    return zlib.crc32(f"{instance}/{key}".encode()) % 1000


def payload_for(instance: str) -> dict[str, str]:
    return {"approved-by": f"boss-of-{instance}"}


def big_value(instance: str, b: int) -> str:
    unit = f"{instance}/{b};"
    return (unit * (BIG_SIZE // len(unit) + 1))[:BIG_SIZE]


def step_keys(spec: Spec) -> list[str]:
    """Every step key the spec's run may execute."""
    keys = [f"s{i}" for i in range(spec.get("steps", 0))]
    keys += [f"big{b}" for b in range(spec.get("big", 0))]
    if spec.get("amo"):
        keys.append(AMO_KEY)
    if spec.get("flaky") is not None:
        keys.append(FLAKY_KEY)
    keys += [f"p{j}" for j in range(spec.get("par", 0))]
    if spec.get("suspend") and spec.get("remind") is not None:
        keys.append("reminded")
    return [*keys, "last"]


def event_key(step_key: str) -> str:
    """The event the workflow publishes after step ``step_key``."""
    return f"e-{step_key}"


def event_value(instance: str, step_key: str) -> Any:
    """What that event holds: the step's value (a big one for ``big<b>``)."""
    if step_key.startswith("big"):
        return big_value(instance, int(step_key[3:]))
    return CHARGE if step_key == AMO_KEY else step_value(instance, step_key)


def child_ids(spec: Spec, instance: str) -> list[str]:
    """The ids of the children a run of ``spec`` starts, in order."""
    kids = [f"{instance}/kid"] if spec.get("child") else []
    return kids + [f"{instance}/fan:{i}" for i in range(spec.get("fan", 0))]


def with_children(specs: dict[str, Spec]) -> dict[str, Spec]:
    """``specs`` and, for each instance, its children's (by child id)."""
    out = dict(specs)
    for iid, spec in specs.items():
        out.update((cid, CHILD_SPEC) for cid in child_ids(spec, iid))
    return out


def expected_result(spec: Spec, instance: str, charged: Any = CHARGE) -> dict[str, Any]:
    """The result of a run of ``spec``; ``charged`` as the run reports it."""
    kids = [expected_result(CHILD_SPEC, cid)["sum"] for cid in child_ids(spec, instance)]
    total = sum(step_value(instance, f"s{i}") for i in range(spec.get("steps", 0)))
    total += sum(step_value(instance, f"p{j}") for j in range(spec.get("par", 0)))
    total += step_value(instance, "last")
    if spec.get("flaky") is not None:
        total += step_value(instance, FLAKY_KEY)
    if spec.get("suspend") and spec.get("remind") is not None:
        total += step_value(instance, "reminded")
    return {
        "sum": total,
        "big": BIG_SIZE * spec["big"] if spec.get("big") else None,
        "charged": charged if spec.get("amo") else None,
        "got": payload_for(instance) if spec.get("suspend") else None,
        "timed_out": True if spec.get("timeout") is not None else None,
        **({"kids": kids} if kids else {}),
    }


# -- acknowledgements ---------------------------------------------------------


@dataclass
class Acks:
    """What the engine acknowledged (see the module comment)."""

    invokes: set[str] = field(default_factory=set)
    steps: dict[tuple[str, str], int] = field(default_factory=dict)  # -> earliest ledger size
    signals: set[tuple[str, str]] = field(default_factory=set)
    cancels: set[str] = field(default_factory=set)
    forgets: set[tuple[str, str]] = field(default_factory=set)
    forget_calls: list[Forget] = field(default_factory=list)  # issued, acked or not
    restarts: set[str] = field(default_factory=set)
    restart_calls: list[tuple[str, int]] = field(default_factory=list)  # issued: (id, tick)
    results: dict[str, tuple[Any, int]] = field(default_factory=dict)  # id -> (value, tick)
    ticks: int = 0  # orders results and restart calls
    publishes: set[tuple[str, str]] = field(default_factory=set)  # (id, event key)
    # schedules and debounce: name -> the latest time through which every
    # tick was acknowledged started and finished; debounced id -> the
    # highest call number acknowledged with that id
    ticked: dict[str, int] = field(default_factory=dict)
    scheduled: dict[str, int] = field(default_factory=dict)  # name -> earliest call's return
    debounced: dict[str, int] = field(default_factory=dict)

    def tick(self) -> int:
        self.ticks += 1
        return self.ticks

    def on_step(self, instance: str, key: str, pos: int) -> None:
        where = (instance, key)
        self.steps[where] = min(pos, self.steps.get(where, pos))

    def count(self) -> int:
        return (len(self.invokes) + len(self.steps) + len(self.signals) + len(self.cancels)
                + len(self.forgets) + len(self.restarts) + len(self.results)
                + len(self.publishes) + len(self.ticked) + len(self.debounced))

    def on_ticked(self, name: str, end_ms: int) -> None:
        self.ticked[name] = max(end_ms, self.ticked.get(name, end_ms))

    def on_scheduled(self, name: str, at_ms: int) -> None:
        self.scheduled[name] = min(at_ms, self.scheduled.get(name, at_ms))

    def on_debounce(self, instance: str, call: int) -> None:
        self.debounced[instance] = max(call, self.debounced.get(instance, call))

    @staticmethod
    def line(kind: str, *fields: object) -> str:
        return " ".join(["ACK", kind, *map(str, fields)])

    def parse(self, line: str) -> bool:
        """Take in one ``ACK ...`` line; False if it is not one."""
        parts = line.split(" ")
        if len(parts) < 3 or parts[0] != "ACK":
            return False
        kind, args = parts[1], parts[2:]
        if kind == "invoke":
            self.invokes.add(args[0])
        elif kind == "step":
            self.on_step(args[0], args[1], int(args[2]))
        elif kind == "signal":
            self.signals.add((args[0], args[1]))
        elif kind == "cancel":
            self.cancels.add(args[0])
        elif kind == "publish":
            self.publishes.add((args[0], args[1]))
        elif kind == "ticked":
            self.on_ticked(args[0], int(args[1]))
        elif kind == "scheduled":
            self.on_scheduled(args[0], int(args[1]))
        elif kind == "debounce":
            self.on_debounce(args[0], int(args[1]))
        else:
            return False
        return True


class AckSink(Protocol):
    def __call__(self, kind: str, *fields: object) -> None: ...


def collect(acks: Acks) -> AckSink:
    """A sink that puts step acknowledgements into ``acks`` directly."""

    def sink(kind: str, *fields: object) -> None:
        if kind == "publish":
            acks.publishes.add((str(fields[0]), str(fields[1])))
            return
        if kind == "ticked":
            acks.on_ticked(str(fields[0]), int(fields[1]))  # type: ignore[call-overload]
            return
        if kind == "debounce":
            acks.on_debounce(str(fields[0]), int(fields[1]))  # type: ignore[call-overload]
            return
        if kind == "scheduled":
            acks.on_scheduled(str(fields[0]), int(fields[1]))  # type: ignore[call-overload]
            return
        assert kind == "step"
        instance, key, pos = fields
        acks.on_step(str(instance), str(key), int(pos))  # type: ignore[call-overload]

    return sink


# -- the workflow ---------------------------------------------------------------


def make_workflow(ledger: Ledger, sink: AckSink) -> Callable[[Context], Awaitable[Any]]:
    """The ``mixed`` workflow, recording in ``ledger`` and acknowledging to ``sink``."""

    async def step(ctx: Context, key: str, value: Any, *, at_most_once: bool = False) -> Any:
        def body() -> Any:
            ledger.record(ctx.instance_id, key)
            return value

        builder = ctx.step(key)
        if at_most_once:
            builder = builder.at_most_once()
        got = await builder.run(body)
        sink("step", ctx.instance_id, key, ledger.size())
        await ctx.publish(event_key(key), got)
        sink("publish", ctx.instance_id, event_key(key))
        await ctx.set_status(f"after {key}")
        return got

    async def flaky(ctx: Context, delay: float) -> Any:
        iid = ctx.instance_id

        def body() -> Any:
            attempt = ctx.attempt
            ledger.record(iid, f"{FLAKY_KEY}@{attempt}")
            if attempt <= FLAKY_FAILS:
                raise ConnectionError(f"{iid}: attempt {attempt} of {FLAKY_KEY} fails")
            return step_value(iid, FLAKY_KEY)

        got = await ctx.step(FLAKY_KEY).retry(
            max_attempts=FLAKY_MAX, initial_delay=delay, backoff=1.0).run(body)
        sink("step", iid, FLAKY_KEY, ledger.size())
        return got

    async def mixed(ctx: Context) -> dict[str, Any]:
        spec: Spec = ctx.input
        iid = ctx.instance_id
        total = 0
        for i in range(spec.get("steps", 0)):
            total += await step(ctx, f"s{i}", step_value(iid, f"s{i}"))
        big = None
        for b in range(spec.get("big", 0)):
            big = (big or 0) + len(await step(ctx, f"big{b}", big_value(iid, b)))
        if spec.get("flaky") is not None:
            total += await flaky(ctx, spec["flaky"])
        charged: Any = None
        if spec.get("amo"):
            try:
                charged = await step(ctx, AMO_KEY, CHARGE, at_most_once=True)
            except StepInterrupted:
                charged = "interrupted"
        par = spec.get("par", 0)
        if par:
            got: list[int] = []

            async def one(j: int) -> None:
                got.append(await step(ctx, f"p{j}", step_value(iid, f"p{j}")))

            async with trio.open_nursery() as nursery:
                for j in range(par):
                    nursery.start_soon(one, j)
            total += sum(got)
        payload = None
        if spec.get("suspend") and spec.get("remind") is not None:
            waited: dict[str, Any] = {}

            async def approval() -> None:
                waited["got"] = await ctx.suspend("approve", status="waiting for approval")

            async def reminder() -> None:
                await ctx.timer("remind", spec["remind"])
                waited["reminded"] = await step(ctx, "reminded", step_value(iid, "reminded"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(approval)
                nursery.start_soon(reminder)
            payload = waited["got"]
            total += waited["reminded"]
        elif spec.get("suspend"):
            payload = await ctx.suspend("approve", status="waiting for approval")
        timed_out = None
        if spec.get("timeout") is not None:
            try:
                await ctx.suspend("maybe", timeout=spec["timeout"])
                timed_out = False
            except SuspendTimedOut:
                timed_out = True
        if spec.get("hold"):
            await ctx.suspend("never", status="held until cancelled")
        if spec.get("timer") is not None:
            await ctx.timer("nap", spec["timer"])
        kids: list[int] = []
        if spec.get("child"):
            kids.append((await ctx.child("kid", WORKFLOW, CHILD_SPEC))["sum"])
        if spec.get("fan"):
            fanned = await ctx.fan_out("fan", WORKFLOW, [CHILD_SPEC] * spec["fan"],
                                       concurrency=FAN_CONCURRENCY)
            kids += [result["sum"] for result in fanned]
        total += await step(ctx, "last", step_value(iid, "last"))
        return {"sum": total, "big": big, "charged": charged, "got": payload,
                "timed_out": timed_out, **({"kids": kids} if kids else {})}

    return mixed


async def until_settled(engine: Engine, instance_id: str) -> str:
    """Wait until the instance is not running (waiting or finished); its state.

    Waits on the engine's per-instance change event (set whenever a runner
    ends or the instance is cancelled), never by polling.
    """
    while True:
        state = engine.status(instance_id).state
        if state != "running":
            return state
        failed = engine._backend.journal.failed
        if failed is not None:  # its runner stopped: it stays running until reopened
            raise JournalFailed(failed)
        event = engine._host.changed(instance_id)
        await event.wait()


# -- the in-memory operations (CrashMonkey style) -----------------------------

OPS = ("invoke", "step", "signal", "timer", "cancel", "forget", "child", "schedule", "flow")
TIMER_SECONDS = 30.0
WAITING_FOR_SIGNAL = ("suspended", "waiting")  # "waiting": beside a timer (``remind``)
OP_SPECS: dict[str, Spec] = {
    "invoke": {"steps": 2, "big": 3},  # 5.4 kB of results: a roll-over
    "step": {"steps": 1, "amo": True, "par": 2, "big": 1, "flaky": 0.5},
    "signal": {"steps": 1, "suspend": True, "remind": TIMER_SECONDS},
    "timer": {"timer": TIMER_SECONDS},
    "cancel": {"steps": 1, "hold": True},
    "forget": {"steps": 1, "amo": True},  # its own instance when nothing came before
    "child": {"steps": 1, "child": True, "fan": 3},  # a child, then a fan-out of three
    "schedule": {},  # no instance of its own: a schedule and a debounce burst (drive_timed)
    "flow": {},  # instances of FLOWED of its own (FLOW_SPECS), driven by drive_flow
}
POLL_VIRTUAL = 1.0  # how often a driver looks for starts made by time (MockClock seconds)


def op_plan(ops: Iterable[str]) -> list[tuple[str, str, Spec]]:
    """(op, instance id, spec) per operation; forget names its target."""
    plan: list[tuple[str, str, Spec]] = []
    finished: str | None = None  # the latest instance an op completed
    for k, op in enumerate(ops):
        if op == "forget" and finished is not None:
            plan.append((op, finished, {}))
            continue
        iid = f"{op}{k}"
        plan.append((op, iid, OP_SPECS[op]))
        if op not in ("cancel", "schedule", "flow"):
            finished = iid
    return plan


def op_specs(ops: Iterable[str]) -> dict[str, Spec]:
    """Every instance's spec, children included."""
    specs = {iid: spec for _, iid, spec in op_plan(ops) if spec}
    for op, iid, _ in op_plan(ops):
        if op == "flow":
            specs.update(flow_specs(iid))
    return with_children(specs)


async def run_ops(
    engine: Engine, ops: Iterable[str], acks: Acks, ledger: Ledger, *, redo: bool = False
) -> None:
    """Run the operations in order, each to its end (see the module comment)."""
    for op, iid, spec in op_plan(ops):
        if op == "schedule":  # the schedule and the debounce key are named after the op
            calls = [acks.tick() for _ in range(BURST)]
            await drive_timed(engine, iid, iid, calls, collect(acks), poll=POLL_VIRTUAL)
            continue
        if op == "flow":
            await drive_flow(engine, iid, acks)
            continue
        if op == "forget" and not spec:
            await _forget_restart(engine, iid, acks, ledger, redo)
            continue
        await engine.invoke(WORKFLOW, spec, instance_id=iid)
        acks.invokes.add(iid)
        if op == "forget":  # nothing earlier to forget: run one, then forget it
            await _finish(engine, iid, acks)
            await _forget_restart(engine, iid, acks, ledger, redo)
            continue
        if op in ("signal", "cancel") and await until_settled(engine, iid) in WAITING_FOR_SIGNAL:
            if op == "signal":
                try:
                    await engine.signal(WORKFLOW, iid, "approve", payload_for(iid))
                    acks.signals.add((iid, "approve"))
                except SignalAlreadyDelivered:
                    if not redo:
                        raise
            else:
                await engine.cancel(iid)
                acks.cancels.add(iid)
        await _finish(engine, iid, acks)


async def _finish(engine: Engine, iid: str, acks: Acks) -> None:
    try:
        value = await engine.wait(iid)
        acks.results[iid] = value, acks.tick()
    except WorkflowCancelled:
        pass


async def _forget_restart(
    engine: Engine, iid: str, acks: Acks, ledger: Ledger, redo: bool
) -> None:
    if redo:
        # Before a crash the target may have been left mid-run: let it end.
        await until_settled(engine, iid)
        if engine.status(iid).state in ("running", "suspended", "sleeping", "waiting"):
            await _finish(engine, iid, acks)
    acks.forget_calls.append(Forget(iid, "*", ledger.size()))
    await engine.forget(iid, "*")
    acks.forgets.add((iid, "*"))
    acks.restart_calls.append((iid, acks.tick()))
    try:
        await engine.restart(iid)
        acks.restarts.add(iid)
    except EngineError:
        if not redo:
            raise
    await _finish(engine, iid, acks)


# -- flow control: the driver ----------------------------------------------------

# ``FLOWED`` runs the same workflow under flow control: at most FLOW_MAX
# running, at most one per key (the spec's ``fkey``). A flow op invokes these
# at once (suffix -> (spec, priority, timeout)): n1 queues behind n0 (key
# a), n3 (priority) behind the limit of two, n4 (held) ends by its invoke
# timeout, n5 (held, key a) is cancelled while it most likely still queues.
FLOWED = "flowed"
FLOW_MAX = 2
FLOW_TIMEOUT = 10.0  # seconds (MockClock)
FLOW_SPECS: dict[str, tuple[Spec, int, float | None]] = {
    "n0": ({"steps": 1, "fkey": "a"}, 0, None),
    "n1": ({"steps": 1, "fkey": "a"}, 0, None),
    "n2": ({"steps": 2, "fkey": "b"}, 0, None),
    "n3": ({"steps": 1, "fkey": "c"}, 5, None),
    "n4": ({"hold": True, "fkey": "d"}, 0, FLOW_TIMEOUT),
    "n5": ({"hold": True, "fkey": "a"}, 0, None),
}


def flow_specs(op_id: str) -> dict[str, Spec]:
    return {f"{op_id}-{n}": spec for n, (spec, _, _) in FLOW_SPECS.items()}


def flow_key(spec: Any) -> str:
    return str(spec.get("fkey", "-")) if isinstance(spec, dict) else "-"


def register_flowed(engine: Engine, workflow: Callable[[Context], Awaitable[Any]]) -> None:
    engine.register(FLOWED, workflow, max_running=FLOW_MAX, key=flow_key,
                    max_running_per_key=1)


async def drive_flow(engine: Engine, op_id: str, acks: Acks) -> None:
    """Invoke FLOW_SPECS' instances at once, cancel n5, wait for all."""
    ids = []
    for n, (spec, priority, timeout) in FLOW_SPECS.items():
        iid = f"{op_id}-{n}"
        await engine.invoke(FLOWED, spec, instance_id=iid, priority=priority, timeout=timeout)
        acks.invokes.add(iid)
        ids.append(iid)
    await engine.cancel(f"{op_id}-n5")
    acks.cancels.add(f"{op_id}-n5")
    for iid in ids:
        # A failed journal records no timeout: n4 would wait for ever.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_unless_failed, engine, nursery.cancel_scope)
            try:
                await _finish(engine, iid, acks)
            except JournalFailed:
                pass  # raised below, outside the nursery: a bare JournalFailed
            nursery.cancel_scope.cancel()
        failed = engine._backend.journal.failed
        if failed is not None:
            raise JournalFailed(failed)


async def _unless_failed(engine: Engine, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once the engine's journal has failed (looks every
    POLL_VIRTUAL seconds: nothing signals a failure to a waiter)."""
    while engine._backend.journal.failed is None:  # noqa: ASYNC110 - no event to wait on
        await trio.sleep(POLL_VIRTUAL)
    scope.cancel()


def _over(flowed: dict[str, str], running: set[str]) -> bool:
    keys = [flowed[i] for i in running]
    return len(running) > FLOW_MAX or any(k != "-" and keys.count(k) > 1 for k in keys)


def _check_flow(records: list[RecordView], facts: Facts, specs: dict[str, Spec], *,
                final: bool) -> list[str]:
    """The flow invariants (from the journal): never more than one running
    instance of FLOWED per key, nor FLOW_MAX in all; with ``final``, an
    instance with an invoke timeout ended ``cancelled_for`` "timeout" (and,
    through _check_final, every queued one ran or was cancelled)."""
    problems = []
    if not facts.compacted:  # compaction rewrites queued/dequeued as state
        flowed: dict[str, str] = {}  # instance -> its key
        running: set[str] = set()
        waiting: set[str] = set()  # created, queued or parked: holding no slot
        last = None  # the instance of the latest record: the limits are checked
        # between instances' records (an invoke's created, options and queued
        # are one batch), never after the last (a torn batch's prefix, which
        # recovery completes)
        for rec in records:
            iid = rec.instance
            if last is not None and iid != last and _over(flowed, running):
                problems.append(f"flow limits exceeded before seq {rec.seq}: running "
                                f"{sorted((i, flowed[i]) for i in running)}")
                break
            last = iid
            if rec.type == "created" and rec.fields.get("workflow") == FLOWED:
                # its key from its input: a torn invoke batch may lose `options`
                flowed[iid] = flow_key(_CODEC.decode(rec.fields["input"]))
                waiting.add(iid)  # running once it does something, or dequeued
            elif iid not in flowed or rec.type == "options":
                continue
            elif rec.type in ("queued", "parked"):  # holds no slot
                running.discard(iid)
                waiting.add(iid)
            elif rec.type in ("completed", "failed", "cancelled", "cancelled_for"):
                running.discard(iid)
                waiting.discard(iid)
            elif rec.type == "dequeued" or iid in waiting:  # a step, an event, a status
                waiting.discard(iid)
                running.add(iid)
    if final:
        for iid in sorted(specs):
            suffix = iid.rpartition("-")[2]
            if suffix in FLOW_SPECS and FLOW_SPECS[suffix][2] is not None:
                state, rec = facts.final.get(iid, ("missing", None))
                reason = rec.fields.get("reason") if rec is not None else None
                if rec is None or rec.type != "cancelled_for" or reason != "timeout":
                    problems.append(f"{iid} should end cancelled for 'timeout', is {state} "
                                    f"({rec.type if rec else None}, {reason!r})")
    return problems


# -- schedules and debounce: the driver ---------------------------------------

TICK_CRON = "* * * * *"  # a tick a minute
MINUTE_MS = 60_000
TIMED_SPEC: Spec = {}  # what every tick and debounced start runs: one step, `last`
DEBOUNCE_DELAY = 5.0  # seconds
BURST = 3  # debounce calls a driver makes in a row
TICK_SPAN = 90.0  # seconds of ticks a driver waits for after its calls (over a minute)


def timed_kind(instance_id: str) -> tuple[str, str, int] | None:
    """("tick", schedule name, tick ms) or ("debounce", key, n) for an id a
    schedule or a debounce of ``mixed`` made; None for any other."""
    name, at, when = instance_id.partition("@")
    if at:
        try:
            tick = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return "tick", name, int(tick.timestamp()) * 1000
    parts = instance_id.split("~")
    if len(parts) == 3 and parts[0] == WORKFLOW and parts[2].isdigit():
        return "debounce", parts[1], int(parts[2])
    return None


async def drive_timed(engine: Engine, name: str, key: str, calls: Iterable[int],
                      sink: AckSink, *, poll: float, span: float = TICK_SPAN) -> None:
    """Schedule ``name`` and a debounce burst on ``key``, each to its end.

    Sets the schedule (a tick a minute, ``catch_up``: every lifetime calls
    it with the same arguments, and only the first call writes), then
    debounces once per number in ``calls`` (each input carries its call
    number; ``sink("debounce", id, call)`` acknowledges each), then waits
    until every tick up to ``span`` seconds after has started and every
    debounced start of ``key`` exists, waits for those instances, and
    acknowledges ``sink("ticked", name, end_ms)``. Waiting for a start
    looks every ``poll`` seconds (nothing signals a start made by time).
    """
    await engine.schedule(name, WORKFLOW, cron=TICK_CRON, input=TIMED_SPEC, catch_up=True)
    sink("scheduled", name, engine._host.now_ms())  # it was set at this time or before
    last = 0
    for call in calls:
        iid = await engine.debounce(WORKFLOW, key, delay=DEBOUNCE_DELAY,
                                    input={**TIMED_SPEC, "call": call})
        sink("debounce", iid, call)
        last = max(last, timed_kind(iid)[2])  # type: ignore[index]
    end = engine._host.now_ms() + round(span * 1000)

    def started() -> bool:
        ours = [s for s in engine.schedules() if s.name == name]
        nxt = ours[0].next_tick if ours else None
        if nxt is not None and nxt.timestamp() * 1000 <= end:
            return False
        ids = {s.instance_id for s in engine.instances()}
        return all(f"{WORKFLOW}~{key}~{n}" in ids for n in range(1, last + 1))

    while not started():  # looks every ``poll``: no event tells a start made by time
        failed = engine._backend.journal.failed
        if failed is not None:  # no tick or start can be written any more
            raise JournalFailed(failed)
        await trio.sleep(poll)
    for status in engine.instances():
        kind = timed_kind(status.instance_id)
        if kind is not None and (kind[:2] == ("debounce", key)
                                 or (kind[:2] == ("tick", name) and kind[2] <= end)):
            try:
                await engine.wait(status.instance_id)
            except WorkflowCancelled:
                pass
    sink("ticked", name, end)


# -- the journal as facts, and the check ---------------------------------------


@dataclass
class Facts:
    """What a journal holds, by instance and key (from its records, in order)."""

    created: set[str] = field(default_factory=set)
    created_twice: set[str] = field(default_factory=set)  # a child created more than once
    step_done: set[tuple[str, str]] = field(default_factory=set)
    step_started: set[tuple[str, str]] = field(default_factory=set)
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)  # latest step_done's
    signalled: set[tuple[str, str]] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    forgot: set[tuple[str, str]] = field(default_factory=set)
    restarted: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    published: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # -> values
    compacted: bool = False  # some records were rewritten by compaction (seq 0)
    # schedules and debounce: the ``created`` records of ticks and debounced
    # starts (how many, and the input of the first), each schedule's set time
    # (the after_ms of its first schedule_set not rewritten by compaction)
    timed_created: dict[str, int] = field(default_factory=dict)
    timed_inputs: dict[str, Any] = field(default_factory=dict)
    schedule_set: dict[str, int | None] = field(default_factory=dict)
    # the state after the last record: "live", or the finished state and its record
    final: dict[str, tuple[str, RecordView | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[RecordView]) -> Facts:
        facts = cls()
        for rec in records:
            iid, key = rec.instance, rec.fields.get("key")
            facts.compacted = facts.compacted or rec.seq == 0
            facts.timed(rec)
            state = facts.final.get(iid, ("live", None))[0]
            if rec.type in ("created", "child_created"):
                if iid in facts.created and rec.type == "child_created" and rec.seq != 0:
                    facts.created_twice.add(iid)
                facts.created.add(iid)
                facts.final.setdefault(iid, ("live", None))
            elif rec.type == "step_done":
                facts.step_done.add((iid, key))  # type: ignore[arg-type]
                facts.attempts[iid, key] = rec.fields["attempts"]  # type: ignore[index]
            elif rec.type == "step_started":
                facts.step_started.add((iid, key))  # type: ignore[arg-type]
            elif rec.type == "signalled":
                facts.signalled.add((iid, key))  # type: ignore[arg-type]
            elif rec.type == "forgot":
                facts.forgot.add((iid, key))  # type: ignore[arg-type]
            elif rec.type == "published":
                facts.published.setdefault((iid, key), []).append(  # type: ignore[arg-type]
                    _CODEC.decode(rec.fields["value"])
                )
            elif rec.type in ("restarted", "state_image"):
                if rec.type == "restarted":
                    facts.restarted.add(iid)
                if state != "live":
                    facts.final[iid] = ("live", None)
            elif rec.type in ("completed", "failed", "cancelled", "cancelled_for"):
                if rec.type == "completed":
                    facts.completed.add(iid)
                if rec.type in ("cancelled", "cancelled_for"):
                    facts.cancelled.add(iid)
                if state == "live":
                    facts.final[iid] = ("cancelled" if rec.type == "cancelled_for"
                                        else rec.type, rec)
        return facts

    def timed(self, rec: RecordView) -> None:
        """Take in a record of schedules and debounce (see ``_check_timed``)."""
        if rec.type == "schedule_set":
            name = rec.fields["name"]
            if name not in self.schedule_set or self.schedule_set[name] is None:
                self.schedule_set[name] = None if rec.seq == 0 else rec.fields["after_ms"]
        elif rec.type == "created" and timed_kind(rec.instance) is not None:
            # A compacted copy (seq 0) stands for the original: not a second one.
            if rec.instance in self.timed_created and rec.seq != 0:
                self.timed_created[rec.instance] += 1
            self.timed_created.setdefault(rec.instance, 1)
            self.timed_inputs.setdefault(rec.instance, _CODEC.decode(rec.fields["input"]))


def check(
    records: list[RecordView],
    acks: Acks,
    ledger: list[Entry],
    specs: dict[str, Spec],
    *,
    final: bool,
    handed_over: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
) -> list[str]:
    """Every violation of the invariants (an empty list when all hold).

    Always: every acknowledged invoke, step, signal (or, not yet applied,
    its hand-over in ``handed_over``), cancel, forget, restart and result is
    in the journal, and the ledger rules hold. With ``final``, also: every
    instance ended as its spec says, with the right result.
    """
    facts = Facts.of(records)
    problems: list[str] = _check_timed(facts, acks, final=final)
    problems += _check_flow(records, facts, specs, final=final)
    # Ticks and debounced starts run the workflow too: their steps are the workload's.
    everything = {**specs, **facts.timed_inputs}

    def lost(what: str, missing: Iterable[Any]) -> None:
        problems.extend(f"acknowledged {what} {m} is not in the journal" for m in sorted(missing))

    lost("invoke", acks.invokes - facts.created)
    problems += [f"child {iid} was created more than once" for iid in sorted(facts.created_twice)]
    # A step forgotten since its acknowledgement may be gone (compaction
    # drops forgotten results), and so may a result since a restart.
    lost("step", {
        (iid, key) for (iid, key), pos in acks.steps.items()
        if (iid, key) not in facts.step_done
        and not forgotten_between(acks.forget_calls, iid, key, pos, sys.maxsize)
    })
    lost("signal", acks.signals - facts.signalled - set(handed_over))
    lost("cancel", acks.cancels - facts.cancelled)
    lost("publish", acks.publishes - set(facts.published))
    problems += _check_events(facts, everything)
    lost("result of", {
        iid for iid, (_, tick) in acks.results.items()
        if iid not in facts.completed
        and not any(i == iid and t > tick for i, t in acks.restart_calls)
    })
    if not facts.compacted:
        # Compaction rewrites history as state: forgets and restarts leave
        # no record of their own, only their effects.
        lost("forget", acks.forgets - facts.forgot)
        lost("restart", acks.restarts - facts.restarted)
    for iid, (value, _) in acks.results.items():
        if iid in specs and value != expected_result(specs[iid], iid, value.get("charged")):
            problems.append(f"{iid} returned {value!r}, expected "
                            f"{expected_result(specs[iid], iid, value.get('charged'))!r}")
    attempts = _attempts(ledger)
    ledger = [Entry(e.pos, e.instance, e.key.split("@")[0], e.attempt) for e in ledger]
    problems += check_ledger(ledger, acks.steps, AT_MOST_ONCE, acks.forget_calls)
    problems += _check_attempts(attempts, acks.forget_calls)
    known = {(iid, key) for iid, spec in everything.items() for key in step_keys(spec)}
    problems += [f"ledger entry {e} is no step of the workload"
                 for e in ledger if (e.instance, e.key) not in known]
    if final:
        problems += _check_final(facts, {**specs, **_timed_due(facts, acks)}, ledger)
        for (iid, key), seen in sorted(attempts.items()):
            recorded = facts.attempts.get((iid, key))
            if recorded is not None and recorded != seen[-1][1]:
                problems.append(f"{key!r} of {iid}: its step_done says {recorded} attempts, "
                                f"the ledger's last attempt was {seen[-1][1]}")
    return problems


# -- schedules and debounce: the checks ---------------------------------------


def _check_timed(facts: Facts, acks: Acks, *, final: bool) -> list[str]:
    """Ticks and debounced starts: none lost, none twice, the last input.

    Per schedule: each tick's instance created once; the ticks created are
    consecutive minutes, the first the first minute after the schedule was
    set (when its first ``schedule_set`` was not rewritten by compaction; at
    most the minute after an acknowledged ``schedule`` call returned, in any
    case), and they reach every minute up to the time through which the workload
    was acknowledged that all ticks had run (``acks.ticked``). Per debounce
    key: each n created once, the n's 1, 2, ... with no gap; the instance of
    an acknowledged call exists at the end, and its input is that call's or
    a later one's (the last input, never an earlier one).
    """
    problems = [f"{iid} was created {count} times"
                for iid, count in sorted(facts.timed_created.items()) if count > 1]
    ticks: dict[str, list[int]] = {}
    burst: dict[str, list[int]] = {}
    for iid in facts.timed_created:
        kind, name, at = timed_kind(iid)  # type: ignore[misc]
        (ticks if kind == "tick" else burst).setdefault(name, []).append(at)
    for name in sorted(set(ticks) | set(acks.scheduled) | set(facts.schedule_set)):
        got = sorted(ticks.get(name, []))
        if name not in facts.schedule_set:
            problems.append(f"schedule {name} (acknowledged, or with ticks {got[:2]}) has no "
                            "schedule_set in the journal")
        problems += [f"schedule {name}: ticks between {_utc(a)} and {_utc(b)} were lost"
                     for a, b in itertools.pairwise(got) if b - a != MINUTE_MS]
        set_ms = facts.schedule_set.get(name)
        if set_ms is not None and got and got[0] != _next_minute(set_ms):
            problems.append(f"schedule {name} set at {_utc(set_ms)}: its first tick is "
                            f"{_utc(got[0])}, not {_utc(_next_minute(set_ms))}")
        by = acks.scheduled.get(name)  # set by then: its first tick is at most the next minute
        if by is not None and got and got[0] > _next_minute(by):
            problems.append(f"schedule {name} was set by {_utc(by)}: its first tick is "
                            f"{_utc(got[0])}, the ticks from {_utc(_next_minute(by))} were lost")
        end = acks.ticked.get(name)
        if end is not None and (not got or got[-1] < end - end % MINUTE_MS):
            problems.append(f"schedule {name}: ticks through {_utc(end)} were acknowledged, "
                            f"the last created is {_utc(got[-1]) if got else 'none'}")
    for key, ns in sorted(burst.items()):
        if sorted(ns) != list(range(1, len(ns) + 1)):
            problems.append(f"debounce {key}: starts {sorted(ns)} are not 1..{len(ns)}")
    for iid, call in sorted(acks.debounced.items()):
        if iid not in facts.timed_inputs:
            if final:
                problems.append(f"acknowledged debounce {iid} (call {call}) never started")
            continue
        got_call = facts.timed_inputs[iid].get("call", -1)
        if got_call < call:
            problems.append(f"{iid} started with the input of call {got_call}, but call "
                            f"{call} was acknowledged with that id: not the last input")
    return problems


def _timed_due(facts: Facts, acks: Acks) -> dict[str, Spec]:
    """The ticks and debounced starts that must have finished at the end:
    every debounced start, and every tick up to its acknowledged time."""
    due = {}
    for iid, spec in facts.timed_inputs.items():
        kind, name, at = timed_kind(iid)  # type: ignore[misc]
        if kind == "debounce" or at <= acks.ticked.get(name, -1):
            due[iid] = spec
    return due


def _next_minute(ms: int) -> int:
    return (ms // MINUTE_MS + 1) * MINUTE_MS


def _utc(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, tz=UTC):%H:%M:%S.%f}"[:-3]


def _attempts(ledger: list[Entry]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(instance, key) -> (ledger position, ctx.attempt) of each execution of a
    step whose ledger key carries its attempt (``flaky@2``)."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for e in ledger:
        key, at, attempt = e.key.partition("@")
        if at:
            out.setdefault((e.instance, key), []).append((e.pos, int(attempt)))
    return out


def _check_attempts(
    attempts: dict[tuple[str, str], list[tuple[int, int]]], forgets: list[Forget]
) -> list[str]:
    """A step never gets more than FLAKY_MAX attempts, across crashes: no
    attempt number beyond it, and the count never goes back (a restart
    continues it; an attempt cut by a crash runs again with its number),
    unless a forget of the key was issued in between."""
    problems = []
    for (iid, key), seen in sorted(attempts.items()):
        for (pos, n), (last, before) in zip(seen, [(0, 0), *seen], strict=False):
            if n > FLAKY_MAX:
                problems.append(f"{key!r} of {iid} ran attempt {n} of at most {FLAKY_MAX} "
                                f"(ledger position {pos})")
            if n < before and not forgotten_between(forgets, iid, key, last, pos):
                problems.append(f"{key!r} of {iid}: attempt {n} ran after attempt {before} "
                                f"(ledger position {pos}): a restart lost the count")
    return problems


def _check_events(facts: Facts, specs: dict[str, Spec]) -> list[str]:
    """Each event once, with its value, and only the workload's."""
    problems = []
    for (iid, key), values in sorted(facts.published.items()):
        step = key[2:] if key.startswith("e-") else None
        if iid not in specs or step is None or step not in step_keys(specs[iid]):
            problems.append(f"event {key!r} of {iid} is no event of the workload")
        elif len(values) != 1:
            problems.append(f"event {key!r} of {iid} is in the journal {len(values)} times")
        elif values[0] != event_value(iid, step):
            problems.append(f"event {key!r} of {iid} holds {values[0]!r:.60}, expected "
                            f"{event_value(iid, step)!r:.60}")
    return problems


def _check_final(facts: Facts, specs: dict[str, Spec], ledger: list[Entry]) -> list[str]:
    problems = []
    for iid, spec in sorted(specs.items()):
        state, rec = facts.final.get(iid, ("missing", None))
        if spec.get("hold"):
            if state != "cancelled":
                problems.append(f"{iid} should end cancelled, is {state}")
            continue
        if state != "completed" or rec is None:
            detail = f": {rec.fields}" if rec is not None else ""
            problems.append(f"{iid} should end completed, is {state}{detail}")
            continue
        result = _CODEC.decode(rec.fields["result"])
        charged = result.get("charged") if isinstance(result, dict) else None
        want = expected_result(spec, iid, charged)
        if result != want:
            problems.append(f"{iid} ended with {result!r}, expected {want!r}")
        if spec.get("amo"):
            ran = sum(1 for e in ledger if (e.instance, e.key) == (iid, AMO_KEY))
            if charged == CHARGE and not ran:
                problems.append(f"{iid}: charge returned but never ran")
            elif charged == "interrupted" and (iid, AMO_KEY) not in facts.step_started:
                problems.append(f"{iid}: charge interrupted without a recorded start")
            elif charged not in (CHARGE, "interrupted"):
                problems.append(f"{iid}: charge reported {charged!r}")
    return problems


def memory_engine(storage: Any, clock: Any, ledger: Ledger, sink: AckSink,
                  segment_size: int = 4096, *, compaction: bool = True) -> Engine:
    """An engine on ``storage`` (a MemoryStorage) running the ``mixed`` workflow.

    Finished instances are kept for ever (no retention), so what was
    acknowledged stays checkable; background compaction runs unless told not.
    """
    engine = (Engine.builder().in_memory(storage).clock(clock).segment_size(segment_size)
              .retention(None).compaction(compaction).build())
    workflow = make_workflow(ledger, sink)
    engine.register(WORKFLOW, workflow)
    register_flowed(engine, workflow)
    return engine
