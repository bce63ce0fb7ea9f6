"""Cron expressions, through ``cronsim`` (the optional extra ``memable-log[cron]``).

Theory of operation. A schedule's ticks are the times its 5-field cron
expression matches, in UTC, to the second (cron's own resolution is the
minute). ``check`` validates an expression once, when a schedule is set;
``next_tick(expr, after_ms)`` is the first tick strictly after ``after_ms``,
or None if the expression matches nothing in the next 50 years (cronsim's
horizon: ``0 0 31 2 *`` never does, and cronsim refuses it outright). The
library is imported on first use, so an engine with no schedule never needs
it; without it, ``check`` raises EngineError naming the extra.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from .._core.errors import EngineError

MISSING = (
    "schedules need the cron extra: pip install 'memable-log[cron]' "
    "(cron expressions are parsed by cronsim)"
)


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:
        raise EngineError(MISSING) from None
    return cronsim


def available() -> bool:
    """Whether cronsim can be imported."""
    try:
        _cronsim()
    except EngineError:
        return False
    return True


@lru_cache(maxsize=256)
def check(expr: str) -> str:
    """``expr`` if it is a valid 5-field cron expression; else ValueError
    saying what is wrong (EngineError if cronsim is not installed)."""
    if type(expr) is not str:
        raise TypeError(f"a cron expression must be a str, not {expr!r}")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"bad cron expression {expr!r}: it has {len(fields)} fields, not 5 "
            "(minute hour day-of-month month day-of-week)"
        )
    cronsim = _cronsim()
    try:
        cronsim.CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except cronsim.CronSimError as exc:
        raise ValueError(f"bad cron expression {expr!r}: {exc}") from None
    return expr


def next_tick(expr: str, after_ms: int) -> int | None:
    """The first tick of ``expr`` strictly after ``after_ms`` (ms, UTC), or None."""
    cronsim = _cronsim()
    start = datetime.fromtimestamp(after_ms // 1000, tz=UTC)
    try:
        tick: datetime = next(cronsim.CronSim(expr, start))
    except StopIteration:
        return None
    return int(tick.timestamp()) * 1000


def tick_id(name: str, tick_ms: int) -> str:
    """The id of the instance the tick at ``tick_ms`` of schedule ``name`` starts."""
    return f"{name}@{datetime.fromtimestamp(tick_ms // 1000, tz=UTC):%Y-%m-%dT%H:%M:%SZ}"
