"""Reading a PostgreSQL journal from outside an engine (``memable-dump``,
``memable instances``, ``memable status``/``steps`` and
``memable_log.operations`` given a ``postgresql://`` URL).

Theory of operation. The whole log is read in one query, in seq order, with
a plain synchronous psycopg connection (a tool, not an engine: no trio, no
lease, nothing written), and replayed into an ``Index`` through the same
``apply`` an engine uses: what an engine would say of every instance at
that snapshot. One statement sees one snapshot, so a row committed late is
either in it with every row before it of its instance, or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
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
