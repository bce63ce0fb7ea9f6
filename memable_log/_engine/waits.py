"""Durable waits blocked in memory, and when an instance leaves memory.

Theory of operation (SPEC-NEXT §1). A run of an instance gets one
``RunWaits``. A ``suspend`` or ``timer`` that cannot return yet blocks here
(``block``), after its wait is registered durably: the task sleeps until
the wait's deadline, or until ``wake(key)`` (engine.signal appended its
signal). Blocking never cancels anything: a step running in another branch
goes on, and a wait that resolves while the instance is in memory lets its
branch go on in place.

Only once *every* task of the workflow is blocked in a durable wait is the
instance dropped: ``parked`` is appended with the keys they wait on (in the
order first reached) and, if the lifecycle took it (no wait resolved while
it was written), every blocked task raises ``Unwind`` and the run ends with
nothing of the workflow left in memory. If a wait did resolve meanwhile,
its task is woken and the instance stays.

Which tasks the workflow has is trio's task tree: the runner's task (the
root: the workflow is awaited in it) and every task of every nursery below
it. A task counts as blocked if it is blocked here, or if it waits at the
exit of a nursery (its await chain is in trio's nursery exit) whose tasks
all count as blocked. The tree is looked at when a task blocks, and when a
task of a run with blocked tasks exits (``TaskExits``, a trio instrument):
a branch that returns may leave every other one blocked, and no block
would see it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import Task

from .._core import lifecycle as lc
from .._core import records as r

if TYPE_CHECKING:
    from .host import Host

logger = logging.getLogger("memable_log")


class Unwind(BaseException):
    """Raised in every blocked task of a run whose instance was parked (a
    BaseException: ``except Exception`` in a workflow cannot swallow it)."""


def _nursery_exit_code() -> Any:
    """The code object of trio's nursery exit wait, if this trio has it."""
    fn = getattr(trio.Nursery, "_nested_child_finished", None)
    return getattr(fn, "__code__", None)


# A task whose await chain runs through this waits at a nursery's exit.
# Pinned by tests/engine/test_waits.py: if a trio release renames it, tasks
# at nursery exits never count as blocked, so instances with nurseries stay
# in memory (correct, but not dropped), and that test fails.
_NURSERY_EXIT = _nursery_exit_code()


def at_nursery_exit(task: Task) -> bool:
    """Whether ``task`` waits at the exit of a nursery that still has tasks."""
    nurseries = task.child_nurseries
    if not nurseries or not nurseries[-1].child_tasks or _NURSERY_EXIT is None:
        return False
    return any(frame.f_code is _NURSERY_EXIT for frame, _ in task.iter_await_frames())


class RunWaits:
    """The waits one run of an instance is blocked in (module comment)."""

    def __init__(self, host: Host, instance_id: str) -> None:
        self._host = host
        self._iid = instance_id
        self.root = trio.lowlevel.current_task()
        self._blocked: dict[Task, tuple[str, int | None]] = {}  # task -> key, deadline
        self._scopes: dict[Task, trio.CancelScope] = {}
        self._woken: set[Task] = set()
        self._dropping = False
        self._changes = 0  # counts blocks, wakes and exits
        self._failed_at = -1  # _changes when a drop last did not take
        self.dropped = False

    async def block(self, key: str, deadline_ms: int | None, register: list[Any] | None) -> None:
        """Block until the wait on ``key`` may have ended: it resolved in the
        index, or ``deadline_ms`` passed. The caller looks again.

        ``register``, if given, is the wait's registration record, appended
        first (with ``parked``, in one batch, if this task is the last to
        block). Raises Unwind once the instance is parked.
        """
        host, task = self._host, trio.lowlevel.current_task()
        span = None if host.tracer is None else host.tracer.wait(  # tracing.py
            host.index.instances, self._iid, key, register)
        try:
            if register is not None:
                await self._register(task, key, deadline_ms, register)
            while True:
                if self.dropped:
                    raise Unwind
                if task in self._woken or lc.resolved(host.entry(self._iid), key):
                    return
                if deadline_ms is not None and host.now_ms() >= deadline_ms:
                    return
                self._blocked[task] = (key, deadline_ms)
                self._changes += 1
                if self._may_drop():
                    await self._drop()
                    continue
                with trio.CancelScope() as scope:
                    self._scopes[task] = scope
                    if deadline_ms is None:
                        await trio.sleep_forever()
                    else:
                        await host.sleep_until_ms(deadline_ms)
                self._scopes.pop(task, None)
        finally:
            self._blocked.pop(task, None)
            self._scopes.pop(task, None)
            self._woken.discard(task)
            if span is not None:
                span.set_attribute("memable.wait.parked", self.dropped)
                span.end()

    def wake(self, key: str) -> None:
        """The wait on ``key`` resolved (its record is in the index): let its task go on."""
        for task, (blocked_on, _) in self._blocked.items():
            if blocked_on == key:
                self._wake(task)
                return

    def recheck(self) -> None:
        """A task of the run exited: have a blocked task look at the tree again."""
        self._changes += 1
        if self.dropped or self._dropping:
            return
        for scope in self._scopes.values():
            scope.cancel()
            return

    def _wake(self, task: Task) -> None:
        del self._blocked[task]
        self._changes += 1
        self._woken.add(task)
        scope = self._scopes.get(task)
        if scope is not None:
            scope.cancel()

    async def _register(
        self, task: Task, key: str, deadline_ms: int | None, register: list[Any]
    ) -> None:
        host = self._host
        self._blocked[task] = (key, deadline_ms)
        if self._may_drop():
            await self._drop(first=register)  # the common case: one fsync
            return
        # Not blocked while its registration is written: a drop now would
        # name a wait the index does not have yet.
        del self._blocked[task]
        await host.append(register)

    def _may_drop(self) -> bool:
        return (
            not self._dropping and self._changes != self._failed_at
            and quiescent(self.root, self._blocked, self._host.now_ms())
        )

    async def _drop(self, first: list[Any] | None = None) -> None:
        """Park the instance on the waits its tasks are blocked in."""
        host, iid = self._host, self._iid
        order = {key: i for i, key in enumerate(host.entry(iid).waits or ())}
        blocked_on = {key for key, _ in self._blocked.values()}
        keys = sorted(blocked_on, key=lambda k: order.get(k, len(order)))
        parked = r.make(r.PARKED, host.now_ms(), iid, keys)
        self._dropping = True
        try:
            await host.append_many([first, parked] if first is not None else [parked])
        finally:
            self._dropping = False
        entry = host.entry(iid)
        if entry.state in lc.PARKED:
            self.dropped = True
            for scope in self._scopes.values():
                scope.cancel()
            logger.info("instance %s: waiting on %s", iid, ", ".join(map(repr, keys)),
                        extra={"instance_id": iid})
            return
        # A wait resolved while the record was written (the lifecycle kept
        # the instance running): its task goes on.
        woke = [t for t, (key, _) in self._blocked.items() if lc.resolved(entry, key)]
        for task in woke:
            self._wake(task)
        if not woke:
            self._failed_at = self._changes  # not again until something changes


def quiescent(root: Task, blocked: dict[Task, tuple[str, int | None]], now_ms: int) -> bool:
    """Whether every task of the tree under ``root`` is blocked in a wait
    that is not due, or waits at a nursery exit for such tasks."""
    stack = [root]
    while stack:
        task = stack.pop()
        wait = blocked.get(task)
        if wait is None:
            if not at_nursery_exit(task):
                return False
        elif wait[1] is not None and wait[1] <= now_ms:
            return False  # due: it goes on
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return True


class TaskExits(trio.abc.Instrument):
    """Tells a run with blocked tasks that one of its tasks exited."""

    def __init__(self) -> None:
        self.runs: dict[Task, RunWaits] = {}  # root task -> its run

    def task_exited(self, task: Task) -> None:
        runs = self.runs
        if not runs:
            return
        nursery = task.parent_nursery
        while nursery is not None:
            parent = nursery.parent_task
            run = runs.get(parent)
            if run is not None:
                run.recheck()
                return
            nursery = parent.parent_nursery
