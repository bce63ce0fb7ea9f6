"""EngineBuilder: where the engine's settings are chosen."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self

from .._backend.local import LocalBackend
from .._backend.seam import Backend
from .._core.codec import DEFAULT_COMPRESS_THRESHOLD, Codec, DecodeHook, EncodeHook
from .._core.index import DEFAULT_INLINE_LIMIT
from .._storage.files import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, FileStorage, Storage
from .._storage.memory import MemoryStorage
from .._storage.writer import DEFAULT_SEGMENT_SIZE
from .clock import Clock
from .engine import Engine
from .retry import RetryPolicy
from .retry import policy as retry_policy

if TYPE_CHECKING:
    from .tracing import Tracing

DEFAULT_RETENTION = 7 * 24 * 3600.0


class EngineBuilder:
    """Chooses where the journal lives and how the engine behaves.

    ``Engine.builder().open("app.memable").max_running(50).build()``.
    """

    def __init__(self) -> None:
        self._storage: Callable[[], Storage] | None = None
        self._postgres: tuple[str, str | None, float] | None = None
        self._clock: Clock | None = None
        self._codec = Codec()
        self._max_running: int | None = None
        self._segment_size = DEFAULT_SEGMENT_SIZE
        self._inline_limit = DEFAULT_INLINE_LIMIT
        self._retention: float | None = DEFAULT_RETENTION
        self._compaction = True
        self._snapshots = True
        self._default_retry: RetryPolicy | None = None
        # The engine's life: how it starts and stops.
        self._shutdown_timeout: float | None = None
        self._resume_on_start = True
        self._tracing: tuple[Any] | None = None  # (tracer_provider,) once turned on

    def open(
        self,
        path: str | os.PathLike[str],
        *,
        dir_mode: int = DEFAULT_DIR_MODE,
        file_mode: int = DEFAULT_FILE_MODE,
    ) -> Self:
        """Keep the journal in directory ``path`` (created, owner-only, if missing).

        Journals hold secrets; ``dir_mode``/``file_mode`` widen access if you must.
        """
        path = os.fspath(path)
        self._storage = lambda: FileStorage(path, dir_mode=dir_mode, file_mode=file_mode)
        self._postgres = None
        return self

    def in_memory(self, storage: MemoryStorage | None = None) -> Self:
        """Keep the journal in memory (for tests): same API, no disk.

        The journal lives as long as the engine, so leaving and re-entering
        ``async with engine:`` is a restart. Pass a ``MemoryStorage`` to
        share it, or to simulate power cuts.
        """
        memory = storage if storage is not None else MemoryStorage()
        self._storage = lambda: memory
        self._postgres = None
        return self

    def postgres(self, dsn: str, *, worker: str | None = None, lease: float = 30.0) -> Self:
        """Keep the journal in a PostgreSQL database (``postgresql://...``).

        Needs the ``postgres`` extra (psycopg 3). ``worker`` names this
        engine in the database (default host:pid); ``lease`` is how long, in
        seconds, its hold on its instances lasts without renewal: another
        engine takes them over once it expires (docs/postgres.md).
        """
        if not isinstance(dsn, str) or not dsn:
            raise TypeError(f"postgres takes a DSN string (postgresql://...), not {dsn!r}")
        if type(lease) is bool or not isinstance(lease, int | float) or not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        self._postgres = (dsn, worker, float(lease))
        self._storage = None
        return self

    def clock(self, clock: Clock) -> Self:
        """The engine's clock (wall time for deadlines, sleeping until them)."""
        self._clock = clock
        return self

    def codec(
        self,
        encode: EncodeHook | None = None,
        decode: DecodeHook | None = None,
        *,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
    ) -> Self:
        """Hooks for values msgpack cannot hold, and the compression threshold.

        ``encode(obj) -> (tag, plain)`` turns an object into a tag and an
        encodable value; ``decode(tag, plain) -> obj`` turns it back. Values
        longer than ``compress_threshold`` bytes are stored zstd-compressed
        (None: never).
        """
        self._codec = Codec(encode, decode, compress_threshold=compress_threshold)
        return self

    def max_running(self, limit: int) -> Self:
        """At most ``limit`` instances run at once; the rest wait in order."""
        if limit < 1:
            raise ValueError("max_running must be at least 1")
        self._max_running = limit
        return self

    def segment_size(self, size: int) -> Self:
        """Roll over to a new segment file after about ``size`` bytes."""
        if size < 4096:
            raise ValueError("segment_size must be at least 4096 bytes")
        self._segment_size = size
        return self

    def inline_limit(self, size: int) -> Self:
        """Keep values up to ``size`` bytes in memory; larger ones are read back."""
        if size < 0:
            raise ValueError("inline_limit must be >= 0")
        self._inline_limit = size
        return self

    def retention(self, period: float | timedelta | None) -> Self:
        """How long compaction keeps finished instances (seconds or timedelta).

        Completed, failed and cancelled instances unchanged for longer are
        dropped from the journal and from memory (on PostgreSQL, deleted
        from the database by a sweep every minute). None keeps them
        forever. Default: 7 days.
        """
        if period is not None:
            period = period.total_seconds() if isinstance(period, timedelta) else float(period)
            if not period >= 0:
                raise ValueError("retention must be >= 0 seconds, or None")
        self._retention = period
        return self

    def compaction(self, enabled: bool = True) -> Self:
        """Compact sealed segments in the background after each roll-over."""
        self._compaction = enabled
        return self

    def snapshots(self, enabled: bool = True) -> Self:
        """Keep an index snapshot so start-up reads only the journal's tail."""
        self._snapshots = enabled
        return self

    def default_retry(
        self,
        max_attempts: int = 3,
        initial_delay: float = 1.0,
        backoff: float = 2.0,
        max_delay: float = 60.0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        *,
        should_retry: Callable[[BaseException], bool] | None = None,
        jitter: float = 0.0,
    ) -> Self:
        """The retry policy of every step that sets none: the arguments of
        ``Step.retry``. A step's own ``.retry()`` replaces it; ``.no_retry()``
        opts a step out. Without it, a step is tried once."""
        try:
            self._default_retry = retry_policy(
                max_attempts, initial_delay, backoff, max_delay, retry_on, should_retry, jitter
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"default_retry: {exc}") from None
        return self

    # -- the engine's life: how it starts and stops --------------------------

    def shutdown_timeout(self, seconds: float | timedelta | None) -> Self:
        """Stop gracefully: leaving ``async with engine:`` waits up to
        ``seconds`` (a number or timedelta, >= 0) for running steps.

        From the moment the block is left nothing new starts: no instance
        (an ``invoke`` then is recorded and runs at the next start), no
        resumed or woken run, no step attempt (one about to begin waits).
        The step attempts already running may finish and have their result
        recorded; once none is left, or at the timeout, the rest is
        cancelled and runs again at the next start. A KeyboardInterrupt, or
        a cancellation of the code around the block, stops at once. None
        (the default): leaving cancels at once.
        """
        if seconds is not None:
            if isinstance(seconds, timedelta):
                seconds = seconds.total_seconds()
            elif type(seconds) is bool or not isinstance(seconds, int | float):
                raise TypeError(
                    f"shutdown_timeout takes seconds (a number or timedelta) or None, "
                    f"not {seconds!r}"
                )
            seconds = float(seconds)
            if not seconds >= 0:
                raise ValueError(
                    f"shutdown_timeout must be a non-negative number of seconds, not {seconds!r}"
                )
        self._shutdown_timeout = seconds
        return self

    def resume_on_start(self, enabled: bool = True) -> Self:
        """Whether a start resumes interrupted instances (default True).

        With False (inspection, maintenance) the engine starts without
        running the instances the journal shows running and without arming
        parked instances' deadlines: a deadline that passes meanwhile does
        nothing until a start that resumes, which fires it at once. Explicit
        calls work as usual on any instance (invoke, signal, wake, cancel,
        restart); a signal or wake that makes an instance run starts it.
        """
        if type(enabled) is not bool:
            raise TypeError(f"resume_on_start takes True or False, not {enabled!r}")
        self._resume_on_start = enabled
        return self

    def tracing(self, tracer_provider: Any = None) -> Self:
        """Trace instances with OpenTelemetry (the ``otel`` extra): one trace
        per instance across runs, restarts and children (docs/tracing.md).

        ``tracer_provider`` is an ``opentelemetry.trace.TracerProvider``;
        None takes the global one at ``build()``.
        """
        self._tracing = (tracer_provider,)
        return self

    def build(self) -> Engine:
        """The engine, over the journal chosen by ``open``, ``in_memory`` or ``postgres``."""
        clock = self._clock or Clock()
        backend: Backend
        if self._postgres is not None:
            backend = _postgres_backend(
                *self._postgres,
                retention_ms=None if self._retention is None else round(self._retention * 1000),
                now_ms=clock.now_ms,
            )
        elif self._storage is None:
            raise ValueError(
                "say where the journal lives: .open(path), .in_memory() or .postgres(dsn)"
            )
        else:
            backend = LocalBackend(
                self._storage,
                segment_size=self._segment_size,
                snapshots=self._snapshots,
                compaction=self._compaction,
                retention_ms=None if self._retention is None else round(self._retention * 1000),
                now_ms=clock.now_ms,
                decode=self._codec.decode,
            )
        return Engine(
            backend,
            clock=clock,
            codec=self._codec,
            max_running=self._max_running,
            inline_limit=self._inline_limit,
            default_retry=self._default_retry,
            shutdown_timeout=self._shutdown_timeout,
            resume_on_start=self._resume_on_start,
            tracer=None if self._tracing is None else _tracer(self._tracing[0]),
        )


def _postgres_backend(
    dsn: str, worker: str | None, lease: float, *, retention_ms: int | None,
    now_ms: Callable[[], int],
) -> Backend:
    try:
        from .._postgres.backend import PostgresBackend
    except ImportError as exc:
        raise ImportError(
            f"Engine.builder().postgres() needs psycopg 3: pip install 'memable-log[postgres]' "
            f"({exc})"
        ) from None
    return PostgresBackend(dsn, worker=worker, lease=lease, retention_ms=retention_ms,
                           now_ms=now_ms)


def _tracer(provider: Any) -> Tracing:
    try:
        from .tracing import Tracing
    except ImportError as exc:
        raise ImportError(
            f"Engine.builder().tracing() needs opentelemetry-api: pip install "
            f"'memable-log[otel]' ({exc})"
        ) from None
    return Tracing(provider)
