"""What the pages show, read from a journal without a lock (public reader API only).

``Listing`` holds the instance listing of the journal as of its last
change: a change is seen as a different set of segment files or sizes, and
only then is the journal replayed again (``operations.instances``), once for
every request that comes meanwhile. Pages are slices of it, by position in
creation order (the cursor), so a page costs no more for 100,000 instances
than for ten. ``instance_view`` gathers one instance: its status, steps
with their values, events, children and the sequence number to follow from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memable_log import InstanceStatus, StepStatus, UnknownInstance, operations
from memable_log.reader import RecordView, decode_value, read_journal

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


class Listing:
    """The journal's instances, replayed again only when the journal changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sig: tuple[tuple[str, int, int], ...] | None = None
        self._all: list[InstanceStatus] = []
        self._by_id: dict[str, int] = {}

    def current(self) -> list[InstanceStatus]:
        """Every instance in creation order (blocking: call it in a thread)."""
        with self._lock:
            sig = signature(self.path)
            if sig != self._sig:
                self._all = operations.instances(self.path)
                self._by_id = {st.instance_id: i for i, st in enumerate(self._all)}
                self._sig = sig
            return self._all

    def status(self, instance_id: str) -> InstanceStatus:
        found = self.current()
        pos = self._by_id.get(instance_id)
        if pos is None:
            raise UnknownInstance(instance_id)
        return found[pos]

    def children(self, instance_id: str) -> list[InstanceStatus]:
        found = self.current()
        pos = self._by_id.get(instance_id, 0)
        return [st for st in found[pos:] if st.parent == instance_id]

    def page(self, filters: Filters, cursor: int | None, limit: int,
             newest_first: bool = False) -> Page:
        """Up to ``limit`` instances that match, from position ``cursor`` on
        (backwards when ``newest_first``)."""
        found = self.current()
        order = _positions(len(found), cursor, newest_first)
        rows: list[tuple[int, InstanceStatus]] = []
        for pos in order:
            st = found[pos]
            if not filters.match(st):
                continue
            if len(rows) == limit:
                return Page(rows, pos, len(found))
            rows.append((pos, st))
        return Page(rows, None, len(found))


def _positions(n: int, cursor: int | None, newest_first: bool) -> Iterator[int]:
    if newest_first:
        start = n - 1 if cursor is None else min(cursor, n - 1)
        return iter(range(start, -1, -1))
    return iter(range(0 if cursor is None else max(cursor, 0), n))


@dataclass(slots=True)
class StepRow:
    """A step as the timeline shows it: its status, and its value if it has one."""

    step: StepStatus
    blob: bytes | None = None  # its stored value, undecoded


@dataclass(slots=True)
class InstanceView:
    status: InstanceStatus
    steps: list[StepRow]
    events: list[RecordView]
    records: list[RecordView]
    children: list[InstanceStatus]
    next_seq: int
    input: bytes | None = None
    result: bytes | None = None


def instance_view(listing: Listing, instance_id: str, records: int = 200) -> InstanceView:
    """Everything the instance page shows (blocking: call it in a thread).

    ``records``: how many of its latest journal records to keep for the page.
    """
    status = listing.status(instance_id)
    steps = operations.steps(listing.path, instance_id)
    values: dict[str, Any] = {}
    events: list[RecordView] = []
    mine: list[RecordView] = []
    inp: bytes | None = None
    result: bytes | None = None
    reader = read_journal(listing.path)
    for rec in reader:
        if rec.instance != instance_id:
            continue
        mine.append(rec)
        if len(mine) > 2 * records:
            del mine[:-records]
        kind = rec.type
        if kind in ("step_done", "step_done_v2"):
            values[rec.fields["key"]] = rec.fields["value"]
        elif kind == "forgot":
            _forget(values, rec.fields["key"])
        elif kind == "published":
            events.append(rec)
        elif kind in ("created", "child_created"):
            inp = rec.fields.get("input")
        elif kind == "completed":
            result = rec.fields.get("result")
    rows = []
    for step in steps:
        blob = values.get(step.key)
        rows.append(StepRow(step, blob if step.state == "done" else None))
    return InstanceView(
        status=status, steps=rows, events=events, records=mine[-records:],
        children=listing.children(instance_id), next_seq=reader.next_seq,
        input=inp, result=result,
    )


def _forget(values: dict[str, Any], key: str) -> None:
    if key.endswith("*"):
        for k in [k for k in values if k.startswith(key[:-1])]:
            del values[k]
    else:
        values.pop(key, None)


def step_value(path: str, instance_id: str, key: str) -> Any:
    """The decoded value of one step (the latest written), for "full value"."""
    found: Any = None
    seen = False
    for rec in read_journal(path):
        if rec.instance == instance_id and rec.type in ("step_done", "step_done_v2") and (
            rec.fields["key"] == key
        ):
            found, seen = rec.fields["value"], True
    if not seen:
        raise KeyError(key)
    return decode_value(found)
