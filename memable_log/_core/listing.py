"""The listing filters of ``engine.instances`` and the journal reader. Pure.

One function, ``select``, used by the engine (over its live index) and by
``JournalReader.instances`` (over an index replayed from the files), so
``memable instances`` and ``engine.instances`` answer alike. It walks the
index's instances in creation order (or newest first), keeps those that
pass every filter, converts only those to ``InstanceStatus``, and stops at
``limit``. ``since`` is inclusive and ``until`` exclusive, both on
``created_at``; a naive datetime is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from . import lifecycle as lc
from .index import InstanceEntry
from .status import InstanceStatus, status_of


def select(
    instances: Mapping[str, InstanceEntry],
    state: str | None = None,
    *,
    workflow: str | None = None,
    prefix: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[InstanceStatus]:
    """The statuses of the instances that pass every filter given.

    Raises ValueError for an unknown state name, a naive datetime or a
    negative limit, and TypeError for an argument of the wrong type; both
    before anything is read.
    """
    wanted = None
    if state is not None:
        if type(state) is not str or state not in lc.STATE_BY_NAME:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(lc.STATE_NAMES)}")
        wanted = lc.STATE_BY_NAME[state]
    _check_str("workflow", workflow)
    _check_str("prefix", prefix)
    since_ms = _ms("since", since)
    until_ms = _ms("until", until)
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")
    if limit == 0:
        return []
    items: Any = instances.items()
    if newest_first:
        items = reversed(items)
    out: list[InstanceStatus] = []
    for iid, entry in items:
        if (
            (wanted is not None and entry.state != wanted)
            or (workflow is not None and entry.workflow != workflow)
            or (prefix is not None and not iid.startswith(prefix))
            or (since_ms is not None and entry.created_ms < since_ms)
            or (until_ms is not None and entry.created_ms >= until_ms)
        ):
            continue
        out.append(status_of(iid, entry))
        if limit is not None and len(out) >= limit:
            break
    return out


def _check_str(name: str, value: object) -> None:
    if value is not None and type(value) is not str:
        raise TypeError(f"{name} must be a str or None, not {value!r}")


def _ms(name: str, when: object) -> float | None:
    if when is None:
        return None
    if not isinstance(when, datetime):
        raise TypeError(f"{name} must be a datetime or None, not {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous): "
                         f"{when.isoformat()}")
    return when.timestamp() * 1000
