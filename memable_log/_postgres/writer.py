"""An engine's writer connection: one ``ml_append`` at a time, made again
when lost, and a commit in doubt settled before anything is said of it.

Theory of operation. The backend sends each batch of records as one
``ml_append`` call (one statement, autocommit: it commits whole or not at
all) on this one connection, so at most one batch of this engine is ever
in flight, and every row it wrote names this open's ``writer``.

* A connection that cannot be made, or was lost before a batch was sent,
  is made again with backoff (0.05 s doubling to 1 s); the batch waits.
* A batch whose connection was lost after it was sent (the server
  restarted, the network cut, a round trip past its bound) is *in doubt*:
  it may have committed. Once a connection is made again, the old session
  is ended first (``pg_terminate_backend``, waiting for its process to
  exit: its transaction has then committed or rolled back for good, it
  cannot commit later), then the log is read back for rows of this writer
  above the highest seq it knows it wrote. The batch's rows all there:
  it committed, and their seqs are its reply. None: it did not, and it is
  sent again. (A step's outcome is also unique per instance and key, so a
  second copy could never be written anyway: first writer wins.)
* A statement the server refused with the connection still up (a
  ``statement_timeout``) rolled back: sent again after the backoff.
* Nothing is sent past ``deadline()`` (the engine's self-fencing time:
  its lease may be another's by then, say after a long pause), and
  retries end there too, or when ``failed()`` says the backend stopped;
  the batch then fails with ``Unreachable`` (``expired()`` fences the
  backend and says why) and nothing of it is acknowledged (a later open
  reads whatever committed).

Every round trip is bounded: ``limit`` seconds on trio's clock around it
(then it is in doubt), and the server's own timeouts (driver.Limits).

The plain statement. Most batches are steps of instances this engine
holds: no new instance, no NOTIFY, no queue state (rows.UNQUEUE). Those
are sent as one plain SQL statement (``_FAST_ONE``, ``_FAST_MANY``) that
does what ``ml_append`` does for them (the same fence, rows locked ``FOR
SHARE``, then the same insert, seqs back in order; all rows or none),
without the call into PL/pgSQL: measured in bench/bench_pg_ab.py (docs/performance.md,
"PostgreSQL, phase 3"). When it writes nothing the fence refused: the
batch then goes to ``ml_append``, which refuses it in its own words (the
SQLSTATE the backend reads) or, had the fence moved back, writes it. The
statements follow schema.py's ``ml_log`` and ``ml_instances``: a change
of those is a change here too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg
import trio

from .._core.errors import EngineError
from .driver import (
    BOOL,
    BYTEA_ARRAY,
    INT8,
    INT8_ARRAY,
    TEXT,
    TEXT_ARRAY,
    Conn,
    array_len,
    as_int,
    int8,
)

logger = logging.getLogger("memable_log")

_APPEND = "SELECT * FROM ml_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_APPEND_TYPES = [TEXT, TEXT_ARRAY, TEXT_ARRAY, BYTEA_ARRAY, TEXT_ARRAY, TEXT_ARRAY, INT8_ARRAY,
                 BOOL, TEXT_ARRAY, TEXT_ARRAY]
# The old session of a batch in doubt: ended, and waited for (5 s at most a call).
_END = ("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE pid = $1 AND application_name = left($2, 63)")
_MINE = "SELECT seq FROM ml_log WHERE writer = $1 AND seq > $2 ORDER BY seq"
_FIRST_DELAY, _MAX_DELAY = 0.05, 1.0
# ml_append's work for a batch with no new instance, no NOTIFY and no queue
# state, as one plain statement over the same parameters ($5, $8, $9 and
# $10 unused): the fence
# on one instance, or on several (each row must match its epoch).
_INSERT = ("INSERT INTO ml_log (instance_id, step_key, writer, rec)"
           " SELECT u.i, u.k, $1, u.r FROM f,"
           " unnest($2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY AS u(i, k, r, o)")
_FAST_ONE = ("WITH f AS (SELECT 1 FROM ml_instances WHERE instance_id = $6[1]"
             " AND lease_epoch = $7[1] FOR SHARE) " + _INSERT + " ORDER BY u.o RETURNING seq")
_FAST_MANY = ("WITH f AS (SELECT count(*) AS n FROM (SELECT 1 FROM ml_instances m"
              " JOIN unnest($6::text[], $7::int8[]) AS g(i, e)"
              " ON m.instance_id = g.i AND m.lease_epoch = g.e FOR SHARE OF m) x) " + _INSERT +
              " WHERE f.n = cardinality($6::text[]) ORDER BY u.o RETURNING seq")
_NO = b"\x00"
# The prepared statements that send a batch (tests and the kill -9 campaign
# cut a connection right there).
SENDS_BATCH = frozenset({b"ml_append", b"ml_fast1", b"ml_fastn"})


def _plain(params: Sequence[bytes | None]) -> tuple[bytes, str] | None:
    """The plain statement that can write this batch, if one can."""
    new, fence, notify, queue, unqueue = params[4], params[5], params[7], params[8], params[9]
    if (notify != _NO or new is None or fence is None or queue is None or unqueue is None
            or array_len(new) or array_len(queue) or array_len(unqueue)):
        return None
    fenced = array_len(fence)
    if not fenced:
        return None
    return (b"ml_fast1", _FAST_ONE) if fenced == 1 else (b"ml_fastn", _FAST_MANY)


class Unreachable(EngineError):
    """The writer gave up: the backend failed, or its deadline passed."""


class Writer:
    """The writer connection of one open. See the module comment."""

    def __init__(
        self,
        name: str,
        app_name: str,
        connect: Callable[[], Awaitable[Conn]],
        *,
        limit: float,
        deadline: Callable[[], float],
        failed: Callable[[], str | None],
        expired: Callable[[], str],
    ) -> None:
        self.name = name  # ml_log.writer of this open
        self.conn: Conn | None = None
        self.app_name = app_name  # its sessions' application_name (to find one again)
        self.mine = 0  # the highest seq this writer knows it wrote
        self.reconnects = 0
        self.in_doubt = [0, 0]  # batches read back: committed, not committed
        self._connect = connect
        self._limit = limit
        self._deadline = deadline
        self._failed = failed
        self._expired = expired  # past the deadline: the backend fences itself; why
        self._doubt: tuple[int, str] | None = None  # the old session (pid, name)
        self._delay = _FIRST_DELAY

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def append(self, params: Sequence[bytes | None], count: int) -> list[int]:
        """Send one batch of ``count`` rows; their seqs, once known to have
        committed. Raises the server's refusal (psycopg.Error) when it
        certainly did not commit, ``Unreachable`` when retries ended."""
        while True:
            conn = await self._ready()
            if self._doubt is not None:
                seqs = await self._settle(conn, count)
                if seqs is not None:
                    return seqs
                continue  # not committed (or the read-back was cut): again
            try:
                result = await self._send(conn, params, count)
            except (psycopg.OperationalError, trio.TooSlowError) as exc:
                if conn.broken:  # sent, perhaps committed
                    self._doubt = (conn.pid, self.app_name)
                    self._lost(exc)
                elif isinstance(exc, psycopg.errors.QueryCanceled):
                    await self._backoff(exc)  # a statement timeout: rolled back
                else:
                    raise
                continue
            self._delay = _FIRST_DELAY
            return self._got([as_int(result.get_value(i, 0)) for i in range(result.ntuples)])

    async def _send(self, conn: Conn, params: Sequence[bytes | None],
                    count: int) -> psycopg.pq.abc.PGresult:
        """One batch's round trip (two when the plain statement's fence
        refused), bounded by ``limit`` (then ``TooSlowError``)."""
        with trio.CancelScope(deadline=trio.current_time() + self._limit):
            plain = _plain(params)
            if plain is not None:
                result = await conn.query(plain[0], plain[1], _APPEND_TYPES, params)
                if result.ntuples == count:
                    return result
            return await conn.query(b"ml_append", _APPEND, _APPEND_TYPES, params)
        raise trio.TooSlowError

    def _got(self, seqs: list[int]) -> list[int]:
        self.mine = max([self.mine, *seqs])
        return seqs

    def _lost(self, exc: BaseException) -> None:
        logger.warning("PostgreSQL journal: the writer connection is lost (%s); "
                       "reconnecting", exc or type(exc).__name__)

    def _check(self) -> None:
        failed = self._failed()
        if failed is not None:
            raise Unreachable(failed)
        if trio.current_time() >= self._deadline():
            raise Unreachable(self._expired())

    async def _ready(self) -> Conn:
        """The connection, made again (with backoff) if lost."""
        while True:
            self._check()
            conn = self.conn
            if conn is not None and not conn.broken:
                return conn
            try:
                with trio.move_on_at(self._deadline()):
                    self.conn = await self._connect()
                    self.reconnects += 1
            except EngineError as exc:
                await self._backoff(exc)

    async def _backoff(self, exc: BaseException) -> None:
        logger.warning("PostgreSQL journal: the writer waits %.2fs (%s)", self._delay, exc)
        with trio.move_on_at(self._deadline()):
            await trio.sleep(self._delay)
        self._delay = min(self._delay * 2, _MAX_DELAY)

    async def _settle(self, conn: Conn, count: int) -> list[int] | None:
        """Whether the batch in doubt committed: its seqs, or None (then it
        did not, and ``_doubt`` is cleared). The old session ends first."""
        assert self._doubt is not None
        pid, app = self._doubt
        try:
            with trio.fail_after(self._limit):
                while (await conn.query(b"ml_end", _END, [INT8, TEXT],
                                        [int8(pid), app.encode()])).ntuples:
                    self._check()  # still there after 5 s: again, until the deadline
                got = await conn.query(b"ml_mine", _MINE, [TEXT, INT8],
                                       [self.name.encode(), int8(self.mine)])
        except (psycopg.OperationalError, trio.TooSlowError) as exc:
            if conn.broken:
                self._lost(exc)
            else:  # a statement timeout
                await self._backoff(exc)
            return None  # the doubt stays: settled on the next try
        seqs = [as_int(got.get_value(i, 0)) for i in range(got.ntuples)]
        self._doubt = None
        if len(seqs) == count:
            self.in_doubt[0] += 1
            return self._got(seqs)
        if seqs:
            raise Unreachable(f"a batch in doubt has {len(seqs)} of its {count} rows in the "
                              f"log (writer {self.name}): the journal is inconsistent")
        self.in_doubt[1] += 1
        return None
