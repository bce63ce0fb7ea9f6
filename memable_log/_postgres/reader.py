"""Reading a PostgreSQL journal from outside an engine (``memable
instances``, ``memable status``/``steps`` and ``memable_log.operations``
given a ``postgresql://`` URL).

Theory of operation. The whole log is read in one query, in seq order, with
a plain synchronous psycopg connection (a tool, not an engine: no trio, no
lease, nothing written), and replayed into an ``Index`` through the same
``apply`` an engine uses: what an engine would say of every instance at
that snapshot. One statement sees one snapshot, so a row committed late is
either in it with every row before it of its instance, or not at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgpack

from .._core import records as r
from .._core.errors import EngineError, UnknownInstance
from .._core.index import Index

if TYPE_CHECKING:
    from .._core.status import InstanceStatus, StepStatus

SCHEMES = ("postgresql://", "postgres://")


def is_url(path: object) -> bool:
    """Whether a tool's journal argument is a PostgreSQL URL."""
    return isinstance(path, str) and path.startswith(SCHEMES)


class PostgresReader:
    """The journal in a PostgreSQL database, read once (see the module comment)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._index: Index | None = None

    def _replay(self) -> Index:
        if self._index is not None:
            return self._index
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
        index = Index()
        for seq, blob in rows:
            rec: list[Any] = msgpack.unpackb(bytes(blob), raw=False, strict_map_key=True,
                                             use_list=True)
            r.check(rec)
            rec[r.SEQ] = seq
            index.apply(rec, seq)
        self._index = index
        return index

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
