"""A step's attempts across restarts: where the count resumes, and the
records of a failed attempt and of a step that fails for good.

Each failed attempt that is tried again is journaled (``attempt_failed``)
before the retry's delay. A run that reaches a step with no outcome asks
the index for its failed attempts (``resume``): the count continues after
them, from its first attempt's start, and the backoff continues where it
was (``delay_after``). So a step never gets more than ``max_attempts``
attempts in all, across crashes; an attempt cut by a crash recorded
nothing, and runs again with the same number. A step whose recorded
failures already reach ``max_attempts`` (the code lowered it since) fails
at once, without being called. The delay a crash cut short is not waited
again: the next attempt runs as soon as the run reaches the step.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._core import records as r
from .._core.index import InstanceEntry
from .retry import RetryPolicy

Errors = tuple[tuple[str, str], ...]


def resume(entry: InstanceEntry, key: str) -> tuple[int, Errors] | None:
    """The first attempt's start and the failed attempts' errors of a step
    with no outcome, if any of its attempts failed."""
    tries = entry.tries
    return None if tries is None else tries.get(key)


def delay_after(plan: RetryPolicy, failures: int) -> float:
    """The backoff delay after the next failure, ``failures`` having been."""
    delay = plan.initial_delay
    for _ in range(failures):
        delay = plan.next_delay(delay)
    return delay


def error_of(exc: BaseException) -> tuple[str, str]:
    """(type name, message): how the journal keeps an attempt's error."""
    return type(exc).__qualname__, str(exc)


def attempt_failed(
    now_ms: int, instance_id: str, key: str, attempt: int, exc: BaseException, started_ms: int
) -> list[Any]:
    """The record of a failed attempt that is tried again."""
    etype, message = error_of(exc)
    return r.make(r.ATTEMPT_FAILED, now_ms, instance_id, key, attempt, etype, message,
                  started_ms)


def step_failed(
    now_ms: int, instance_id: str, key: str, started_ms: int, errors: Errors,
    exc: BaseException | None,
) -> list[Any]:
    """The record of a step that failed for good: ``errors`` are every
    attempt's, the last one ``exc``'s (None: the recorded failures used up
    the attempts, and its last one stands for the step)."""
    if exc is not None:
        text = "".join(traceback.format_exception(exc))
    else:
        text = (f"(no traceback: step {key!r} was not called again, its {len(errors)} "
                "recorded failed attempts used up its max_attempts)")
    etype, message = errors[-1]
    return r.make(r.STEP_FAILED, now_ms, instance_id, key, etype, message, text, started_ms,
                  len(errors), [list(e) for e in errors])
