"""Flow control: which instance may run now. No I/O, no trio.

Theory of operation (docs/design.md, "Flow control"). An instance belongs
to up to three *groups*: the engine (the builder's ``max_running``), its
workflow (``register(max_running=, rate=)``) and its workflow's key
(``max_running_per_key``). It may run when every group has room and its
workflow's rate window allows one more start. ``take`` gives a slot at
once if it can (the engine then runs the instance); otherwise the engine
writes ``queued`` and calls ``enqueue``. A slot is held while the runner
runs; ``release`` (the run ended or parked) gives it back and *pumps*: the
best startable queued instances start, through the engine's ``start``.
Nothing polls: a release, an enqueue or a rate window that opens (a
deadline the engine arms with ``wake_at`` and hands back to ``reopen``)
are the only moments anything starts.

The queue is three levels of heaps, each with lazy deletion, so a start
costs O(log n) however many instances wait behind full keys:

* per key (``_Group.heap``): its queued instances, by ``Order``:
  priority (higher first), created time, then arrival;
* per workflow (``_Flow.heap``): ``(order, key)`` for the head of each key
  with room, pushed whenever a key's head changes or it gets room again;
* per engine (``Capacity.heap``): ``(order, workflow)`` for the head of each
  workflow with room, pushed likewise.

Each key and workflow keeps the order it last pushed up (``adv``): only
that entry is valid, so there is one per key or workflow; one whose group
has no room any more, or whose head moved on, is stale and dropped when
it surfaces. An instance dropped from the queue (cancelled,
timed out) leaves ``queued``; its heap entry is dropped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Order = tuple[int, int, int]  # -priority, created_ms, arrival


@dataclass(frozen=True, slots=True)
class Limits:
    """A workflow's flow-control settings (``Engine.register``)."""

    max_running: int | None = None
    key: Callable[[Any], str] | None = None
    max_running_per_key: int | None = None
    rate: tuple[int, float] | None = None
    timeout: float | None = None
    retention: float | None = None

    @property
    def limited(self) -> bool:
        """Whether an instance of the workflow may have to wait for a slot."""
        return (
            self.max_running is not None or self.max_running_per_key is not None
            or self.rate is not None
        )


def check_limits(name: str, limits: Limits) -> None:
    """TypeError / ValueError naming the workflow and the setting that is wrong."""
    for field, value in (("max_running", limits.max_running),
                         ("max_running_per_key", limits.max_running_per_key)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"workflow {name!r}: {field} must be an int >= 1, not {value!r}")
    if limits.key is not None and not callable(limits.key):
        raise TypeError(f"workflow {name!r}: key must be a function of the input returning a str")
    if limits.max_running_per_key is not None and limits.key is None:
        raise ValueError(f"workflow {name!r}: max_running_per_key needs key=, a function "
                         "of the input that returns the key")
    if limits.rate is not None:
        ok = (
            type(limits.rate) is tuple and len(limits.rate) == 2
            and type(limits.rate[0]) is int and limits.rate[0] >= 1
            and isinstance(limits.rate[1], int | float) and limits.rate[1] > 0
        )
        if not ok:
            raise ValueError(f"workflow {name!r}: rate must be (n, seconds) with n >= 1 "
                             f"and seconds > 0, not {limits.rate!r}")
    for field, seconds in (("timeout", limits.timeout), ("retention", limits.retention)):
        if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
            raise ValueError(f"workflow {name!r}: {field} must be seconds >= 0, not {seconds!r}")


class _Group:
    """The queued instances of one key of a workflow (key None: no per-key limit)."""

    __slots__ = ("adv", "heap", "key", "running")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.adv: Order | None = None  # its head as entered in its workflow's heap
        self.running = 0
        self.heap: list[tuple[Order, str]] = []


class _Flow:
    """One workflow: its limits, its running count, its keys, its rate window."""

    __slots__ = ("adv", "groups", "heap", "limit", "name", "per_key", "rate_ms", "rate_n",
                 "running", "starts", "wake_ms")

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limit = limits.max_running
        self.per_key = limits.max_running_per_key
        self.rate_n, self.rate_ms = (
            (limits.rate[0], round(limits.rate[1] * 1000)) if limits.rate else (0, 0)
        )
        self.running = 0
        self.groups: dict[str | None, _Group] = {}
        self.heap: list[tuple[Order, str | None]] = []
        self.starts: deque[int] = deque()  # times of the latest starts, for the rate
        self.wake_ms: int | None = None  # the rate deadline armed, if any
        self.adv: Order | None = None  # its head as entered in the engine's heap

    def group(self, key: str | None) -> _Group:
        key = key if self.per_key is not None else None
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(key)
        return group


class Capacity:
    """Slots and the queue, for one engine run (see the module comment).

    ``start(instance_id, run) -> bool`` runs a queued instance the pump
    chose (False: it is no longer queued, cancelled say; its slot is given
    back); with ``run`` False it only says whether it may (``hand_over``:
    the caller writes its start in a batch of its own);
    ``wake_at(ms, workflow)`` arms a deadline that calls ``reopen(workflow)``;
    ``now_ms`` is the engine's clock.
    """

    def __init__(
        self,
        max_running: int | None,
        now_ms: Callable[[], int],
        start: Callable[[str, bool], bool],
        wake_at: Callable[[int, str], None],
    ) -> None:
        self.total_limit = max_running
        self.running = 0
        self.flows: dict[str, _Flow] = {}
        self.heap: list[tuple[Order, str]] = []
        self.queued: dict[str, Order] = {}  # instance -> its place, while queued
        self.holding: dict[str, tuple[_Flow, _Group]] = {}  # instance -> its slot
        self.paused = False  # the engine is stopping: nothing starts
        self._now_ms = now_ms
        self._start = start
        self._wake_at = wake_at
        self._arrival = 0
        self._hand: list[str] | None = None  # hand_over: the start chosen, not run

    def configure(self, workflow: str, limits: Limits) -> None:
        if limits.limited:
            self.flows[workflow] = _Flow(workflow, limits)

    def governs(self, workflow: str) -> bool:
        """Whether instances of ``workflow`` need a slot to run."""
        return self.total_limit is not None or workflow in self.flows

    def _flow(self, workflow: str) -> _Flow:
        flow = self.flows.get(workflow)
        if flow is None:  # no limits of its own: only the engine's
            flow = self.flows[workflow] = _Flow(workflow, Limits())
        return flow

    # -- room ---------------------------------------------------------------------

    def _total_open(self) -> bool:
        return self.total_limit is None or self.running < self.total_limit

    def _flow_open(self, flow: _Flow) -> bool:
        if flow.limit is not None and flow.running >= flow.limit:
            return False
        if flow.rate_n:
            starts = self._window(flow)
            if len(starts) >= flow.rate_n:
                reopens = starts[0] + flow.rate_ms
                if flow.wake_ms is None or reopens < flow.wake_ms:
                    flow.wake_ms = reopens
                    self._wake_at(reopens, flow.name)
                return False
        return True

    def _window(self, flow: _Flow) -> deque[int]:
        """The workflow's starts within its rate window (older ones dropped)."""
        now, starts = self._now_ms(), flow.starts
        while starts and starts[0] <= now - flow.rate_ms:
            starts.popleft()
        return starts

    @staticmethod
    def _group_open(flow: _Flow, group: _Group) -> bool:
        return flow.per_key is None or group.running < flow.per_key

    def _take(self, iid: str, flow: _Flow, group: _Group) -> None:
        self.running += 1
        flow.running += 1
        group.running += 1
        if flow.rate_n:
            flow.starts.append(self._now_ms())
        self.holding[iid] = (flow, group)

    # -- the engine's calls -------------------------------------------------------------

    def take(self, iid: str, workflow: str, key: str | None) -> bool:
        """Give ``iid`` a slot now if every group has room; whether it did.

        With room everywhere, no queued instance of its groups could start
        (the pump would have started it), so taking the slot passes nobody.
        """
        if self.paused:
            return False
        flow = self._flow(workflow)
        group = flow.group(key)
        if not (self._total_open() and self._group_open(flow, group) and self._flow_open(flow)):
            return False
        self._take(iid, flow, group)
        return True

    def room(self, workflow: str) -> int | None:
        """How many more instances of ``workflow`` could take a slot now by
        the engine's limit, the workflow's and its rate (None: no limit);
        its keys' limits are ``key_room``'s. Nothing is taken."""
        if self.paused:
            return 0
        left = None if self.total_limit is None else self.total_limit - self.running
        flow = self.flows.get(workflow)
        if flow is not None:
            if flow.limit is not None:
                left = _least(left, flow.limit - flow.running)
            if flow.rate_n:
                left = _least(left, flow.rate_n - len(self._window(flow)))
        return left

    def key_room(self, workflow: str, key: str | None) -> int | None:
        """How many more instances of ``workflow`` with concurrency key
        ``key`` its per-key limit lets run now (None: no such limit)."""
        flow = self.flows.get(workflow)
        if flow is None or flow.per_key is None:
            return None
        group = flow.groups.get(key)
        return flow.per_key - (group.running if group is not None else 0)

    def enqueue(
        self, iid: str, workflow: str, key: str | None, priority: int, created_ms: int
    ) -> None:
        """Queue ``iid`` (its ``queued`` record is applied), then pump."""
        if iid in self.queued or iid in self.holding:
            return
        self._arrival += 1
        order = (-priority, created_ms, self._arrival)
        self.queued[iid] = order
        flow = self._flow(workflow)
        group = flow.group(key)
        heapq.heappush(group.heap, (order, iid))
        if group.heap[0][1] == iid:
            self._touch(flow, group)
        self.pump()

    def drop(self, iid: str) -> None:
        """``iid`` left the queue without starting (cancelled)."""
        self.queued.pop(iid, None)

    def release(self, iid: str) -> None:
        """``iid`` no longer runs: its slot is free; start who can."""
        if self._free(iid):
            self.pump()

    def hand_over(self, iid: str) -> str | None:
        """``iid``'s run is ending: free its slot and choose the queued
        instance that takes it, without starting it (the caller writes its
        ``dequeued`` with ``iid``'s outcome, then runs it). It holds the
        slot from now on; None if nobody may take it."""
        if not self._free(iid):
            return None
        self._hand = []
        try:
            self.pump()
            hand = self._hand
        finally:
            self._hand = None
        return hand[0] if hand else None

    def _free(self, iid: str) -> bool:
        held = self.holding.pop(iid, None)
        if held is None:
            return False
        flow, group = held
        self._give_back(flow, group)
        self._touch(flow, group)
        if self.total_limit is not None:
            # The engine's slot: any workflow's head may take it.
            for other in self.flows.values():
                if other is not flow and other.heap and other.adv is None:
                    self._touch_flow(other)
        return True

    def _give_back(self, flow: _Flow, group: _Group) -> None:
        self.running -= 1
        flow.running -= 1
        group.running -= 1

    def reopen(self, workflow: str) -> None:
        """The workflow's rate deadline passed: its head may start."""
        flow = self.flows.get(workflow)
        if flow is not None:
            flow.wake_ms = None
            flow.adv = None
            self._touch_flow(flow)
            self.pump()

    # -- the queue ----------------------------------------------------------------------
    # Each key and workflow remembers the order it last *advertised* one
    # level up (``adv``): an entry up there is valid only while it equals
    # it, so each has at most one valid entry, and a stale one is popped
    # once, when it surfaces.

    def _clean(self, group: _Group) -> None:
        heap = group.heap
        while heap and self.queued.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # dropped from the queue

    def _touch(self, flow: _Flow, group: _Group) -> None:
        """The key's head changed or it got room: advertise it up the levels."""
        self._clean(group)
        heap = group.heap
        if heap and self._group_open(flow, group):
            if group.adv != heap[0][0]:
                group.adv = heap[0][0]
                heapq.heappush(flow.heap, (group.adv, group.key))
        else:
            group.adv = None
        self._touch_flow(flow)

    def _flow_head(self, flow: _Flow) -> tuple[Order, _Group] | None:
        """The best key of ``flow`` with room, stale entries dropped."""
        heap = flow.heap
        while heap:
            order, key = heap[0]
            group = flow.groups[key]
            if group.adv != order:
                heapq.heappop(heap)  # stale
                continue
            self._clean(group)
            gheap = group.heap
            if gheap and gheap[0][0] == order and self._group_open(flow, group):
                return order, group
            heapq.heappop(heap)
            group.adv = None
            if gheap and self._group_open(flow, group):  # its head was dropped
                group.adv = gheap[0][0]
                heapq.heappush(heap, (group.adv, key))
        return None

    def _touch_flow(self, flow: _Flow) -> None:
        head = self._flow_head(flow)
        if head is not None and self._flow_open(flow):
            if flow.adv != head[0]:
                flow.adv = head[0]
                heapq.heappush(self.heap, (flow.adv, flow.name))
        else:
            flow.adv = None

    def pump(self) -> None:
        """Start queued instances, best first, while there is room (in
        ``hand_over``: choose one, and stop)."""
        heap = self.heap
        while heap and not self.paused and self._total_open():
            if self._hand:
                return  # hand_over chose its one
            order, name = heap[0]
            flow = self.flows[name]
            if flow.adv != order:
                heapq.heappop(heap)  # stale
                continue
            head = self._flow_head(flow)
            heapq.heappop(heap)
            flow.adv = None
            if head is None or head[0] != order or not self._flow_open(flow):
                self._touch_flow(flow)  # re-advertise its true head, if it has room
                continue
            group = head[1]
            _, iid = heapq.heappop(group.heap)
            del self.queued[iid]
            self._take(iid, flow, group)
            hand = self._hand
            if hand is not None and self._start(iid, False):
                hand.append(iid)
            elif hand is not None or not self._start(iid, True):
                del self.holding[iid]
                self._give_back(flow, group)
                if flow.rate_n:
                    flow.starts.pop()
            self._touch(flow, group)


def _least(a: int | None, b: int) -> int:
    return b if a is None else min(a, b)
