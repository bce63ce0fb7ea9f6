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
  commit): the fence (each instance still carries this engine's epoch),
  new instances' lease rows, the rows; then each record gets its row's seq
  and is applied. Appends that arrive while a batch is in flight wait and go
  together in the next (group commit, one writer connection: this engine's
  records commit in the order they are applied). The round trip is shielded
  from cancellation: once sent, its outcome is applied. A refusal that names
  one instance fails only the batches of that instance, and the others are
  sent again: fenced out (the engine stops running it: ``calls.lost``), an
  id that another engine created meanwhile (read back: the caller goes on
  as if it had found it), a wait another engine ended first (a signal: the
  caller gets SignalAlreadyDelivered; an engine's own timeout: read back).
  A signal for an instance this engine does not own is written unfenced:
  its wait's end is unique per instance and key in the log (first writer
  wins), and the owner's tailer wakes the instance. The writer connection
  (writer.py) is made again when lost; a batch whose commit is in doubt is
  read back before it is acknowledged or sent again. The backend fails
  only when the server stays unreachable past the self-fencing time.
* ``read(loc)``: the row at seq ``loc``, on its own connection.
* ``serve``: the tailer (tailer.py) applies other writers' rows, woken by
  NOTIFY (sent by batches that create, signal or end an instance) or every
  ``poll`` seconds, and tells the engine (``calls.applied``); every lease/3
  it claims expired instances, reads the log, then hands them to the engine
  (``calls.claimed``). The lease's renewal runs beside it (lease.py); when
  the lease is lost the backend fails and the engine stops running every
  instance (``calls.lost``). The tailer, the listener and the lease make
  a lost connection again (the tail keeps its cursor and gaps; after a
  reconnect the tailer adopts instances the database says it owns that a
  claim cut off before its reply did not tell it).

A step's outcome carries ``step_key`` (unique per instance): the first
writer of a step wins. It names the key with the instance's count of
``forgot``/``restarted`` records, which may make a step run again.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

import msgpack
import psycopg
import trio

from .._core import lifecycle as lc
from .._core import records as r
from .._core.errors import EngineError, JournalClosed, JournalFailed, SignalAlreadyDelivered
from .._core.index import Index
from . import schema
from .driver import (
    BYTEA,
    INT8,
    TEXT,
    Conn,
    Limits,
    array,
    as_int,
    int8,
)
from .lease import Lease, claim, join, owned, release, taken
from .tailer import Tail
from .writer import Unreachable, Writer

if TYPE_CHECKING:
    from .._backend.seam import EngineCalls

logger = logging.getLogger("memable_log")

_NEW = frozenset({r.CREATED, r.CHILD_CREATED})
_OUTCOMES = frozenset({r.STEP_DONE, r.STEP_FAILED})
# Records that end a wait: at most one per instance and key in the log.
_ENDS = frozenset({r.SIGNALLED, r.TIMER_FIRED, r.SUSPEND_TIMED_OUT})
_RESETS = frozenset({r.FORGOT, r.RESTARTED})
# Records another engine may write for an instance this one owns: a signal
# (its wait's end is unique in the log), a child's end (written with the
# child's own outcome, which its owner's epoch fences).
_UNFENCED = frozenset({r.SIGNALLED, r.CHILD_ENDED})
# Records another engine may be waiting for: a NOTIFY wakes its tailer.
_NOTIFY = frozenset({r.CREATED, r.CHILD_CREATED, r.SIGNALLED, r.COMPLETED, r.FAILED,
                     r.CANCELLED, r.CANCELLED_FOR})
_READ = "SELECT rec FROM ml_log WHERE seq = $1"
_TAKE = ("UPDATE ml_instances SET lease_owner = $1, lease_epoch = lease_epoch + 1 "
         "WHERE instance_id = $2 AND NOT (lease_owner = $1 AND lease_epoch = $3) "
         "RETURNING lease_epoch")
_T, _F = b"\x01", b"\x00"


def _unpack(blob: bytes, seq: int) -> list[Any]:
    rec = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True)
    r.check(rec)
    rec[r.SEQ] = seq
    return rec  # type: ignore[no-any-return]


class PostgresJournalFailed(JournalFailed):
    """The PostgreSQL journal refuses writes (fenced out, the connection
    lost): a JournalFailed whose message gives the database's reason, not
    a disk's."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        EngineError.__init__(self, reason)


class _Refused(Exception):
    """ml_append refused a batch because of one instance (schema's SQLSTATEs)."""

    def __init__(self, state: str, instance_id: str, message: str) -> None:
        super().__init__(message)
        self.state, self.instance_id, self.message = state, instance_id, message


class _Batch:
    __slots__ = ("done", "error", "ids", "readback", "recs", "taken")

    def __init__(self, recs: list[list[Any]]) -> None:
        self.recs = recs
        self.ids = {rec[r.INSTANCE] for rec in recs}
        self.taken = False
        self.done = False
        self.readback = False  # not written: another engine's record won; read it
        self.error: BaseException | None = None


class PostgresBackend:
    """The journal in a PostgreSQL database. See the module comment."""

    def __init__(
        self, dsn: str, *, worker: str | None, lease: float, poll: float = 0.2
    ) -> None:
        self.dsn = dsn
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.poll = poll
        self.retention_by_workflow: dict[str, int] = {}
        self.writer = ""  # this open's name in ml_log.writer: worker/uuid
        self.index: Index | None = None
        self.epochs: dict[str, int] = {}  # instance -> our lease epoch
        self.lost: set[str] = set()  # instances lost while this engine ran them
        self.resets: dict[str, int] = {}  # instance -> forgot/restarted records
        self.tail = Tail()
        self.limits = Limits.for_lease(lease)
        self.link: Writer | None = None  # the writer connection, while open
        self._reader: Conn | None = None
        self._read_lock = trio.Lock()
        self._queue: list[_Batch] = []  # waiting for the next commit
        self._inflight: list[_Batch] = []  # in the commit under way
        self._leading = False
        self._turn = trio.Event()
        self._failed: str | None = None
        self.wake = trio.Event()  # the tailer looks now
        self.calls: EngineCalls | None = None  # while serve runs: told of others' records
        self.batches = 0
        self.keeper: Lease | None = None  # this open's lease renewal
        self._next_claim = 0.0  # trio time of the tailer's next claim
        self._polls = [0, 0]  # tail polls started, ended
        self._polled = trio.Event()
        self._pending: dict[str, int] = {}  # claimed, not yet read: owned after the next poll

    @property
    def failed(self) -> str | None:
        return self._failed

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

    async def _connect(self, role: str) -> Conn:
        try:
            return await Conn.connect(self.dsn, application_name=self._app_name(role),
                                      limits=self.limits)
        except psycopg.OperationalError as exc:
            raise EngineError(f"cannot connect to PostgreSQL ({self.where()}): {exc}") from None

    async def open(self, index: Index) -> None:
        if self.link is not None:
            raise EngineError("this journal is already open")
        self.writer = f"{self.worker}/{uuid.uuid4().hex[:12]}"
        conn = await self._connect("writer")
        try:
            await schema.ensure(conn, f"database {self.where()!r}")
            await join(conn, self.writer, self.lease)
            self.keeper = Lease(self.writer, self.lease, self._lose)
            self.epochs = await claim(conn, self.writer)
            self._next_claim = trio.current_time() + self.lease / 3
            self.index, self.tail, self.resets = index, Tail(), {}
            await self.tail.poll(conn, None, self._apply_row)
            self._reader = await self._connect("reader")
        except BaseException:
            conn.close()
            raise
        keeper = self.keeper
        self.link = Writer(self.writer, self._app_name("writer"),
                              lambda: self._connect("writer"), limit=self.limits.statement,
                              deadline=lambda: keeper.fence_at, failed=lambda: self._failed,
                              expired=self._expired)
        self.link.conn, self._failed = conn, None

    async def close(self) -> None:
        writer, reader = self.link, self._reader
        conn = None if writer is None else writer.conn
        self.link = self._reader = None
        self.index = None
        self.epochs, self.lost = {}, set()
        if conn is not None and not conn.broken and self._failed is None:
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

    def _apply_row(self, seq: int, blob: bytes) -> None:
        rec = _unpack(blob, seq)
        self._applied(rec, seq)
        if self.calls is not None:
            iid = rec[r.INSTANCE]
            if iid in self.epochs and rec[r.TYPE] not in _UNFENCED:
                # Another engine wrote for it under its own epoch: it took it
                # (an operator action there, ``take``). Stop running it now.
                del self.epochs[iid]
                self._stop([iid])
            self.calls.applied(rec)

    async def _check_taken(self, conn: Conn) -> None:
        """Stop the live instances another engine took (``take``) that this
        one has not heard of (the taker wrote nothing yet)."""
        assert self.index is not None
        held = {i: e for i, e in self.epochs.items()
                if (entry := self.index.instances.get(i)) is not None and entry.state in lc.LIVE}
        if not held:
            return
        gone = await taken(conn, self.writer, list(held))
        gone = [i for i in gone if self.epochs.get(i) == held[i]]
        for iid in gone:
            del self.epochs[iid]
        self._stop(gone)

    async def take(self, instance_id: str, *, resume: bool) -> None:
        """Make this engine the instance's owner for an operator action
        (seam.take), unless the database says it is at the epoch it holds:
        its epoch + 1 (after its owner's batch in flight, if any: the row
        lock), then a tail poll (every record its former owner wrote is in
        the index); ``resume``: a live instance runs here."""
        if self._failed is not None:
            raise PostgresJournalFailed(self._failed)
        held = self.epochs.get(instance_id, -1)  # the database says whether it still is
        async with self._read_lock:
            reader = self._reader
            if reader is None or reader.broken:
                reader = self._reader = await self._connect("reader")
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

    def owns(self, instance_id: str) -> bool:
        return instance_id in self.epochs and self._failed is None

    def _lose(self, why: str) -> None:
        """The lease is lost: refuse every write, stop every instance."""
        self._fail(f"this engine lost its lease: {why}")
        lost, self.epochs = list(self.epochs), {}
        self._stop(lost)

    def _expired(self) -> str:
        """Past the self-fencing time with a write to send: as the lease's
        own timer would, a moment later."""
        if self._failed is None:
            self._lose("its lease ran out before a write could be sent (the engine "
                       "paused, or the server unreachable)")
        return self._failed or ""

    def _stop(self, lost: list[str]) -> None:
        """Stop running instances this engine no longer owns: cancelled now
        (``calls.lost``); their runner's next ``settled`` ends it."""
        self.lost.update(lost)
        if self.calls is not None and lost:
            self.calls.lost(lost)

    def _applied(self, rec: list[Any], seq: int) -> None:
        assert self.index is not None
        self.index.apply(rec, seq)
        if rec[r.TYPE] in _RESETS:
            self.resets[rec[r.INSTANCE]] = self.resets.get(rec[r.INSTANCE], 0) + 1

    # -- appending ------------------------------------------------------------

    async def append(self, rec: list[Any]) -> None:
        await self.append_many([rec])

    async def append_many(self, recs: list[list[Any]]) -> None:
        if self.link is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        if self._failed is not None:
            raise PostgresJournalFailed(self._failed)
        batch = _Batch(recs)
        self._queue.append(batch)
        try:
            while not batch.done:
                if self._leading:
                    await self._turn.wait()
                else:
                    await self._lead()
        except BaseException:
            if not batch.taken:  # never sent: as if never asked
                self._queue.remove(batch)
            raise
        if batch.error is not None:
            await trio.lowlevel.checkpoint()  # a runner told it lost its instance: cancelled
            raise batch.error
        if batch.readback:
            await self._read_back()

    async def caught_up(self) -> None:
        """Until a tail poll (and claim, when due) that starts after now has ended."""
        await self._read_back()

    async def _read_back(self) -> None:
        """Until a tail poll that starts after now has ended: another
        engine's record that won over ours is then in the index."""
        after = self._polls[0]
        while self._polls[1] <= after:
            if self.calls is None:
                raise EngineError("the PostgreSQL journal cannot read back: it is not serving")
            if self._failed is not None:  # the tailer stopped
                raise PostgresJournalFailed(self._failed)
            self.wake.set()
            await self._polled.wait()

    async def _lead(self) -> None:
        self._leading = True
        taken, self._queue = self._queue, []
        for batch in taken:
            batch.taken = True
        self._inflight = taken
        try:
            with trio.CancelScope(shield=True):
                await self._commit(taken)
        finally:
            self._leading = False
            self._inflight = []
            turn, self._turn = self._turn, trio.Event()
            turn.set()

    async def _commit(self, taken: list[_Batch]) -> None:
        live = taken
        while live:
            recs = [rec for batch in live for rec in batch.recs]
            try:
                if self._failed is not None:
                    raise PostgresJournalFailed(self._failed)
                seqs = await self._write(recs)
            except _Refused as refused:
                live = self._refuse(live, refused)
                continue
            except psycopg.errors.UniqueViolation as exc:
                if len(live) > 1:  # whose? each alone (rare: two engines, one wait)
                    for batch in live:
                        await self._commit([batch])
                    return
                self._lost_race(live[0], exc)
                return
            except BaseException as exc:
                error = (exc if isinstance(exc, EngineError) and not isinstance(exc, Unreachable)
                         else PostgresJournalFailed(self._fail(exc)))
                for batch in live:
                    batch.error, batch.done = error, True
                return
            self._done(live, recs, seqs)
            return

    def _refuse(self, live: list[_Batch], refused: _Refused) -> list[_Batch]:
        """The batches of the refused instance end; the others are returned."""
        iid = refused.instance_id
        error: BaseException | None = None
        if refused.state == schema.FENCED:
            error = PostgresJournalFailed(f"{refused.message} (nothing of the refused "
                                          f"write was applied)")
            if self.epochs.pop(iid, None) is not None:  # it was ours: stop running it
                self._stop([iid])
        rest = []
        for batch in live:
            if iid not in batch.ids or (error is not None and all(
                rec[r.TYPE] in _UNFENCED for rec in batch.recs if rec[r.INSTANCE] == iid
            )):  # a signal for an instance another engine took: sent again, unfenced
                rest.append(batch)
            elif error is not None:
                batch.error, batch.done = error, True
            else:  # created by another engine meanwhile: found, as invoke finds it
                batch.readback = batch.done = True
        return rest

    def _lost_race(self, batch: _Batch, exc: BaseException) -> None:
        """A batch of which the log holds a unique record already: a wait's
        end another engine wrote first, or (a fault) a step written twice."""
        batch.done = True
        types = {rec[r.TYPE] for rec in batch.recs}
        for rec in batch.recs:
            if rec[r.TYPE] == r.SIGNALLED:
                batch.error = SignalAlreadyDelivered(rec[r.INSTANCE], rec[r.KEY])
                return
        if types & _ENDS and not types & _OUTCOMES:
            batch.readback = True  # a signal ended it first: the tailer brings it
        else:
            batch.error = PostgresJournalFailed(self._fail(exc))

    def _done(self, live: list[_Batch], recs: list[list[Any]], seqs: list[int]) -> None:
        for rec, seq in zip(recs, seqs, strict=True):
            rec[r.SEQ] = seq
            self._applied(rec, seq)
            if rec[r.TYPE] in _NEW:
                self.epochs[rec[r.INSTANCE]] = 1
        self.batches += 1
        for batch in live:
            batch.done = True

    def _fail(self, exc: BaseException | str) -> str:
        if self._failed is None:
            self._failed = (f"the PostgreSQL journal at {self.where()} refuses writes until "
                            f"the engine is opened again: {exc}")
            logger.error("%s", self._failed)
        return self._failed

    async def _write(self, recs: list[list[Any]]) -> list[int]:
        pack = msgpack.Packer().pack
        insts: list[bytes | None] = []
        keys: list[bytes | None] = []
        blobs: list[bytes | None] = []
        made: dict[str, None] = {}  # instances this batch creates (fenced by that)
        fence: dict[str, int] = {}  # the others, with the epoch we hold (-1: none)
        notify = False
        # Another engine's instance, of which this batch only signals (or
        # ends a child: the child's outcome beside it is fenced): unfenced.
        signals = {rec[r.INSTANCE] for rec in recs
                   if rec[r.TYPE] in _UNFENCED and rec[r.INSTANCE] not in self.epochs}
        for rec in recs:
            rtype, inst = rec[r.TYPE], rec[r.INSTANCE]
            insts.append(inst.encode())
            if rtype in _NEW:
                made[inst] = None
            elif inst in signals and rtype not in _UNFENCED:
                signals.discard(inst)
        for rec in recs:
            rtype, inst = rec[r.TYPE], rec[r.INSTANCE]
            if rtype not in _NEW and inst != r.ENGINE and inst not in made and (
                inst not in signals
            ):
                fence[inst] = self.epochs.get(inst, -1)
            if rtype in _OUTCOMES:
                keys.append(f"{self.resets.get(inst, 0)}:{rec[r.KEY]}".encode())
            elif rtype in _ENDS:  # "w": never a step's (those start with a digit)
                keys.append(f"w{self.resets.get(inst, 0)}:{rec[r.KEY]}".encode())
            else:
                keys.append(None)
            blobs.append(pack(rec))
            notify = notify or rtype in _NOTIFY
        params = [
            self.writer.encode(), array(TEXT, insts), array(TEXT, keys), array(BYTEA, blobs),
            array(TEXT, [i.encode() for i in made]), array(TEXT, [i.encode() for i in fence]),
            array(INT8, [int8(e) for e in fence.values()]), _T if notify else _F,
        ]
        try:
            assert self.link is not None
            return await self.link.append(params, len(recs))
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            if state in (schema.FENCED, schema.EXISTS):
                raise _Refused(state, exc.diag.message_detail or "",
                               exc.diag.message_primary or str(exc)) from None
            raise

    async def read(self, loc: int) -> list[Any]:
        if self.link is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        async with self._read_lock:
            for again in (True, False):  # a lost connection: once more, on a new one
                reader = self._reader
                if reader is None or reader.broken:  # cut by a cancellation, or lost
                    reader = self._reader = await self._connect("reader")
                try:
                    result = await reader.query(b"ml_read", _READ, [INT8], [int8(loc)])
                    break
                except psycopg.OperationalError:
                    if not (again and reader.broken):
                        raise
        if result.ntuples != 1:
            raise EngineError(f"no record at seq {loc} in the PostgreSQL journal")
        return _unpack(bytes(result.get_value(0, 0) or b""), loc)

    async def read_many(self, locs: list[int]) -> list[list[Any]]:
        return [await self.read(loc) for loc in locs]

    async def settled(self, instance_id: str) -> None:
        while any(instance_id in batch.ids for batch in self._inflight):
            await self._turn.wait()
        if instance_id in self.lost:  # its runner asks after each run: it ends here
            self.lost.discard(instance_id)
            raise PostgresJournalFailed(
                f"instance {instance_id!r} is no longer this engine's: "
                f"{self._failed or 'another engine holds its lease'}")
        # At once (no checkpoint) when nothing of it is in flight: the
        # engine's invoke checks the index right after, in the same step.

    # -- the tailer -------------------------------------------------------------

    async def serve(
        self, calls: EngineCalls, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Everything other writers left was read at open: the engine may go on
        # while the tailer's connections are made.
        self.calls = calls
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen)
                nursery.start_soon(self._keep_lease)
                await self._tail()
        finally:
            self.calls = None

    async def _keep_lease(self) -> None:
        assert self.keeper is not None
        await self.keeper.run(lambda: self._connect("lease"))

    async def _listen(self) -> None:
        while True:  # a lost connection: another (NOTIFYs meanwhile: the poll finds them)
            try:
                listener = await self._connect("listener")
            except EngineError as exc:
                await self._retry("listener", exc)
                continue
            try:
                await listener.run(f"LISTEN {schema.CHANNEL}")
                self.wake.set()  # what was sent while it listened to nothing
                while True:
                    if "released" in await listener.notifies():
                        self._next_claim = 0.0  # an engine stopped: claim its instances now
                    self.wake.set()
            except psycopg.OperationalError as exc:
                await self._retry("listener", exc)
            finally:
                listener.close()

    async def _retry(self, role: str, exc: BaseException) -> None:
        logger.warning("PostgreSQL journal: the %s connection is lost (%s); reconnecting",
                       role, exc)
        await trio.sleep(self.poll)

    async def _tail(self) -> None:
        again = False
        while True:  # a lost connection: another; the tail's cursor and gaps are kept
            try:
                conn = await self._connect("tailer")
            except EngineError as exc:
                await self._retry("tailer", exc)
                continue
            try:
                if again:  # a claim whose reply was lost may have committed: adopt it
                    mine = await owned(conn, self.writer)
                    self._pending.update(
                        {i: e for i, e in mine.items() if self.epochs.get(i) != e})
                await self._follow(conn)
                return
            except psycopg.OperationalError as exc:
                again = True
                await self._retry("tailer", exc)
            finally:
                conn.close()

    async def _follow(self, conn: Conn) -> None:
        while True:
            with trio.move_on_after(self.poll):
                await self.wake.wait()
            self.wake = trio.Event()
            if self.index is None:
                return
            try:
                now = trio.current_time()
                if self._failed is None and now >= self._next_claim:
                    self._next_claim = now + self.lease / 3
                    self._pending.update(await claim(conn, self.writer))
                    await self._check_taken(conn)
                self._polls[0] += 1
                await self.tail.poll(conn, self.writer, self._apply_row)
            except psycopg.OperationalError:
                raise  # the connection: _tail makes another
            except (psycopg.Error, r.RecordError) as exc:
                self._fail(exc)
                return
            finally:
                self._polls[1] = self._polls[0]
                polled, self._polled = self._polled, trio.Event()
                polled.set()
            got, self._pending = self._pending, {}
            if got and self._failed is None:
                # Owned once their records are all read: the engine resumes them.
                self.epochs.update(got)
                if self.calls is not None:
                    self.calls.claimed(list(got))

