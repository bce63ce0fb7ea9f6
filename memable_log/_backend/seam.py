"""The backend seam: what the engine needs from the place its records live.

Theory of operation. The engine keeps no state of its own that a restart
would not rebuild: every change is a record, and the index (``_core/index``)
is what ``Index.apply`` makes of the records in order. A backend is where
those records live. It promises the engine four things:

* ``open(index)`` takes the journal for this engine (a lock, a lease) and
  feeds every record it holds to ``index.apply``, in order, before it
  returns; recovery's decisions are durable by then.
* ``append(rec)`` returns only once the record is durable and applied to
  that same index (the one ``apply`` for replay and for live appends), so
  the index never runs ahead of the durable history. It gives the record
  its sequence number.
* ``read(loc)`` returns a record the index points at (values too large to
  keep in memory are read back on demand).
* ``serve(calls)`` runs the backend's own background work until cancelled
  (compaction, hand-overs from other processes): anything that must change
  an instance goes through ``calls``, the engine's public operations, with
  the same checks as a program's call.

Everything else (running workflows, timers, the limiter, waits) is the
engine's and the same over every backend. The local journal
(``local.py``: a directory, or memory for tests) implements this
protocol; a PostgreSQL journal implements it with rows, a lease and NOTIFY,
without touching Context or the runner.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import trio

from .._core.errors import JournalFailed
from .._core.index import Index
from .._core.status import InstanceStatus


class EngineCalls(Protocol):
    """The engine's public operations a backend's services may call."""

    async def signal(
        self, workflow: str, instance_id: str, key: str, payload: Any = None
    ) -> None: ...

    # The operator actions handed over by other processes (memable invoke,
    # cancel, restart, forget), and the status the restart's check reads.
    async def invoke(
        self, name: str, input: Any = None, *, instance_id: str | None = None
    ) -> str: ...

    async def cancel(self, instance_id: str) -> None: ...

    async def restart(self, instance_id: str) -> None: ...

    async def forget(self, instance_id: str, key_or_prefix: str) -> None: ...

    def status(self, instance_id: str) -> InstanceStatus: ...

    # A journal shared by several engines (PostgreSQL) applies records that
    # other engines wrote to this engine's index from its background work,
    # not through ``append``: the engine learns of them here, or nothing in
    # it would wake (``wait``, ``events``, ``watch`` and ``event`` readers of
    # an instance another engine runs; an instance of this engine that
    # another engine signalled). Called right after ``index.apply``.
    def applied(self, rec: list[Any]) -> None: ...

    # Instances this engine now owns, taken over from an engine whose lease
    # expired (their records all applied): resumed as at a start.
    def claimed(self, instance_ids: list[str]) -> None: ...

    # Instances this engine no longer owns (fenced out, its lease lost):
    # their runners are cancelled at once and write nothing more.
    def lost(self, instance_ids: list[str]) -> None: ...

    # This engine lost its lease and joined again (a shared journal): the
    # engine-level starts refused meanwhile (schedules, debounce) are armed
    # again.
    def rejoined(self) -> None: ...


class Backend(Protocol):
    """Where an engine's records live. See the module comment."""

    # Workflows whose finished instances are kept for a time of their own
    # (register(retention=)), in ms; the engine fills it, compaction reads it.
    retention_by_workflow: dict[str, int]

    @property
    def failed(self) -> str | None:
        """Why the backend refuses writes (the engine is then unusable), or None."""
        ...

    def owns(self, instance_id: str) -> bool:
        """Whether this engine may run the instance (a shared journal runs
        each instance in one engine at a time; a local one owns them all)."""
        ...

    async def open(self, index: Index) -> None:
        """Take the journal, replay it into ``index``, make recovery durable."""
        ...

    async def close(self) -> None:
        """Release the journal (after ``serve`` has been cancelled)."""
        ...

    async def append(self, rec: list[Any]) -> None:
        """Durably append ``rec`` (see _core/records.make) and apply it to the index."""
        ...

    async def append_many(self, recs: list[list[Any]]) -> None:
        """Append records in order, durable together: a crash keeps all of
        them or none (one commit batch; format version 4 for a directory,
        one transaction for PostgreSQL), and none is acknowledged before
        all are."""
        ...

    async def read(self, loc: int) -> list[Any]:
        """The record at ``loc``, a location the index holds."""
        ...

    async def read_many(self, locs: list[int]) -> list[list[Any]]:
        """The records at ``locs``, in their order: what ``read`` gives for
        each, in one trip (a replay reads ahead, _engine/read_ahead.py)."""
        ...

    async def settled(self, instance_id: str) -> None:
        """Return once nothing of ``instance_id`` is in flight: no record of
        it still to be committed (an append cancelled while it waited may
        yet be), and it is not being taken out of the index by background
        work (compaction). At once if so already."""
        ...

    async def serve(
        self, calls: EngineCalls, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run background work until cancelled; ``started()`` once work left
        for the engine by other processes has been applied."""
        ...


@runtime_checkable
class WordsItsRefusal(Protocol):
    """A backend whose refusal is not a disk's (a database names its server)."""

    def refusal(self) -> JournalFailed: ...


def refusal(backend: Backend) -> JournalFailed:
    """What an operation raises when ``backend.failed`` is set."""
    if isinstance(backend, WordsItsRefusal):
        return backend.refusal()
    return JournalFailed(backend.failed or "the journal failed")


@runtime_checkable
class Shared(Protocol):
    """A journal shared by several engines (PostgreSQL): an instance runs
    in one engine at a time, and an operator action from another takes it."""

    async def take(self, instance_id: str, *, resume: bool) -> None: ...

    async def caught_up(self) -> None: ...

    # Those of ``ids``, queued in other engines, that still wait for
    # capacity, taken to run here (their owners fenced out; each one then
    # reaches the engine through ``calls.claimed``). The ids taken.
    async def take_queued(self, ids: list[str]) -> list[str]: ...


async def take(backend: Backend, instance_id: str, *, resume: bool = True) -> None:
    """Before an operator action (cancel, restart, forget, wake) on an
    instance: on a shared journal, make this engine its owner (its former
    owner fenced out, every record it wrote applied here; ``resume``: a
    live instance then runs here). Nothing to do on a local journal."""
    if isinstance(backend, Shared):
        await backend.take(instance_id, resume=resume)


async def known(backend: Backend, index: Index, instance_id: str) -> None:
    """Before an action checks an instance against this engine's index: on a
    shared journal, one it does not know yet may be one another engine
    created a moment ago, so the log is read first (a tail poll). Nothing
    to do when it is known, or on a local journal."""
    if instance_id not in index.instances and isinstance(backend, Shared):
        await backend.caught_up()
