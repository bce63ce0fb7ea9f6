"""OpenTelemetry traces of instances (SPEC-NEXT §8); the only module that imports it.

Theory of operation. ``Engine.builder().tracing(provider)`` builds a
``Tracing`` (this module is imported then, and only then: with tracing off
the library never imports opentelemetry); the host holds it as
``host.tracer`` and each hook in the engine is one ``if tracer is not None``.

One trace per instance, across runs, restarts and children, with nothing
recorded: the ids are derived from instance ids. An instance's trace id is
a hash of its root's id (a child's root is its parent's root, found through
the index's ``parent`` links), and every instance has an *anchor*, span id
``span_id(instance)``. A run span (``run_workflow {workflow}``) has the
anchor of its instance as parent:

* for a child, the anchor is the span its parent wrote when it started it
  (``child {key}``, a child of the parent's run span): that span is given
  the id ``span_id(child)`` (the SDK tracer's id generator, wrapped; a
  tracer without one still gives the child's runs the parent's trace);
* for a top-level instance, the anchor is a remote span context, never
  exported: every run of the instance, on any engine, hangs under it.

The caller's context at ``invoke`` is not kept (keeping it would mean a
trace context recorded in the journal, a new field through the format, the
compactor and the snapshot): the trace is the instance's; a signal's span
links to the sender's current span instead.

A run span carries ``memable.steps.memoised``, the steps replayed from the
journal (no span each) and ``memable.run.outcome``. Step spans (``step
{key}``) are children of the run span, one per executed step, with one
event per failed attempt and status ERROR if the step failed; the step's
function runs with the step span current, so spans the user's code makes
nest under it. Wait spans (``wait {key}``) cover a branch blocked in
memory; signal spans (``signal {key}``) the write of a signal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)

from .._core import lifecycle as lc
from .._core import records as r

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OUTCOMES = {
    lc.COMPLETED: "completed", lc.FAILED: "failed", lc.CANCELLED: "cancelled",
    lc.RUNNING: "running",
}


def trace_id(root: str) -> int:
    """The 128-bit trace id of the instances under ``root`` (never 0)."""
    digest = hashlib.sha256(b"memable_log trace\0" + root.encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1


def span_id(instance_id: str) -> int:
    """The 64-bit id of an instance's anchor span (never 0)."""
    digest = hashlib.sha256(b"memable_log span\0" + instance_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def root_of(instances: Mapping[str, Any], instance_id: str) -> str:
    """The top of ``instance_id``'s parent chain, as far as the index knows it."""
    seen = instance_id
    entry = instances.get(seen)
    while entry is not None and entry.parent is not None:
        seen = entry.parent
        entry = instances.get(seen)
    return seen


class _Ids:
    """The SDK tracer's id generator, with a chosen span id for the next span."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.chosen: int | None = None

    def generate_span_id(self) -> int:
        chosen, self.chosen = self.chosen, None
        return chosen if chosen is not None else int(self._inner.generate_span_id())

    def generate_trace_id(self) -> int:
        return int(self._inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        check = getattr(self._inner, "is_trace_id_random", None)
        return bool(check()) if check is not None else False


class StepSpan:
    """An executed step's span: attempts as events, its end."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        # The step's function runs with it current (its own spans nest under it).
        self._token: object | None = otel_context.attach(trace.set_span_in_context(span))

    def attempt_failed(self, attempt: int, exc: BaseException, pause: float) -> None:
        self._span.add_event("attempt failed", {
            "memable.step.attempt": attempt, "exception.type": type(exc).__qualname__,
            "exception.message": str(exc), "memable.step.retry_in_s": pause,
        })

    def end(self, error: BaseException | None, attempts: int) -> None:
        """End the span (once): ``error`` is why the step did not finish."""
        token, self._token = self._token, None
        if token is None:
            return
        otel_context.detach(token)  # type: ignore[arg-type]
        span = self._span
        span.set_attribute("memable.step.attempts", attempts)
        if error is not None:
            if isinstance(error, Exception):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
        span.end()


class Run:
    """A run's span, and what the runner tells it at the end."""

    __slots__ = ("error", "memoised", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.memoised = 0
        self.error: BaseException | None = None


class Tracing:
    """Spans of instances, on a tracer of ``provider`` (the global one if None)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        source = provider if provider is not None else trace.get_tracer_provider()
        self._tracer = source.get_tracer("memable_log")
        inner = getattr(self._tracer, "id_generator", None)
        self._ids = _Ids(inner) if inner is not None else None
        if self._ids is not None:
            self._tracer.id_generator = self._ids  # type: ignore[attr-defined]
        self._runs: dict[str, Span] = {}  # the run span of each instance running

    def _anchor(self, instances: Mapping[str, Any], instance_id: str) -> Any:
        ctx = SpanContext(trace_id(root_of(instances, instance_id)), span_id(instance_id),
                          is_remote=True, trace_flags=_SAMPLED)
        return trace.set_span_in_context(NonRecordingSpan(ctx))

    def _parent(self, instances: Mapping[str, Any], instance_id: str) -> Any:
        run = self._runs.get(instance_id)
        if run is None:
            return self._anchor(instances, instance_id)
        return trace.set_span_in_context(run)

    @contextmanager
    def run(self, instances: Mapping[str, Any], instance_id: str, workflow: str) -> Iterator[Run]:
        """A span over one run of the instance."""
        span = self._tracer.start_span(
            f"run_workflow {workflow}", context=self._anchor(instances, instance_id),
            attributes={"memable.instance_id": instance_id, "memable.workflow": workflow},
        )
        run = Run(span)
        self._runs[instance_id] = span
        try:
            yield run
        except BaseException as exc:  # cancelled, the engine stopping, the journal failing
            span.set_attribute("memable.run.outcome", "interrupted")
            if isinstance(exc, Exception):
                span.record_exception(exc)
            raise
        else:
            entry = instances.get(instance_id)
            state = entry.state if entry is not None else None
            span.set_attribute("memable.run.outcome", "parked" if state in lc.PARKED
                               else _OUTCOMES.get(state, "ended"))  # type: ignore[arg-type]
            if state == lc.FAILED:  # the workflow raised, or its result cannot be stored
                error = run.error
                if error is not None:
                    span.record_exception(error)
                why = ("the workflow's result cannot be stored" if error is None
                       else f"{type(error).__qualname__}: {error}")
                span.set_status(Status(StatusCode.ERROR, why))
        finally:
            self._runs.pop(instance_id, None)
            span.set_attribute("memable.steps.memoised", run.memoised)
            span.end()

    def step(self, instance_id: str, workflow: str, key: str) -> StepSpan:
        """The span of an executed step, a child of its run's span."""
        parent = self._runs.get(instance_id)
        span = self._tracer.start_span(
            f"step {key}",
            context=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={"memable.instance_id": instance_id, "memable.workflow": workflow,
                        "memable.step.key": key},
        )
        return StepSpan(span)

    def wait(self, instances: Mapping[str, Any], instance_id: str, key: str,
             register: list[Any] | None) -> Span:
        """A span over a branch blocked in a durable wait (ended by the caller);
        ``register`` is the wait's registration record, the first time."""
        entry = instances.get(instance_id)
        workflow = entry.workflow if entry is not None else ""
        if register is not None:
            kind = "timer" if register[r.TYPE] == r.TIMER_SET else "signal"
        else:
            waits = entry.waits if entry is not None else None
            wait = waits.get(key) if waits is not None else None
            kind = lc.WAIT_KIND_NAMES[wait[0]] if wait is not None else "child"
        return self._tracer.start_span(
            f"wait {key}", context=self._parent(instances, instance_id),
            attributes={"memable.instance_id": instance_id, "memable.workflow": workflow,
                        "memable.wait.key": key, "memable.wait.kind": kind},
        )

    def child(self, instance_id: str, workflow: str, key: str, child_id: str,
              child_workflow: str) -> None:
        """The span of a child's start: the parent of the child's run spans."""
        parent = self._runs.get(instance_id)
        if self._ids is not None:
            self._ids.chosen = span_id(child_id)  # the child's anchor
        try:
            span = self._tracer.start_span(
                f"child {key}",
                context=trace.set_span_in_context(parent) if parent is not None else None,
                attributes={"memable.instance_id": instance_id, "memable.workflow": workflow,
                            "memable.child.instance_id": child_id,
                            "memable.child.workflow": child_workflow},
            )
        finally:
            if self._ids is not None:
                self._ids.chosen = None
        span.end()

    @contextmanager
    def signal(self, instances: Mapping[str, Any], workflow: str, instance_id: str,
               key: str) -> Iterator[None]:
        """A span over writing a signal, in the receiving instance's trace."""
        sender = trace.get_current_span().get_span_context()
        links = [Link(sender)] if sender.is_valid else None
        with self._tracer.start_as_current_span(
            f"signal {key}", context=self._anchor(instances, instance_id), links=links,
            attributes={"memable.instance_id": instance_id, "memable.workflow": workflow,
                        "memable.signal.key": key},
        ):
            yield
