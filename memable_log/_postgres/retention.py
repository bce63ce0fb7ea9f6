"""Retention on a shared journal: finished instances past the engine's
retention deleted from the database, in batches, and dropped from the index.

Theory of operation. What ``retention()`` means for a local journal
(compaction leaves out the instances finished and unchanged for longer
than the retention, ``register(retention=)`` per workflow), a sweep does
here every ``every`` seconds (``Retention.run``), or when called
(``sweep``):

* Candidates come from this engine's index: finished, last changed at or
  before its cutoff (the engine's clock; per workflow when registered so),
  nothing of them in this engine's commit in flight.
* Each batch is one transaction (``delete``): the candidates' lease rows
  locked ``FOR UPDATE SKIP LOCKED`` (a row an append holds is skipped, and
  every append that comes after waits: the fence and, since schema 3, the
  existence check of unfenced rows lock it ``FOR SHARE``); then a tail
  poll that starts after the locks (``caught_up``): every row of them
  committed before the locks is in the index, and none can commit after.
  Each locked instance still finished and past its cutoff there (another
  engine may have restarted it a moment ago) loses its lease row and its
  rows in ``ml_log``: those between its first seq (``first_seq``, kept by
  ``ml_append``) and its last, a range of the primary key, so no index of
  the log by instance costs every append. An append for it waiting on the
  lock is then refused (fenced out, or "gone" for a signal), and an invoke
  of the same id creates a new instance.
* Deleted instances leave this engine's index at once; candidates whose
  lease row is gone (another engine deleted them: the one with the
  shortest retention does) leave it at its own sweep. Until then another
  engine still lists them, and cannot read their large values.

Several engines sweeping at once delete each instance once (the locks);
none deletes a live instance (its index, caught up under the locks, says
finished). Deleting a batch scans the log from its oldest first row to its
newest last one: batches go in the order of their last rows, and a
long-lived instance makes its batch's range long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import trio

from .._core import lifecycle as lc
from .._core.errors import EngineError
from .driver import INT8, TEXT, TEXT_ARRAY, Conn, array, as_int, int8

if TYPE_CHECKING:
    from .._core.index import Index

logger = logging.getLogger("memable_log")

BATCH = 500  # instances per transaction
SLICE = 20_000  # instances of the index looked at between two turns of the event loop
_LOCK = ("SELECT instance_id, coalesce(first_seq, 1) FROM ml_instances "
         "WHERE instance_id = ANY($1) FOR UPDATE SKIP LOCKED")
_GONE = ("SELECT i FROM unnest($1::text[]) AS i WHERE NOT EXISTS ("
         "SELECT 1 FROM ml_instances m WHERE m.instance_id = i)")
_DROP = "DELETE FROM ml_instances WHERE instance_id = ANY($1)"
_DELETE = "DELETE FROM ml_log WHERE seq BETWEEN $2 AND $3 AND instance_id = ANY($1)"


class Host(Protocol):
    """What retention needs of its backend."""

    index: Index | None
    retention_by_workflow: dict[str, int]

    def in_flight(self, instance_id: str) -> bool: ...

    def retire(self, instance_id: str) -> None: ...

    async def caught_up(self) -> None: ...

    async def connect(self, role: str) -> Conn: ...


def _texts(got: Any) -> list[str]:
    return [bytes(got.get_value(i, 0) or b"").decode() for i in range(got.ntuples)]


def _ids(ids: list[str]) -> bytes:
    return array(TEXT, [i.encode() for i in ids])


class Retention:
    """The sweeps of one open. See the module comment."""

    def __init__(
        self, host: Host, retention_ms: int | None, now_ms: Callable[[], int],
        every: float = 60.0,
    ) -> None:
        self.host = host
        self.retention_ms = retention_ms
        self.now_ms = now_ms
        self.every = every
        self.deleted = 0  # instances this engine deleted
        self._conn: Conn | None = None

    def _cutoffs(self) -> tuple[int | None, dict[str, int]] | None:
        own = self.host.retention_by_workflow
        if self.retention_ms is None and not own:
            return None
        now = self.now_ms()
        default = None if self.retention_ms is None else now - self.retention_ms
        return default, {name: now - ms for name, ms in own.items()}

    def due(self, iid: str, cutoffs: tuple[int | None, dict[str, int]]) -> int | None:
        """The instance's last seq if it is past retention now, else None."""
        index = self.host.index
        entry = None if index is None else index.instances.get(iid)
        if entry is None or entry.state not in lc.FINISHED or self.host.in_flight(iid):
            return None
        cutoff = cutoffs[1].get(entry.workflow, cutoffs[0])
        return entry.last_seq if cutoff is not None and entry.updated_ms <= cutoff else None

    async def candidates(self) -> list[str]:
        """The finished instances past their cutoff, oldest last record
        first; the index walked in slices (``SLICE`` instances, then the
        event loop's turn: a million take 0.2 to 0.35 s in all)."""
        cutoffs, index = self._cutoffs(), self.host.index
        if cutoffs is None or index is None:
            return []
        ids = list(index.instances)
        found: list[tuple[int, str]] = []
        for start in range(0, len(ids), SLICE):
            found += [(last, iid) for iid in ids[start:start + SLICE]
                      if (last := self.due(iid, cutoffs)) is not None]
            await trio.lowlevel.checkpoint()
        return [iid for _, iid in sorted(found)]

    async def sweep(self) -> int:
        """Delete what is past retention now; how many this sweep deleted."""
        found = await self.candidates()
        count = 0
        for start in range(0, len(found), BATCH):
            if self._conn is None or self._conn.broken:
                self._conn = await self.host.connect("retention")
            deleted, gone = await self.delete(self._conn, found[start:start + BATCH])
            for iid in (*deleted, *gone):
                self.host.retire(iid)
            count += len(deleted)
            await trio.lowlevel.checkpoint()
        self.deleted += count
        if count:
            logger.info("PostgreSQL journal: retention deleted %d finished instance(s)", count)
        return count

    async def delete(self, conn: Conn, ids: list[str]) -> tuple[list[str], list[str]]:
        """One batch, one transaction: the instances deleted, and those
        already gone (see the module comment)."""
        await conn.run("BEGIN")
        try:
            got = await conn.query(b"ml_ret_lock", _LOCK, [TEXT_ARRAY], [_ids(ids)])
            firsts = {bytes(got.get_value(i, 0) or b"").decode(): as_int(got.get_value(i, 1))
                      for i in range(got.ntuples)}
            rest = [i for i in ids if i not in firsts]
            gone = _texts(await conn.query(b"ml_ret_gone", _GONE, [TEXT_ARRAY],
                                           [_ids(rest)])) if rest else []
            # Every row committed before the locks is in the index after this
            # poll (none can commit after them): is each still past retention?
            await self.host.caught_up()
            cutoffs = self._cutoffs()
            lasts = {} if cutoffs is None else {
                iid: last for iid in firsts if (last := self.due(iid, cutoffs)) is not None}
            if lasts:
                doomed = _ids(list(lasts))
                await conn.query(b"ml_ret_drop", _DROP, [TEXT_ARRAY], [doomed])
                await conn.query(b"ml_ret_delete", _DELETE, [TEXT_ARRAY, INT8, INT8], [
                    doomed, int8(min(firsts[i] for i in lasts)), int8(max(lasts.values()))])
            await conn.run("COMMIT")
        except BaseException:
            conn.close()  # the transaction ends with the session
            raise
        return list(lasts), gone

    async def run(self) -> None:
        """Sweep every ``every`` seconds until cancelled; a failed sweep is
        logged and tried again at the next."""
        try:
            while True:
                await trio.sleep(self.every)
                try:
                    await self.sweep()
                except (psycopg.Error, EngineError) as exc:
                    logger.warning("PostgreSQL journal: retention sweep failed (%s); "
                                   "tried again in %gs", exc, self.every)
        finally:
            if self._conn is not None:
                self._conn.close()
