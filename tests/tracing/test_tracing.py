"""OpenTelemetry traces (SPEC-NEXT §8), caught by the SDK's in-memory exporter.

One trace per instance across runs and engine restarts; a run span per
run, a step span per executed step (none for a memoised one: the run
span's ``memable.steps.memoised`` counts them), attempts as events, errors
with status ERROR, wait and signal spans, and a child's runs under the
span its parent wrote when it started it. Every test runs under trio's
MockClock.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from support.suspend import finish, until_state
from trio.testing import MockClock

from memable_log import Context, Engine, MemoryStorage, WorkflowFailed
from memable_log._engine.tracing import span_id, trace_id


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def engine_over(storage: MemoryStorage, provider: TracerProvider, **workflows: Any) -> Engine:
    engine = Engine.builder().in_memory(storage).tracing(provider).build()
    for name, fn in workflows.items():
        engine.register(name, fn)
    return engine


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def ctx_of(span: ReadableSpan) -> Any:
    assert span.context is not None
    return span.context


async def stepper(ctx: Context) -> int:
    a = await ctx.step("a").run(lambda: 1)
    b = await ctx.step("b").run(lambda: 2)
    await ctx.suspend("go")
    c = await ctx.step("c").run(lambda: 3)
    return int(a + b + c)


async def test_one_trace_across_a_restart_with_memoised_steps_counted_not_spanned(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    storage = MemoryStorage()
    async with engine_over(storage, provider, stepper=stepper) as engine:
        await engine.invoke("stepper", instance_id="i1")
        await until_state(engine, "i1", "suspended")
    async with engine_over(storage, provider, stepper=stepper) as engine:  # a restart
        await engine.signal("stepper", "i1", "go", None)
        assert await finish(engine, "i1") == 6

    runs = named(exporter, "run_workflow ")
    assert [s.name for s in runs] == ["run_workflow stepper"] * 2
    assert {ctx_of(s).trace_id for s in exporter.get_finished_spans()} == {trace_id("i1")}
    assert [s.attributes["memable.steps.memoised"] for s in runs] == [0, 2]  # type: ignore[index]
    assert [s.attributes["memable.run.outcome"] for s in runs] == [  # type: ignore[index]
        "parked", "completed"]
    for run in runs:  # both under the instance's anchor
        assert run.parent is not None
        assert run.parent.span_id == span_id("i1")
    steps = named(exporter, "step ")
    assert [s.name for s in steps] == ["step a", "step b", "step c"]  # no memoised one
    for step, run in zip(steps, [runs[0], runs[0], runs[1]], strict=True):
        assert step.parent is not None
        assert step.parent.span_id == ctx_of(run).span_id
        assert step.attributes is not None
        assert step.attributes["memable.step.key"] == step.name[5:]
    for span in exporter.get_finished_spans():
        assert span.attributes is not None
        assert span.attributes["memable.instance_id"] == "i1"
        assert span.attributes["memable.workflow"] == "stepper"
    wait = named(exporter, "wait go")
    assert len(wait) == 1
    assert wait[0].attributes is not None
    assert wait[0].attributes["memable.wait.kind"] == "signal"
    assert wait[0].attributes["memable.wait.parked"] is True


async def test_retries_are_events_and_a_failure_is_an_error(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"down {calls}")
        return calls

    def broken() -> None:
        raise ValueError("no good")

    async def wf(ctx: Context) -> None:
        await ctx.step("flaky").retry(max_attempts=3, initial_delay=0.5).run(flaky)
        await ctx.step("broken").run(broken)

    async with engine_over(MemoryStorage(), provider, wf=wf) as engine:
        await engine.invoke("wf", instance_id="f")
        with pytest.raises(WorkflowFailed):
            await finish(engine, "f")

    flaky_span, = named(exporter, "step flaky")
    assert [e.name for e in flaky_span.events] == ["attempt failed"] * 2
    assert [e.attributes["memable.step.attempt"] for e in flaky_span.events] == [  # type: ignore[index]
        1, 2]
    assert flaky_span.events[0].attributes["exception.message"] == "down 1"  # type: ignore[index]
    assert flaky_span.status.status_code == StatusCode.UNSET
    assert flaky_span.attributes["memable.step.attempts"] == 3  # type: ignore[index]
    broken_span, = named(exporter, "step broken")
    assert broken_span.status.status_code == StatusCode.ERROR
    assert "no good" in (broken_span.status.description or "")
    assert any(e.name == "exception" for e in broken_span.events)
    run, = named(exporter, "run_workflow ")
    assert run.status.status_code == StatusCode.ERROR
    assert run.attributes["memable.run.outcome"] == "failed"  # type: ignore[index]


async def double(ctx: Context) -> int:
    return await ctx.step("double").run(lambda: ctx.input * 2)  # type: ignore[no-any-return]


async def test_a_child_is_in_its_parents_trace_under_the_parents_child_span(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def parent(ctx: Context) -> int:
        return await ctx.child("c", double, 21) + 1

    async with engine_over(MemoryStorage(), provider, parent=parent, double=double) as engine:
        await engine.invoke("parent", instance_id="p")
        assert await finish(engine, "p") == 43

    assert {ctx_of(s).trace_id for s in exporter.get_finished_spans()} == {trace_id("p")}
    child_span, = named(exporter, "child c")
    assert ctx_of(child_span).span_id == span_id("p/c")  # derivable from the child's id
    assert child_span.attributes is not None
    assert child_span.attributes["memable.child.instance_id"] == "p/c"
    parent_runs = named(exporter, "run_workflow parent")
    assert child_span.parent is not None
    assert child_span.parent.span_id == ctx_of(parent_runs[0]).span_id
    child_run, = named(exporter, "run_workflow double")
    assert child_run.parent is not None
    assert child_run.parent.span_id == span_id("p/c")
    assert child_run.attributes is not None
    assert child_run.attributes["memable.instance_id"] == "p/c"
    step, = named(exporter, "step double")
    assert step.parent is not None
    assert step.parent.span_id == ctx_of(child_run).span_id
    waits = named(exporter, "wait c")
    assert waits
    assert waits[0].attributes["memable.wait.kind"] == "child"


async def test_a_signal_has_a_span_in_the_receivers_trace_linked_to_the_sender(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def waiter(ctx: Context) -> Any:
        return await ctx.suspend("go")

    async with engine_over(MemoryStorage(), provider, waiter=waiter) as engine:
        await engine.invoke("waiter", instance_id="w")
        await until_state(engine, "w", "suspended")
        with provider.get_tracer("app").start_as_current_span("handler") as handler:
            await engine.signal("waiter", "w", "go", 7)
        assert await finish(engine, "w") == 7

    signal, = named(exporter, "signal go")
    assert ctx_of(signal).trace_id == trace_id("w")
    assert signal.attributes is not None
    assert signal.attributes["memable.instance_id"] == "w"
    assert signal.attributes["memable.workflow"] == "waiter"
    assert signal.attributes["memable.signal.key"] == "go"
    assert [link.context.span_id for link in signal.links] == [handler.get_span_context().span_id]


async def test_a_step_function_runs_with_its_step_span_current(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    def inner() -> int:
        with provider.get_tracer("app").start_as_current_span("user work"):
            return 1

    async def wf(ctx: Context) -> int:
        return await ctx.step("s").run(inner)

    async with engine_over(MemoryStorage(), provider, wf=wf) as engine:
        await engine.invoke("wf", instance_id="u")
        assert await finish(engine, "u") == 1
        assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached

    user, = named(exporter, "user work")
    step, = named(exporter, "step s")
    assert user.parent is not None
    assert user.parent.span_id == ctx_of(step).span_id


def test_trace_ids_are_stable_and_distinct() -> None:
    assert trace_id("a") == trace_id("a") != trace_id("b")
    assert 0 < trace_id("a") < 2**128
    assert 0 < span_id("a") < 2**64


def test_tracing_off_never_imports_opentelemetry() -> None:
    code = (
        "import sys, trio\n"
        "from memable_log import Engine\n"
        "async def wf(ctx):\n"
        "    await ctx.step('s').run(lambda: 1)\n"
        "    return 2\n"
        "async def main():\n"
        "    engine = Engine.builder().in_memory().build()\n"
        "    engine.register('wf', wf)\n"
        "    async with engine:\n"
        "        iid = await engine.invoke('wf')\n"
        "        assert await engine.wait(iid) == 2\n"
        "trio.run(main)\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


async def test_a_result_that_cannot_be_stored_fails_the_run_span_and_a_timer_is_a_wait(
    autojump_clock: MockClock, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans

    async def wf(ctx: Context) -> Any:
        await ctx.timer("nap", 5)
        return object()  # msgpack cannot hold it: the instance fails

    async with engine_over(MemoryStorage(), provider, wf=wf) as engine:
        await engine.invoke("wf", instance_id="t")
        with pytest.raises(WorkflowFailed):
            await finish(engine, "t")

    nap, = named(exporter, "wait nap")
    assert nap.attributes is not None
    assert nap.attributes["memable.wait.kind"] == "timer"
    runs = named(exporter, "run_workflow ")
    assert [s.attributes["memable.run.outcome"] for s in runs] == [  # type: ignore[index]
        "parked", "failed"]
    assert runs[-1].status.status_code == StatusCode.ERROR
    assert "cannot be stored" in (runs[-1].status.description or "")
