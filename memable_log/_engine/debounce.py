"""Debounce: ``engine.debounce(workflow, key, delay=..., input=...)``.

Theory of operation (docs/design.md, "Schedules and debounce"). The index
keeps, per (workflow, key), the latest call (``index.debounces``: n, input
blob, ``due_ms``, None once its start was made). A call writes
``debounce_set`` with ``due_ms = now + delay``: the same ``n`` while a
start is pending (the input and the due time replaced: the start is pushed
back), ``n + 1`` once one was made. Its id, ``f"{workflow}~{key}~{n}"``, is
returned either way, so every call of one burst returns the same id.

The due time is a deadline on the engine's poller (timed.py). When it has
passed with no later call, the start is one batch: the instance's
``created`` (with its ``options`` and ``queued`` as flow control decides:
``FlowControl.creation``, as for ``invoke``), then ``debounce_set`` with the
same n and ``due_ms`` nil. A
crash before that batch leaves the start pending, and the next start arms
it again (overdue: at once); after it, the instance exists and the key's
next call begins a new n. A call and the start of one key are written
under its lock, so a call either pushes a pending start back or, if the
start won, begins the next n.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from .._backend.seam import refusal
from .._core import records as r
from .._core.errors import JournalClosed, JournalFailed, UnknownWorkflow
from .flow import FlowControl
from .host import Host
from .schedules import check_name
from .timed import KeyedLocks, Timed

logger = logging.getLogger("memable_log")

DebounceKey = tuple[str, str]  # (workflow, key)


def debounce_id(workflow: str, key: str, n: int) -> str:
    return f"{workflow}~{key}~{n}"


class Debouncer(Timed[DebounceKey]):
    """The engine's debounced starts."""

    def __init__(self, host: Host, flow: FlowControl, start: Callable[[str], None]) -> None:
        super().__init__()
        self._host = host
        self._flow = flow
        self._start = start
        self._locks: KeyedLocks[DebounceKey] = KeyedLocks()

    def started(self, nursery: trio.Nursery, timers: Any, arm: bool) -> None:
        """The engine started; ``arm``: arm every pending start (overdue: at once)."""
        self.begin(nursery, timers)
        if arm:
            for which, entry in self._host.index.debounces.items():
                if entry.due_ms is not None:
                    self.arm(entry.due_ms, which)

    def rearm(self) -> None:
        """Arm every pending start again: the engine rejoined a shared
        journal, and a start refused while it was out is due again."""
        for which, entry in self._host.index.debounces.items():
            if entry.due_ms is not None:
                self.arm(entry.due_ms, which)

    async def debounce(self, workflow: str, key: str, delay: float, value: Any) -> str:
        host = self._host
        backend = host.require()
        if type(workflow) is not str or workflow not in host.workflows:
            raise UnknownWorkflow(workflow, list(host.workflows))
        check_name(key, "debounce key", "~")
        if type(delay) not in (int, float):
            raise TypeError(f"delay must be a number of seconds, not {delay!r}")
        if not (delay > 0 and math.isfinite(delay)):
            raise ValueError(f"delay must be a finite number of seconds above 0, not {delay!r}")
        blob = host.encode(value, f"input of debounce {workflow!r} {key!r}")
        if backend.failed is not None:
            raise refusal(backend)
        which = (workflow, key)
        async with self._locks.hold(which):
            entry = host.index.debounces.get(which)
            if entry is not None and entry.due_ms is not None:
                n = entry.n  # pending: push it back
            else:
                n = 1 if entry is None else entry.n + 1
                while debounce_id(workflow, key, n) in host.index.instances:
                    n += 1  # an id taken by hand (engine.invoke): the next free one
            now = host.now_ms()
            due = now + math.ceil(delay * 1000)
            await host.append(r.make(r.DEBOUNCE_SET, now, r.ENGINE, workflow, key, n, blob, due))
        self.arm(due, which)
        return debounce_id(workflow, key, n)

    def due(self, name: DebounceKey) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(self._fire, name, name=f"memable:debounce:{name[0]}~{name[1]}")

    async def _fire(self, which: DebounceKey) -> None:
        """Start the pending start of ``which`` if it is due (else re-arm it)."""
        host = self._host
        workflow, key = which
        try:
            async with self._locks.hold(which):
                entry = host.index.debounces.get(which)
                if entry is None or entry.due_ms is None or host.draining:
                    return
                if entry.due_ms > host.now_ms():  # pushed back meanwhile
                    self.arm(entry.due_ms, which)
                    return
                instance_id = debounce_id(workflow, key, entry.n)
                await host.require().settled(instance_id)
                now = host.now_ms()
                create = instance_id not in host.index.instances
                recs = [r.make(r.DEBOUNCE_SET, now, r.ENGINE, workflow, key, entry.n, b"", None)]
                flow = self._flow
                if create:  # + options, + queued if capacity gives it no slot
                    recs[:0] = flow.creation(
                        r.make(r.CREATED, now, instance_id, workflow, entry.input),
                        workflow, flow.key_of_blob(workflow, entry.input),
                    )
                try:
                    await host.append_many(recs)
                except BaseException:
                    flow.unclaim(instance_id)
                    raise
        except (JournalFailed, JournalClosed) as exc:
            logger.error("debounce %r %r: start not made: %s", workflow, key, exc)
            return
        if create:
            logger.info("instance %s of %r created by debounce", instance_id, workflow,
                        extra={"instance_id": instance_id})
            self._start(instance_id)
