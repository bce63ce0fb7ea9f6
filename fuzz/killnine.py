"""kill -9 campaign: real processes killed mid-write, then restarted.

Each *iteration* makes a fresh journal directory and a random plan (seeded):
a few instances of the ``mixed`` workflow (see _workload.py) with steps,
big results, at-most-once steps, concurrent steps, suspensions, suspend
timeouts, timers with short real delays, and instances that are cancelled.
A child process runs an engine on the journal (``FileStorage``, 4 KiB
segments, so roll-overs are frequent) and drives the plan: it invokes every
instance, signals some suspensions itself (at once, or once suspended),
cancels the held instances, and waits for all of them. The parent delivers
the other signals from outside with memable-signal (a hand-over through the
inbox while the child runs, an offline append while it is down).

Every step body appends ``instance key attempt`` to an fsynced ledger file
before returning. The child prints one line per acknowledgement, right
after the engine call returned: ``ACK invoke ID``, ``ACK step ID KEY POS``
(POS: the ledger's size then), ``ACK signal ID KEY``, ``ACK cancel ID``; the
parent counts a memable-signal exit 0 as the signal's acknowledgement.

The parent kills the child with SIGKILL, one to three times per iteration,
each time in one of three ways: after a random delay (also during start-up
and recovery), right after a random acknowledgement, or at a crash point
armed in the child (memable_log/_storage/crashpoints.py: torn write, before/after
fsync, each step of a segment roll-over, before a hand-over is deleted).
Some memable-signal runs are themselves killed at a crash point (hand-over
temp written, renamed; or a write of their offline append). Then a last,
unkilled run drives everything to the end.

Checked after every kill (on the journal as left) and at the end:

* the journal reads (``read_journal``): a torn tail is fine, damage is not;
  every child start opens it (never JournalCorrupt);
* every acknowledged invoke, step, signal (or its hand-over, still waiting
  in the inbox) and cancel is in the journal;
* a step acknowledged at ledger position P never appears in the ledger
  after P; an at-most-once step appears at most once, ever;
* at the end: every instance completed with the result its spec gives (or
  is cancelled, for the held ones), and no hand-over is left in the inbox.

Children are forked from the campaign process (which imported everything
once), so a lifetime costs milliseconds, not an interpreter start; a share
of the signals (``--exec-share``) runs the real ``memable-signal`` command.

Run from the repository root::

    .venv/bin/python fuzz/killnine.py --iterations 1000 --jobs 4 --seed 1

It prints a JSON summary (iterations, lives, kills, crash points armed and
hit, signal deliveries, violations) and exits 1 on any violation, keeping
the journals of failed iterations under ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio
from _forking import in_workers
from _ledger import FileLedger, Forget, read_file_ledger
from _summary import finish
from _workload import (
    BURST,
    WORKFLOW,
    Acks,
    Spec,
    check,
    drive_timed,
    make_workflow,
    payload_for,
    timed_kind,
    until_settled,
    with_children,
)
from memable_log_tools import memable, send_signal  # type: ignore[import-not-found,unused-ignore]

from memable_log import (
    Clock,
    Engine,
    JournalLocked,
    NotAJournal,
    SignalAlreadyDelivered,
    UnknownInstance,
    WorkflowCancelled,
    read_journal,
)
from memable_log._storage import crashpoints as cp
from memable_log._storage.inbox import (
    ACTION_SUFFIX,
    INBOX,
    REJECTED,
    HandoverError,
    decode_action,
    decode_handover,
    is_action,
    pending,
    read_handover,
    rejection,
)

SEGMENT_SIZE = 4096
LIFE_TIMEOUT = 60.0  # real seconds a lifetime may take before it counts as hung
CHILD_POINTS = tuple(p for p in cp.POINTS if not p.startswith("inbox.after"))
TOOL_POINTS = (
    "inbox.after-temp-write", "inbox.after-rename",
    "writer.torn-write", "writer.before-fsync", "roll.after-rename",
)
# A point is armed for its n-th call, n drawn up to about the calls a
# lifetime makes (a commit per record or batch; a roll-over or two).
POINT_REACH = {"writer.torn-write": 30, "writer.before-fsync": 30, "writer.after-fsync": 30,
               "roll.after-seal": 2, "roll.after-temp-create": 2}
MEMABLE_SIGNAL = str(Path(sys.executable).with_name("memable-signal"))
TIMED_SHARE = 0.5  # iterations that also run a schedule and a debounce burst
FAST = 240.0  # their wall clock runs this many times real time: a tick every 0.25 s
SCHEDULE, DEBOUNCE_KEY = "tick", "burst"
# Operator actions through `memable` (operations: appended with no engine,
# handed over through the inbox to a running one), in some iterations.
ACTION_SHARE = 0.5
FORGET_KEY = "s0"


def make_actions(rng: random.Random, plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `memable` actions the parent owes: an invoke of a planned instance
    (the child then waits for it to appear), a cancel of a held one (the
    child then does not cancel it), a forget of a step and a restart (before
    the last lifetime) of other ones. Marks the plan's instances it takes."""
    if rng.random() >= ACTION_SHARE:
        return []
    actions = []
    plain = [inst for inst in plan if inst["cancel"] is None]
    held = [inst for inst in plan if inst["cancel"] is not None]
    if plain and rng.random() < 0.6:
        inst = rng.choice(plain)
        inst["invoke"] = "parent"
        actions.append({"kind": "invoke", "id": inst["id"], "spec": inst["spec"]})
    if held and rng.random() < 0.7:
        inst = rng.choice(held)
        inst["cancel"] = "parent"
        actions.append({"kind": "cancel", "id": inst["id"]})
    if plain and rng.random() < 0.7:
        actions.append({"kind": "forget", "id": rng.choice(plain)["id"]})
    if plain and rng.random() < 0.5:
        actions.append({"kind": "restart", "id": rng.choice(plain)["id"]})
    return actions


# -- the plan -----------------------------------------------------------------


def make_plan(rng: random.Random) -> list[dict[str, Any]]:
    """A few instances: their specs, who signals them, how they are cancelled."""
    plan = []
    for k in range(rng.randint(3, 6)):
        spec: Spec = {"steps": rng.randint(1, 4)}
        inst: dict[str, Any] = {"id": f"i{k}", "spec": spec, "signal": None, "cancel": None}
        if rng.random() < 0.15:
            spec["hold"] = True
            inst["cancel"] = rng.choice(["early", "late"])
        else:
            spec["big"] = rng.choice([0, 0, 1, 2])
            if rng.random() < 0.4:
                spec["amo"] = True
            spec["par"] = rng.choice([0, 0, 2, 3])
            if rng.random() < 0.5:
                spec["suspend"] = True
                inst["signal"] = rng.choice(["early", "late", "parent", "parent"])
                if rng.random() < 0.4:  # a reminder timer beside the approval
                    spec["remind"] = round(rng.uniform(0.01, 0.1), 3)
            if rng.random() < 0.2:
                spec["timeout"] = round(rng.uniform(0.01, 0.08), 3)
            if rng.random() < 0.3:
                spec["timer"] = round(rng.uniform(0.01, 0.1), 3)
            if rng.random() < 0.4:  # a step whose first attempts fail: retried
                spec["flaky"] = round(rng.uniform(0.005, 0.03), 3)
            # Children (one waited for, a small fan-out), drawn from a generator
            # of their own: the plans of earlier seeds stay what they were.
            kids = random.Random(f"children-{k}-{sorted(spec.items())}")
            if kids.random() < 0.3:
                spec["child"] = kids.random() < 0.7
                spec["fan"] = kids.choice([0, 2, 3])
        plan.append(inst)
    return plan


# -- the child ----------------------------------------------------------------


class FastClock(Clock):
    """Wall time running FAST times real time since ``t0`` (the iteration's
    start, the same in every lifetime: time goes on across kills), so a
    schedule's minute ticks come a few times a second. Its sleeps until a
    wall time are the real time that takes (Clock's re-aimed sleep would
    wake up to FAST seconds late)."""

    def __init__(self, t0: float) -> None:
        super().__init__(wall=lambda: t0 + (time.time() - t0) * FAST)

    async def sleep_until(self, wall: float) -> None:
        left = wall - self.now()
        if left <= 0:
            await trio.lowlevel.checkpoint()
        while left > 0:
            await trio.sleep(min(left / FAST, 0.05))
            left = wall - self.now()



def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: a SIGKILL loses nothing said


async def _child(journal: str, ledger_path: str, life: int, plan: list[dict[str, Any]],
                 timed: float | None) -> None:
    ledger = FileLedger(ledger_path, attempt=str(life))

    def sink(kind: str, *fields: object) -> None:
        _say(Acks.line(kind, *fields))

    workflow = make_workflow(ledger, sink)
    while True:
        builder = Engine.builder().open(journal).segment_size(SEGMENT_SIZE).retention(None)
        if timed is not None:
            builder = builder.clock(FastClock(timed))
        engine = builder.build()
        engine.register(WORKFLOW, workflow)
        try:
            async with engine:
                _say("READY")
                async with trio.open_nursery() as nursery:
                    for inst in plan:
                        nursery.start_soon(_drive, engine, inst)
                    if timed is not None:  # call numbers: unique across lifetimes
                        calls = [life * 100 + j for j in range(BURST)]
                        nursery.start_soon(partial(drive_timed, engine, SCHEDULE, DEBOUNCE_KEY,
                                                   calls, sink, poll=0.005))
            _say("ALLDONE")
            return
        except JournalLocked:
            await trio.sleep(0.002)  # memable-signal appends offline for a moment


async def _drive(engine: Engine, inst: dict[str, Any]) -> None:
    iid, spec = inst["id"], inst["spec"]
    if inst.get("invoke") == "parent":  # `memable invoke` makes it: wait until it has
        while True:
            try:
                engine.status(iid)
                break
            except UnknownInstance:
                await trio.sleep(0.005)
    else:
        await engine.invoke(WORKFLOW, spec, instance_id=iid)
        _say(Acks.line("invoke", iid))
    if inst["signal"] in ("early", "late"):
        if inst["signal"] == "late":
            await until_settled(engine, iid)
        try:
            await engine.signal(WORKFLOW, iid, "approve", payload_for(iid))
            _say(Acks.line("signal", iid, "approve"))
        except SignalAlreadyDelivered:
            pass  # delivered by an earlier lifetime, acknowledged or not
    if inst["cancel"] in ("early", "late"):  # "parent": `memable cancel` does it
        if inst["cancel"] == "late":
            await until_settled(engine, iid)
        await engine.cancel(iid)
        _say(Acks.line("cancel", iid))
    try:
        await engine.wait(iid)
    except WorkflowCancelled:
        pass
    _say(f"DONE {iid}")


def _child_entry(journal: str, ledger: str, life: int, plan: list[dict[str, Any]],
                 point: tuple[str, int] | None, timed: float | None) -> int:
    if point is not None:
        cp.arm(*point)
    try:
        trio.run(_child, journal, ledger, life, plan, timed)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


# -- forking --------------------------------------------------------------------


def _fork(body: Any, *args: Any, stdout: int, stderr: int) -> int:
    """Run ``body(*args)`` in a forked child with fds 1 and 2 redirected; its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            code = body(*args)
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float) -> int | None:
    """The exit status (negative: killed by that signal), None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.001)


# -- the parent: one iteration ----------------------------------------------------


@dataclass
class Stats:
    iterations: int = 0
    lives: int = 0
    kills: int = 0  # SIGKILLs the parent sent
    points_armed: Counter[str] = field(default_factory=Counter)
    points_hit: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)  # memable-signal outcomes
    actions: Counter[str] = field(default_factory=Counter)  # memable action outcomes
    acks: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        self.iterations += other.iterations
        self.lives += other.lives
        self.kills += other.kills
        self.points_armed += other.points_armed
        self.points_hit += other.points_hit
        self.signals += other.signals
        self.actions += other.actions
        self.acks += other.acks
        self.violations += other.violations

    def summary(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations, "lives": self.lives, "kills": self.kills,
            "crash_point_kills": sum(self.points_hit.values()),
            "points_armed": dict(sorted(self.points_armed.items())),
            "points_hit": dict(sorted(self.points_hit.items())),
            "signals": dict(sorted(self.signals.items())),
            "actions": dict(sorted(self.actions.items())),
            "acks": dict(sorted(self.acks.items())),
            "violations": len(self.violations),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "violation_list": self.violations}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        stats = cls(data["iterations"], data["lives"], data["kills"])
        for name in ("points_armed", "points_hit", "signals", "actions", "acks"):
            getattr(stats, name).update(data[name])
        stats.violations = data["violation_list"]
        return stats


class Iteration:
    """One journal from scratch to the end (see the module comment)."""

    def __init__(self, index: int, seed: int, root: str, stats: Stats, exec_share: float) -> None:
        self.rng = random.Random(f"killnine-{seed}-{index}")
        self.name = f"iteration {index} (seed {seed})"
        self.dir = tempfile.mkdtemp(prefix=f"it-{index}-", dir=root)
        self.journal = os.path.join(self.dir, "journal")
        self.ledger = os.path.join(self.dir, "ledger")
        self.plan = make_plan(self.rng)
        # `memable` actions, from a generator of their own (earlier seeds'
        # plans stay what they were); owed until the command says done.
        self.actions = make_actions(random.Random(f"actions-{seed}-{index}"), self.plan)
        self.final_life = False
        # A schedule and a debounce burst in some iterations, drawn from a
        # generator of their own (earlier seeds' plans stay what they were),
        # on a fast clock whose time starts now.
        timed = random.Random(f"timed-{seed}-{index}").random() < TIMED_SHARE
        self.timed = time.time() if timed else None
        self.specs = with_children({inst["id"]: inst["spec"] for inst in self.plan})
        self.acks = Acks()
        self.stats = stats
        self.exec_share = exec_share
        # Signals the parent owes, until memable-signal says delivered or present.
        self.owed = {inst["id"] for inst in self.plan if inst["signal"] == "parent"}
        self.next_signal = 0.0
        self.next_action = 0.0
        self.forget_runs: dict[str, int] = {}  # `memable forget` runs, by instance
        self.invoked: set[str] = set()  # instances whose invoke was acknowledged
        self.problems: list[str] = []

    def run(self) -> list[str]:
        kills = self.rng.randint(1, 3)
        for life in range(kills + 1):
            if self.owed & self.invoked and self.rng.random() < 0.3:
                self._deliver()  # while no engine runs: an offline append
            self.final_life = life == kills
            if self.actions and self.rng.random() < 0.3:
                self._act()  # while no engine runs: an offline append
            final = life == kills
            if not self._life(life, final):
                break
            self._check(final=final, where=f"after life {life}")
            if self.problems:
                break
        self.stats.iterations += 1
        self.stats.acks.update(invoke=len(self.acks.invokes), step=len(self.acks.steps),
                               signal=len(self.acks.signals), cancel=len(self.acks.cancels),
                               publish=len(self.acks.publishes),
                               debounce=len(self.acks.debounced),
                               ticked=len(self.acks.ticked))
        return [f"{self.name}: {p}" for p in self.problems]

    def _life(self, life: int, final: bool) -> bool:
        """Run one lifetime of the child; False if it went wrong (a violation)."""
        mode = "none" if final else self.rng.choice(["delay", "ack", "point", "point"])
        point = None
        if mode == "point":
            name = self.rng.choice(CHILD_POINTS)
            point = (name, self.rng.randint(1, POINT_REACH.get(name, 1)))
            self.stats.points_armed[name] += 1
        kill_at = time.monotonic() + self.rng.uniform(0.0, 0.25) if mode == "delay" else None
        kill_after_acks = self.rng.randint(1, 25) if mode == "ack" else None
        read_fd, write_fd = os.pipe()
        pid = _fork(_child_entry, self.journal, self.ledger, life, self.plan, point,
                    self.timed, stdout=write_fd, stderr=write_fd)
        os.close(write_fd)
        self.stats.lives += 1
        output = b""
        lines: list[str] = []
        life_acks = Acks()
        acks_seen = 0
        killed = False
        started = time.monotonic()
        os.set_blocking(read_fd, False)
        try:
            while True:
                now = time.monotonic()
                if not killed and (
                    (kill_at is not None and now >= kill_at)
                    or (kill_after_acks is not None and acks_seen >= kill_after_acks)
                ):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                if now - started > LIFE_TIMEOUT:
                    os.kill(pid, signal.SIGKILL)
                    _wait(pid, 10)
                    self.problems.append(f"life {life} hung; output: {_tail(output)}")
                    return False
                if self.owed and now >= self.next_signal and not killed:
                    self._deliver()
                if self.actions and now >= self.next_action and not killed:
                    self._act()
                chunk = _read(read_fd, 0.005)
                if chunk is None:  # end of output: the child is gone
                    break
                output += chunk
                text = output.decode(errors="replace")
                new_lines = text.split("\n")[len(lines) : -1]
                for line in new_lines:
                    lines.append(line)
                    if life_acks.parse(line):
                        acks_seen += 1
                self.invoked |= life_acks.invokes
        finally:
            os.close(read_fd)
        self._merge(life_acks)
        status = _wait(pid, 10)
        hit = [ln.split()[-1] for ln in lines if ln.startswith("memable crash point ")]
        for name in hit:
            self.stats.points_hit[name] += 1
        if status == 0 and "ALLDONE" in lines:
            return True  # done before its kill came
        if status == -signal.SIGKILL and (killed or hit):
            self.stats.kills += killed and not hit
            return True
        self.problems.append(
            f"life {life} ({mode}{f' {point}' if point else ''}) ended with status {status}; "
            f"output: {_tail(output)}"
        )
        return False

    def _merge(self, acks: Acks) -> None:
        """Take in what a lifetime acknowledged (it is gone: nothing more comes)."""
        self.acks.invokes |= acks.invokes
        for (iid, key), pos in acks.steps.items():
            self.acks.on_step(iid, key, pos)
        self.acks.signals |= acks.signals
        self.acks.cancels |= acks.cancels
        self.acks.publishes |= acks.publishes
        for name, end in acks.ticked.items():
            self.acks.on_ticked(name, end)
        for name, at in acks.scheduled.items():
            self.acks.on_scheduled(name, at)
        for iid, call in acks.debounced.items():
            self.acks.on_debounce(iid, call)

    def _deliver(self) -> None:
        """Try once to deliver one owed signal with memable-signal."""
        self.next_signal = time.monotonic() + self.rng.uniform(0.005, 0.04)
        # Mostly instances known to exist; now and then one that may not yet.
        known = sorted(self.owed & self.invoked)
        iid = self.rng.choice(known if known and self.rng.random() < 0.9 else sorted(self.owed))
        argv = [self.journal, WORKFLOW, iid, "approve", json.dumps(payload_for(iid)), "-q"]
        point = None
        if self.rng.random() < 0.15:
            point = (self.rng.choice(TOOL_POINTS), 1)
            self.stats.points_armed["tool:" + point[0]] += 1
        if self.rng.random() < self.exec_share:
            code, err = _exec_tool(argv, point)
        else:
            code, err = _fork_tool(argv, point)
        if code == 0:
            self.owed.discard(iid)
            self.acks.signals.add((iid, "approve"))
            self.stats.signals["delivered"] += 1
        elif code == 1 and ("already" in err or "waiting for the engine" in err):
            self.owed.discard(iid)  # durable by an earlier, unacknowledged run
            self.stats.signals["already"] += 1
        elif code in (1, 2) and ("unknown instance" in err.lower()
                                 or "not a memable_log journal" in err):
            self.stats.signals["too-early"] += 1
        elif code == -signal.SIGKILL and point is not None and "memable crash point" in err:
            self.stats.points_hit["tool:" + point[0]] += 1
            self.stats.signals["killed"] += 1
        else:
            self.problems.append(f"memable-signal exited {code}: {err.strip()[-500:]}")

    def _act(self) -> None:
        """Try once to do one owed action with `memable` (forked, as the
        signals are; now and then killed at an inbox crash point)."""
        self.next_action = time.monotonic() + self.rng.uniform(0.005, 0.04)
        action = self.rng.choice(self.actions)
        kind, iid = action["kind"], action["id"]
        if kind in ("restart", "forget") and self.final_life:
            # A restart would run after the last lifetime's waits; a forget
            # handed over as it exits would wait in the inbox for a next start.
            self.actions.remove(action)
            return
        if kind in ("forget", "restart", "cancel") and iid not in self.invoked:
            return  # not there yet
        argv = {"invoke": ["invoke", self.journal, WORKFLOW, json.dumps(action.get("spec")),
                           "--id", iid],
                "cancel": ["cancel", self.journal, iid],
                "forget": ["forget", self.journal, iid, FORGET_KEY],
                "restart": ["restart", self.journal, iid]}[kind]
        point = None
        if self.rng.random() < 0.15:
            point = (self.rng.choice(TOOL_POINTS), 1)
            self.stats.points_armed["tool:" + point[0]] += 1
        if kind == "forget":  # issued: in effect from here until _check sees it applied
            self.acks.forget_calls.append(Forget(iid, FORGET_KEY, self._ledger_size(),
                                                 sys.maxsize))
            self.forget_runs[iid] = self.forget_runs.get(iid, 0) + 1
        if kind == "restart":
            self.acks.restart_calls.append((iid, self.acks.tick()))
        code, err = _fork_tool(argv, point, memable.main)
        if code == 0:
            self.actions.remove(action)
            self.stats.actions[f"{kind} done"] += 1
            if kind == "invoke":
                self.acks.invokes.add(iid)
                self.invoked.add(iid)
            elif kind == "cancel" and "nothing to cancel" not in err:
                self.acks.cancels.add(iid)
            elif kind == "forget":
                self.acks.forgets.add((iid, FORGET_KEY))
            elif kind == "restart":
                self.acks.restarts.add(iid)
        elif code == 1 and kind == "restart" and ("can be restarted" in err
                                                  or "already handed over" in err):
            self.stats.actions["restart refused"] += 1  # live still, or one on its way
        elif code == 1 and ("unknown instance" in err.lower()
                            or "not a memable_log journal" in err):
            self.stats.actions["too-early"] += 1  # no instance, or no journal, yet
        elif code == -signal.SIGKILL and point is not None and "memable crash point" in err:
            self.stats.points_hit["tool:" + point[0]] += 1
            self.stats.actions["killed"] += 1
        else:
            self.problems.append(f"memable {' '.join(argv)} exited {code}: {err.strip()[-500:]}")

    def _ledger_size(self) -> int:
        return os.path.getsize(self.ledger) if os.path.exists(self.ledger) else 0

    def _check(self, *, final: bool, where: str) -> None:
        try:
            records = list(read_journal(self.journal))
        except NotAJournal:
            records = []  # killed before its first file was made
        except Exception as exc:
            self.problems.append(f"{where}: the journal does not read: {exc!r}")
            return
        waiting = set()
        acting: set[tuple[str, str]] = set()  # actions handed over, not applied yet
        for name in pending(self.journal):
            try:
                data = read_handover(self.journal, name)
                if is_action(name):
                    action, iid, _ = decode_action(data)
                    acting.add((action, iid))
                else:
                    _, iid, key, _ = decode_handover(data)
                    waiting.add((iid, key))
            except (HandoverError, OSError) as exc:
                self.problems.append(f"{where}: hand-over {name} unreadable: {exc!r}")
        if final and (waiting or acting):
            self.problems.append(f"{where}: hand-overs left in the inbox: "
                                 f"{sorted(waiting)} {sorted(acting)}")
        # A forget no longer waiting anywhere took effect by now (no engine runs).
        owed = {a["id"] for a in self.actions if a["kind"] == "forget"}
        size = self._ledger_size()
        self.acks.forget_calls = [
            replace(f, until=size) if f.until == sys.maxsize and f.instance not in owed
            and ("forget", f.instance) not in acting else f
            for f in self.acks.forget_calls
        ]
        # Each forget handed over or appended applied once: never more
        # forgot records than `memable forget` runs (compaction aside).
        for (iid, key), n in Counter(
            (rec.instance, rec.fields.get("key")) for rec in records if rec.type == "forgot"
        ).items():
            if n > self.forget_runs.get(iid, 0) and not any(r.seq == 0 for r in records):
                self.problems.append(f"{where}: {n} forgot records of {key!r} of {iid}, "
                                     f"from {self.forget_runs.get(iid, 0)} memable forget runs")
        # A restart handed over is the instance as the tool read it: the
        # engine refuses it (inbox/rejected/, with why) if the instance changed
        # meanwhile (a forget applied first). No other action may be refused.
        refused = set()
        rejected_dir = os.path.join(self.journal, INBOX, REJECTED)
        names = os.listdir(rejected_dir) if os.path.isdir(rejected_dir) else []
        for name in names:
            if not name.endswith(ACTION_SUFFIX):
                continue
            action, iid, _ = decode_action(read_handover(self.journal, f"{REJECTED}/{name}"))
            why = rejection(self.journal, name) or ""
            if action == "restart" and "changed since the restart was asked" in why:
                refused.add(iid)
            else:
                self.problems.append(f"{where}: {action} of {iid} refused: {why}")
        # An acknowledged action still in the inbox is durable there, not lost.
        acks = replace(
            self.acks,
            invokes=self.acks.invokes - {i for a, i in acting if a == "invoke"},
            cancels=self.acks.cancels - {i for a, i in acting if a == "cancel"},
            forgets={f for f in self.acks.forgets if ("forget", f[0]) not in acting},
            restarts=self.acks.restarts - {i for a, i in acting if a == "restart"} - refused,
        )
        found = check(records, acks, read_file_ledger(self.ledger), self.specs,
                      final=final, handed_over=waiting)
        if final:  # what the schedules and debounce bursts started
            for rec in records:
                kind = timed_kind(rec.instance) if rec.type == "created" else None
                if kind is not None:
                    self.stats.acks[f"{kind[0]}_started"] += 1
        self.problems += [f"{where}: {p}" for p in found]


def _tail(output: bytes, size: int = 1500) -> str:
    return output[-size:].decode(errors="replace")


def _read(fd: int, timeout: float) -> bytes | None:
    """Bytes from the non-blocking pipe (b"" if none yet), None at its end."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return b""
    return data if data else None


def _tool_entry(argv: list[str], point: tuple[str, int] | None, main: Any) -> int:
    if point is not None:
        cp.arm(*point)
    code: int = main(argv)
    return code


def _fork_tool(argv: list[str], point: tuple[str, int] | None,
               main: Any = send_signal.main) -> tuple[int | None, str]:
    """memable-signal's main (or ``main``) in a forked process: (exit status,
    its output)."""
    with tempfile.TemporaryFile() as out:
        pid = _fork(_tool_entry, argv, point, main, stdout=out.fileno(),
                    stderr=out.fileno())
        code = _wait(pid, 30)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            _wait(pid, 10)
        out.seek(0)
        return code, out.read().decode(errors="replace")


def _exec_tool(argv: list[str], point: tuple[str, int] | None) -> tuple[int | None, str]:
    """The real memable-signal command (arming a crash point through the environment)."""
    env = dict(os.environ)
    env.pop(cp.ENV, None)
    if point is not None:
        env[cp.ENV] = f"{point[0]}:{point[1]}"
    try:
        done = subprocess.run([MEMABLE_SIGNAL, *argv], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return done.returncode, done.stdout + done.stderr


# -- the campaign ---------------------------------------------------------------


def run_shard(indexes: list[int], seed: int, root: str, keep: str | None,
              exec_share: float, stop_early: bool = False) -> Stats:
    stats = Stats()
    for index in indexes:
        if stop_early and stats.violations:
            break
        iteration = Iteration(index, seed, root, stats, exec_share)
        problems = iteration.run()
        stats.violations += problems
        if problems and keep is not None:
            shutil.copytree(iteration.dir, os.path.join(keep, os.path.basename(iteration.dir)))
        shutil.rmtree(iteration.dir, ignore_errors=True)
    return stats


def default_dir() -> str | None:
    """tmpfs when there is one: kill -9 keeps the page cache, so fsyncs prove
    nothing here and would only slow the campaign down."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def campaign(iterations: int, seed: int, jobs: int, keep: str | None = None,
             exec_share: float = 0.02, directory: str | None = None, first: int = 0,
             repeat: int = 1, stop_early: bool = False) -> Stats:
    """Run iterations ``first..first+iterations-1`` (each ``repeat`` times) in
    ``jobs`` forked workers; the merged stats. With ``stop_early`` a worker
    stops at its first violating iteration."""
    root = tempfile.mkdtemp(prefix="memable-killnine-", dir=directory)

    def work(shard: list[int]) -> dict[str, Any]:
        return run_shard(shard, seed, root, keep, exec_share, stop_early).to_json()

    try:
        indexes = [i for i in range(first, first + iterations) for _ in range(repeat)]
        shards = [indexes[j::jobs] for j in range(max(jobs, 1))]
        total = Stats()
        for result in in_workers(shards, work):
            if "worker_error" in result:
                total.violations.append(result["worker_error"])
            else:
                total.add(Stats.from_json(result))
        return total
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0,
                        help="the first iteration's number (to replay one: --first N "
                        "--iterations 1 --repeat 50)")
    parser.add_argument("--repeat", type=int, default=1, help="run each iteration this often")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--exec-share", type=float, default=0.02,
                        help="share of signals sent by exec'ing memable-signal (else forked)")
    parser.add_argument("--keep", default=None, help="copy failed iterations' journals here")
    parser.add_argument("--dir", default=default_dir(),
                        help="where iterations make their journals (default: /dev/shm)")
    parser.add_argument("--json", default=None, help="write the summary here")
    parser.add_argument("--stop-early", action="store_true",
                        help="stop a worker at its first violating iteration")
    args = parser.parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    started = time.monotonic()
    stats = campaign(args.iterations, args.seed, args.jobs, args.keep, args.exec_share,
                     args.dir, args.first, args.repeat, args.stop_early)
    summary = {"campaign": "killnine", "seed": args.seed, **stats.summary(),
               "seconds": round(time.monotonic() - started, 1)}
    return finish(summary, stats.violations, args.json, show=20)


if __name__ == "__main__":
    sys.exit(main())
