"""What a workflow sees: Context, the step builder, suspend and timer.

A run of a workflow gets a fresh Context. Every ``step``, ``suspend`` and
``timer`` first claims its key for this run (a key twice is
DuplicateStepKey), then asks the index: a memoised outcome is returned (or
raised) at once; otherwise the work runs and its outcome is appended to the
journal before the call returns.

Sync step functions are called directly on the trio thread, like any
function call: they must not block. Blocking work (``requests``, big file
I/O) goes to a worker thread with ``.in_thread()``.

A suspension or timer that must wait registers its wait (the first time
its key is reached) and blocks its branch (waits.py); once every branch
waits, the instance is parked and the blocked branches unwind with
``Unwind``, a BaseException, so ``except Exception`` in a workflow cannot
swallow it; the runner catches it and drops the workflow.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

import trio

from .._core import index as ix
from .._core import lifecycle as lc
from .._core import records as r
from .._core import typed
from .._core.codec import EncodeError
from .._core.errors import (
    DuplicateStepKey,
    EngineError,
    NotSerializable,
    RetryAfter,
    StepFailed,
    StepInterrupted,
    StepTimedOut,
    SuspendTimedOut,
    TypeMismatch,
)
from .._core.records import check_key
from .._core.typed import FN_PLANS as _FN_PLANS
from .._core.typed import Mismatch, return_plan
from . import attempts, events
from . import children as _children
from .host import Host
from .read_ahead import MISSING
from .retry import NO_RETRY, RetryPolicy, policy
from .waits import RunWaits

logger = logging.getLogger("memable_log")

# Memoised hits between checkpoints, so a replay never starves other tasks:
# ~0.5 ms of replay at a time (a checkpoint costs ~10-30 us, one every 64
# hits cost a replay ~10% of its speed).
_YIELD_EVERY = 256
_UNSEEN: Any = object()  # not in the cache of return plans
# The attempt number of the step running in this task (``Context.attempt``):
# a contextvar, so steps running side by side in a nursery each see their own,
# and a step's own tasks and worker threads inherit it.
_ATTEMPT: ContextVar[int] = ContextVar("memable_log.attempt")
# Exact types of step results that cannot be awaitable (subclasses could be).
_PLAIN = frozenset({int, str, float, bool, bytes, list, dict, tuple, type(None)})

P = ParamSpec("P")
T = TypeVar("T")


class Context:
    """The handle a workflow gets: its id, input, and durable steps."""

    __slots__ = (
        "_hits", "_host", "_instances", "_keys", "_waits", "input", "instance_id", "workflow",
        "_talk",
        "_waited",
    )

    def __init__(
        self, host: Host, waits: RunWaits, instance_id: str, workflow: str, input: Any
    ) -> None:
        self._host = host
        self._waits = waits
        self._instances = host.index.instances  # one index per engine lifetime
        self._keys: set[str] = set()
        self._hits = 0
        self._waited: set[str] | None = None  # child keys waited on in this run
        self.instance_id = instance_id
        self.workflow = workflow
        self.input = input
        self._talk: events.RunTalk | None = None  # set_status and publish, once used

    def _claim(self, key: str) -> ix.InstanceEntry:
        if type(key) is not str or not key or key[-1] == "*":
            check_key(key)  # raises the error that says why
        keys = self._keys
        if key in keys:
            raise DuplicateStepKey(self.instance_id, key)
        keys.add(key)
        return self._instances[self.instance_id]

    @property
    def attempt(self) -> int:
        """The attempt number, from 1, of the step whose function is running.

        Read it inside a step's function (and the tasks and threads it
        starts); elsewhere it raises EngineError.
        """
        attempt = _ATTEMPT.get(0)
        if attempt == 0:
            raise EngineError(
                f"ctx.attempt of instance {self.instance_id!r} was read outside a step's "
                "function: it is the attempt number of the step running, so read it there"
            )
        return attempt

    def step(self, key: str) -> Step:
        """A step memoised under ``key``; configure it, then ``await .run(fn)``."""
        return Step(self, key)

    # -- talking to the outside (events.py) --

    def _run_talk(self) -> events.RunTalk:
        talk = self._talk
        if talk is None:
            talk = self._talk = events.RunTalk()
        return talk

    async def set_status(self, text: str) -> None:
        """Durably record ``text`` as the instance's status (``InstanceStatus.status``).

        It stays until the next ``set_status`` or a suspension's ``status=``.
        A re-run writes nothing for the calls an earlier run already made
        (counted in order: the n-th call of a run is the n-th of the last),
        whatever their text; nor does a call whose text is the current one.
        """
        await events.set_status(self._host, self._run_talk(), self.instance_id, text)

    async def publish(self, key: str, value: Any) -> None:
        """Durably append event ``key`` with ``value`` to the instance's event
        stream (``engine.event``, ``engine.events``), once.

        ``key`` is in the run's key space, with steps and waits: a key twice
        in a run raises DuplicateStepKey. A re-run publishes nothing twice
        (the first value stands), and neither does a retried step's function
        republishing what an earlier attempt published. Allowed inside an
        async step's function; a sync one running ``.in_thread()`` publishes
        through ``trio.from_thread.run(ctx.publish, key, value)``.
        """
        if _ATTEMPT.get(0) > 1 and key in self._keys:
            # A retried step's function publishing again what an earlier
            # attempt claimed: once that attempt's record is in, nothing to do.
            await self._host.require().settled(self.instance_id)
            entry = self._host.entry(self.instance_id)
            talk = self._run_talk()
            talk.published = None  # look at the stream again
            if events.published(talk, entry, key):
                return
        else:
            entry = self._claim(key)
        await events.publish(self._host, self._run_talk(), self.instance_id, entry, key, value)

    @overload
    async def suspend(
        self, key: str, *, status: str | None = None,
        timeout: float | timedelta | None = None, type: None = None,  # noqa: ASYNC109
    ) -> Any: ...
    @overload
    async def suspend(
        self, key: str, *, status: str | None = None,
        timeout: float | timedelta | None = None, type: builtins.type[T],  # noqa: ASYNC109
    ) -> T: ...
    @overload
    async def suspend(
        self, key: str, *, status: str | None = None,
        timeout: float | timedelta | None = None, type: object,  # noqa: ASYNC109
    ) -> Any: ...
    async def suspend(
        self,
        key: str,
        *,
        status: str | None = None,
        timeout: float | timedelta | None = None,  # noqa: ASYNC109 (a durable deadline)
        type: object = None,
    ) -> Any:
        """Wait for the signal for ``key``; return its payload.

        With ``type``, the payload is decoded into it (docs/values.md) and,
        for mypy, has that type: a payload that does not fit raises
        TypeMismatch naming the key.

        If the signal is in the journal, return it at once. Otherwise the
        wait is recorded (with ``status`` and the deadline of ``timeout``,
        computed the first time ``key`` is reached) and this branch blocks;
        once every branch of the workflow waits, the instance is marked
        suspended (or waiting) and dropped from memory, to run again from
        the top when a wait resolves. With ``timeout`` (seconds or
        timedelta), raise SuspendTimedOut if it expires first; that outcome
        is memoised. Waits may run side by side in branches of a nursery;
        each keeps its own deadline and any one wakes the instance. Give a
        wait its deadline with ``timeout``: a ``trio.move_on_after`` around
        it lives only in memory and is gone once the instance is dropped.
        """
        if type is not None:
            payload = await self._suspend(key, status, timeout)
            try:
                return typed.decode_as(type, payload)
            except Mismatch as exc:
                raise TypeMismatch(f"signal {key!r} of instance {self.instance_id!r}",
                                   typed.name_of(type), str(exc)) from None
        return await self._suspend(key, status, timeout)

    async def _suspend(
        self, key: str, status: str | None, timeout: float | timedelta | None  # noqa: ASYNC109
    ) -> Any:
        self._claim(key)
        host, iid = self._host, self.instance_id
        if status is not None and builtins.type(status) is not str:
            raise TypeError("status must be a str")
        seconds = _seconds(timeout)
        register: list[Any] | None = None
        deadline: int | None = None
        first = True
        while True:  # each pass: has it ended? else (register and) block
            entry = host.entry(iid)
            if entry.signals is not None and key in entry.signals:
                return await host.replayed(entry.signals[key], r.SIGNALLED_PAYLOAD)
            ended = entry.done_waits.get(key) if entry.done_waits is not None else None
            if ended == r.TIMER_FIRED:
                raise EngineError(_other_kind(iid, key, "a timer", "a suspension"))
            if ended is not None:
                raise SuspendTimedOut(iid, key)
            if first:
                first = False
                wait = entry.waits.get(key) if entry.waits is not None else None
                if wait is None:  # reached for the first time: its deadline, once
                    if seconds is not None:
                        deadline = host.now_ms() + round(seconds * 1000)
                    register = r.make(r.SUSPENDED, host.now_ms(), iid, key, status, deadline)
                    logger.info("instance %s: waits for signal %r (%s)", iid, key,
                                status or "", extra=_extra(iid, key))
                elif wait[0] != lc.WAIT_SIGNAL:
                    raise EngineError(_other_kind(iid, key, "a timer", "a suspension"))
                else:
                    deadline = wait[1]
            if register is None and deadline is not None and host.now_ms() >= deadline:
                await self._time_out(key)
                continue
            await self._waits.block(key, deadline, register)
            register = None

    async def _time_out(self, key: str) -> None:
        """Record that the suspension on ``key`` timed out, unless its signal
        is being written: then wait for it (the caller looks again)."""
        host, iid = self._host, self.instance_id
        busy = host.reserved.get((iid, key))
        if busy is not None:
            await busy.wait()
            return
        await host.append_ending(r.make(r.SUSPEND_TIMED_OUT, host.now_ms(), iid, key))
        logger.info("instance %s: suspension %r timed out", iid, key, extra=_extra(iid, key))

    async def timer(self, key: str, delay: float | timedelta) -> None:
        """Sleep durably until ``delay`` after the first time ``key`` is reached.

        The deadline is persisted once; re-runs never move it. This branch
        blocks until it; once every branch of the workflow waits, the
        instance is dropped from memory and the engine's poller resumes it
        at the deadline.
        """
        self._claim(key)
        host, iid = self._host, self.instance_id
        seconds = _seconds(delay)
        if seconds is None:
            raise TypeError("a timer needs a delay")
        register: list[Any] | None = None
        deadline = 0
        first = True
        while True:  # each pass: has it ended? else (register and) block
            entry = host.entry(iid)
            ended = entry.done_waits.get(key) if entry.done_waits is not None else None
            if ended == r.TIMER_FIRED:
                return
            if ended is not None or (entry.signals is not None and key in entry.signals):
                raise EngineError(_other_kind(iid, key, "a suspension", "a timer"))
            if first:
                first = False
                wait = entry.waits.get(key) if entry.waits is not None else None
                if wait is None:  # reached for the first time: its deadline, once
                    deadline = host.now_ms() + round(seconds * 1000)
                    register = r.make(r.TIMER_SET, host.now_ms(), iid, key, deadline)
                    logger.info("instance %s: sleeping on %r", iid, key, extra=_extra(iid, key))
                elif wait[0] != lc.WAIT_TIMER or wait[1] is None:
                    raise EngineError(_other_kind(iid, key, "a suspension", "a timer"))
                else:
                    deadline = wait[1]
            if register is None and host.now_ms() >= deadline:
                if (iid, key) not in host.reserved:  # else engine.wake is firing it
                    await host.append_ending(r.make(r.TIMER_FIRED, host.now_ms(), iid, key))
                else:
                    await host.reserved[iid, key].wait()
                continue
            await self._waits.block(key, deadline, register)
            register = None


    # -- children (SPEC-NEXT §2; the logic is in children.py) ---------------------

    async def start_child(self, key: str, workflow: Any, input: Any = None) -> str:
        """Durably start an instance of ``workflow`` as this one's child, once.

        ``workflow`` is a registered name or a registered function. The
        child's id is ``f"{instance_id}/{key}"`` and is returned (memoised
        under ``key``, which shares the key space of steps: a re-run finds
        the same child and starts nothing). Wait for it with ``wait_child``.
        """
        self._claim(key)
        children = self._host.children
        assert children is not None
        return await children.start(self.instance_id, key, workflow, input)

    @overload
    async def wait_child(self, key: str, *, type: None = None) -> Any: ...
    @overload
    async def wait_child(self, key: str, *, type: builtins.type[T]) -> T: ...
    @overload
    async def wait_child(self, key: str, *, type: object) -> Any: ...
    async def wait_child(self, key: str, *, type: object = None) -> Any:
        """The result of the child started under ``key``, once it has finished.

        With ``type``, the result is decoded into it (docs/values.md) and,
        for mypy, has that type: TypeMismatch, naming the key, if it does
        not fit. Raises the child's WorkflowFailed or WorkflowCancelled (their
        ``instance_id`` is the child's). Waits as ``suspend`` does: this
        branch blocks, and once every branch waits the instance is parked
        and leaves memory, to run again when the child ends. The outcome is
        memoised under ``key``: a re-run returns (or raises) it at once.
        """
        value = await self._wait_child(key)
        if type is None:
            return value
        try:
            return typed.decode_as(type, value)
        except Mismatch as exc:
            raise TypeMismatch(f"child {key!r} of instance {self.instance_id!r}",
                               typed.name_of(type), str(exc)) from None

    async def _wait_child(self, key: str) -> Any:
        if type(key) is not str or not key:
            check_key(key)
        waited = self._waited
        if waited is None:
            waited = self._waited = set()
        if key in waited:
            raise DuplicateStepKey(self.instance_id, key)
        waited.add(key)
        children = self._host.children
        assert children is not None
        return await children.wait(self.instance_id, key, self._waits)

    @overload
    async def child(
        self, key: str, workflow: Callable[[Context], Awaitable[T]], input: Any = None
    ) -> T: ...
    @overload
    async def child(self, key: str, workflow: str, input: Any = None) -> Any: ...
    async def child(self, key: str, workflow: Any, input: Any = None) -> Any:
        """Start a child (``start_child``) and return its result (``wait_child``).

        Given the workflow's function, the result is decoded into its return
        annotation (docs/values.md); TypeMismatch, naming the key, if the
        recorded result does not fit it.
        """
        plan = None if builtins.type(workflow) is str else return_plan(workflow)
        await self.start_child(key, workflow, input)
        return self._child_value(plan, key, await self._wait_child(key))

    def _child_value(self, plan: typed.Plan | None, key: str, value: Any) -> Any:
        """A child's result decoded by its workflow function's plan (None: as it is)."""
        if plan is None:
            return value
        try:
            return plan.from_plain(value)
        except Mismatch as exc:
            raise TypeMismatch(f"child {key!r} of instance {self.instance_id!r}", plan.name,
                               str(exc)) from None

    @overload
    async def fan_out(
        self, key: str, workflow: Callable[[Context], Awaitable[T]], inputs: Iterable[Any], *,
        concurrency: int | None = None,
    ) -> list[T]: ...
    @overload
    async def fan_out(
        self, key: str, workflow: str, inputs: Iterable[Any], *, concurrency: int | None = None
    ) -> list[Any]: ...
    async def fan_out(
        self, key: str, workflow: Any, inputs: Iterable[Any], *, concurrency: int | None = None
    ) -> list[Any]:
        """Run one child of ``workflow`` per input; their results, in input order.

        Child ``i`` has key ``f"{key}:{i}"``. At most ``concurrency`` children
        are live at once (all, if None), after a restart too. If children
        failed or were cancelled, raises the first one's WorkflowFailed (or
        WorkflowCancelled) in input order, once every child has finished.
        Given the workflow's function, each result is decoded into its
        return annotation, as ``child`` does (TypeMismatch names the child's
        key).
        """
        self._claim(key)
        items = list(inputs)
        if concurrency is None:
            concurrency = max(1, len(items))
        elif isinstance(concurrency, bool) or type(concurrency) is not int or concurrency < 1:
            raise ValueError(f"fan_out {key!r}: concurrency must be an int >= 1, "
                             f"not {concurrency!r}")
        children = self._host.children
        assert children is not None
        children.workflow_name(workflow)  # an unregistered workflow fails before any child
        plan = None if builtins.type(workflow) is str else return_plan(workflow)
        results = await _children.fan_out(
            self.start_child, self._wait_child, key, workflow, items, concurrency
        )
        return [self._child_value(plan, f"{key}:{i}", v) for i, v in enumerate(results)]


def memoised(ctx: Context) -> int:
    """How many steps the run of ``ctx`` returned from the journal (tracing.py)."""
    return ctx._hits


def _other_kind(instance_id: str, key: str, was: str, now: str) -> str:
    return (
        f"key {key!r} of instance {instance_id!r} is {was} in the journal, not {now}: "
        "steps, suspensions and timers share one key space, give each its own key"
    )


def _extra(instance_id: str, key: str) -> dict[str, str]:
    # Log records carry the ids as attributes, for handlers that filter on them.
    return {"instance_id": instance_id, "key": key}


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a delay must be a non-negative number of seconds, not {value!r}")
    return seconds


async def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], in_thread: bool,
    *, abandon: bool,
) -> Any:
    """One call of a step's function (the general path: ``Step.run`` inlines it)."""
    if in_thread:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs),
                                             abandon_on_cancel=abandon)
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class Step:
    """A step being configured: ``.retry()``, ``.timeout()``, ``.at_most_once()``,
    then ``.run()``."""

    __slots__ = ("_at_most_once", "_ctx", "_in_thread", "_key", "_retry", "_timeout")

    def __init__(self, ctx: Context, key: str) -> None:
        self._ctx = ctx
        self._key = key
        self._retry: RetryPolicy | None = None
        self._at_most_once = False
        self._in_thread = False
        self._timeout: float | None = None

    def retry(
        self,
        max_attempts: int = 3,
        initial_delay: float = 1.0,
        backoff: float = 2.0,
        max_delay: float = 60.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        *,
        should_retry: Callable[[BaseException], bool] | None = None,
        jitter: float = 0.0,
    ) -> Step:
        """Retry a failing step with exponential backoff on the engine's clock.

        At most ``max_attempts`` attempts in all. A failure is retried if it
        is an instance of ``retry_on`` and then, if given, ``should_retry(exc)``
        is true. The wait after the first failure is ``initial_delay``, then
        ``backoff`` times the last, at most ``max_delay``; ``jitter`` (0 to 1)
        shortens each wait by a random fraction of up to that much, so that
        many steps failing together do not retry together. A step that raises
        ``RetryAfter(seconds)`` is tried again after that delay instead
        (whatever ``retry_on`` and ``should_retry`` say), attempts allowing.
        """
        try:
            self._retry = policy(max_attempts, initial_delay, backoff, max_delay, retry_on,
                                 should_retry, jitter)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"step {self._key!r}: {exc}") from None
        return self

    def no_retry(self) -> Step:
        """Try this step once, whatever the builder's ``default_retry`` says."""
        self._retry = NO_RETRY
        return self

    def timeout(self, seconds: float | timedelta) -> Step:
        """Cancel an attempt that runs longer than ``seconds`` (on the engine's
        clock); it fails with StepTimedOut, retried if ``retry_on`` covers it.

        An async function is cancelled at its next checkpoint. A sync
        function on the trio thread cannot be interrupted (keep those short);
        with ``.in_thread()`` the attempt is abandoned at the deadline and its
        thread runs on to its end in the background, its result unused.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float | timedelta):
            raise TypeError(f"step {self._key!r}: timeout must be seconds or a timedelta, "
                            f"not {seconds!r}")
        value = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not 0 < value < math.inf:
            raise ValueError(f"step {self._key!r}: timeout must be a finite number of "
                             f"seconds > 0, not {seconds!r}")
        self._timeout = value
        return self

    def at_most_once(self) -> Step:
        """Record the start before running: a crash mid-step is never retried."""
        self._at_most_once = True
        return self

    def in_thread(self) -> Step:
        """Run a sync ``fn`` on a worker thread (for blocking work)."""
        self._in_thread = True
        return self

    @overload
    async def run(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The memoised result of ``fn(*args, **kwargs)`` under this key.

        Returns the value as the journal decodes it, on the first run as on
        every replay: into ``fn``'s return annotation (the awaited type of
        an async ``fn``) where it declares a dataclass, datetime, tuple, set
        and the other types of docs/values.md; otherwise as msgpack has it
        (tuples become lists). For mypy it is typed from ``fn`` (overloads
        for async and sync functions): ``args`` are checked against it and
        the result has its return type.
        """
        ctx, key = self._ctx, self._key
        try:  # return_plan(fn), its cache read inline: every step pays it
            declared = _FN_PLANS.get(fn, _UNSEEN)
        except TypeError:  # fn is unhashable
            declared = _declared(fn, key)
        if declared is _UNSEEN:  # a function made on the fly (a lambda): no exception
            declared = _declared(fn, key)
        entry = ctx._claim(key)
        host = ctx._host
        table = entry.table
        found = (table if type(table) is dict else entry.steps).get(key)
        if found is not None:
            # ix.entry_kind inlined: the replay of a memoised step is the hot path.
            if type(found) is bytes or found & 3 == ix.STEP_DONE_AT:  # type: ignore[operator]
                ctx._hits += 1
                if ctx._hits % _YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
                    found = entry.steps.get(key, found)  # a compaction may have moved it
                if type(found) is bytes:  # inline: no read, no coroutine
                    value = host.codec.decode(found)
                else:  # read ahead (no coroutine either), or read now
                    loc = found >> 2  # type: ignore[operator]  # ix.entry_loc inlined
                    value = host.held_step(ctx.instance_id, loc)
                    if value is MISSING:
                        value = await host.replayed_step(ctx.instance_id, loc)
                return value if declared is None else _typed(declared, value, ctx.instance_id, key)
            kind = ix.entry_kind(found)
            if kind == ix.STEP_FAILED_AT:
                rec = await host.recorded(ix.entry_loc(found))  # type: ignore[arg-type]
                raise StepFailed(
                    key, rec[r.STEP_FAILED_TYPE], rec[r.STEP_FAILED_MESSAGE],
                    rec[r.STEP_FAILED_TRACEBACK],
                    # a version 2 record has its one error only
                    rec[r.STEP_FAILED_ERRORS] if rec[r.TYPE] == r.STEP_FAILED else None,
                )
            if kind == ix.CHILD_AT:
                raise EngineError(_other_kind(ctx.instance_id, key, "a child", "a step"))
            raise StepInterrupted(ctx.instance_id, key)
        iid = ctx.instance_id
        now_ms = host.clock.now_ms  # twice per step: spare a call through the host
        started = now_ms()  # the first attempt's, unless a restart continues (attempts.py)
        plan = self._retry or host.default_retry or NO_RETRY
        max_attempts, delay = plan.max_attempts, plan.initial_delay
        timeout = self._timeout
        attempt = 0
        errors: attempts.Errors = ()
        if entry.tries is not None and key in entry.tries:
            started, errors = entry.tries[key]
            attempt = len(errors)
            delay = attempts.delay_after(plan, attempt)
            if attempt >= max_attempts:
                failed = attempts.step_failed(host.now_ms(), iid, key, started, errors, None)
                await host.append(failed)
                raise StepFailed(key, *errors[-1], failed[r.STEP_FAILED_TRACEBACK], errors)
        if self._at_most_once:
            await host.append(r.make(r.STEP_STARTED, started, iid, key))
        tracer = host.tracer
        span = None if tracer is None else tracer.step(iid, ctx.workflow, key)  # tracing.py
        token = _ATTEMPT.set(attempt + 1)
        try:
            while True:
                attempt += 1
                if host.graceful:  # none begins while the engine stops
                    await host.step_begins(iid, key)
                if host.on_step_call is not None:  # memable_log.testing counts executions
                    host.on_step_call(iid, key)
                try:
                    if timeout is not None:
                        with trio.move_on_after(timeout) as scope:
                            result = await _call(fn, args, kwargs, self._in_thread, abandon=True)
                        if scope.cancelled_caught:
                            raise StepTimedOut(iid, key, timeout)
                    elif self._in_thread:
                        result = await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
                    else:
                        result = fn(*args, **kwargs)
                        # A plain value is never awaitable: skip the slower general test.
                        if type(result) not in _PLAIN and inspect.isawaitable(result):
                            result = await result
                    break
                except Exception as exc:
                    if attempt < max_attempts:
                        if isinstance(exc, RetryAfter):
                            pause: float | None = exc.seconds
                        else:
                            pause = plan.pause(delay) if plan.retries(exc) else None
                        if pause is not None:
                            await host.append(attempts.attempt_failed(
                                host.now_ms(), iid, key, attempt, exc, started))
                            if span is not None:
                                span.attempt_failed(attempt, exc, pause)
                            errors += (attempts.error_of(exc),)
                            logger.warning(
                                "instance %s: step %r attempt %d/%d failed (%s: %s); "
                                "retrying in %.3gs", iid, key, attempt, max_attempts,
                                type(exc).__qualname__, exc, pause, extra=_extra(iid, key),
                            )
                            await host.sleep(pause)
                            delay = plan.next_delay(delay)
                            _ATTEMPT.set(attempt + 1)
                            continue
                    errors += (attempts.error_of(exc),)
                    failed = attempts.step_failed(host.now_ms(), iid, key, started, errors, exc)
                    await host.append(failed)
                    logger.warning(
                        "instance %s: step %r failed after %d attempt(s): %s: %s",
                        iid, key, attempt, type(exc).__qualname__, exc, extra=_extra(iid, key),
                    )
                    raise StepFailed(key, type(exc).__qualname__, str(exc),
                                     failed[r.STEP_FAILED_TRACEBACK], errors) from exc
            if declared is not None:
                blob, value = _encode_typed(host.codec, declared, result, key)
            else:
                try:
                    blob, value = host.codec.encode_value(result)
                except EncodeError as exc:
                    raise NotSerializable(f"step {key!r}", exc.type_name, exc.reason) from None
            await host.append([r.STEP_DONE, 0, now_ms(), iid, key, blob, started, attempt])
        except BaseException as exc:
            if span is not None:
                span.end(exc, attempt)
            raise
        finally:
            _ATTEMPT.reset(token)
        if span is not None:
            span.end(None, attempt)
        if logger.isEnabledFor(logging.DEBUG):  # spares building ``extra`` on every step
            logger.debug("instance %s: step %r ran", iid, key, extra=_extra(iid, key))
        return value  # as the journal decodes it: what a replay returns


def _declared(fn: Any, key: str) -> typed.Plan | None:
    """``return_plan(fn)``; a TypeError (a type that cannot be stored) names the step."""
    try:
        return return_plan(fn)
    except TypeError as exc:
        raise TypeError(f"step {key!r}: {exc}") from None


def _typed(plan: typed.Plan, plain: Any, instance_id: str, key: str) -> Any:
    """A memoised step's value decoded into its declared type."""
    try:
        return plan.from_plain(plain)
    except Mismatch as exc:
        raise TypeMismatch(f"step {key!r} of instance {instance_id!r}", plan.name,
                           str(exc)) from None


def encode_typed(codec: Any, plan: typed.Plan | None, value: Any) -> bytes:
    """The blob of ``value`` of a declared type (``plan``); EncodeError, Mismatch.

    With the builder's codec hooks, the value goes to them first, as it
    did before types were read (a journal written so reads the same);
    only what they cannot encode is converted by ``plan``.
    """
    if plan is None:
        return codec.encode(value)  # type: ignore[no-any-return]
    if codec.has_hooks:
        try:
            return codec.encode(value)  # type: ignore[no-any-return]
        except EncodeError:
            pass
    return codec.encode(plan.to_plain(value))  # type: ignore[no-any-return]


def _encode_typed(codec: Any, plan: typed.Plan, result: Any, key: str) -> tuple[bytes, Any]:
    """The blob of a step's typed result, and the value a replay will see.

    Decoded here, before anything is written: a value that would not read
    back as its declared type raises NotSerializable and is not stored.
    """
    what = f"step {key!r}"
    try:
        blob = encode_typed(codec, plan, result)
    except Mismatch as exc:
        raise NotSerializable(what, builtins.type(result).__qualname__,
                              f"it does not fit its declared type {plan.name}: {exc}") from None
    except EncodeError as exc:
        raise NotSerializable(what, exc.type_name, exc.reason) from None
    try:
        return blob, plan.from_plain(codec.decode(blob))
    except Mismatch as exc:
        raise NotSerializable(what, builtins.type(result).__qualname__,
                              f"it would not read back as {plan.name}: {exc}") from None
