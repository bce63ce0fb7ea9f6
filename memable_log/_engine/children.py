"""Workflows that start workflows (SPEC-NEXT §2): start, wait, end, cancel.

Theory of operation. A parent starts a child under a key of its own key
space: the child's id is ``f"{parent}/{key}"``, so a re-run finds it. The
start is one batch: the child's ``child_created`` (its ``created``, with its
parent and key) then the parent's ``child_started``, which memoises the key
in the parent's step table (index.CHILD_AT) and registers a wait of kind
child. A batch survives a crash as a prefix (Backend.append_many), so the
only torn state is a child whose parent does not know it yet; the parent's
re-run finds the child by its id and *adopts* it (writes ``child_started``,
or ``child_ended`` if it already ended).

``wait`` blocks the parent's branch on the child wait (waits.py: once every
branch waits, the parent is parked and leaves memory). A child's end is one
batch too: its outcome (``completed``, ``failed``; ``cancelled`` from
``cancel``) then the parent's ``child_ended`` (state, value, error), which
ends the wait and memoises the outcome: a re-run returns or raises it
without looking at the child. A torn end batch leaves a finished child its
parent was not told of: ``repair``, at every start, tells it (and cancels a
live child whose parent is cancelled: a torn cancel batch). Whoever writes a
parent's ``child_ended`` reserves (parent, key) in ``host.reserved`` while it
is written and looks again after waiting for another writer, so a parent is
told once.

``cancel`` writes the instance's ``cancelled`` and every live descendant's
in one batch, with the parent's ``child_ended`` if the instance is a child.

Flow control (flow.py) decides in the batches themselves: a child's start
batch is built by ``FlowControl.creation`` (its ``options`` and ``queued``
after its ``child_created``), and a ``child_ended`` that wakes a parked
parent with no slot is followed by the parent's ``queued`` in its batch.
A parent parked on its children holds no slot, so children that queue
behind it start once it parks, and it queues again when one ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._backend.seam import take
from .._core import index as ix
from .._core import lifecycle as lc
from .._core import records as r
from .._core.errors import EngineError, UnknownWorkflow, WorkflowCancelled, WorkflowFailed

if TYPE_CHECKING:
    from .flow import FlowControl
    from .host import Host
    from .waits import RunWaits

logger = logging.getLogger("memable_log")


class Children:
    """The engine's side of children; ``start`` and ``wait_ended`` are the
    engine's (run an instance; a wait ended, wake or start its instance)."""

    def __init__(
        self, host: Host, flow: FlowControl, start: Callable[[str], None],
        wait_ended: Callable[[str, str], None],
    ) -> None:
        self._host = host
        self._flow = flow
        self._start = start
        self._ended = wait_ended
        self._quiet = False  # while repairing at start: wake nothing (resume_on_start)
        # The child_ended just written for a parent whose run is in memory,
        # by (parent, key): its branch takes it rather than read it back.
        self._fresh: dict[tuple[str, str], list[Any]] = {}

    def _wait_ended(self, parent: str, key: str) -> None:
        if not self._quiet:
            self._ended(parent, key)

    # -- a parent starts a child ----------------------------------------------

    def workflow_name(self, workflow: object) -> str:
        """The registered name of ``workflow`` (a name, or a registered function)."""
        workflows = self._host.workflows
        if type(workflow) is str:
            if workflow not in workflows:
                raise UnknownWorkflow(workflow, list(workflows))
            return workflow
        for name, fn in workflows.items():
            if fn is workflow:
                return name
        what = getattr(workflow, "__qualname__", repr(workflow))
        raise EngineError(
            f"{what} is not a registered workflow: pass its registered name, or register "
            "it first with engine.register(name, fn)"
        )

    async def start(self, parent: str, key: str, workflow: object, input: Any) -> str:
        """Start the child under ``key`` once; its id (the memo on a re-run)."""
        host = self._host
        name = self.workflow_name(workflow)
        cid = ix.child_id(parent, key)
        entry = host.entry(parent)
        found = entry.steps.get(key)
        if found is not None and ix.entry_kind(found) == ix.CHILD_AT:
            return cid  # memoised
        if found is not None or (entry.done_waits or {}).get(key) not in (None, r.CHILD_ENDED):
            raise EngineError(
                f"key {key!r} of instance {parent!r} is not a child in the journal (a step, "
                "suspension or timer has it): steps, suspensions, timers and children share "
                "one key space, give each its own key"
            )
        await host.require().settled(cid)
        child = host.index.instances.get(cid)
        if child is not None:
            if child.parent != parent:
                raise EngineError(
                    f"start_child: instance {cid!r} exists and is not the child of "
                    f"{parent!r} under key {key!r}; pick another key"
                )
            await self._adopt(parent, key, cid, child)
            return cid
        blob = host.encode(input, f"input of child {key!r} of instance {parent!r}")
        flow = self._flow
        ckey = flow.key_of(name, input)
        now = host.now_ms()
        created = r.make(r.CHILD_CREATED, now, cid, name, blob, parent, key)
        batch = flow.creation(created, name, ckey)  # + options, + queued with no slot
        batch.append(r.make(r.CHILD_STARTED, now, parent, key, cid))
        # Shielded: written whole even if the parent is cancelled meanwhile,
        # so the check below sees the child and cancels it.
        with trio.CancelScope(shield=True):
            try:
                await host.append_many(batch)
            except BaseException:
                flow.unclaim(cid)
                raise
            if host.entry(parent).state == lc.CANCELLED:
                await self.cancel(cid)
        logger.info("instance %s: child %s of %r started", parent, cid, name,
                    extra={"instance_id": parent, "key": key})
        if host.tracer is not None:  # tracing.py: the span the child's runs hang under
            host.tracer.child(parent, host.entry(parent).workflow, key, cid, name)
        self._start(cid)
        return cid

    async def _adopt(self, parent: str, key: str, cid: str, child: ix.InstanceEntry) -> None:
        """The child exists, its parent's record of it does not (a torn start)."""
        host = self._host
        if child.state in lc.FINISHED:
            await self.tell_parent(cid)
            return
        await host.append(r.make(r.CHILD_STARTED, host.now_ms(), parent, key, cid))
        self._start(cid)

    # -- a parent waits for a child --------------------------------------------

    async def wait(self, parent: str, key: str, waits: RunWaits) -> Any:
        """The child's result, or its WorkflowFailed / WorkflowCancelled."""
        host = self._host
        while True:
            entry = host.entry(parent)
            found = entry.steps.get(key)
            if found is None or ix.entry_kind(found) != ix.CHILD_AT:
                raise EngineError(
                    f"wait_child: key {key!r} of instance {parent!r} names no child: start "
                    "it first with ctx.start_child (or use ctx.child)"
                )
            if entry.done_waits is not None and entry.done_waits.get(key) == r.CHILD_ENDED:
                rec = self._fresh.pop((parent, key), None)
                if rec is None:
                    rec = await host.recorded(ix.entry_loc(found))  # type: ignore[arg-type]
                return self._outcome(rec, ix.child_id(parent, key))
            cid = ix.child_id(parent, key)
            child = host.index.instances.get(cid)
            if child is None:
                raise EngineError(
                    f"wait_child: child {cid!r} of instance {parent!r} is no longer in the "
                    "journal and its end was not recorded"
                )
            if child.state in lc.FINISHED:
                await self.tell_parent(cid)  # an end its parent was not told of
                continue
            await waits.block(key, None, None)

    def _outcome(self, rec: list[Any], cid: str) -> Any:
        state = rec[r.CHILD_ENDED_STATE]
        if state == lc.COMPLETED:
            return self._host.codec.decode(rec[r.CHILD_ENDED_VALUE])
        if state == lc.FAILED:
            raise WorkflowFailed(
                cid, rec[r.CHILD_ENDED_ERROR_TYPE] or "", rec[r.CHILD_ENDED_MESSAGE] or "",
                rec[r.CHILD_ENDED_VALUE].decode("utf-8", "replace"),
            )
        raise WorkflowCancelled(cid, rec[r.CHILD_ENDED_MESSAGE])

    # -- a child ends --------------------------------------------------------------

    async def _reserve(self, marks: Iterable[tuple[str, str]]) -> bool:
        """Wait until none of ``marks`` is being written; False if it had to
        wait (the caller looks again), True if they are free now."""
        reserved = self._host.reserved
        for mark in marks:
            busy = reserved.get(mark)
            if busy is not None:
                await busy.wait()
                return False
        return True

    def _note(self, cid: str, child: ix.InstanceEntry, outcome: list[Any]) -> list[Any] | None:
        """The parent's ``child_ended`` for ``outcome``, the child's end, or
        None if it has no parent to tell (none, gone, or told already)."""
        parent = child.parent
        if parent is None:
            return None
        entry = self._host.index.instances.get(parent)
        key = cid[len(parent) + 1:]
        if entry is None or (entry.done_waits is not None and key in entry.done_waits):
            return None
        rtype = outcome[r.TYPE]
        if rtype == r.COMPLETED:
            fields: tuple[Any, ...] = (lc.COMPLETED, outcome[r.COMPLETED_RESULT], None, None)
        elif rtype == r.FAILED:
            fields = (lc.FAILED, outcome[r.FAILED_TRACEBACK].encode(),
                      outcome[r.FAILED_TYPE], outcome[r.FAILED_MESSAGE])
        elif rtype == r.CANCELLED_FOR:  # its reason goes to the parent
            fields = (lc.CANCELLED, b"", None, outcome[r.CANCELLED_FOR_REASON])
        else:
            fields = (lc.CANCELLED, b"", None, None)
        return r.make(r.CHILD_ENDED, self._host.now_ms(), parent, key, *fields)

    async def finish(self, cid: str, outcome: list[Any], then: list[list[Any]]) -> bool:
        """Append a child's outcome (``completed`` or ``failed``) and, in the
        same batch, its parent's ``child_ended`` and ``then`` (the start its
        slot goes to); wake the parent. False if nothing was written (the
        child was cancelled meanwhile)."""
        host = self._host
        while True:
            child = host.entry(cid)
            if child.state not in lc.LIVE:
                return False  # cancelled meanwhile: its parent was told by the cancel
            mark = (child.parent, cid[len(child.parent) + 1:]) if child.parent else None
            if mark is not None and not await self._reserve([mark]):
                continue
            note = self._note(cid, child, outcome)
            if note is None or mark is None:
                await host.append_many([outcome, *then])
                return True
            await self._write([outcome, note], [mark], then)
            self._wait_ended(*mark)
            return True

    async def _write(
        self, batch: list[list[Any]], marks: list[tuple[str, str]],
        then: tuple[list[Any], ...] | list[list[Any]] = (),
    ) -> None:
        """Append ``batch`` (its last record may be a parent's ``child_ended``)
        with ``marks`` reserved; the parent's ``queued``, if the note wakes
        it with no slot, right after the note; then ``then``."""
        host = self._host
        reserved = host.reserved
        note = batch[-1]
        parent = note[r.INSTANCE] if note[r.TYPE] == r.CHILD_ENDED else None
        # At start (``_quiet``) a parent woken is resumed as a running one is.
        wake = self._flow.waking(parent, note[r.KEY]) if parent and not self._quiet else []
        events = {mark: trio.Event() for mark in marks}
        reserved.update(events)
        try:
            await host.append_many([*batch, *wake, *then])
        finally:
            for mark, event in events.items():
                del reserved[mark]
                event.set()
            if parent is not None:
                self._flow.woken(parent)
        if parent is not None and parent in host.waits:
            self._fresh[parent, note[r.KEY]] = note

    async def tell_parent(self, cid: str) -> None:
        """Record a finished child's end in its parent, if not yet recorded."""
        host = self._host
        while True:
            child = host.entry(cid)
            if child.parent is None:
                return
            mark = (child.parent, cid[len(child.parent) + 1:])
            if not await self._reserve([mark]):
                continue
            note = self._note(cid, child, await self._outcome_record(cid, child))
            if note is not None:
                await self._write([note], [mark])
                self._wait_ended(*mark)
            return

    async def _outcome_record(self, cid: str, child: ix.InstanceEntry) -> list[Any]:
        host = self._host
        if child.state == lc.COMPLETED:
            assert child.outcome is not None
            if type(child.outcome) is bytes:
                return r.make(r.COMPLETED, 0, cid, child.outcome)
            return await host.require().read(child.outcome)  # type: ignore[arg-type]
        if child.state == lc.FAILED:
            return await host.require().read(child.outcome)  # type: ignore[arg-type]
        if child.error is not None:  # cancelled for a reason
            return r.make(r.CANCELLED_FOR, 0, cid, child.error[1])
        return r.make(r.CANCELLED, 0, cid)

    def stopped(self, cid: str) -> None:
        """A child's run stopped with the journal failed: its end will not
        come, so whoever waits on its ancestors (engine.wait) looks again
        and finds the journal failed."""
        instances = self._host.index.instances
        entry = instances.get(cid)
        while entry is not None and entry.parent is not None:
            self._host.notify(entry.parent)
            entry = instances.get(entry.parent)

    # -- cancel -----------------------------------------------------------------------

    async def cancel(self, iid: str, reason: str | None = None) -> list[str]:
        """Cancel ``iid`` and every live descendant in one batch; the ids
        cancelled (empty if ``iid`` is not live). With a ``reason``, ``iid``'s
        record is ``cancelled_for`` (its descendants' plain ``cancelled``)."""
        host = self._host
        took = False
        while True:
            entry = host.entry(iid)
            if entry.state not in lc.LIVE:
                return []
            ids = [iid, *self._descendants(iid)]
            if not took and len(ids) > 1:
                # A shared journal: descendants another engine runs are taken
                # first (seam.take: their owner fenced out, its records read;
                # the database says which, this engine's view may be stale),
                # or their records would be fenced out; then look again.
                backend = host.require()
                for cid in ids[1:]:
                    await take(backend, cid, resume=False)
                took = True
                continue
            marks = [
                (e.parent, cid[len(e.parent) + 1:])
                for cid in ids if (e := host.index.instances[cid]).parent is not None
            ]
            if not await self._reserve(marks):
                continue
            now = host.now_ms()
            first = r.make(r.CANCELLED, now, iid) if reason is None else r.make(
                r.CANCELLED_FOR, now, iid, reason)
            batch = [first] + [r.make(r.CANCELLED, now, cid) for cid in ids[1:]]
            note = self._note(iid, entry, first)
            top = marks[0] if note is not None and entry.parent is not None else None
            self._flow.cancelling(ids)  # none of them starts out of the queue meanwhile
            try:
                await self._write(batch + ([note] if note is not None else []), marks)
            finally:
                self._flow.cancelled(ids)
            if top is not None:
                self._wait_ended(*top)
            return ids

    def _descendants(self, iid: str) -> list[str]:
        """Every live descendant of ``iid``, parents before their children."""
        instances = self._host.index.instances
        out: list[str] = []
        stack = [iid]
        while stack:
            parent = stack.pop()
            entry = instances.get(parent)
            if entry is None:
                continue
            for key in entry.child_keys():
                cid = ix.child_id(parent, key)
                child = instances.get(cid)
                if child is not None and child.parent == parent:
                    if child.state in lc.LIVE:
                        out.append(cid)
                    stack.append(cid)  # a finished child may have live children
        return out

    # -- at start -----------------------------------------------------------------------

    async def repair(self) -> None:
        """Finish what a torn batch left: tell parents of their children's
        ends, and cancel live children of cancelled parents."""
        host = self._host
        instances = host.index.instances
        untold: list[str] = []
        orphans: list[str] = []
        for cid, entry in instances.items():
            parent_id = entry.parent
            if parent_id is None:
                continue
            parent = instances.get(parent_id)
            if parent is None:
                continue
            if entry.state in lc.FINISHED:
                key = cid[len(parent_id) + 1:]
                if parent.done_waits is None or key not in parent.done_waits:
                    untold.append(cid)
            elif parent.state == lc.CANCELLED:
                orphans.append(cid)
        self._quiet = True
        try:
            for cid in untold:
                logger.info("instance %s: its end is recorded in its parent (a torn batch)",
                            cid, extra={"instance_id": cid})
                await self.tell_parent(cid)
            for cid in orphans:
                logger.info("instance %s: cancelled with its parent (a torn batch)", cid,
                            extra={"instance_id": cid})
                await self.cancel(cid)
        finally:
            self._quiet = False


class _Started:
    """What a fan-out's workers share: the next input to start, the outcomes."""

    def __init__(self, count: int) -> None:
        self.next = 0
        self.results: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count


async def fan_out(
    start_child: Callable[[str, object, Any], Any],
    wait_child: Callable[[str], Any],
    key: str,
    workflow: object,
    inputs: list[Any],
    concurrency: int,
) -> list[Any]:
    """One child per input (keys ``f"{key}:{i}"``), at most ``concurrency``
    live at once; the results in input order, or the first error in input
    order once every child has finished.

    ``concurrency`` workers each take the next input, start its child and
    wait for it, then take the next. Inputs are taken in order, so after a
    restart the children started before (a prefix of the inputs) are taken
    first, each unfinished one holding a worker: a new child starts only
    when fewer than ``concurrency`` are live, after a restart too. Every
    worker waits in a durable child wait, so a parent waiting only on its
    fan-out is parked and leaves memory.
    """
    shared = _Started(len(inputs))

    async def worker() -> None:
        while shared.next < len(inputs):
            i = shared.next
            shared.next += 1
            child_key = f"{key}:{i}"
            await start_child(child_key, workflow, inputs[i])
            try:
                shared.results[i] = await wait_child(child_key)
            except (WorkflowFailed, WorkflowCancelled) as exc:
                shared.errors[i] = exc

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, len(inputs))):
            nursery.start_soon(worker)
    for error in shared.errors:
        if error is not None:
            raise error
    return shared.results
