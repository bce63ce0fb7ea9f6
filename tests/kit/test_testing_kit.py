"""memable_log.testing: the in-memory engine kit and crash_test.

crash_test must pass correct workflows (steps, parallel steps, a suspension
with a signal, a timeout, a timer, retries, a failing workflow) and find
planted bugs: a step that is not idempotent, a key that changes between
runs, a run that is not reproducible, an engine that re-runs a durable step.
The example in docs/testing.md is run here with pytest, exactly as printed,
and its printed failure message is compared with the real one.
"""

from __future__ import annotations

import inspect
import itertools
import re
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from memable_log import (
    Context,
    ErrorInfo,
    MemoryStorage,
    StepInterrupted,
    SuspendTimedOut,
    testing,
)
from memable_log._core import records as r
from memable_log._journal import opening as opening_module
from memable_log.testing import (
    CRASH_TEST_INSTANCE,
    DEFAULT_START,
    CrashTestFailure,
    crash_test,
    crash_test_sync,
    memory_engine,
    settle,
    wait_for_state,
)

DOCS = Path(__file__).resolve().parent.parent.parent / "docs" / "testing.md"


class Ledger:
    """A fake outside world: counts every call of a step body; reset per run."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.calls.clear()

    def body(self, name: str, value: Any) -> Callable[[], Any]:
        def fn() -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return value

        return fn


# -- a correct workflow passes -------------------------------------------------------


def order_workflow(ledger: Ledger) -> Any:
    async def order(ctx: Context) -> Any:
        cart = await ctx.step("cart:v1").run(ledger.body("cart", ctx.input))
        found: dict[str, Any] = {}

        async def lookup(item: str) -> None:
            found[item] = await ctx.step(f"stock:{item}").run(ledger.body(item, len(item)))

        async with trio.open_nursery() as nursery:  # parallel steps, distinct keys
            for item in cart:
                nursery.start_soon(lookup, item)
        approved = await ctx.suspend("approval:v1", status="waiting", timeout=86_400)
        await ctx.timer("cooldown:v1", 3600)
        total = await ctx.step("total:v1").run(ledger.body("total", sum(found.values())))
        return {"approved": approved, "total": total, "by": ctx.workflow, "id": ctx.instance_id}

    return order


async def test_crash_test_passes_a_workflow_with_parallel_steps_a_signal_and_a_timer(
    autojump_clock: MockClock,
) -> None:
    ledger = Ledger()
    runs = 0

    def reset() -> None:
        nonlocal runs
        runs += 1
        ledger.reset()

    report = await crash_test(
        order_workflow(ledger), ["apple", "fig", "kiwi"],
        signals={"approval:v1": "yes"}, name="order", reset=reset,
    )
    assert report.state == "completed"
    assert report.result == {"approved": "yes", "total": 12, "by": "order", "id": "crash-test"}
    assert report.error is None
    assert sorted(report.steps) == ["cart:v1", "stock:apple", "stock:fig", "stock:kiwi", "total:v1"]
    assert report.interrupted == ()
    # Every fsync of the reference gives two crash points, each its own run from scratch.
    assert report.fsyncs >= 8  # header, created, cart, stocks, suspended, signalled, timer...
    assert report.crash_points == 2 * report.fsyncs
    assert runs == 2 + report.crash_points


async def test_crash_test_lets_an_unsignalled_timeout_expire(autojump_clock: MockClock) -> None:
    async def patient(ctx: Context) -> str:
        await ctx.step("ask").run(lambda: None)
        try:
            return str(await ctx.suspend("answer", timeout=3600))
        except SuspendTimedOut:
            return await ctx.step("fallback").run(lambda: "no answer")

    started = trio.current_time()
    report = await crash_test(patient)
    assert report.result == "no answer"
    assert report.steps == ("ask", "fallback")
    assert trio.current_time() - started < 3600  # the manual clock advanced, not trio's


async def test_crash_test_retries_on_a_flaky_fake_and_a_failing_workflow(
    autojump_clock: MockClock,
) -> None:
    attempts = {"n": 0}

    def flaky() -> str:  # its first two calls fail (a restart continues the count)
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("try again")
        return "ok"

    async def fragile(ctx: Context) -> None:
        got = await ctx.step("fetch").retry(max_attempts=3, initial_delay=30).run(flaky)
        raise ValueError(f"bad data after {got}")

    report = await crash_test(fragile, reset=lambda: attempts.update(n=0))
    assert report.state == "failed"
    assert report.result is None
    assert report.error == ErrorInfo("ValueError", "bad data after ok")


async def test_crash_test_reports_interrupted_at_most_once_steps(autojump_clock: MockClock) -> None:
    charges: list[int] = []

    async def pay(ctx: Context) -> str:
        try:
            await ctx.step("charge").at_most_once().run(charges.append, 1)
        except StepInterrupted:
            return "check the card by hand"
        return "paid"

    report = await crash_test(pay, reset=charges.clear)
    assert report.result == "paid"
    assert report.interrupted == ("charge",)


async def test_crash_test_with_codec_settings_and_an_async_reset(autojump_clock: MockClock) -> None:
    @dataclass(frozen=True)
    class Point:
        x: int
        y: int

    def encode(obj: Any) -> tuple[str, Any]:
        assert isinstance(obj, Point)
        return "point", [obj.x, obj.y]

    def decode(tag: str, plain: Any) -> Any:
        return Point(*plain)

    resets = 0

    async def reset() -> None:
        nonlocal resets
        await trio.lowlevel.checkpoint()
        resets += 1

    async def geometry(ctx: Context) -> Point:
        p = await ctx.step("p").run(Point, 1, 2)
        return Point(p.x + 1, p.y * 10)

    report = await crash_test(
        geometry, reset=reset, configure=lambda builder: builder.codec(encode, decode)
    )
    assert report.result == Point(2, 20)
    assert resets == 2 + report.crash_points


def test_crash_test_sync_runs_its_own_trio_loop() -> None:
    async def nap(ctx: Context) -> str:
        await ctx.timer("nap", 7 * 86_400)
        return await ctx.step("wake").run(lambda: "awake")

    report = crash_test_sync(nap, instance_id="sleeper")
    assert report.result == "awake"
    assert report.crash_points > 0


# -- planted bugs are found ---------------------------------------------------------


async def test_crash_test_finds_a_step_that_is_not_idempotent(autojump_clock: MockClock) -> None:
    counter = {"n": 0}

    def bump() -> int:  # each call has an effect: not idempotent
        counter["n"] += 1
        return counter["n"]

    async def tally(ctx: Context) -> int:
        await ctx.step("first").run(lambda: "fine")
        n = await ctx.step("count").run(bump)
        await ctx.step("after").run(lambda: "fine")
        return n

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(tally, reset=lambda: counter.update(n=0))
    failure = info.value
    assert isinstance(failure, AssertionError)
    assert failure.key == "count"
    assert failure.workflow == "tally"
    assert failure.point.startswith("crash point before fsync ")
    assert "written but lost: step_done 'count'" in failure.point
    assert "last durable record: step_done 'first'" in failure.point
    message = str(failure)
    assert message.startswith("crash test of workflow 'tally' failed at crash point before")
    assert "the reference run returned 1,\nthis run returned 2." in message
    assert "'count' (2 times, 1 in the reference run)" in message
    assert "idempotent" in message


@pytest.mark.parametrize("source", ["counter", "clock"])
async def test_crash_test_finds_a_key_that_changes_between_runs(
    source: str, autojump_clock: MockClock
) -> None:
    counter = {"n": 0}

    def suffix() -> str:
        if source == "clock":
            return str(time.time_ns())
        counter["n"] += 1
        return str(counter["n"])

    async def fetcher(ctx: Context) -> str:
        page = await ctx.step(f"fetch:{suffix()}").run(lambda: "<html>")
        await ctx.step("parse:v1").run(lambda: None)
        return page

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(fetcher, reset=lambda: counter.update(n=0))
    failure = info.value
    message = str(failure)
    assert "A step's key must be the same on every run of the workflow" in message
    assert failure.key is not None
    if source == "counter":
        # Reproducible from scratch, but a re-run after a crash gets a new key.
        assert failure.key == "fetch:2"
        assert failure.point.startswith("crash point after fsync ")
        assert "last durable record: step_done 'fetch:1'" in failure.point
        assert "the journal holds 3 step record(s) where the reference run held 2" in message
        assert "keys the reference run never used: 'fetch:2'" in message
    else:
        # Every run gets a new key: two runs without a crash already differ.
        assert failure.point == "the reference run (no crash)"
        assert re.search(r"only the first: 'fetch:\d+'; only the second: 'fetch:\d+'", message)
        assert failure.key in message


async def test_crash_test_finds_a_key_that_changes_after_a_suspension(
    autojump_clock: MockClock,
) -> None:
    # The reference run re-runs the workflow after the signal, so it records
    # two fetch keys itself; a crash right after the first adds a third.
    counter = {"n": 0}

    async def approval(ctx: Context) -> str:
        counter["n"] += 1
        await ctx.step(f"fetch:{counter['n']}").run(lambda: None)
        return str(await ctx.suspend("ok"))

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(approval, signals={"ok": True}, reset=lambda: counter.update(n=0))
    assert info.value.key == "fetch:3"
    assert "the journal holds 3 step record(s) where the reference run held 2" in str(info.value)


async def test_crash_test_reports_a_workflow_that_is_not_reproducible(
    autojump_clock: MockClock,
) -> None:
    counter = {"n": 0}

    async def drifting(ctx: Context) -> int:
        counter["n"] += 1  # never reset: each run from scratch differs
        return await ctx.step("n").run(lambda: counter["n"])

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(drifting)
    failure = info.value
    assert failure.point == "the reference run (no crash)"
    assert failure.key is None
    assert "two runs without any crash differ" in str(failure)
    assert "the first returned 1 with 1 step record(s),\nthe second returned 2" in str(failure)
    assert "reset=" in str(failure)


async def test_crash_test_names_a_suspension_it_has_no_signal_for(
    autojump_clock: MockClock,
) -> None:
    async def approval(ctx: Context) -> Any:
        return await ctx.suspend("approval:v1")

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(approval, signals={"other": 1})
    assert info.value.key == "approval:v1"
    assert "pass signals={'approval:v1': payload}" in str(info.value)


async def test_crash_test_reports_an_instance_that_never_settles(autojump_clock: MockClock) -> None:
    async def stuck(ctx: Context) -> None:
        await ctx.step("forever").run(trio.sleep_forever)

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(stuck)
    assert "never settled" in str(info.value)


async def test_crash_test_reports_a_workflow_that_never_finishes(autojump_clock: MockClock) -> None:
    naps = itertools.count()

    async def insomniac(ctx: Context) -> None:
        await ctx.timer(f"nap:{next(naps)}", 60)  # a new key on every run: it never ends

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(insomniac, max_lifetimes=3)
    assert info.value.point == "the reference run (no crash)"
    assert "did not finish within 3 engine lifetimes" in str(info.value)


async def test_crash_test_catches_an_engine_that_reruns_a_durable_step(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    # Plant an engine bug: start-up forgets the durable result of step "a".
    real_scan = opening_module.scan

    def forgetful_scan(storage: Any, on_record: Any) -> Any:
        def apply(rec: list[Any], loc: int) -> None:
            if not (rec[0] == r.STEP_DONE and rec[4] == "a"):
                on_record(rec, loc)

        return real_scan(storage, apply)

    monkeypatch.setattr(opening_module, "scan", forgetful_scan)

    async def simple(ctx: Context) -> str:
        return str(await ctx.step("a").run(lambda: "A")) + await ctx.step("b").run(lambda: "B")

    with pytest.raises(CrashTestFailure) as info:
        await crash_test(simple)
    assert info.value.key == "a"
    assert "ran again after the restart, although its outcome was durable" in str(info.value)
    assert "bug of memable_log" in str(info.value)


# -- the engine kit ------------------------------------------------------------------


async def test_memory_engine_timers_take_no_real_time_and_advance_is_downtime(
    autojump_clock: MockClock,
) -> None:
    async def nap(ctx: Context) -> float:
        await ctx.timer("nap", 3600)
        return trio.current_time()

    storage = MemoryStorage()
    engine, clock = memory_engine({"nap": nap}, storage=storage)
    assert clock.now() == DEFAULT_START
    began = trio.current_time()
    async with engine:
        iid = await engine.invoke("nap")
        status = await settle(engine, iid)
        assert (status.state, status.key) == ("sleeping", "nap")
        assert status.deadline == datetime.fromtimestamp(DEFAULT_START + 3600, tz=UTC)
    clock.advance(7200)  # the engine was down for two hours: the deadline passed

    engine, _ = memory_engine({"nap": nap}, storage=storage, clock=clock)
    async with engine:
        assert await engine.wait(iid) == began  # fired at once, no trio time slept


async def test_memory_engine_restarts_after_a_power_cut(autojump_clock: MockClock) -> None:
    calls: list[str] = []

    async def two_steps(ctx: Context) -> list[str]:
        a = await ctx.step("a").run(calls.append, "a")
        await ctx.suspend("go")
        b = await ctx.step("b").run(calls.append, "b")
        return [a, b]

    storage = MemoryStorage()
    engine, clock = memory_engine({"wf": two_steps}, storage=storage)
    async with engine:
        iid = await engine.invoke("wf")
        await wait_for_state(engine, iid, "suspended")
        after_cut = storage.crash()

    engine, _ = memory_engine({"wf": two_steps}, storage=after_cut, clock=clock)
    async with engine:
        assert engine.status(iid).state == "suspended"
        await engine.signal("wf", iid, "go", None)
        assert await engine.wait(iid) == [None, None]
    assert calls == ["a", "b"]


async def test_memory_engine_applies_configure_before_storage_and_clock() -> None:
    engine, clock = memory_engine(
        {"wf": order_workflow(Ledger())}, configure=lambda b: b.max_running(1)
    )
    assert engine._max_running == 1
    assert engine._host.clock is clock


async def test_wait_for_state_fails_when_the_instance_finishes_elsewhere() -> None:
    async def boom(ctx: Context) -> None:
        raise ValueError("no")

    engine, _ = memory_engine({"boom": boom})
    async with engine:
        iid = await engine.invoke("boom")
        with pytest.raises(AssertionError, match=r"finished as failed \(ValueError: no\)"):
            await wait_for_state(engine, iid, "suspended")
        assert (await wait_for_state(engine, iid, "failed", "completed")).state == "failed"
        with pytest.raises(ValueError, match="at least one state"):
            await wait_for_state(engine, iid)


def test_the_kit_exports_what_it_documents() -> None:
    assert set(testing.__all__) == {
        "CRASH_TEST_INSTANCE", "DEFAULT_START", "CrashTestFailure", "CrashTestReport",
        "crash_test", "crash_test_sync", "memory_engine", "settle", "wait_for_state",
        "Configure", "Workflow",  # the types of memory_engine's and crash_test's arguments
    }
    assert CRASH_TEST_INSTANCE == "crash-test"
    for name in testing.__all__:
        obj = getattr(testing, name)
        if callable(obj) and not isinstance(obj, types.GenericAlias):  # a type alias: no __doc__
            assert obj.__doc__, name


# -- docs/testing.md runs as printed ---------------------------------------------------


def doc_block(label: str) -> str:
    text = DOCS.read_text()
    match = re.search(rf"<!-- example: {re.escape(label)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"docs/testing.md lost its {label!r} block"
    return match.group(1)


def module_example() -> str:
    """The ``::`` example of memable_log.testing's docstring, dedented."""
    doc = inspect.getdoc(testing)
    assert doc is not None
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc + "\n")
    assert match, "memable_log.testing lost its docstring example"
    return textwrap.dedent(match.group(1))


def test_the_testing_guide_and_module_examples_pass_under_pytest(tmp_path: Path) -> None:
    (tmp_path / "test_checkout.py").write_text(doc_block("test_checkout.py"))
    (tmp_path / "test_module_example.py").write_text(module_example())
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ntrio_mode = true\nfilterwarnings = error\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


async def test_the_testing_guide_failure_message_is_the_real_one(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    module = types.ModuleType("guide_checkout")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    code = compile(doc_block("test_checkout.py"), "test_checkout.py", "exec", dont_inherit=True)
    exec(code, module.__dict__)

    class DoubleCharging(module.FakePayments):  # type: ignore[name-defined,misc]
        async def charge(self, idempotency_key: str, cents: int) -> str:
            await trio.sleep(0.2)
            charge_id = f"ch_{len(self.charges) + 1}"  # ignores the idempotency key
            self.charges[charge_id] = (charge_id, cents)
            return charge_id

    module.payments = payments = DoubleCharging()
    with pytest.raises(CrashTestFailure) as info:
        await crash_test(
            module.checkout, {"items": [250, 750]},
            signals={"approval:v1": True}, reset=payments.charges.clear,
        )
    assert str(info.value) == doc_block("failure").rstrip("\n"), (
        "update the 'failure' block of docs/testing.md to the message above"
    )
