"""Retry policies of steps: which failures are tried again, and after how long.

A policy is made once, checked then (``policy()``: a bad argument is a
clear ValueError or TypeError at ``.retry()`` or ``default_retry()``, not
a surprise mid-run), and shared by every step that uses it. A step asks it
two things after a failed attempt: whether the exception is retried
(``retries``: an instance of ``retry_on``, then ``should_retry(exc)`` if
given) and how long to wait (``pause``: the backoff delay, spread by
``jitter``). A ``RetryAfter`` raised by the step is its own delay and is
retried whatever ``retry_on`` says; Context decides that, not the policy.

Jitter draws from ``RANDOM``, a module-level ``random.Random``; a test
that needs exact delays replaces it (``monkeypatch.setattr``) with a
seeded one or a stub.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

RANDOM = random.Random()


class RetryPolicy:
    """How a step retries: at most ``max_attempts`` attempts in all, waiting
    ``initial_delay`` seconds after the first failure, ``backoff`` times longer
    after each next one, never more than ``max_delay``; each wait shortened by
    a random fraction of up to ``jitter``."""

    __slots__ = (
        "backoff", "initial_delay", "jitter", "max_attempts", "max_delay", "retry_on",
        "should_retry",
    )

    def __init__(
        self,
        max_attempts: int,
        initial_delay: float,
        backoff: float,
        max_delay: float,
        retry_on: tuple[type[BaseException], ...],
        should_retry: Callable[[BaseException], bool] | None,
        jitter: float,
    ) -> None:
        self.max_attempts = max_attempts
        self.initial_delay = initial_delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.retry_on = retry_on
        self.should_retry = should_retry
        self.jitter = jitter

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure with ``exc`` is tried again (attempts allowing)."""
        if not isinstance(exc, self.retry_on):
            return False
        return self.should_retry is None or bool(self.should_retry(exc))

    def pause(self, delay: float) -> float:
        """The wait before the next attempt: ``delay`` less up to ``jitter`` of it."""
        if self.jitter == 0.0:
            return delay
        return delay * (1.0 - self.jitter * RANDOM.random())

    def next_delay(self, delay: float) -> float:
        """The backoff delay after ``delay``."""
        return min(delay * self.backoff, self.max_delay)


NO_RETRY = RetryPolicy(1, 0.0, 1.0, 0.0, (), None, 0.0)


def policy(
    max_attempts: int,
    initial_delay: float,
    backoff: float,
    max_delay: float,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    should_retry: Callable[[BaseException], bool] | None,
    jitter: float,
) -> RetryPolicy:
    """A checked policy; ValueError or TypeError naming the bad argument."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise TypeError(f"max_attempts must be an int, not {max_attempts!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
    initial_delay = _number("initial_delay", initial_delay)
    max_delay = _number("max_delay", max_delay)
    backoff = _number("backoff", backoff)
    if backoff < 1:
        raise ValueError(f"backoff must be >= 1 (a factor each delay grows by), not {backoff}")
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for kind in kinds:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(
                f"retry_on must be an exception class or a tuple of them, not {retry_on!r}"
            )
    if should_retry is not None and not callable(should_retry):
        raise TypeError(
            f"should_retry must be a function of the exception returning a bool, "
            f"not {should_retry!r}"
        )
    jitter = _number("jitter", jitter)
    if jitter > 1:
        raise ValueError(f"jitter must be a fraction from 0 to 1, not {jitter}")
    return RetryPolicy(max_attempts, initial_delay, backoff, max_delay, kinds, should_retry,
                       jitter)


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)
