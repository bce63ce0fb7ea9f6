"""A PostgreSQL database as an engine's backend, shared by several engines.

Theory of operation. The journal is one shared log table (``ml_log``,
schema.py) of the same record lists the local journal frames (msgpack), so
the index is built by the same ``Index.apply``; a row's ``seq`` is its
location. The backend keeps the seam's promises (``_backend/seam.py``):

* ``open(index)``: creates or checks the schema, adds this engine's worker
  row (its lease, lease.py), claims the instances whose owner's lease
  expired (``lease_epoch`` + 1: their old owner is fenced out from its next
  write), then reads the whole log into the index in one query, in seq
  order. The engine runs only the instances it owns (``owns``): those it
  created and those it claimed.
* ``append_many(recs)``: one call of ``ml_append`` (one round trip, one
  commit; rows.encode makes its parameters): the fence (each instance
  still carries this engine's epoch), new instances' lease rows, the rows;
  then each record gets its row's seq and is applied. Batching and the
  refusals of one instance are the group commit's (commit.py). The writer
  connection (writer.py) is made again when lost; a batch whose commit is
  in doubt is read back before it is acknowledged or sent again. The
  backend fails only when the server stays unreachable past the
  self-fencing time.
* ``read(loc)``: the row at seq ``loc``, on its own connection.
* ``serve``: the tailer and the listener (follow.py) apply other
  writers' rows (``apply_row``: the engine is told, ``calls.applied``) and
  claim expired instances every lease/3 (``adopt``: ``calls.claimed``).
  The lease's renewal runs beside them (lease.py); when the lease is lost
  the backend fails and the engine stops running every instance
  (``calls.lost``).

A step's outcome carries ``step_key`` (unique per instance): the first
writer of a step wins. It names the key with the instance's count of
``forgot``/``restarted`` records, which may make a step run again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import trio

from .._core import records as r
from .._core.errors import EngineError, JournalClosed, JournalFailed
from .._core.index import Index
from . import rows, schema
from .commit import GroupCommit
from .driver import INT8, INT8_ARRAY, TEXT, Conn, Limits, array, as_int, int8
from .errors import PostgresJournalFailed
from .follow import Follower
from .lease import (
    Lease,
    claim,
    end_sessions,
    join,
    owned,
    rejoin,
    release,
    take_queued,
    unacked,
)
from .retention import Retention
from .tailer import Tail
from .writer import Writer

if TYPE_CHECKING:
    from .._backend.seam import EngineCalls

logger = logging.getLogger("memable_log")

_READ = "SELECT rec FROM ml_log WHERE seq = $1"
_READ_MANY = "SELECT seq, rec FROM ml_log WHERE seq = ANY($1)"
_TAKE = ("UPDATE ml_instances SET lease_owner = $1, lease_epoch = lease_epoch + 1 "
         "WHERE instance_id = $2 AND NOT (lease_owner = $1 AND lease_epoch = $3) "
         "RETURNING lease_epoch")

__all__ = ["PostgresBackend", "PostgresJournalFailed"]


class PostgresBackend:
    """The journal in a PostgreSQL database. See the module comment."""

    def __init__(
        self,
        dsn: str,
        *,
        worker: str | None,
        lease: float,
        poll: float = 0.2,
        claims: bool = True,
        retention_ms: int | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.dsn = dsn
        # False: an operator's short-lived session (_engine/pg_operator.py), which takes
        # only the instances it acts on, never those of expired engines.
        self.claims = claims
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.poll = poll
        self.retention_by_workflow: dict[str, int] = {}
        # Finished instances past it are deleted from the database (retention.py).
        self.retention = Retention(self, retention_ms,
                                   now_ms or (lambda: round(time.time() * 1000)))
        self.writer = ""  # this open's name in ml_log.writer: worker/uuid
        self.index: Index | None = None
        self.epochs: dict[str, int] = {}  # instance -> our lease epoch
        self.lost: set[str] = set()  # instances lost while this engine ran them
        self.resets: dict[str, int] = {}  # instance -> forgot/restarted records
        self.limits = Limits.for_lease(lease)
        self.link: Writer | None = None  # the writer connection, while open
        self.commits = GroupCommit(self)
        self.follower: Follower | None = None  # while open
        self._reader: Conn | None = None
        self._read_lock = trio.Lock()
        self._failed: str | None = None
        self.calls: EngineCalls | None = None  # while serve runs: told of others' records
        self.keeper: Lease | None = None  # this open's lease renewal
        self.rejoins = 0  # times this open lost its lease and joined again
        # Why the lease is lost, while it is: writes refused, a rejoin due
        # (follow.py) once the database answers. Not ``failed``: it passes.
        self._out: str | None = None
        self._joining = ""  # the name a rejoin under way joins as (kept across retries)
        self._replayed = 0  # the highest unacknowledged row of the old name applied
        self._rejoined = trio.Event()

    @property
    def failed(self) -> str | None:
        """Why the journal refuses writes for good (the seam's ``failed``);
        None while the lease is merely lost (``refusing`` says so)."""
        return self._failed

    @property
    def refusing(self) -> str | None:
        """Why writes are refused now: failed, or the lease lost."""
        return self._failed or self._out

    @property
    def batches(self) -> int:
        """Commits made (bench)."""
        return self.commits.batches

    def refusal(self) -> JournalFailed:
        """What the engine raises while ``failed`` is set (seam.refusal)."""
        return PostgresJournalFailed(self._failed or f"the PostgreSQL journal at {self.where()} "
                                     f"refuses writes")

    def where(self) -> str:
        """The server and database, for messages: host:port/dbname."""
        info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        host = str(info.get("host") or "localhost")
        port = info.get("port")
        return f"{host}{f':{port}' if port else ''}/{info.get('dbname') or '?'}"

    def _app_name(self, role: str) -> str:
        return f"memable_log {role} {self.writer}"

    async def connect(self, role: str) -> Conn:
        """A new connection of this open (``role`` names it in pg_stat_activity)."""
        try:
            return await Conn.connect(self.dsn, application_name=self._app_name(role),
                                      limits=self.limits)
        except psycopg.OperationalError as exc:
            raise EngineError(f"cannot connect to PostgreSQL ({self.where()}): {exc}") from None

    async def open(self, index: Index) -> None:
        if self.link is not None:
            raise EngineError("this journal is already open")
        self.writer = f"{self.worker}/{uuid.uuid4().hex[:12]}"
        conn = await self.connect("writer")
        try:
            await schema.ensure(conn, f"database {self.where()!r}")
            await join(conn, self.writer, self.lease)
            self.keeper = self._keeper(self.writer)
            self.epochs = await claim(conn, self.writer) if self.claims else {}
            self.index, self.resets = index, {}
            tail = Tail()
            await tail.poll(conn, None, self.apply_row)
            self.follower = Follower(self, tail)
            self._reader = await self.connect("reader")
        except BaseException:
            conn.close()
            raise
        self.link = self._writer(self.keeper)
        self.link.conn, self._failed, self._out = conn, None, None

    def _keeper(self, writer: str) -> Lease:
        # A keeper's loss counts only while its name is this open's: one that
        # ends after a rejoin (the writer's own deadline fenced first) is stale.
        return Lease(writer, self.lease, lambda why: self._lose(why, writer))

    def _writer(self, keeper: Lease) -> Writer:
        return Writer(self.writer, self._app_name("writer"), lambda: self.connect("writer"),
                      limit=self.limits.statement, deadline=lambda: keeper.fence_at,
                      failed=lambda: self.refusing, expired=self._expired)

    async def close(self) -> None:
        writer, reader = self.link, self._reader
        conn = None if writer is None else writer.conn
        self.link = self._reader = None
        self.index = None
        self.epochs, self.lost = {}, set()
        if conn is not None and not conn.broken and self.refusing is None:
            with trio.move_on_after(self.lease / 3) as scope:
                scope.shield = True
                try:  # the others claim its instances at once
                    await release(conn, self.writer)
                    await conn.run(f"NOTIFY {schema.CHANNEL}, 'released'")
                except psycopg.Error as exc:
                    logger.warning("PostgreSQL journal: the lease was not released: %s", exc)
        for c in (conn, reader):
            if c is not None and not c.broken:
                c.close()

    def apply_row(self, seq: int, blob: bytes) -> None:
        """Another writer's row, read by the tailer: applied, the engine told."""
        rec = rows.unpack(blob, seq)
        self.applied(rec, seq)
        if self.calls is not None:
            iid = rec[r.INSTANCE]
            if iid in self.epochs and rec[r.TYPE] not in rows.UNFENCED:
                # Another engine wrote for it under its own epoch: it took it
                # (an operator action there, ``take``). Stop running it now.
                del self.epochs[iid]
                self.stop([iid])
            self.calls.applied(rec)


    def adopt(self, got: dict[str, int]) -> None:
        """Claimed instances whose records are all read: owned, resumed (an
        instance taken from this engine while it ran nothing of it, and back
        now, is no longer lost: its next runner goes on)."""
        self.epochs.update(got)
        self.lost.difference_update(got)
        if self.calls is not None:
            self.calls.claimed(list(got))

    async def take(self, instance_id: str, *, resume: bool) -> None:
        """Make this engine the instance's owner for an operator action
        (seam.take), unless the database says it is at the epoch it holds:
        its epoch + 1 (after its owner's batch in flight, if any: the row
        lock), then a tail poll (every record its former owner wrote is in
        the index); ``resume``: a live instance runs here."""
        if self.refusing is not None:
            raise PostgresJournalFailed(self.refusing)
        held = self.epochs.get(instance_id, -1)  # the database says whether it still is
        async with self._read_lock:
            reader = self._reader
            if reader is None or reader.broken:
                reader = self._reader = await self.connect("reader")
            got = await reader.query(b"ml_take", _TAKE, [TEXT, TEXT, INT8],
                                     [self.writer.encode(), instance_id.encode(), int8(held)])
        if got.ntuples != 1:
            return  # ours, at the epoch we hold
        epoch = as_int(got.get_value(0, 0))
        await self._read_back()
        self.epochs[instance_id] = epoch
        self.lost.discard(instance_id)
        logger.info("PostgreSQL journal: instance %s taken over for an operator action",
                    instance_id, extra={"instance_id": instance_id})
        if resume and self.calls is not None:
            self.calls.claimed([instance_id])

    async def take_queued(self, ids: list[str]) -> list[str]:
        """Take those of ``ids`` (queued in other engines) that still wait for
        capacity (lease.take_queued): owned once their records are read,
        and the engine is told (``calls.claimed``: they enter its queue).
        The ids taken. A reply lost with the connection may hide a take that
        committed: the database is asked what this engine owns instead (if
        that fails too, the next take of them takes them again)."""
        if self.refusing is not None:
            raise PostgresJournalFailed(self.refusing)
        if self.link is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        async with self._read_lock:
            reader = self._reader
            try:
                if reader is None or reader.broken:
                    reader = self._reader = await self.connect("reader")
                got = await take_queued(reader, self.writer, ids)
            except psycopg.OperationalError:
                try:
                    reader = self._reader = await self.connect("reader")
                    asked = set(ids)
                    got = {i: e for i, e in (await owned(reader, self.writer)).items()
                           if i in asked and self.epochs.get(i) != e}
                except psycopg.Error as exc:  # the next take asks for them again
                    raise EngineError(f"the PostgreSQL journal did not answer: {exc}") from None
            except psycopg.Error as exc:
                raise EngineError(f"the PostgreSQL journal refused the take: {exc}") from None
        if got:
            await self._read_back()  # every record its former owner wrote is in the index
            if self.refusing is None:
                for iid in got:
                    logger.info("PostgreSQL journal: instance %s, queued in another engine, "
                                "taken to run here", iid, extra={"instance_id": iid})
                self.adopt(got)
        return list(got)

    @property
    def sender(self) -> int | None:
        """The server process of the writer session (follow.Host)."""
        link = self.link
        conn = None if link is None else link.conn
        return None if conn is None else conn.pid

    def in_flight(self, instance_id: str) -> bool:
        """Whether a record of the instance is in the commit under way."""
        return self.commits.in_flight(instance_id)

    def retire(self, instance_id: str) -> None:
        """Drop an instance retention deleted from the database (retention.py)."""
        if self.index is not None:
            self.index.retire(instance_id)
        self.epochs.pop(instance_id, None)
        self.resets.pop(instance_id, None)
        self.lost.discard(instance_id)

    def owns(self, instance_id: str) -> bool:
        return instance_id in self.epochs and self.refusing is None

    def _lose(self, why: str, writer: str | None = None) -> None:
        """The lease is lost: refuse every write, stop every instance, and
        rejoin once the database answers (``rejoin``)."""
        if (writer is not None and writer != self.writer) or self.refusing:
            return  # a stale keeper's, or refusing already
        self._out = (f"the PostgreSQL journal at {self.where()} refuses writes until this "
                     f"engine rejoins (once the database answers): this engine lost its "
                     f"lease: {why}")
        logger.error("%s", self._out)
        lost, self.epochs = list(self.epochs), {}
        self.stop(lost)

    @property
    def out(self) -> bool:
        """Whether the lease is lost and a rejoin is due."""
        return self._out is not None and self._failed is None

    async def until_rejoined(self) -> None:
        """Until the lease, if lost, is held again (at once if it is)."""
        while self.out:
            await self._rejoined.wait()

    async def rejoin(self, conn: Conn, tail: Tail) -> dict[str, int] | None:
        """Join again under a new name after the lease was lost (lease.py,
        "Rejoining"), on the tailer's connection, between its polls: end the
        old writer's sessions; one statement takes a new worker row and the
        instances no other engine took (epoch + 1); apply the rows the old
        name committed that were never acknowledged (a batch in doubt when
        the lease ran out); read the log to its end. Then writes go on under
        the new name (a new writer connection and lease). The instances to
        own once their records are read (the caller adopts them after its
        poll), or None when a commit is still under way (tried again at the
        next poll). A lost connection raises (the tailer makes another and
        tries again, under the same new name)."""
        if self.commits.busy or self.link is None:
            return None
        old = self.writer
        new = self._joining = self._joining or f"{self.worker}/{uuid.uuid4().hex[:12]}"
        keeper = self._keeper(new)  # its clock starts before the statement is sent
        await end_sessions(conn, self._app_name("writer"))
        got = await rejoin(conn, old, new, self.lease)
        back = len(got)
        if self.claims:
            got.update(await claim(conn, new))
        for seq, blob in await unacked(conn, old, max(self.link.mine, self._replayed)):
            self.apply_row(seq, blob)
            self._replayed = seq
        await tail.poll(conn, old, self.apply_row)  # the old name's rows are behind it now
        self.link.close()
        self.writer, self._joining, self._replayed = new, "", 0
        self.keeper = keeper
        self.link = self._writer(keeper)
        self._out = None
        self.rejoins += 1
        rejoined, self._rejoined = self._rejoined, trio.Event()
        rejoined.set()
        if self.calls is not None:  # schedules and debounce refused meanwhile: again
            self.calls.rejoined()
        logger.warning("PostgreSQL journal: this engine rejoined as %s after losing its "
                       "lease; %d instance(s) no other engine took are its again", new,
                       back)
        return got

    def _expired(self) -> str:
        """Past the self-fencing time with a write to send: as the lease's
        own timer would, a moment later."""
        if self.refusing is None:
            self._lose("its lease ran out before a write could be sent (the engine "
                       "paused, or the server unreachable)")
        return self.refusing or ""

    def stop(self, lost: list[str]) -> None:
        """Stop running instances this engine no longer owns: cancelled now
        (``calls.lost``); their runner's next ``settled`` ends it."""
        self.lost.update(lost)
        if self.calls is not None and lost:
            self.calls.lost(lost)

    def applied(self, rec: list[Any], seq: int) -> None:
        """A record committed (ours or another writer's): into the index."""
        assert self.index is not None
        self.index.apply(rec, seq)
        if rec[r.TYPE] in rows.RESETS:
            self.resets[rec[r.INSTANCE]] = self.resets.get(rec[r.INSTANCE], 0) + 1

    def fail(self, exc: BaseException | str) -> str:
        """Refuse every write from now on; why."""
        if self._failed is None:
            self._failed = (f"the PostgreSQL journal at {self.where()} refuses writes until "
                            f"the engine is opened again: {exc}")
            logger.error("%s", self._failed)
        return self._failed

    # -- appending ------------------------------------------------------------

    async def append(self, rec: list[Any]) -> None:
        await self.append_many([rec])

    async def append_many(self, recs: list[list[Any]]) -> None:
        if self.link is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        if self.refusing is not None:
            raise PostgresJournalFailed(self.refusing)
        if await self.commits.submit(recs):
            await self._read_back()

    async def caught_up(self) -> None:
        """Until a tail poll (and claim, when due) that starts after now has ended."""
        await self._read_back()

    async def _read_back(self) -> None:
        if self.follower is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        await self.follower.read_back()

    async def read(self, loc: int) -> list[Any]:
        result = await self._reading(b"ml_read", _READ, INT8, int8(loc))
        if result.ntuples != 1:
            raise EngineError(f"no record at seq {loc} in the PostgreSQL journal")
        return rows.unpack(bytes(result.get_value(0, 0) or b""), loc)

    async def read_many(self, locs: list[int]) -> list[list[Any]]:
        """The records at ``locs`` in one round trip (a replay's read-ahead)."""
        result = await self._reading(
            b"ml_read_many", _READ_MANY, INT8_ARRAY, array(INT8, [int8(loc) for loc in locs])
        )
        found = {as_int(result.get_value(i, 0)): result.get_value(i, 1)
                 for i in range(result.ntuples)}
        missing = [loc for loc in locs if loc not in found]
        if missing:
            raise EngineError(f"no record at seq {missing[0]} in the PostgreSQL journal")
        return [rows.unpack(bytes(found[loc] or b""), loc) for loc in locs]

    async def _reading(self, name: bytes, sql: str, oid: int, param: bytes) -> Any:
        """One read on the reader connection; a lost connection: once more, on a new one."""
        if self.link is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        async with self._read_lock:
            for again in (True, False):
                reader = self._reader
                if reader is None or reader.broken:  # cut by a cancellation, or lost
                    reader = self._reader = await self.connect("reader")
                try:
                    return await reader.query(name, sql, [oid], [param])
                except psycopg.OperationalError:
                    if not (again and reader.broken):
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def settled(self, instance_id: str) -> None:
        while self.commits.in_flight(instance_id):
            await self.commits.turn()
        if instance_id in self.lost:  # its runner asks after each run: it ends here
            self.lost.discard(instance_id)
            raise PostgresJournalFailed(
                f"instance {instance_id!r} is no longer this engine's: "
                f"{self.refusing or 'another engine holds its lease'}")
        # At once (no checkpoint) when nothing of it is in flight: the
        # engine's invoke checks the index right after, in the same step.

    # -- serving --------------------------------------------------------------

    async def serve(
        self, calls: EngineCalls, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Everything other writers left was read at open: the engine may go on
        # while the tailer's connections are made.
        follower = self.follower
        if follower is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        self.calls = calls
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower.listen)
                nursery.start_soon(self._keep_lease)
                nursery.start_soon(self.retention.run)
                await follower.run()
        finally:
            self.calls = None

    async def _keep_lease(self) -> None:
        """Each lease of this open renewed in turn: the first until lost,
        then the one of each rejoin."""
        while True:
            keeper = self.keeper
            assert keeper is not None
            await keeper.run(lambda: self.connect("lease"))
            while self.keeper is keeper:
                await self._rejoined.wait()
