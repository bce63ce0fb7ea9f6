"""Running one instance: call the workflow, record how it ended.

``run_instance`` is the task the engine starts for a live instance once
capacity (capacity.py) gave it a slot; an instance started out of the
queue first records ``dequeued`` (unless a cancel of it is being written:
``Gate.may_dequeue``, checked with no await before the append, so no
``dequeued`` ever follows its ``cancelled``). It runs the workflow from the
top with a fresh Context. How the run ends decides what is written:

* it returns: the result is encoded and a ``completed`` record appended,
  in one batch with the ``dequeued`` of the queued instance its slot goes
  to, if any (``Gate.handoff``), which then runs;
* it raises an Exception: a ``failed`` record (type, message, traceback),
  likewise;
* it unwinds with ``Unwind`` (every branch waits: waits.py wrote
  ``parked``): nothing more, and the task ends, dropping the workflow's
  frames;
* it is cancelled by ``engine.cancel``: nothing more (``cancelled`` is
  already written); by the engine stopping: nothing at all;
* a recorded value cannot be read back (``ValueUnreadable``: an I/O error,
  damage): nothing; the instance stops and runs again at the next start.

If the instance is running again when the run ends (a signal arrived while
it was being parked), it runs again at once, unless the engine is stopping
(``host.draining``): then nothing new starts, not even a run that got its
slot just now; the journal keeps the instance running for the next start.
A parked instance woken by a deadline first records which of its waits are due (``end_wait``).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._core import lifecycle as lc
from .._core import records as r
from .._core import typed
from .._core.codec import EncodeError
from .._core.errors import JournalClosed, JournalFailed
from .._storage.memory import PowerCut
from .context import Context, encode_typed, memoised
from .host import Host, ValueUnreadable
from .waits import RunWaits, Unwind

if TYPE_CHECKING:
    from .tracing import Run

logger = logging.getLogger("memable_log")


class Gate(Protocol):
    """Flow control's part in a run (flow.py's FlowControl)."""

    def may_dequeue(self, iid: str) -> bool: ...

    async def cancel_written(self, iid: str) -> None: ...

    def handoff(self, iid: str) -> list[list[Any]]: ...

    def handed(self, recs: list[list[Any]]) -> None: ...


async def run_instance(
    host: Host, instance_id: str, ended: Callable[[str], None], gate: Gate
) -> None:
    """Run the instance until it is no longer running; then ``ended(instance_id)``.

    ``ended`` is not called if the task is cancelled (the engine stopping).
    """
    try:
        while not host.draining:  # the engine stopping starts nothing new
            entry = host.entry(instance_id)
            if entry.state == lc.QUEUED:  # a start out of the queue
                if not gate.may_dequeue(instance_id):  # its cancel is being written
                    await gate.cancel_written(instance_id)
                    continue
                await host.append(r.make(r.DEQUEUED, host.now_ms(), instance_id))
                continue
            if entry.state in lc.FINISHED:
                break
            if entry.state in lc.PARKED and not await end_wait(host, instance_id):
                break  # not due yet: it stays waiting
            fn = host.workflows[entry.workflow]
            await _run_once(host, instance_id, entry.workflow, fn, gate)
            # A branch's append cancelled by another branch's wait may
            # still be committing: the state it leaves (a deadline) must
            # be the one this run ends with, and ``ended`` arms.
            await host.require().settled(instance_id)
            if host.entry(instance_id).state != lc.RUNNING:
                break
    except (JournalFailed, JournalClosed) as exc:
        if isinstance(exc.__cause__, PowerCut):  # the testing kit's, not a disk's
            logger.info("instance %s stopped by a simulated power cut (%s)", instance_id,
                        exc.__cause__, extra={"instance_id": instance_id})
        else:
            logger.error("instance %s stopped: %s", instance_id, exc,
                         extra={"instance_id": instance_id})
        if host.children is not None:  # its ancestors wait for it: wake their waiters
            host.children.stopped(instance_id)
    except ValueUnreadable as exc:
        logger.error("instance %s stopped, to run again at the next start: a recorded "
                     "value cannot be read: %s", instance_id, exc,
                     extra={"instance_id": instance_id})
        host.halted[instance_id] = str(exc)  # engine.wait says so, rather than wait
    finally:
        host.running.discard(instance_id)
        host.run_ended(instance_id)
        host.notify(instance_id)  # no longer running: a claim waiting for that goes on
    ended(instance_id)


async def end_wait(host: Host, instance_id: str, then: list[Any] | None = None) -> bool:
    """Record that a due timer fired or a due suspension timed out.

    Woken by its deadline, the instance is running again before the
    workflow re-runs, so the re-run is an ordinary one even if the code no
    longer reaches that key (a bumped timer key would otherwise leave it
    sleeping on a passed deadline, woken again and again). ``then`` goes in
    the same batch after them (``queued``, when capacity has no slot).
    """
    entry = host.entry(instance_id)
    now = host.now_ms()
    ended = []
    for key in entry.pending or ():
        kind, deadline, _ = (entry.waits or {})[key]
        # A signal being written for it wins: it wakes the instance itself.
        if deadline is not None and deadline <= now and (instance_id, key) not in host.reserved:
            rtype = r.TIMER_FIRED if kind == lc.WAIT_TIMER else r.SUSPEND_TIMED_OUT
            ended.append(r.make(rtype, now, instance_id, key))
    if not ended:
        return False
    await host.append_many(ended + ([then] if then is not None else []))
    return True


async def _run_once(host: Host, instance_id: str, workflow: str, fn: Any, gate: Gate) -> None:
    if host.tracer is None:
        await _run(host, instance_id, workflow, fn, gate, None)
        return
    with host.tracer.run(host.index.instances, instance_id, workflow) as run:  # tracing.py
        await _run(host, instance_id, workflow, fn, gate, run)


async def _run(
    host: Host, instance_id: str, workflow: str, fn: Any, gate: Gate, run: Run | None
) -> None:
    entry = host.entry(instance_id)
    waits = RunWaits(host, instance_id)
    ctx = Context(
        host, waits, instance_id, workflow, await host.replayed(entry.input, r.CREATED_INPUT)
    )
    error: BaseException | None = None
    if entry.state not in lc.LIVE:
        # engine.cancel landed while the input was read, before the scope
        # below existed for it to cancel: the workflow must not start.
        return
    with trio.CancelScope() as scope:
        host.scopes[instance_id] = scope
        host.waits[instance_id] = waits
        host.exits.runs[waits.root] = waits
        try:
            result = await fn(ctx)
        except Unwind:
            return
        except BaseExceptionGroup as group:
            _, rest = group.split(Unwind)
            if rest is None:
                return  # every failing branch was a suspension
            unreadable, _ = rest.split(ValueUnreadable)
            if unreadable is not None:
                raise ValueUnreadable(str(unreadable.exceptions[0])) from group
            if rest.subgroup(lambda e: isinstance(e, Exception)) is None:
                # Cancellation or an interrupt: not the workflow's outcome.
                # Without the branches that parked: a run cancelled as it
                # parks ends as parked runs do, with no Unwind escaping.
                raise rest from None
            error = rest
        except Exception as exc:
            error = exc
        finally:
            host.scopes.pop(instance_id, None)
            host.waits.pop(instance_id, None)
            host.exits.runs.pop(waits.root, None)
            if run is not None:
                run.memoised, run.error = memoised(ctx), error
    if scope.cancelled_caught or entry.state not in lc.LIVE:
        return  # cancelled (the record is written) while it ran
    now = host.now_ms()
    if error is None:
        try:
            # a declared dataclass, datetime...: docs/values.md
            blob = encode_typed(host.codec, typed.return_plan(fn), result)
            rec = r.make(r.COMPLETED, now, instance_id, blob)
        except EncodeError as exc:
            message = f"the workflow's result ({exc.type_name}) cannot be encoded: {exc}"
            rec = r.make(r.FAILED, now, instance_id, "NotSerializable", message, "")
        except (typed.Mismatch, TypeError) as exc:
            message = f"the workflow's result does not fit its declared type: {exc}"
            rec = r.make(r.FAILED, now, instance_id, "NotSerializable", message, "")
    else:
        text = "".join(traceback.format_exception(error))
        rec = r.make(r.FAILED, now, instance_id, *_describe(error), text)
    hand = gate.handoff(instance_id)  # the start its slot goes to, in the same batch
    written = False
    try:
        if entry.parent is not None and host.children is not None:
            # with its parent's child_ended
            written = await host.children.finish(instance_id, rec, hand)
        else:
            await (host.append_many([rec, *hand]) if hand else host.append(rec))
            written = True
    finally:
        gate.handed(hand)
    if not written:
        return
    if rec[r.TYPE] == r.COMPLETED:
        logger.info("instance %s completed", instance_id, extra={"instance_id": instance_id})
    else:
        logger.warning("instance %s failed: %s: %s", instance_id, rec[r.FAILED_TYPE],
                       rec[r.FAILED_MESSAGE],
                       extra={"instance_id": instance_id})


def _describe(error: BaseException) -> tuple[str, str]:
    """Type name and message of a workflow's error.

    A failure inside a nursery of the workflow arrives as an exception
    group; its leaves are what the user raised, so they name the failure.
    """
    if not isinstance(error, BaseExceptionGroup):
        return type(error).__qualname__, str(error)
    leaves: list[BaseException] = []
    stack: list[BaseException] = [error]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    if len(leaves) == 1:
        return type(leaves[0]).__qualname__, str(leaves[0])
    return type(error).__qualname__, "; ".join(f"{type(e).__qualname__}: {e}" for e in leaves)
