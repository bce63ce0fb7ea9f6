"""What the pages show, read from a journal without a lock (public reader API only).

``Listing`` holds the instance listing of the journal as of its last
change: a change is seen as a different set of segment files or sizes, and
only then is the journal replayed again (``replay``: from the engine's index
snapshot, when it can be trusted, and what follows it), once for every
request that comes meanwhile. Pages are slices of it, by position in
creation order (the cursor), so a page costs no more for 100,000 instances
than for ten; the listing pages use the last replay while the next one
runs in the background. ``instance_view`` takes one instance from that
replay, as the engine's index holds it (no pass over the journal): its
status, steps (what ``engine.steps`` says), the values of the steps on the
page (read at their records' locations when too large for the index), its
input, result, events, children and the sequence number to follow from.
``instance_records`` is the one read that passes over the journal: an
instance's latest records, on a page of their own. The live view builds
its step rows from each new record (``step_of``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memable_log import ErrorInfo, InstanceStatus, JournalCorrupt, StepStatus, UnknownInstance
from memable_log.reader import RecordView, Replay, decode_value, read_journal

STEP_PAGE = 200  # steps of an instance shown on its page, unless ?steps= says otherwise
STEPS_KEPT = 8  # instances whose steps a listing keeps, for their next page
READ_ATTEMPTS = 10  # a compaction deletes files a read has listed: read again, as operations does

STATES = ("running", "queued", "suspended", "sleeping", "waiting", "completed", "failed",
          "cancelled")
STEP_RECORDS = frozenset({"step_done", "step_done_v2", "step_failed", "step_failed_v2",
                          "attempt_failed", "step_started", "forgot"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """The listing's filters; None: not filtered."""

    state: str | None = None
    workflow: str | None = None
    prefix: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def match(self, st: InstanceStatus) -> bool:
        return not (
            (self.state is not None and st.state != self.state)
            or (self.workflow is not None and st.workflow != self.workflow)
            or (self.prefix is not None and not st.instance_id.startswith(self.prefix))
            or (self.since is not None and st.created_at < self.since)
            or (self.until is not None and st.created_at >= self.until)
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the listing: ``rows`` as (position, status); ``next`` the
    cursor of the page after it (None: the last page); ``total`` every
    instance of the journal."""

    rows: list[tuple[int, InstanceStatus]]
    next: int | None
    total: int
    as_of: datetime


def signature(path: str) -> tuple[tuple[str, int, int], ...]:
    """What changes whenever the journal does: its files, sizes and times."""
    found = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.endswith(".mlog"):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted by a compaction since the listing
                found.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


def replay(path: str) -> Replay:
    """The journal read as the engine's start reads it: from its index
    snapshot when that can be trusted, then what follows (blocking)."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return read_journal(path).replay()
        except FileNotFoundError:
            continue
    return read_journal(path).replay()


@dataclass(slots=True)
class Snapshot:
    """The instances as of one replay: their ids in creation order, and the
    replay itself (statuses, steps and values). A status is built when a
    page first shows it (``status_at``), not for every instance at once:
    the first page of 100,000 instances costs the replay and 50 statuses."""

    sig: tuple[tuple[str, int, int], ...]
    ids: list[str]
    taken_at: datetime
    replay: Replay
    built: dict[int, InstanceStatus] = field(default_factory=dict)
    steps: dict[str, list[StepStatus]] = field(default_factory=dict)  # the last few asked

    def steps_of(self, instance_id: str) -> list[StepStatus]:
        """An instance's steps (kept for the next page of the same instance)."""
        found = self.steps.get(instance_id)
        if found is None:
            if len(self.steps) >= STEPS_KEPT:
                self.steps.clear()
            found = self.steps[instance_id] = self.replay.steps(instance_id)
        return found

    def status_at(self, pos: int) -> InstanceStatus:
        found = self.built.get(pos)
        if found is None:
            found = self.built[pos] = self.replay.status(self.ids[pos])
        return found


class Listing:
    """The journal's instances, replayed again only when the journal changed.

    ``snapshot(fresh=True)`` replays first if the journal changed;
    ``fresh=False`` (the listing pages) answers at once from the last
    replay and starts a replay in the background if the journal changed
    since, so that paging a journal of 100,000 instances never waits for
    one. ``warm()`` starts the first replay in the background.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._refreshing = False

    def snapshot(self, fresh: bool = True) -> Snapshot:
        """The instances (blocking: call it in a thread)."""
        snap = self._snap
        if snap is not None and not fresh:
            if signature(self.path) != snap.sig and not self._refreshing:
                self.warm()
            return snap
        with self._lock:
            sig = signature(self.path)
            snap = self._snap
            if snap is None or snap.sig != sig:
                taken = datetime.now(UTC)
                replayed = replay(self.path)
                snap = Snapshot(sig, replayed.ids(), taken, replayed)
                self._snap = snap
            return snap

    def warm(self) -> None:
        """Replay in the background (if the journal changed since the last)."""
        self._refreshing = True

        def run() -> None:
            try:
                self.snapshot()
            except Exception:  # a foreground read reports it
                pass
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="memable-ui listing", daemon=True).start()

    def status(self, instance_id: str) -> InstanceStatus:
        return self.snapshot().replay.status(instance_id)  # UnknownInstance if not there

    def children(self, instance_id: str) -> list[InstanceStatus]:
        replayed = self.snapshot().replay
        return [replayed.status(c) for c in replayed.children(instance_id) if c in replayed]

    def page(self, filters: Filters, cursor: int | None, limit: int,
             newest_first: bool = False) -> Page:
        """Up to ``limit`` instances that match, from position ``cursor`` on
        (backwards when ``newest_first``)."""
        snap = self.snapshot(fresh=False)
        ids = snap.ids
        prefix = filters.prefix
        rows: list[tuple[int, InstanceStatus]] = []
        for pos in _positions(len(ids), cursor, newest_first):
            if prefix is not None and not ids[pos].startswith(prefix):
                continue  # told without building its status
            st = snap.status_at(pos)
            if not filters.match(st):
                continue
            if len(rows) == limit:
                return Page(rows, pos, len(ids), snap.taken_at)
            rows.append((pos, st))
        return Page(rows, None, len(ids), snap.taken_at)


def _positions(n: int, cursor: int | None, newest_first: bool) -> Iterator[int]:
    if newest_first:
        start = n - 1 if cursor is None else min(cursor, n - 1)
        return iter(range(start, -1, -1))
    return iter(range(0 if cursor is None else max(cursor, 0), n))


@dataclass(slots=True)
class StepRow:
    """A step as the timeline shows it: its status, and its value if it has one."""

    step: StepStatus
    blob: bytes | None = None  # its stored value, undecoded (only for the rows shown)


Event = tuple[str, int, bytes]  # key, ts_ms, value blob


@dataclass(slots=True)
class InstanceView:
    status: InstanceStatus
    steps: list[StepRow]
    events: list[Event]
    children: list[InstanceStatus]
    next_seq: int
    start: int = 0  # the position of the first step shown
    count: int = STEP_PAGE  # how many steps are shown
    input: bytes | None = None
    result: bytes | None = None


def instance_view(listing: Listing, instance_id: str, start: int = 0,
                  count: int = STEP_PAGE) -> InstanceView:
    """Everything the instance page shows, steps ``start`` to ``start + count``
    with their values (blocking: call it in a thread).

    From the listing's replay (the engine's index: no pass over the
    journal); a value too large for the index is read at its record's
    location. A compaction may delete that file meanwhile: then the
    journal is replayed again (it changed) and the view built again.
    """
    try:
        return _view(listing, instance_id, start, count)
    except (OSError, JournalCorrupt):
        return _view(listing, instance_id, start, count)


def _view(listing: Listing, instance_id: str, start: int, count: int) -> InstanceView:
    snap = listing.snapshot()
    replayed = snap.replay
    status = replayed.status(instance_id)
    steps = [StepRow(step) for step in snap.steps_of(instance_id)]
    start = min(max(start, 0), max(len(steps) - 1, 0))
    shown = steps[start:start + count]
    values = replayed.step_values(
        instance_id, [row.step.key for row in shown if row.step.state == "done"])
    for row in shown:
        row.blob = values.get(row.step.key)
    return InstanceView(
        status=status, steps=steps, events=replayed.events(instance_id),
        children=listing.children(instance_id), next_seq=replayed.next_seq,
        start=start, count=count, input=replayed.input(instance_id),
        result=replayed.result(instance_id),
    )


def instance_records(path: str, instance_id: str, records: int = 200) -> list[RecordView]:
    """The latest ``records`` journal records of one instance: a pass over
    the whole journal (its own page, not the instance page)."""
    mine: list[RecordView] = []
    found = False
    for rec in read_journal(path):
        if rec.instance != instance_id:
            continue
        found = True
        mine.append(rec)
        if len(mine) > 2 * records:
            del mine[:-records]
    if not found:
        raise UnknownInstance(instance_id)
    return mine[-records:]


def step_value(listing: Listing, instance_id: str, key: str) -> Any:
    """The decoded value of one done step, for "full value"; KeyError if it has none."""
    try:
        try:
            blob = listing.snapshot().replay.step_value(instance_id, key)
        except (OSError, JournalCorrupt):  # compacted since the replay: replayed again
            blob = listing.snapshot().replay.step_value(instance_id, key)
    except UnknownInstance:
        raise KeyError(key) from None
    if blob is None:
        raise KeyError(key)
    return decode_value(blob)


def step_of(rec: RecordView) -> tuple[StepStatus | None, bytes | None]:
    """A step row's content from one of its records (no replay needed)."""
    f = rec.fields
    if rec.type == "forgot":
        return None, None
    key = f["key"]
    started = _at(f.get("started_ms", rec.ts_ms))
    ended = _at(rec.ts_ms)
    attempts = f.get("attempts", f.get("attempt", 1))
    if rec.type in ("step_done", "step_done_v2"):
        return StepStatus(key=key, state="done", started_at=started, finished_at=ended,
                          attempts=attempts, error=None), f["value"]
    if rec.type == "step_started":
        return StepStatus(key=key, state="started", started_at=ended, finished_at=None,
                          attempts=1, error=None), None
    error = ErrorInfo(f["error_type"], f["message"])
    state = "retrying" if rec.type == "attempt_failed" else "failed"
    return StepStatus(key=key, state=state, started_at=started,
                      finished_at=ended if state == "failed" else None,
                      attempts=attempts, error=error), None


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
