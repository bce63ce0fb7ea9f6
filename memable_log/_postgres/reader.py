"""Reading a PostgreSQL journal from outside an engine (``memable-dump``,
``memable instances``, ``memable status``/``steps`` and
``memable_log.operations`` given a ``postgresql://`` URL).

Theory of operation. The whole log is read in one query, in seq order, with
a plain synchronous psycopg connection (a tool, not an engine: no trio, no
lease, nothing written), and replayed into an ``Index`` through the same
``apply`` an engine uses: what an engine would say of every instance at
that snapshot. One statement sees one snapshot, so a row committed late is
either in it with every row before it of its instance, or not at all.

``follow`` (``memable-dump --follow URL``) reads as an engine's tailer does
(tailer.py: a cursor and the gaps of transactions still open, so a late
commit is never skipped), on the driver's trio connection, every
``interval`` seconds. ``stats`` (``--stats``) adds the tables' sizes and
the engines holding a lease to the replayed instances.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgpack

from .._core import records as r
from .._core.errors import EngineError, UnknownInstance
from .._core.index import Index
from .._core.records import RecordView, view

if TYPE_CHECKING:
    from .._core.status import InstanceStatus, StepStatus

SCHEMES = ("postgresql://", "postgres://")


def is_url(path: object) -> bool:
    """Whether a tool's journal argument is a PostgreSQL URL."""
    return isinstance(path, str) and path.startswith(SCHEMES)


class PostgresReader:
    """The journal in a PostgreSQL database, read once (see the module comment)."""

    torn = None  # a database has no torn tail

    def __init__(self, url: str) -> None:
        self.url = url
        self._index: Index | None = None
        self._recs: list[list[Any]] | None = None

    def __iter__(self) -> Iterator[RecordView]:
        """Every record, in seq order (``memable-dump``): segment 0, offset = seq."""
        for rec in self._read():
            yield view(rec, 0, rec[r.SEQ])

    def _replay(self) -> Index:
        if self._index is None:
            index = Index()
            for rec in self._read():
                index.apply(rec, rec[r.SEQ])
            self._index = index
        return self._index

    def _read(self) -> list[list[Any]]:
        if self._recs is not None:
            return self._recs
        try:
            import psycopg
        except ImportError:  # pragma: no cover - the extra is missing
            raise EngineError("reading a postgresql:// journal needs psycopg: "
                              "pip install 'memable-log[postgres]'") from None
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                found = conn.execute("SELECT to_regclass('ml_log') IS NOT NULL").fetchone()
                if not found or not found[0]:
                    raise EngineError(f"{_where(self.url)} holds no memable_log journal "
                                      f"(no table ml_log)")
                rows = conn.execute("SELECT seq, rec FROM ml_log ORDER BY seq").fetchall()
        except psycopg.OperationalError as exc:
            raise EngineError(f"cannot connect to PostgreSQL ({_where(self.url)}): "
                              f"{exc}") from None
        recs = []
        for seq, blob in rows:
            rec: list[Any] = msgpack.unpackb(bytes(blob), raw=False, strict_map_key=True,
                                             use_list=True)
            r.check(rec)
            rec[r.SEQ] = seq
            recs.append(rec)
        self._recs = recs
        return recs

    def stats(self) -> dict[str, Any]:
        """The journal's shape: records, next seq, bytes per table, engines
        holding a lease, instances by state (``memable-dump --stats``)."""
        from .._core.lifecycle import STATE_NAMES

        recs = self._read()
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                sizes = {t: int(conn.execute("SELECT pg_total_relation_size(%s)", (t,))
                                .fetchone()[0])  # type: ignore[index]
                         for t in ("ml_log", "ml_instances", "ml_workers", "ml_meta")}
                row = conn.execute("SELECT count(*) FILTER (WHERE expires_at >= now()), "
                                   "count(*) FROM ml_workers").fetchone()
                seq = conn.execute("SELECT last_value, is_called FROM ml_log_seq_seq"
                                   ).fetchone()
        except psycopg.OperationalError as exc:
            raise EngineError(f"cannot connect to PostgreSQL ({_where(self.url)}): "
                              f"{exc}") from None
        assert row is not None
        assert seq is not None
        states = [STATE_NAMES[e.state] for e in self._replay().instances.values()]
        return {
            "url": _where(self.url),
            "records": len(recs),
            "next_seq": int(seq[0]) + 1 if seq[1] else int(seq[0]),
            "bytes": {**sizes, "total": sum(sizes.values())},
            "engines": {"holding_a_lease": int(row[0]), "rows": int(row[1])},
            "instances": {"total": len(states),
                          "by_state": {name: states.count(name) for name in STATE_NAMES}},
        }

    def instances(
        self,
        state: str | None = None,
        *,
        workflow: str | None = None,
        prefix: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[InstanceStatus]:
        """What ``engine.instances(...)`` would return (JournalReader.instances)."""
        from .._core.listing import select

        return select(self._replay().instances, state, workflow=workflow, prefix=prefix,
                      since=since, until=until, limit=limit, newest_first=newest_first)

    def replay(self) -> PostgresReader:
        """The replayed journal (itself: ``status``, ``steps``, ``instances``),
        as ``JournalReader.replay`` gives one."""
        return self

    def status(self, instance_id: str) -> InstanceStatus:
        """What ``engine.status(instance_id)`` would return."""
        from .._core.status import status_of

        entry = self._replay().instances.get(instance_id)
        if entry is None:
            raise UnknownInstance(instance_id)
        return status_of(instance_id, entry)

    def steps(self, instance_id: str) -> list[StepStatus]:
        """What ``engine.steps(instance_id)`` would return."""
        from .._core.status import steps_of

        entry = self._replay().instances.get(instance_id)
        if entry is None:
            raise UnknownInstance(instance_id)
        return steps_of(entry)


def _where(url: str) -> str:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    port = info.get("port")
    return f"{info.get('host') or 'localhost'}{f':{port}' if port else ''}/{info.get('dbname')}"


def follow(
    url: str,
    emit: Callable[[RecordView], Any],
    *,
    interval: float,
    caught_up: Callable[[bool], Any],
    sleep: Callable[[float], None] | None = None,
) -> None:
    """Every record in seq order, then each new one (``emit``), until an
    exception from a callback (or Ctrl-C) ends it. ``caught_up(waiting)``
    after each look (``waiting``: the database holds no journal yet);
    ``sleep`` (tests) instead of trio's between looks."""
    import psycopg
    import trio

    from .driver import Conn, Limits
    from .tailer import Tail

    def apply(seq: int, blob: bytes) -> None:
        rec = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True)
        r.check(rec)
        rec[r.SEQ] = seq
        emit(view(rec, 0, seq))

    async def main() -> None:
        conn = await Conn.connect(url, application_name="memable-dump --follow",
                                  limits=Limits())
        try:
            tail, there = Tail(), False
            while True:
                if not there:
                    got = await conn.run("SELECT to_regclass('ml_log') IS NOT NULL")
                    there = got[0].get_value(0, 0) == b"t"
                if there:
                    await tail.poll(conn, None, apply)
                caught_up(not there)
                if sleep is not None:
                    sleep(interval)
                else:
                    await trio.sleep(interval)
        finally:
            conn.close()

    try:
        trio.run(main)
    except psycopg.OperationalError as exc:
        raise EngineError(f"PostgreSQL ({_where(url)}): {exc}") from None
