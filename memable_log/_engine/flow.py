"""The engine's side of flow control: records, tasks and deadlines around
capacity.py (which decides, and does no I/O).

Theory of operation (docs/design.md, "Flow control"). The Engine asks
``admit`` before it runs any instance (``Engine._start``), and ``claim``
as ``invoke`` builds its batch: an instance that gets no slot at invoke is
written ``created`` (+ ``options``) + ``queued`` in one batch; one that gets
none when it wakes or resumes is written ``queued`` by a small task
(``_queue``; for a parked instance woken by its deadline, in the batch of
its ``timer_fired`` / ``suspend_timed_out``). Once a ``queued`` record is
applied the instance enters capacity's queue. ``released`` is called as a
runner ends (the run finished or parked): capacity starts whom it can.

Deadlines live on one poller of their own (a ``TimerQueue``, the same
one-task heap the waits use), items tagged by kind: ``"t" + instance`` for
an instance's timeout, ``"r" + workflow`` for a rate window that reopens.
An instance's timeout is its ``options`` deadline (``invoke(timeout=)``),
else its created time plus its workflow's ``timeout``; ``arm`` pushes it at
invoke and at start, and when it passes on a live instance the engine's
``cancel`` runs with reason ``"timeout"``.
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
        self._timers: TimerQueue | None = None
        self._nursery: trio.Nursery | None = None
        self._queuing: set[str] = set()  # a ``queued`` record being written
        self._polling = False
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

    # -- an engine run ------------------------------------------------------------

    def open(self, nursery: trio.Nursery, max_running: int | None) -> None:
        host = self._host
        self._nursery = nursery
        self._timers = TimerQueue(host.clock, self._fired)
        self.capacity = Capacity(max_running, host.now_ms, self._start_queued, self._wake_at)
        for name, limits in self.limits.items():
            self.capacity.configure(name, limits)
        self._polling = False  # its task starts with the first deadline

    def pause(self) -> None:
        """The engine is stopping: nothing more starts out of the queue."""
        if self.capacity is not None:
            self.capacity.paused = True

    def close(self) -> None:
        self.capacity = None
        self._timers = None
        self._nursery = None
        self._queuing.clear()
        self._armed.clear()

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

    def _start_queued(self, iid: str) -> bool:
        """Capacity chose ``iid``: run it, unless it is no longer queued."""
        host = self._host
        entry = host.index.instances.get(iid)
        if (
            entry is None or entry.state != lc.QUEUED or iid in host.running
            or host.draining or self._nursery is None or entry.workflow not in host.workflows
        ):
            return False
        self._run(iid)
        return True

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
        timers, nursery = self._timers, self._nursery
        if timers is None or nursery is None:
            return
        if not self._polling:  # an engine with no deadline of ours runs no task for them
            self._polling = True
            nursery.start_soon(timers.run)
        timers.push(ms, item)

    def _fired(self, item: str, deadline_ms: int) -> None:
        kind, name = item[0], item[1:]
        if kind == "r":
            if self.capacity is not None:
                self.capacity.reopen(name)
            return
        self._armed.discard(name)
        entry = self._host.index.instances.get(name)
        if (
            entry is not None and entry.state in lc.LIVE
            and self.deadline_of(entry) == deadline_ms and self._nursery is not None
        ):
            self._nursery.start_soon(self._time_out, name)

    async def _time_out(self, iid: str) -> None:
        try:
            await self._cancel(iid, TIMEOUT)
        except (JournalFailed, JournalClosed, EngineError) as exc:
            logger.error("instance %s: its timeout could not be recorded: %s", iid, exc,
                         extra={"instance_id": iid})
            return
        logger.info("instance %s cancelled: its timeout passed", iid,
                    extra={"instance_id": iid})


def _key(entry: InstanceEntry) -> str | None:
    return entry.flow[2] if entry.flow is not None else None
