"""An engine's lease on a shared journal: its worker row, renewed on a
timer, and the claim of instances whose owner's lease expired.

Theory of operation. Every open engine has one row in ``ml_workers``
(schema.py) whose ``expires_at`` (the database's clock) it pushes ``lease``
seconds ahead every ``lease / 3`` (``renew``): one update of one row per
engine, whatever it runs, not a write per step or per instance
(docs/postgres.md). A renewal finds the row only while it has not
expired: once it has, other engines may have claimed this engine's
instances, so a late renewal must not revive them.

Self-fencing. The local monotonic clock (trio's) bounds how long this
engine trusts its lease: ``fence_at`` is the send time of the last renewal
that succeeded plus ``lease - margin``. The database's expiry is at least
``lease`` after that send (its ``now()`` is later), so an engine that
stops at ``fence_at`` has stopped before anyone can claim its instances,
even when the database is unreachable (``Lease.run`` then calls
``on_lost``). A renewal that finds no row calls it at once. A lost
connection is made again at the next renewal.

``claim`` takes every instance whose owner's row expired (``ml_claim``):
epoch + 1, skipping rows locked by a batch in flight.

Queued instances. ``take_queued`` takes, from live owners too, those of
the given instances that still wait for capacity (``ml_instances.queued``,
set and cleared by the batches that queue, start or end them): epoch + 1,
so their owner's ``dequeued`` is fenced out if it comes later, and rows
locked by a batch in flight (that ``dequeued``, say) are skipped. An
instance whose start committed first is no longer queued and is not taken:
no engine ever takes an instance that runs this way. The engine asks only
for instances it does not hold; one the database says it owns already (a
take whose reply was lost) is taken again, at a new epoch, and so becomes
known to it.

Rejoining. An engine that lost its lease (its own clock fenced it, or a
renewal found its row expired) joins again under a new name once the
database answers (``rejoin``, one statement): a worker row for the new
name, and every instance still owned by the old name (no other engine
claimed it) moved to the new one at its epoch + 1, so a write of the old
session is fenced out; the old row goes. The statement waits for the row
locks of a batch of the old session still in flight (the fence locks its
instances ``FOR SHARE``), and ``end_sessions`` first ends the old writer's
sessions, so nothing of the old name commits after it. A claim that read
the old row as expired may still take an instance back (epoch + 1 again):
the fence then refuses this engine's next write for it, as after any
takeover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import trio

from .._core.errors import EngineError
from .driver import INT8, TEXT, TEXT_ARRAY, Conn, array, as_int, int8

_JOIN = ("INSERT INTO ml_workers (writer, expires_at) "
         "VALUES ($1, now() + make_interval(secs => $2::float8))")
_RENEW = ("UPDATE ml_workers SET expires_at = now() + make_interval(secs => $2::float8) "
          "WHERE writer = $1 AND expires_at >= now() RETURNING 1")
_RELEASE = "UPDATE ml_workers SET expires_at = '-infinity' WHERE writer = $1"
_CLAIM = "SELECT instance_id, epoch FROM ml_claim($1)"
_TAKE_QUEUED = (
    "WITH pick AS (SELECT instance_id FROM ml_instances WHERE instance_id = ANY($2) "
    "  AND queued FOR UPDATE SKIP LOCKED) "
    "UPDATE ml_instances m SET lease_owner = $1, lease_epoch = m.lease_epoch + 1 "
    "FROM pick WHERE m.instance_id = pick.instance_id RETURNING m.instance_id, m.lease_epoch")
_OWNED = "SELECT instance_id, lease_epoch FROM ml_instances WHERE lease_owner = $1"
_TAKEN = ("SELECT instance_id FROM ml_instances WHERE instance_id = ANY($2) "
          "AND lease_owner IS DISTINCT FROM $1")
_REJOIN = (
    "WITH w AS (INSERT INTO ml_workers (writer, expires_at) "
    "  VALUES ($1, now() + make_interval(secs => $3::float8)) "
    "  ON CONFLICT (writer) DO UPDATE SET expires_at = EXCLUDED.expires_at), "
    "d AS (DELETE FROM ml_workers WHERE writer = $2) "
    "UPDATE ml_instances SET lease_owner = $1, lease_epoch = lease_epoch + 1 "
    "WHERE lease_owner = $2 OR lease_owner = $1 RETURNING instance_id, lease_epoch")
_END = ("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE application_name = left($1, 63) AND pid <> pg_backend_pid()")
_UNACKED = "SELECT seq, rec FROM ml_log WHERE writer = $1 AND seq > $2 ORDER BY seq"
_NEXT = ("SELECT extract(epoch FROM min(expires_at) - now())::float8::text FROM ml_workers "
         "WHERE writer <> $1 AND expires_at >= now()")
MARGIN = 0.2  # of the lease: self-fencing comes this much before the database's expiry


async def join(conn: Conn, writer: str, lease: float) -> None:
    """Add this engine's worker row."""
    await conn.query(b"ml_join", _JOIN, [TEXT, TEXT], [writer.encode(), str(lease).encode()])


async def release(conn: Conn, writer: str) -> None:
    """Let this engine's lease end now: any engine claims its instances."""
    await conn.query(b"ml_release", _RELEASE, [TEXT], [writer.encode()])


async def claim(conn: Conn, writer: str) -> dict[str, int]:
    """Claim every instance whose owner's lease expired: id -> new epoch."""
    got = await conn.query(b"ml_claim", _CLAIM, [TEXT], [writer.encode()])
    return _ids(got)


async def take_queued(conn: Conn, writer: str, ids: list[str]) -> dict[str, int]:
    """Take those of ``ids`` that still wait for capacity, whoever owns
    them: id -> new epoch (see the module comment)."""
    got = await conn.query(b"ml_take_queued", _TAKE_QUEUED, [TEXT, TEXT_ARRAY],
                           [writer.encode(), array(TEXT, [i.encode() for i in ids])])
    return _ids(got)


async def next_expiry(conn: Conn, writer: str) -> float | None:
    """Seconds until another engine's lease runs out next, by the database's
    clock (None: no other engine holds one)."""
    got = await conn.query(b"ml_next", _NEXT, [TEXT], [writer.encode()])
    value = got.get_value(0, 0)
    return None if value is None else float(bytes(value).decode())


async def owned(conn: Conn, writer: str) -> dict[str, int]:
    """Every instance the database says this engine owns: id -> epoch."""
    return _ids(await conn.query(b"ml_owned", _OWNED, [TEXT], [writer.encode()]))


async def taken(conn: Conn, writer: str, ids: list[str]) -> list[str]:
    """Those of ``ids`` (instances this engine holds) whose lease another
    engine holds now."""
    got = await conn.query(b"ml_taken", _TAKEN, [TEXT, TEXT_ARRAY],
                           [writer.encode(), array(TEXT, [i.encode() for i in ids])])
    return [bytes(got.get_value(i, 0) or b"").decode() for i in range(got.ntuples)]


async def end_sessions(conn: Conn, app_name: str) -> None:
    """End every other session named ``app_name``, and wait for them: a
    transaction of theirs has then committed or rolled back for good."""
    while (await conn.query(b"ml_end_app", _END, [TEXT], [app_name.encode()])).ntuples:
        pass  # one still there after 5 s: again (bounded by statement_timeout)


async def rejoin(conn: Conn, old: str, new: str, lease: float) -> dict[str, int]:
    """Join again as ``new`` after ``old`` lost its lease: the instances
    ``old`` (or ``new``, a retry) still owns, at their new epochs."""
    return _ids(await conn.query(b"ml_rejoin", _REJOIN, [TEXT, TEXT, TEXT],
                                 [new.encode(), old.encode(), str(lease).encode()]))


async def unacked(conn: Conn, writer: str, after: int) -> list[tuple[int, bytes]]:
    """The rows ``writer`` committed above seq ``after``, in seq order."""
    got = await conn.query(b"ml_unacked", _UNACKED, [TEXT, INT8],
                           [writer.encode(), int8(after)])
    return [(as_int(got.get_value(i, 0)), bytes(got.get_value(i, 1) or b""))
            for i in range(got.ntuples)]


def _ids(got: Any) -> dict[str, int]:
    return {
        bytes(got.get_value(i, 0) or b"").decode(): as_int(got.get_value(i, 1))
        for i in range(got.ntuples)
    }


class Lease:
    """The renewal loop of one engine's worker row. See the module comment."""

    def __init__(self, writer: str, lease: float, on_lost: Callable[[str], None]) -> None:
        self.writer = writer
        self.lease = lease
        self.on_lost = on_lost
        self.fence_at = trio.current_time() + lease * (1 - MARGIN)
        self.renewals = 0
        self.renewed = trio.Event()  # set (and made anew) at each renewal that succeeds
        self.paused = False  # tests: a stalled engine (renewals stop, nothing else)
        self._conn: Conn | None = None

    async def run(self, connect: Callable[[], Awaitable[Conn]]) -> None:
        """Renew every lease/3 until cancelled, or until the lease is lost
        (``on_lost`` called with why); a lost connection is made again."""
        try:
            await self._loop(connect)
        finally:
            if self._conn is not None:
                self._conn.close()

    async def _loop(self, connect: Callable[[], Awaitable[Conn]]) -> None:
        period = self.lease / 3
        while True:
            with trio.move_on_at(min(trio.current_time() + period, self.fence_at)):
                await trio.sleep_forever()
            if trio.current_time() >= self.fence_at:
                trusted = self.lease * (1 - MARGIN)
                self.on_lost(f"no renewal of its lease succeeded for {trusted:g}s")
                return
            if self.paused:
                continue
            sent = trio.current_time()
            try:
                with trio.move_on_at(self.fence_at):
                    if self._conn is None or self._conn.broken:
                        self._conn = await connect()
                    ok = await self._renew(self._conn)
                    if not ok:
                        self.on_lost("its lease expired (another engine may hold its instances)")
                        return
                    self.fence_at = sent + self.lease * (1 - MARGIN)
                    self.renewals += 1
                    renewed, self.renewed = self.renewed, trio.Event()
                    renewed.set()
            except (psycopg.Error, EngineError):
                if self._conn is not None:  # made again at the next renewal
                    self._conn.close()
                    self._conn = None
                continue  # tried again next period, until fence_at

    async def _renew(self, conn: Conn) -> bool:
        got = await conn.query(b"ml_renew", _RENEW, [TEXT, TEXT],
                               [self.writer.encode(), str(self.lease).encode()])
        return got.ntuples == 1
