"""Read-ahead: the values of memoised steps replayed from the journal.

A step's value small enough (the index's inline limit) is kept in the
index and replays at memory speed. A larger one (an API payload, an LLM's
answer) is kept by location, and its replay reads the record back: one
trip to the backend (a worker thread for a directory, a round trip for
PostgreSQL) per step, which costs tens of times the step's own work.

A replay reads its steps in about the order it recorded them. So at the
first step read back, ``ReadAhead`` reads the values of the next
``WINDOW`` steps of the instance, in location order from that one, in a
single ``read_many``, and serves the steps that follow from memory until
the window is used up or a step is not in it (then it reads the next
window from there). Values never change once recorded, so a value held
here is never stale. The locations come from the index, once per run of
the instance (again if a step's location is not among them: a compaction
moved it, or the step is new); ``drop`` forgets an instance when its run
ends. Memory: at most one window of values per instance replaying.

If a window cannot be read whole (a damaged record further on), the step
is read alone, so only its own record decides whether it can replay, and
so is every later step of that run.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from .._core import index as ix

if TYPE_CHECKING:
    from .._backend.seam import Backend

WINDOW = 128  # values read in one trip
MISSING: Any = object()  # ``held``: nothing read ahead for that location


class _Run:
    """One instance's replay: its steps' locations (sorted), and the window read."""

    __slots__ = ("locs", "held", "alone")

    def __init__(self, locs: list[int]) -> None:
        self.locs = locs
        self.held: dict[int, Any] = {}  # location -> the record's field, not yet used
        self.alone = False  # a window failed: the rest of the run reads step by step


class ReadAhead:
    """The read-ahead of every instance replaying (module comment)."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def held(self, instance_id: str, loc: int) -> Any:
        """The field read ahead for the step record at ``loc`` (handed out
        once), or ``MISSING``: a plain call, so that a step served from the
        window costs its replay no coroutine (``field`` reads the rest)."""
        run = self._runs.get(instance_id)
        return MISSING if run is None else run.held.pop(loc, MISSING)

    async def field(
        self, backend: Backend, index: ix.Index, instance_id: str, loc: int, field: int
    ) -> Any:
        """Field ``field`` of the step record at ``loc`` of ``instance_id``."""
        run = self._runs.get(instance_id)
        if run is not None:
            got = run.held.pop(loc, MISSING)
            if got is not MISSING:
                return got
        if run is None or not (run.alone or _has(run.locs, loc)):
            run = self._runs[instance_id] = _Run(_step_locations(index, instance_id))
        at = bisect.bisect_left(run.locs, loc)
        window = run.locs[at:at + WINDOW] if _has(run.locs, loc) else [loc]
        if len(window) == 1 or run.alone:
            return (await backend.read(loc))[field]
        try:
            records = await backend.read_many(window)
        except Exception:  # one of the others unreadable: this step's own read decides
            run.alone = True
            return (await backend.read(loc))[field]
        run.held = {where: rec[field] for where, rec in zip(window[1:], records[1:], strict=True)}
        return records[0][field]

    def __len__(self) -> int:
        """How many instances have values read ahead."""
        return len(self._runs)

    def drop(self, instance_id: str) -> None:
        """Forget what was read ahead for the instance (its run ended)."""
        self._runs.pop(instance_id, None)


def _has(locs: list[int], loc: int) -> bool:
    at = bisect.bisect_left(locs, loc)
    return at < len(locs) and locs[at] == loc


def _step_locations(index: ix.Index, instance_id: str) -> list[int]:
    """Where the instance's memoised step values are recorded, in journal order."""
    entry = index.instances.get(instance_id)
    if entry is None:
        return []
    return sorted(
        ix.entry_loc(e) for e in entry.steps.values()
        if type(e) is int and ix.entry_kind(e) == ix.STEP_DONE_AT
    )
