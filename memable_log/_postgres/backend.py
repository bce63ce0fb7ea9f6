"""A PostgreSQL database as an engine's backend (phase 1: one engine at a time).

Theory of operation. The journal is one shared log table (``ml_log``,
schema.py) of the same record lists the local journal frames (msgpack), so
the index is built by the same ``Index.apply``; a row's ``seq`` is its
location. The backend keeps the seam's promises (``_backend/seam.py``):

* ``open(index)``: creates or checks the schema, takes the lease of every
  instance (``lease_epoch`` + 1: an engine that held them before is fenced
  out from its next write), then reads the whole log into the index in one
  query, in seq order.
* ``append_many(recs)``: one call of ``ml_append`` (one round trip, one
  commit): the fence (each instance still carries this engine's epoch),
  new instances' lease rows, the rows; then each record gets its row's seq
  and is applied. Appends that arrive while a batch is in flight wait and go
  together in the next (group commit, one writer connection: this engine's
  records commit in the order they are applied). The round trip is shielded
  from cancellation: once sent, its outcome is applied. A batch refused
  (fenced out, an id that exists) or lost with its connection leaves the
  backend ``failed``: phase 1 neither reconnects nor settles a commit in
  doubt (phase 2 reads it back).
* ``read(loc)``: the row at seq ``loc``, on its own connection.
* ``serve``: the tailer (tailer.py) applies other writers' rows, woken by
  NOTIFY (sent by batches that create, signal or end an instance) or every
  ``poll`` seconds.

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

from .._core import records as r
from .._core.errors import EngineError, JournalClosed, JournalFailed
from .._core.index import Index
from . import schema
from .driver import (
    BOOL,
    BYTEA,
    BYTEA_ARRAY,
    INT8,
    INT8_ARRAY,
    TEXT,
    TEXT_ARRAY,
    Conn,
    array,
    as_int,
    int8,
)
from .tailer import Tail

if TYPE_CHECKING:
    from .._backend.seam import EngineCalls

logger = logging.getLogger("memable_log")

_NEW = frozenset({r.CREATED, r.CHILD_CREATED})
_OUTCOMES = frozenset({r.STEP_DONE, r.STEP_FAILED})
_RESETS = frozenset({r.FORGOT, r.RESTARTED})
# Records another engine may be waiting for: a NOTIFY wakes its tailer.
_NOTIFY = frozenset({r.CREATED, r.CHILD_CREATED, r.SIGNALLED, r.COMPLETED, r.FAILED,
                     r.CANCELLED, r.CANCELLED_FOR})
_APPEND = "SELECT * FROM ml_append($1, $2, $3, $4, $5, $6, $7, $8)"
_APPEND_TYPES = [TEXT, TEXT_ARRAY, TEXT_ARRAY, BYTEA_ARRAY, TEXT_ARRAY, TEXT_ARRAY, INT8_ARRAY,
                 BOOL]
_CLAIM = ("UPDATE ml_instances SET lease_owner = $1, lease_epoch = lease_epoch + 1, "
          "lease_expires = now() + make_interval(secs => $2::float8) "
          "RETURNING instance_id, lease_epoch")
_READ = "SELECT rec FROM ml_log WHERE seq = $1"
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


class _Batch:
    __slots__ = ("done", "error", "ids", "recs", "taken")

    def __init__(self, recs: list[list[Any]]) -> None:
        self.recs = recs
        self.ids = {rec[r.INSTANCE] for rec in recs}
        self.taken = False
        self.done = False
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
        self.resets: dict[str, int] = {}  # instance -> forgot/restarted records
        self.tail = Tail()
        self._conn: Conn | None = None  # the writer's
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

    @property
    def failed(self) -> str | None:
        return self._failed

    def _where(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.dsn).get("dbname") or "?")

    async def _connect(self, role: str) -> Conn:
        try:
            name = f"memable_log {role} {self.writer}"
            return await Conn.connect(self.dsn, application_name=name)
        except psycopg.OperationalError as exc:
            raise EngineError(f"cannot connect to PostgreSQL ({self._where()}): {exc}") from None

    async def open(self, index: Index) -> None:
        if self._conn is not None:
            raise EngineError("this journal is already open")
        self.writer = f"{self.worker}/{uuid.uuid4().hex[:12]}"
        conn = await self._connect("writer")
        try:
            await schema.ensure(conn, f"database {self._where()!r}")
            claimed = await conn.query(b"ml_claim", _CLAIM, [TEXT, TEXT],
                                       [self.writer.encode(), str(self.lease).encode()])
            self.epochs = {
                bytes(claimed.get_value(i, 0) or b"").decode(): as_int(claimed.get_value(i, 1))
                for i in range(claimed.ntuples)
            }
            self.index, self.tail, self.resets = index, Tail(), {}
            await self.tail.poll(conn, None, self._apply_row)
            self._reader = await self._connect("reader")
        except BaseException:
            conn.close()
            raise
        self._conn, self._failed = conn, None

    async def close(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        self.index = None
        for c in (conn, reader):
            if c is not None and not c.broken:
                c.close()

    def _apply_row(self, seq: int, blob: bytes) -> None:
        rec = _unpack(blob, seq)
        self._applied(rec, seq)
        if self.calls is not None:
            self.calls.applied(rec)

    def _applied(self, rec: list[Any], seq: int) -> None:
        assert self.index is not None
        self.index.apply(rec, seq)
        if rec[r.TYPE] in _RESETS:
            self.resets[rec[r.INSTANCE]] = self.resets.get(rec[r.INSTANCE], 0) + 1

    # -- appending ------------------------------------------------------------

    async def append(self, rec: list[Any]) -> None:
        await self.append_many([rec])

    async def append_many(self, recs: list[list[Any]]) -> None:
        if self._conn is None:
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
            raise batch.error

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
        recs = [rec for batch in taken for rec in batch.recs]
        try:
            if self._failed is not None:
                raise PostgresJournalFailed(self._failed)
            seqs = await self._write(recs)
        except BaseException as exc:
            error = exc if isinstance(exc, EngineError) else PostgresJournalFailed(self._fail(exc))
            for batch in taken:
                batch.error, batch.done = error, True
            return
        for rec, seq in zip(recs, seqs, strict=True):
            rec[r.SEQ] = seq
            self._applied(rec, seq)
            if rec[r.TYPE] in _NEW:
                self.epochs[rec[r.INSTANCE]] = 1
        self.batches += 1
        for batch in taken:
            batch.done = True

    def _fail(self, exc: BaseException | str) -> str:
        if self._failed is None:
            self._failed = (f"the PostgreSQL journal refuses writes until the engine is "
                            f"opened again: {exc}")
            logger.error("%s", self._failed)
        return self._failed

    async def _write(self, recs: list[list[Any]]) -> list[int]:
        assert self._conn is not None
        pack = msgpack.Packer().pack
        insts: list[bytes | None] = []
        keys: list[bytes | None] = []
        blobs: list[bytes | None] = []
        made: dict[str, None] = {}  # instances this batch creates (fenced by that)
        fence: dict[str, int] = {}  # the others, with the epoch we hold (-1: none)
        notify = False
        for rec in recs:
            rtype, inst = rec[r.TYPE], rec[r.INSTANCE]
            insts.append(inst.encode())
            if rtype in _NEW:
                made[inst] = None
            elif inst != r.ENGINE and inst not in made:
                fence[inst] = self.epochs.get(inst, -1)
            keys.append(f"{self.resets.get(inst, 0)}:{rec[r.KEY]}".encode()
                        if rtype in _OUTCOMES else None)
            blobs.append(pack(rec))
            notify = notify or rtype in _NOTIFY
        params = [
            self.writer.encode(), array(TEXT, insts), array(TEXT, keys), array(BYTEA, blobs),
            array(TEXT, [i.encode() for i in made]), array(TEXT, [i.encode() for i in fence]),
            array(INT8, [int8(e) for e in fence.values()]), _T if notify else _F,
        ]
        try:
            result = await self._conn.query(b"ml_append", _APPEND, _APPEND_TYPES, params)
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            if state in (schema.FENCED, schema.EXISTS):
                raise PostgresJournalFailed(self._fail(exc.diag.message_primary or exc)) from None
            raise
        return [as_int(result.get_value(i, 0)) for i in range(result.ntuples)]

    async def read(self, loc: int) -> list[Any]:
        if self._conn is None:
            raise JournalClosed("the PostgreSQL journal is closed")
        async with self._read_lock:
            reader = self._reader
            if reader is None or reader.broken:  # a read cut by a cancellation closes it
                reader = self._reader = await self._connect("reader")
            result = await reader.query(b"ml_read", _READ, [INT8], [int8(loc)])
        if result.ntuples != 1:
            raise EngineError(f"no record at seq {loc} in the PostgreSQL journal")
        return _unpack(bytes(result.get_value(0, 0) or b""), loc)

    async def settled(self, instance_id: str) -> None:
        while any(instance_id in batch.ids for batch in self._inflight):
            await self._turn.wait()
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
                await self._tail()
        finally:
            self.calls = None

    async def _listen(self) -> None:
        listener = await self._connect("listener")
        try:
            await listener.run(f"LISTEN {schema.CHANNEL}")
            while True:
                await listener.notifies()
                self.wake.set()
        finally:
            listener.close()

    async def _tail(self) -> None:
        conn = await self._connect("tailer")
        try:
            await self._follow(conn)
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
                await self.tail.poll(conn, self.writer, self._apply_row)
            except (psycopg.Error, r.RecordError) as exc:
                self._fail(exc)
                return

