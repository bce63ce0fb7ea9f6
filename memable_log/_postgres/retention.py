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
  existence check of unfenced rows lock it ``FOR SHARE``); then, in a new
  snapshot that sees every commit before the locks, each locked instance
  with no row above the last seq this engine knows of it (another engine
  restarted it, say, and this one has not read that yet) loses its lease
  row and its rows in ``ml_log``. An append for it waiting on the lock is
  then refused (fenced out, or "gone" for a signal), and an invoke of the
  same id creates a new instance.
* Deleted instances leave this engine's index at once; candidates whose
  lease row is gone (another engine deleted them: the one with the
  shortest retention does) leave it at its own sweep. Until then another
  engine still lists them, and cannot read their large values.

Several engines sweeping at once delete each instance once (the locks);
none deletes a live instance (its index says finished, and the database
has nothing newer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import trio

from .._core import lifecycle as lc
from .._core.errors import EngineError
from .driver import INT8, INT8_ARRAY, TEXT, TEXT_ARRAY, Conn, array, int8

if TYPE_CHECKING:
    from .._core.index import Index

logger = logging.getLogger("memable_log")

BATCH = 500  # instances per transaction
_LOCK = ("SELECT instance_id FROM ml_instances WHERE instance_id = ANY($1) "
         "FOR UPDATE SKIP LOCKED")
_DELETE = (
    "WITH c AS (SELECT * FROM unnest($1::text[], $2::int8[]) AS c(i, last)), "
    "k AS (SELECT c.i FROM c WHERE NOT EXISTS ("
    "  SELECT 1 FROM ml_log l WHERE l.instance_id = c.i AND l.seq > c.last)), "
    "d AS (DELETE FROM ml_instances m USING k WHERE m.instance_id = k.i "
    "  RETURNING m.instance_id), "
    "g AS (DELETE FROM ml_log l USING d WHERE l.instance_id = d.instance_id) "
    "SELECT instance_id FROM d")
_GONE = ("SELECT i FROM unnest($1::text[]) AS i WHERE NOT EXISTS ("
         "SELECT 1 FROM ml_instances m WHERE m.instance_id = i)")


class Host(Protocol):
    """What retention needs of its backend."""

    index: Index | None
    retention_by_workflow: dict[str, int]

    def in_flight(self, instance_id: str) -> bool: ...

    def retire(self, instance_id: str) -> None: ...

    async def connect(self, role: str) -> Conn: ...


def _texts(got: Any) -> list[str]:
    return [bytes(got.get_value(i, 0) or b"").decode() for i in range(got.ntuples)]


async def delete(conn: Conn, ids: list[str], lasts: list[int]) -> tuple[list[str], list[str]]:
    """One batch, one transaction: the instances deleted, and those already
    gone (see the module comment). ``lasts``: the last seq known of each."""
    last_of = dict(zip(ids, lasts, strict=True))
    await conn.run("BEGIN")
    try:
        locked = _texts(await conn.query(b"ml_ret_lock", _LOCK, [TEXT_ARRAY],
                                         [array(TEXT, [i.encode() for i in ids])]))
        deleted = _texts(await conn.query(
            b"ml_ret_delete", _DELETE, [TEXT_ARRAY, INT8_ARRAY],
            [array(TEXT, [i.encode() for i in locked]),
             array(INT8, [int8(last_of[i]) for i in locked])]))
        held = set(locked)
        rest = [i for i in ids if i not in held]
        gone = _texts(await conn.query(b"ml_ret_gone", _GONE, [TEXT_ARRAY],
                                       [array(TEXT, [i.encode() for i in rest])])) if rest else []
        await conn.run("COMMIT")
    except BaseException:
        conn.close()  # the transaction ends with the session
        raise
    return deleted, gone


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

    def candidates(self) -> list[tuple[str, int]]:
        """(id, last seq) of the finished instances past their cutoff."""
        host, own = self.host, self.host.retention_by_workflow
        index = host.index
        if index is None or (self.retention_ms is None and not own):
            return []
        now = self.now_ms()
        default = None if self.retention_ms is None else now - self.retention_ms
        cutoffs = {name: now - ms for name, ms in own.items()}
        return [
            (iid, entry.last_seq) for iid, entry in index.instances.items()
            if entry.state in lc.FINISHED
            and (cutoff := cutoffs.get(entry.workflow, default)) is not None
            and entry.updated_ms <= cutoff and not host.in_flight(iid)
        ]

    async def sweep(self) -> int:
        """Delete what is past retention now; how many this sweep deleted."""
        found = self.candidates()
        count = 0
        for start in range(0, len(found), BATCH):
            part = found[start:start + BATCH]
            if self._conn is None or self._conn.broken:
                self._conn = await self.host.connect("retention")
            deleted, gone = await delete(self._conn, [i for i, _ in part],
                                         [last for _, last in part])
            for iid in (*deleted, *gone):
                self.host.retire(iid)
            count += len(deleted)
            await trio.lowlevel.checkpoint()
        self.deleted += count
        if count:
            logger.info("PostgreSQL journal: retention deleted %d finished instance(s)", count)
        return count

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
