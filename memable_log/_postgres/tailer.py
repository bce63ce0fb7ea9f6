"""Reading the shared log in seq order, without missing a late commit.

Theory of operation. ``ml_log.seq`` is a bigserial: numbers are handed out
when rows are inserted, not when they commit, so a reader can see seq 11
while seq 10 is still in an open transaction (or will never exist: a
rolled-back insert, a refused batch). A cursor that jumped past 10 would
lose it. The rule here:

* Each poll reads every row above the cursor, and the rows of the open
  *gaps* (seqs below the cursor not yet seen), with the statement's
  snapshot (``pg_current_snapshot()``: its xmin, xmax and the ids of the
  transactions in progress).
* Each seq missing below the highest seq read becomes a gap, holding the
  transactions that were in progress in that snapshot. Why that suffices:
  a writing transaction takes its id *before* its seq (``ml_log.xid``'s
  default is evaluated before ``seq``'s, schema.py), and the missing seq
  was handed out before a seq whose row had committed before the snapshot;
  so the transaction that holds it had its id before the snapshot: it is
  either committed (then its row is read) or in progress (then listed).
* A gap closes when its row is read, or when a later snapshot shows every
  transaction it holds ended (the row would have been read in that same
  snapshot had it committed): the seq will never exist.

Gaps never block: rows above a gap are applied at once. That is sound
because per instance the log is written by one engine at a time, in order
(its lease; one writer connection per engine, batches in turn): a late row
is never of an instance that has later rows already read. One exception:
another engine's signal for an instance (written unfenced, backend.py) may
be applied after the owner's later rows; a signal commutes with every
record but its wait's end, which the log keeps unique. Own rows come
back without their record (the engine applied them when it wrote them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .driver import INT8, INT8_ARRAY, TEXT, Conn, array, as_int, int8

_POLL = (
    "WITH s AS (SELECT pg_current_snapshot()::text AS snap) "
    "SELECT s.snap, l.seq, l.rec FROM s LEFT JOIN LATERAL ("
    " SELECT seq, CASE WHEN writer = $1 THEN NULL ELSE rec END AS rec FROM ml_log"
    " WHERE seq > $2 OR seq = ANY($3::int8[]) ORDER BY seq LIMIT $4) l ON true ORDER BY l.seq"
)
PAGE = 20_000  # rows per query: a long log is read in pages


@dataclass
class Snapshot:
    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def ended(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.running)


@dataclass
class Tail:
    """Where a reader of the log is: its cursor and its open gaps."""

    cursor: int = 0
    gaps: dict[int, frozenset[int]] = field(default_factory=dict)
    polls: int = 0

    async def poll(
        self, conn: Conn, writer: str | None, apply: Callable[[int, bytes], Any]
    ) -> int:
        """Read what is new (and the gaps), ``apply(seq, rec)`` each other
        writer's row in seq order, a page at a time until the log's end;
        the number of rows applied."""
        applied = 0
        while True:
            got, full = await self._page(conn, writer, apply)
            applied += got
            if not full:
                return applied

    async def _page(
        self, conn: Conn, writer: str | None, apply: Callable[[int, bytes], Any]
    ) -> tuple[int, bool]:
        self.polls += 1
        result = await conn.query(
            b"ml_tail", _POLL, [TEXT, INT8, INT8_ARRAY, INT8],
            [None if writer is None else writer.encode(), int8(self.cursor),
             array(INT8, [int8(g) for g in self.gaps]), int8(PAGE)],
        )
        snap = Snapshot.parse(result.get_value(0, 0).decode())  # type: ignore[union-attr]
        seen: list[int] = []
        applied = 0
        for row in range(result.ntuples):
            raw = result.get_value(row, 1)
            if raw is None:
                continue  # the snapshot's row when the log has nothing new
            seq = as_int(raw)
            seen.append(seq)
            rec = result.get_value(row, 2)
            if rec is not None:
                apply(seq, bytes(rec))
                applied += 1
        self._close_gaps(seen, snap)
        return applied, len(seen) >= PAGE

    def _close_gaps(self, seen: list[int], snap: Snapshot) -> None:
        for seq in seen:
            self.gaps.pop(seq, None)
        for seq, holders in list(self.gaps.items()):
            if all(snap.ended(x) for x in holders):
                del self.gaps[seq]  # nobody can commit it any more
        top = max(seen, default=self.cursor)
        if top > self.cursor:
            above = {s for s in seen if s > self.cursor}
            running = snap.running
            for seq in range(self.cursor + 1, top):
                if seq not in above and running:
                    self.gaps[seq] = running
            self.cursor = top
