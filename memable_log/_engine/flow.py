"""The engine's side of flow control: records, tasks and deadlines around
capacity.py (which decides, and does no I/O).

Theory of operation (docs/design.md, "Flow control"). Capacity is decided
here and nowhere else, always *before* the batch that makes an instance
running is written, so the batch says where it goes:

* ``creation`` builds the batch that creates an instance, on every path
  (``invoke``, a schedule's tick, a debounced start, a child): its
  ``created`` / ``child_created``, its ``options`` (priority, deadline,
  concurrency key) and ``queued`` if it gets no slot;
* ``waking`` gives the records that go after a record that makes a parked
  (or finished: a restart) instance running: ``queued`` if it gets no slot
  (a deadline's wake is written by the runner's ``end_wait``, with
  ``queued`` in its batch too);
* ``handoff`` gives, for the batch of a run's outcome, the ``dequeued`` of
  the queued instance its slot goes to: the start costs no append of its
  own.

A slot taken for a batch is given back if the batch is not written
(``unclaim``, ``woken``, ``handed``). ``admit`` is asked before any
instance runs (``Engine._start``): an instance woken some other way with
no slot is written ``queued`` by a small task (``_queue``). Once a
``queued`` record is applied the instance enters capacity's queue.
``released`` is called as a runner ends (the run finished or parked):
capacity starts whom it can; such a start writes its ``dequeued`` in its
runner. A cancel marks its instances (``cancelling``) while its batch is
written: none of them is picked out of the queue meanwhile, and a runner
about to write ``dequeued`` for one does not (``may_dequeue``).

Deadlines (an instance's timeout, a rate window that reopens) are on the
engine's one timer poller, through a ``Timed`` heap (timed.py) as the
schedules' are, items tagged by kind: ``"t" + instance`` for a timeout,
``"r" + workflow`` for a rate window. An instance's timeout is its
``options`` deadline (``invoke(timeout=)``), else its created time plus its
workflow's ``timeout``; ``arm`` pushes it at invoke and at start, and when
it passes on a live instance the engine's ``cancel`` runs with reason
``"timeout"``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._core import lifecycle as lc
from .._core import records as r
from .._core.errors import EngineError, JournalClosed, JournalFailed
from .._core.index import InstanceEntry
from .capacity import Capacity, Limits, check_limits
from .host import Host
from .runner import end_wait
from .timed import Timed
from .timers import TimerQueue

logger = logging.getLogger("memable_log")

TIMEOUT = "timeout"  # WorkflowCancelled.reason of an instance whose timeout passed


class FlowControl:
    """Limits by workflow, and while the engine runs its Capacity and poller.

    ``run(instance_id)`` starts a runner for an instance that has its slot;
    ``cancel(instance_id, reason)`` is the engine's cancel.
    """

    def __init__(
        self, host: Host, run: Callable[[str], None],
        cancel: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self._host = host
        self._run = run
        self._cancel = cancel
        self.limits: dict[str, Limits] = {}
        self.capacity: Capacity | None = None
        self._deadlines = _Deadlines(self._fired)
        self._nursery: trio.Nursery | None = None
        self._queuing: set[str] = set()  # a ``queued`` record being written
        # A cancel's batch being written, by instance: set once it is.
        self._cancelling: dict[str, trio.Event] = {}
        self._armed: set[str] = set()  # instances whose timeout is on the poller

    # -- settings -----------------------------------------------------------------

    def register(self, name: str, limits: Limits) -> None:
        check_limits(name, limits)
        self.limits[name] = limits
        if self.capacity is not None:
            self.capacity.configure(name, limits)
            if limits.timeout is not None:  # registered while running: arm its live ones
                for iid, entry in self._host.index.instances.items():
                    if entry.workflow == name and entry.state in lc.LIVE:
                        self.arm(iid, entry)

    def retention_ms(self) -> dict[str, int | None]:
        """Each workflow's own retention (ms, None: kept for ever), where it set one."""
        return {
            name: None if lim.retention is None else round(lim.retention * 1000)
            for name, lim in self.limits.items() if lim.retention is not None
        }

    def key_of(self, name: str, input: Any) -> str | None:
        """The concurrency key of an instance of ``name`` with ``input``."""
        limits = self.limits.get(name)
        if limits is None or limits.key is None:
            return None
        key = limits.key(input)
        if type(key) is not str:
            raise TypeError(
                f"workflow {name!r}: its key function returned {key!r}, not a str"
            )
        return key

    async def repair(self, owns: Callable[[str], bool]) -> None:
        """Give a key to the live instances that lack the one their workflow's
        key function names: the ``options`` of their creation batch were torn
        off by a power cut (or the workflow gained a key function since).
        Written before any instance resumes, so capacity counts them under it;
        only for the instances this engine ``owns`` (another's are its to mend)."""
        host = self._host
        lacking = [
            (iid, entry) for iid, entry in host.index.instances.items()
            if entry.state in lc.LIVE and entry.flow is None and owns(iid)
            and (lim := self.limits.get(entry.workflow)) is not None and lim.key is not None
        ]
        for iid, entry in lacking:
            try:
                key = self.key_of(entry.workflow, await host.replayed(entry.input, r.CREATED_INPUT))
            except Exception as exc:
                logger.error("instance %s: its key function failed on its input (%s: %s); "
                             "it runs with no concurrency key", iid, type(exc).__name__, exc,
                             extra={"instance_id": iid})
                continue
            if key is not None:
                logger.info("instance %s: its concurrency key is recorded (a torn batch)", iid,
                            extra={"instance_id": iid})
                await host.append(r.make(r.OPTIONS, host.now_ms(), iid, 0, None, key))

    async def attach(self, iid: str, priority: int, deadline: int | None) -> None:
        """An ``invoke`` of an existing instance: its options where it has
        none (the retry of an invoke whose batch a crash cut after
        ``created``). Options already recorded stay as they are."""
        host = self._host
        entry = host.index.instances.get(iid)
        if entry is None or entry.state not in lc.LIVE or (not priority and deadline is None):
            return
        old = entry.flow
        if old is not None and (old[0] or old[1] is not None):
            return
        key = None if old is None else old[2]
        await host.append(r.make(r.OPTIONS, host.now_ms(), iid, priority, deadline, key))
        self.arm(iid, entry)

    # -- an engine run ------------------------------------------------------------

    def open(self, nursery: trio.Nursery, timers: TimerQueue, max_running: int | None) -> None:
        """The engine started: deadlines go on its poller ``timers``."""
        host = self._host
        self._nursery = nursery
        self._deadlines.begin(nursery, timers)
        self.capacity = Capacity(max_running, host.now_ms, self._start_queued, self._wake_at)
        for name, limits in self.limits.items():
            self.capacity.configure(name, limits)

    def fire(self, now_ms: int) -> None:
        """The engine's poller fired for engine-level deadlines (timed.py)."""
        self._deadlines.fire(now_ms)

    def pause(self) -> None:
        """The engine is stopping: nothing more starts out of the queue."""
        if self.capacity is not None:
            self.capacity.paused = True

    def close(self) -> None:
        self.capacity = None
        self._deadlines.end()
        self._nursery = None
        self._queuing.clear()
        self._cancelling.clear()
        self._armed.clear()

    # -- the batches that create, wake and start instances ----------------------------

    def creation(
        self, first: list[Any], workflow: str, key: str | None,
        priority: int = 0, deadline: int | None = None,
    ) -> list[Any]:
        """The batch that creates an instance: ``first`` (its ``created`` or
        ``child_created``), its ``options`` if it has any, and ``queued`` if
        capacity gives it no slot. A slot taken for it is given back by
        ``unclaim`` if the batch is not written; the caller then starts it
        (``Engine._start``: it runs, or enters the queue)."""
        iid, now = first[r.INSTANCE], first[r.TS]
        batch = [first]
        if priority or deadline is not None or key is not None:
            batch.append(r.make(r.OPTIONS, now, iid, priority, deadline, key))
        # An unregistered workflow's instance waits for it (Engine._start) with no slot.
        if workflow in self._host.workflows and not self.claim(iid, workflow, key):
            batch.append(r.make(r.QUEUED, now, iid))
        return batch

    def unclaim(self, iid: str) -> None:
        """The batch of ``creation`` was not written: its slot, if any, is free."""
        self.released(iid)

    def key_of_blob(self, name: str, blob: bytes) -> str | None:
        """``key_of`` for an input kept encoded (a schedule's, a debounce's).
        A key function that fails is logged, and the instance gets no key:
        a tick or a debounced start is not lost to it."""
        limits = self.limits.get(name)
        if limits is None or limits.key is None:
            return None
        try:
            return self.key_of(name, self._host.codec.decode(blob))
        except Exception as exc:
            logger.error("workflow %r: its key function failed on an input (%s: %s); "
                         "the instance is started with no concurrency key", name,
                         type(exc).__name__, exc)
            return None

    def waking(self, iid: str, key: str | None) -> list[list[Any]]:
        """The records to append in the batch after one that makes ``iid``
        running: the end of its wait on ``key`` (key None: a restart of a
        finished instance). ``[queued]`` if capacity has no slot for it,
        else nothing (a slot is taken for it if it needs one). After the
        batch, written or not, call ``woken``."""
        host, cap = self._host, self.capacity
        entry = host.index.instances.get(iid)
        if (
            cap is None or entry is None or not cap.governs(entry.workflow)
            or entry.workflow not in host.workflows or iid in cap.holding or iid in host.running
            or not self._owns(iid)  # another engine's: its owner queues it, or runs it
        ):
            return []
        if key is None:
            wakes = entry.state in lc.FINISHED
        else:
            wakes = entry.state in lc.PARKED and key in (entry.pending or ())
        if not wakes or cap.take(iid, entry.workflow, _key(entry)):
            return []
        return [r.make(r.QUEUED, host.now_ms(), iid)]

    async def append_waking(self, rec: list[Any], key: str | None = "") -> None:
        """Append a record that may make its instance running (a signal, a
        timer woken: the end of the wait on its key, reserved meanwhile as
        ``Host.append_ending`` does; key None: a restart), with ``queued`` in
        its batch if capacity has no slot for it."""
        host = self._host
        iid = rec[r.INSTANCE]
        wake = self.waking(iid, None if key is None else rec[r.KEY])
        done = None
        if key is not None:
            mark = (iid, rec[r.KEY])
            host.reserved[mark] = done = trio.Event()
        try:
            await (host.append_many([rec, *wake]) if wake else host.append(rec))
        finally:
            if done is not None:
                del host.reserved[mark]
                done.set()
            self.woken(iid)

    def woken(self, iid: str) -> None:
        """After a batch with ``waking``'s records: a slot taken for an
        instance that is not running after all (the batch failed, the
        record did not wake it) is given back; a queued one enters the queue."""
        cap = self.capacity
        if cap is None:
            return
        entry = self._host.index.instances.get(iid)
        if (
            iid in cap.holding and iid not in self._host.running
            and (entry is None or entry.state != lc.RUNNING)
        ):
            cap.release(iid)
        if entry is not None and entry.state == lc.QUEUED and cap.governs(entry.workflow):
            self._enqueue(iid, entry)  # its ``queued`` is applied: it enters the queue

    def handoff(self, iid: str) -> list[list[Any]]:
        """For the batch of ``iid``'s outcome: the ``dequeued`` of the queued
        instance that takes its slot, if one may (one start per freed slot,
        with no append of its own). Call ``handed`` after the batch."""
        cap = self.capacity
        if cap is None or iid not in cap.holding:
            return []
        nxt = cap.hand_over(iid)
        if nxt is None:
            return []
        return [r.make(r.DEQUEUED, self._host.now_ms(), nxt)]

    def handed(self, recs: list[list[Any]]) -> None:
        """After the outcome batch of ``handoff``: run the instance it
        started, or (the batch not written) put it back in the queue."""
        if not recs:
            return
        iid = recs[0][r.INSTANCE]
        host, cap = self._host, self.capacity
        if cap is None or iid not in cap.holding:
            return
        entry = host.index.instances.get(iid)
        # By the index, not ``written``: an append cancelled as it committed
        # may have landed. Running and this engine's: another engine that
        # took it (a shared journal) may have started it, and its
        # ``dequeued`` be the one the index shows.
        if entry is not None and entry.state == lc.RUNNING and self._owns(iid):
            if iid not in host.running and not host.draining and self._nursery is not None:
                self._run(iid)
            return
        cap.release(iid)
        if entry is not None and entry.state == lc.QUEUED:
            self._enqueue(iid, entry)

    def cancelling(self, ids: list[str]) -> None:
        """A cancel of ``ids`` is being written: none starts out of the queue."""
        done = trio.Event()
        for iid in ids:
            self._cancelling[iid] = done
            if self.capacity is not None:
                self.capacity.drop(iid)

    def cancelled(self, ids: list[str]) -> None:
        """The cancel's batch is written (or failed)."""
        for iid in ids:
            done = self._cancelling.pop(iid, None)
            if done is not None:
                done.set()

    def may_dequeue(self, iid: str) -> bool:
        """Whether a runner may write ``dequeued`` for ``iid`` now (no cancel
        of it is being written). Checked with no await before the append."""
        return iid not in self._cancelling

    async def cancel_written(self, iid: str) -> None:
        """Return once no cancel of ``iid`` is being written."""
        done = self._cancelling.get(iid)
        if done is not None:
            await done.wait()

    # -- slots ----------------------------------------------------------------------

    def claim(self, iid: str, workflow: str, key: str | None) -> bool:
        """For ``invoke``: whether the new instance may run at once (a slot
        taken, or no limit); False: its batch gets ``queued``."""
        cap = self.capacity
        return cap is None or not cap.governs(workflow) or cap.take(iid, workflow, key)

    def admit(self, iid: str, entry: InstanceEntry) -> bool:
        """Whether to run ``iid`` now; if not, it is queued (or being queued)."""
        cap = self.capacity
        if cap is None or not cap.governs(entry.workflow):
            return True
        if iid in cap.queued or iid in self._queuing:
            return False
        if iid in cap.holding:
            return True  # claimed at invoke
        if entry.state == lc.QUEUED:
            self._enqueue(iid, entry)
            return False
        if cap.take(iid, entry.workflow, _key(entry)):
            return True
        assert self._nursery is not None
        self._queuing.add(iid)
        self._nursery.start_soon(self._queue, iid)
        return False

    def released(self, iid: str) -> None:
        """``iid``'s runner ended: its slot goes to the next in the queue."""
        if self.capacity is not None:
            self.capacity.release(iid)

    def dropped(self, iid: str) -> None:
        """``iid`` finished while queued (cancelled)."""
        if self.capacity is not None:
            self.capacity.drop(iid)

    def _enqueue(self, iid: str, entry: InstanceEntry) -> None:
        assert self.capacity is not None
        if not self._owns(iid):  # another engine took it (a shared journal): its to start
            return
        priority = entry.flow[0] if entry.flow is not None else 0
        self.capacity.enqueue(iid, entry.workflow, _key(entry), priority, entry.created_ms)

    async def _queue(self, iid: str) -> None:
        """Write ``queued`` for an instance that woke or resumed with no slot."""
        host = self._host
        try:
            entry = host.entry(iid)
            rec = r.make(r.QUEUED, host.now_ms(), iid)
            if entry.state == lc.RUNNING:
                await host.append(rec)
            elif entry.state in lc.PARKED:
                await end_wait(host, iid, rec)  # with the waits its deadline ended
        except (JournalFailed, JournalClosed, EngineError) as exc:
            logger.error("instance %s could not be queued: %s", iid, exc,
                         extra={"instance_id": iid})
            return
        finally:
            self._queuing.discard(iid)
        if entry.state == lc.QUEUED and self.capacity is not None:
            self._enqueue(iid, entry)

    def _start_queued(self, iid: str, run: bool) -> bool:
        """Capacity chose ``iid``: whether it may start (it is still queued,
        no cancel of it is being written); ``run``: run it now."""
        host = self._host
        entry = host.index.instances.get(iid)
        if (
            entry is None or entry.state != lc.QUEUED or iid in host.running
            or iid in self._cancelling or host.draining or self._nursery is None
            or entry.workflow not in host.workflows or not self._owns(iid)
        ):
            return False
        if run:
            self._run(iid)
        return True

    def _owns(self, iid: str) -> bool:
        backend = self._host.backend
        return backend is not None and backend.owns(iid)

    # -- deadlines ----------------------------------------------------------------------

    def deadline_of(self, entry: InstanceEntry) -> int | None:
        """When the instance times out (ms), if it has a timeout."""
        if entry.flow is not None and entry.flow[1] is not None:
            return entry.flow[1]
        limits = self.limits.get(entry.workflow)
        if limits is None or limits.timeout is None:
            return None
        return entry.created_ms + round(limits.timeout * 1000)

    def arm(self, iid: str, entry: InstanceEntry) -> None:
        """Arm the instance's timeout, if it has one (once per engine run)."""
        deadline = self.deadline_of(entry)
        if deadline is not None and iid not in self._armed:
            self._armed.add(iid)
            self._push(deadline, "t" + iid)

    def _wake_at(self, ms: int, workflow: str) -> None:
        self._push(ms, "r" + workflow)

    def _push(self, ms: int, item: str) -> None:
        self._deadlines.arm(ms, item)

    def _fired(self, item: str) -> None:
        kind, name = item[0], item[1:]
        if kind == "r":
            if self.capacity is not None:
                self.capacity.reopen(name)
            return
        self._armed.discard(name)
        entry = self._host.index.instances.get(name)
        if entry is None or entry.state not in lc.LIVE or self._nursery is None:
            return
        deadline = self.deadline_of(entry)
        if deadline is not None and deadline <= self._host.now_ms():
            self._nursery.start_soon(self._time_out, name)
        elif deadline is not None:  # not yet (a clock stepped back): arm it again
            self.arm(name, entry)

    async def _time_out(self, iid: str) -> None:
        try:
            await self._cancel(iid, TIMEOUT)
        except (JournalFailed, JournalClosed, EngineError) as exc:
            logger.error("instance %s: its timeout could not be recorded: %s", iid, exc,
                         extra={"instance_id": iid})
            return
        logger.info("instance %s cancelled: its timeout passed", iid,
                    extra={"instance_id": iid})


class _Deadlines(Timed[str]):
    """Flow control's deadlines, on the engine's poller (timed.py)."""

    def __init__(self, due: Callable[[str], None]) -> None:
        super().__init__()
        self._due = due

    def due(self, name: str) -> None:
        self._due(name)


def _key(entry: InstanceEntry) -> str | None:
    return entry.flow[2] if entry.flow is not None else None
