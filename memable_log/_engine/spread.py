"""Queued instances of other engines, run where there is room (a journal
shared by several engines: PostgreSQL).

Theory of operation (SPEC-NEXT §9: an invoked instance is run by any
engine with capacity). Capacity is each engine's own (capacity.py): an
instance that found no slot where it was invoked waits in that engine's
queue, which may be full while another engine has room. Every engine's
index holds the whole log, so every engine sees every queued instance, and
one with room takes them:

* ``seen(iid)``, after a record of the instance that another engine wrote
  is applied or after this engine lost it: if it is queued and not this
  engine's, it is a *candidate*, kept by workflow; else it is not.
* ``run`` wakes when a candidate appears or a slot here frees (``wake``),
  and every ``RETRY`` seconds while candidates remain (a rate window may
  have reopened, a take may have lost a race). For each workflow
  registered here it counts the starts capacity allows now
  (``Capacity.room``, ``key_room``), picks that many candidates in queue
  order (priority, then creation), and asks the backend to take them
  (``Shared.take_queued``: only those still queued in the database, so
  never one whose start committed). Each one taken reaches the engine as a
  claimed instance and enters its queue, which starts it in its own order;
  if the room is gone by then it waits here, where another engine with room
  may take it again.

Nothing here on a local journal: the engine owns every instance. Order
across engines: each engine starts its own queue in priority and creation
order; a taken instance joins the taker's queue in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .._core import lifecycle as lc
from .._core.errors import EngineError, JournalClosed, JournalFailed
from .._core.index import InstanceEntry
from .capacity import Capacity

if TYPE_CHECKING:
    from .._backend.seam import Shared
    from .host import Host

logger = logging.getLogger("memable_log")

RETRY = 1.0  # seconds between looks while candidates remain
BATCH = 64  # instances asked for at most per workflow and look, with no limit here
Key = str | None  # a concurrency key


class Spread:
    """The candidates, and the task that takes them. See the module comment."""

    def __init__(self, host: Host, capacity: Callable[[], Capacity | None]) -> None:
        self._host = host
        self._capacity = capacity
        self._by_workflow: dict[str, set[str]] = {}
        self._workflow_of: dict[str, str] = {}
        self._wake = trio.Event()

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._workflow_of

    def seen(self, instance_id: str) -> None:
        """A record of the instance was applied, or this engine lost it."""
        host = self._host
        entry = host.index.instances.get(instance_id)
        backend = host.backend
        if (
            entry is not None and entry.state == lc.QUEUED
            and backend is not None and not backend.owns(instance_id)
        ):
            if instance_id not in self._workflow_of:
                self._workflow_of[instance_id] = entry.workflow
                self._by_workflow.setdefault(entry.workflow, set()).add(instance_id)
                self.wake()
            return
        workflow = self._workflow_of.pop(instance_id, None)
        if workflow is not None:
            ids = self._by_workflow[workflow]
            ids.discard(instance_id)
            if not ids:
                del self._by_workflow[workflow]

    def wake(self) -> None:
        """Look again (a candidate came, or a slot here freed)."""
        if self._by_workflow:
            self._wake.set()

    def clear(self) -> None:
        self._by_workflow.clear()
        self._workflow_of.clear()

    async def run(self, backend: Shared) -> None:
        """Take candidates while this engine has room, until cancelled."""
        while True:
            with trio.move_on_after(RETRY if self._by_workflow else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()
            picked = self._pick()
            if not picked:
                continue
            try:
                got = await backend.take_queued(picked)
            except (JournalFailed, JournalClosed, EngineError) as exc:
                # Harmless (they wait where they are); looked at again in RETRY s.
                logger.debug("queued instances of other engines not taken: %s", exc)
                continue
            for iid in got:
                self.seen(iid)  # claimed: this engine's now

    def _pick(self) -> list[str]:
        """Candidates this engine could start now, best first, by workflow."""
        cap, host = self._capacity(), self._host
        if cap is None or host.draining:
            return []
        picked: list[str] = []
        index = host.index.instances
        for workflow, ids in self._by_workflow.items():
            if workflow not in host.workflows:
                continue
            room = cap.room(workflow)
            want = BATCH if room is None else min(room, BATCH)
            if want <= 0:
                continue
            keys: dict[Key, int | None] = {}
            for _, _, iid, key in sorted(_orders(index, ids)):
                if key not in keys:
                    keys[key] = cap.key_room(workflow, key)
                left = keys[key]
                if left is not None:
                    if left <= 0:
                        continue
                    keys[key] = left - 1
                picked.append(iid)
                want -= 1
                if not want:
                    break
        return picked


def _orders(index: dict[str, InstanceEntry], ids: set[str]) -> list[tuple[int, int, str, Key]]:
    """Each candidate still queued: its place in a queue (priority, higher
    first; created time), then its id and concurrency key."""
    out = []
    for iid in ids:
        entry = index.get(iid)
        if entry is None or entry.state != lc.QUEUED:  # gone meanwhile (retention)
            continue
        flow = entry.flow
        out.append((-flow[0] if flow else 0, entry.created_ms, iid, flow[2] if flow else None))
    return out
