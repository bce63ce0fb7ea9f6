"""A PostgreSQL connection driven from trio, over psycopg's libpq wrapper.

Theory of operation. psycopg 3's ``AsyncConnection`` runs on asyncio only,
but psycopg exposes the machinery under it: ``psycopg.pq.PGconn`` (libpq,
non-blocking) and the generators of ``psycopg.generators``, which send and
fetch without blocking and *yield* what they wait for (the socket readable
or writable). ``_wait`` drives such a generator from trio with
``trio.lowlevel.wait_readable``/``wait_writable`` on the connection's socket:
no thread hop per query (docs/design.md, "PostgreSQL": measured against a
sync connection on a worker thread, bench/bench_pg_driver.py).

The backend's statements are few and fixed, so ``Conn`` speaks only what it
needs: prepared statements with binary parameters and binary results
(``int8`` as 8 big-endian bytes, ``bytea`` raw, ``text`` as UTF-8), plain
SQL for the schema, LISTEN and its notifications. A query cut by a
cancellation leaves the protocol in an unknown state: the connection is
closed (``broken``) and its owner opens another; callers that must know a
write's outcome shield the round trip. So does a connection the server or
the network dropped (``broken`` too, even when an error reply came first).

Hung round trips are bounded (``Limits``): TCP keepalives and
``tcp_user_timeout`` find a peer that vanished, ``connect_timeout`` a
server that does not answer, and every session runs with a
``statement_timeout`` and an ``idle_in_transaction_session_timeout`` (a
session's row locks cannot outlive them).
"""

from __future__ import annotations

import select
import struct
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import generators, pq
from psycopg.errors import error_from_result

RV = TypeVar("RV")

INT8, INT4, TEXT, BYTEA, BOOL = 20, 23, 25, 17, 16
INT8_ARRAY, TEXT_ARRAY, BYTEA_ARRAY, BOOL_ARRAY = 1016, 1009, 1001, 1000
_READ, _WRITE = 1, 2  # psycopg's Wait/Ready bits (selectors' EVENT_READ/WRITE)
_OK = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY})


async def _wait(gen: Generator[Any, Any, RV], fileno: int) -> RV:
    """Run a psycopg generator to its end, waiting on ``fileno`` in trio."""
    try:
        state = next(gen)
        while True:
            ready = _poll(fileno, state)  # a socket asked for writing nearly always is
            if not ready:
                if state & _READ:
                    await trio.lowlevel.wait_readable(fileno)
                    ready = _READ
                else:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = _WRITE
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _poll(fileno: int, state: int) -> int:
    if not state & _WRITE:
        return 0
    poller = select.poll()
    poller.register(fileno, select.POLLOUT | (select.POLLIN if state & _READ else 0))
    ready = 0
    for _, events in poller.poll(0):
        if events & select.POLLIN:
            ready |= _READ
        if events & select.POLLOUT:
            ready |= _WRITE
    return ready


def int8(value: int) -> bytes:
    return struct.pack(">q", value)


_HEAD = struct.Struct(">iiIii")  # dimensions, has NULLs, element type, length, lower bound
_LEN = struct.Struct(">i")
_NULL = b"\xff\xff\xff\xff"


def array(oid: int, items: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array of ``oid`` elements, binary format (None: NULL).
    Six of these make every batch the writer sends: the common sizes (none,
    one element) skip the general loop."""
    count = len(items)
    if count == 1 and (item := items[0]) is not None:
        return _HEAD.pack(1, 0, oid, 1, 1) + _LEN.pack(len(item)) + item
    if not count:
        return _HEAD.pack(1, 0, oid, 0, 1)
    parts = [_HEAD.pack(1, int(None in items), oid, count, 1)]
    for item in items:
        if item is None:
            parts.append(_NULL)
        else:
            parts.append(_LEN.pack(len(item)))
            parts.append(item)
    return b"".join(parts)


def array_len(blob: bytes) -> int:
    """The length of a one-dimensional binary array made by ``array``."""
    return int(struct.unpack_from(">i", blob, 12)[0])


def as_int(value: bytes | None) -> int:
    if value is None:
        raise psycopg.DataError("unexpected NULL")
    return int.from_bytes(value, "big", signed=True)


@dataclass(frozen=True)
class Limits:
    """How long a round trip may hang, in seconds (see the module comment)."""

    statement: float = 30.0  # statement_timeout, idle_in_transaction_session_timeout
    connect: int = 10  # connect_timeout (whole seconds, at least 2)
    idle: int = 5  # keepalives_idle; then 3 probes 1 s apart

    @classmethod
    def for_lease(cls, lease: float) -> Limits:
        """A lease's bounds: nothing hangs much longer than the lease."""
        return cls(statement=max(lease, 1.0), connect=max(2, round(lease)),
                   idle=max(1, round(lease / 3)))

    def conninfo(self, dsn: str, application_name: str) -> str:
        ms = int(self.statement * 1000)
        given = psycopg.conninfo.conninfo_to_dict(dsn).get("options") or ""
        options = (f"{given} -c statement_timeout={ms} "
                   f"-c idle_in_transaction_session_timeout={ms}").strip()
        return psycopg.conninfo.make_conninfo(
            dsn, application_name=application_name, options=options,
            connect_timeout=str(self.connect), keepalives="1",
            keepalives_idle=str(self.idle), keepalives_interval="1", keepalives_count="3",
            tcp_user_timeout=str(ms))


class Conn:
    """One connection, used by one task at a time (the caller's lock)."""

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        self.pgconn = pgconn
        self.fileno = pgconn.socket
        self.pid = pgconn.backend_pid  # the server's process of this session
        self.broken = False
        self._prepared: set[bytes] = set()

    @classmethod
    async def connect(
        cls, dsn: str, *, application_name: str = "memable_log", limits: Limits | None = None
    ) -> Conn:
        conninfo = (limits or Limits()).conninfo(dsn, application_name)
        gen = generators.connect(conninfo)
        try:
            fileno, state = next(gen)
            while True:
                if state & _READ:
                    await trio.lowlevel.wait_readable(fileno)
                    ready = _READ
                else:
                    await trio.lowlevel.wait_writable(fileno)
                    ready = _WRITE
                fileno, state = gen.send(ready)
        except StopIteration as stop:
            pgconn: pq.abc.PGconn = stop.value
        pgconn.nonblocking = 1
        return cls(pgconn)

    def close(self) -> None:
        if not self.broken:
            self.broken = True
            self.pgconn.finish()

    async def _results(self) -> list[pq.abc.PGresult]:
        try:
            results: list[pq.abc.PGresult] = await _wait(
                generators.execute(self.pgconn), self.fileno
            )
        except BaseException:
            self.close()  # cut mid-protocol (cancelled, the server gone): unusable
            raise
        if self.pgconn.status != pq.ConnStatus.OK:
            self.close()  # an error reply, then the server closed the session
        for result in results:
            if result.status not in _OK:
                raise error_from_result(result)
        if self.broken:
            raise psycopg.OperationalError("the server closed the connection")
        return results

    def _send(self, send: Any, *args: Any) -> None:
        try:
            send(*args)
        except BaseException:
            self.close()
            raise

    async def run(self, sql: str) -> list[pq.abc.PGresult]:
        """Plain SQL, one or more statements (text results)."""
        self._send(self.pgconn.send_query, sql.encode())
        return await self._results()

    async def query(
        self, name: bytes, sql: str, types: Sequence[int], params: Sequence[bytes | None]
    ) -> pq.abc.PGresult:
        """A prepared statement (prepared on first use), binary in and out."""
        if name not in self._prepared:
            self._send(self.pgconn.send_prepare, name, sql.encode(), types)
            await self._results()
            self._prepared.add(name)
        self._send(self.pgconn.send_query_prepared, name, params, [1] * len(params), 1)
        return (await self._results())[-1]

    async def notifies(self) -> list[str]:
        """Wait for notifications (after LISTEN); their payloads. Those a
        query's reply brought along are returned without waiting."""
        return [payload for payload, _ in await self.notices()]

    async def notices(self) -> list[tuple[str, int]]:
        """``notifies``, each payload with the server process (``pid``) of
        the session that sent it: a listener can tell its own engine's
        NOTIFYs (sent by its writer session) from the others'."""
        found = []
        while (notify := self.pgconn.notifies()) is not None:
            found.append(notify)
        if not found:
            try:
                found = await _wait(generators.notifies(self.pgconn), self.fileno)
            except BaseException:
                self.close()
                raise
        return [(n.extra.decode(), n.be_pid) for n in found]
