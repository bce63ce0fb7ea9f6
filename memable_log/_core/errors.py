"""The library's errors: a flat set, each named after what happened.

Every error derives from :class:`EngineError`, so ``except EngineError``
catches anything the library raises on purpose. Messages say what happened
and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class ErrorInfo(NamedTuple):
    """An error as the journal keeps it: the exception's type name and message
    (why an instance failed, why a step's attempt failed)."""

    type: str
    message: str


class EngineError(Exception):
    """Base class of every error memable_log raises."""


class JournalLocked(EngineError):
    """Another process holds the journal open for writing (``pid``: its id, when known)."""

    def __init__(self, path: str, pid: int | None = None) -> None:
        self.path, self.pid = path, pid  # pid: the holder's, when its LOCK file says
        super().__init__(
            f"journal {path!r} is locked by another process"
            f"{'' if pid is None else f' (pid {pid})'}; stop that process "
            "or open the journal read-only (memable-dump needs no lock)"
        )


class JournalCorrupt(EngineError):
    """Damage found in the journal outside its torn tail.

    ``file`` and ``offset`` name the first damaged byte that was found.
    """

    def __init__(self, file: str, offset: int, reason: str) -> None:
        self.file = file
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"journal corrupt: {file} at byte {offset}: {reason}; the journal "
            "was not changed: restore it from a backup, or inspect it with "
            "memable-dump"
        )


class JournalFormatError(JournalCorrupt):
    """A segment was written in a format version this library cannot read."""


class JournalFailed(EngineError):
    """A write or fsync of the journal failed; the journal refuses writes.

    What was acknowledged before the failure is safe on disk. The records of
    the failed batch may or may not be; reopen the journal to find out.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"journal write failed ({reason}); it accepts no more writes. "
            "Free space or fix the disk, then reopen the journal"
        )


class JournalClosed(EngineError):
    """The journal is closed (or was never opened) and cannot take writes."""


class UnknownWorkflow(EngineError):
    """No workflow is registered under this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        hint = f"registered: {', '.join(sorted(known))}" if known else "none is registered"
        super().__init__(
            f"unknown workflow {name!r} ({hint}); call engine.register({name!r}, fn) first"
        )


class UnknownInstance(EngineError):
    """No instance with this id is in the journal (or its workflow differs)."""

    def __init__(self, instance_id: str, detail: str = "") -> None:
        self.instance_id = instance_id
        super().__init__(
            f"unknown instance {instance_id!r}{detail}; check the id with "
            "engine.instances() or memable-dump --instances"
        )


class DuplicateStepKey(EngineError):
    """The same key was used twice in one run of an instance."""

    def __init__(self, instance_id: str, key: str) -> None:
        self.instance_id = instance_id
        self.key = key
        super().__init__(
            f"key {key!r} used twice in one run of instance {instance_id!r}; steps, "
            "suspensions and timers share one key space: give each a distinct key "
            "(for loops, put the item in the key: f'search:{topic}:v1')"
        )


class StepFailed(EngineError):
    """A step's attempts are exhausted; the failure is memoised.

    ``error_type``, ``message`` and ``traceback`` describe the step's last
    exception; ``errors`` is every attempt's error (ErrorInfo: type name,
    message), in order, across restarts, the last one included. A re-run
    raises the same StepFailed without calling the step.
    """

    def __init__(
        self, key: str, error_type: str, message: str, traceback: str,
        errors: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.key = key
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        self.errors: tuple[ErrorInfo, ...] = (
            (ErrorInfo(error_type, message),) if errors is None
            else tuple(ErrorInfo(t, m) for t, m in errors)
        )
        super().__init__(
            f"step {key!r} failed: {error_type}: {message} (memoised: re-runs raise "
            "this again; engine.forget(instance_id, key) after a fix runs it anew)"
        )


class StepInterrupted(EngineError):
    """An at-most-once step was interrupted by a crash and is not run again."""

    def __init__(self, instance_id: str, key: str) -> None:
        self.instance_id = instance_id
        self.key = key
        super().__init__(
            f"at-most-once step {key!r} of instance {instance_id!r} started before a "
            "crash and did not finish; it is not run again. Check its side effect by "
            "hand, then engine.forget(instance_id, key) to allow one more run"
        )


_MSGPACK_TYPES = frozenset({"NoneType", "bool", "int", "float", "str", "bytes", "list",
                            "tuple", "dict"})


class NotSerializable(EngineError):
    """A value could not be encoded; nothing was written.

    Values are msgpack types (None, bool, int, float, str, bytes, list,
    tuple, dict), others through the builder's codec hooks. An int must fit
    in 64 bits (-2**63 to 2**64-1), and a value encoded (compressed if that
    is smaller) must fit in one journal record: 16 MiB less 64 KiB.
    """

    def __init__(self, what: str, value_type: str, reason: str = "") -> None:
        self.what = what
        self.value_type = value_type
        extra = f" ({reason})" if reason else ""
        # The list of types helps only when the type is not one of them: an
        # int too big or bytes too long are refused for the reason given.
        hint = "" if value_type in _MSGPACK_TYPES and reason else (
            "; return msgpack types (None, bool, int, float, str, bytes, list, tuple, "
            "dict) or give the builder a codec for this type"
        )
        super().__init__(
            f"{what}: cannot encode a value of type {value_type}{extra}{hint}. Nothing was written"
        )


class TypeMismatch(EngineError):
    """A recorded value does not fit the type its reader declares (a step's
    return annotation, ``suspend``'s or ``result``'s ``type=``); ``what``
    names the key or instance, ``declared`` the type."""

    def __init__(self, what: str, declared: str, reason: str) -> None:
        self.what = what
        self.declared = declared
        super().__init__(f"{what}: the recorded value does not fit the declared type "
                         f"{declared} ({reason})")


class WorkflowFailed(EngineError):
    """The workflow raised; its type, message and traceback text are kept."""

    def __init__(self, instance_id: str, error_type: str, message: str, traceback: str) -> None:
        self.instance_id = instance_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(
            f"instance {instance_id!r} failed: {error_type}: {message} (fix the cause, "
            "then engine.forget(...) and engine.restart(...) to run it again)"
        )


class WorkflowCancelled(EngineError):
    """The instance was cancelled. ``reason`` is why: ``"timeout"`` when its
    timeout passed (``register(timeout=)``, ``invoke(timeout=)``), None for
    ``engine.cancel``."""

    def __init__(self, instance_id: str, reason: str | None = None) -> None:
        self.instance_id = instance_id
        self.reason = reason
        why = "" if reason is None else f" ({reason})"
        super().__init__(
            f"instance {instance_id!r} was cancelled{why}; engine.restart(...) runs it again"
        )


class SignalAlreadyDelivered(EngineError):
    """The suspension already has a signal, or it timed out; nothing written."""

    def __init__(self, instance_id: str, key: str, reason: str = "already has a signal") -> None:
        self.instance_id = instance_id
        self.key = key
        super().__init__(
            f"suspension {key!r} of instance {instance_id!r} {reason}; a key takes "
            "one signal: suspend on a new key to wait again. Nothing was written"
        )


class SignalRefused(EngineError):
    """A signal that can never be consumed: the instance has finished, or the
    journal shows its key as a timer or a step. Nothing was written."""

    def __init__(self, instance_id: str, key: str, reason: str) -> None:
        self.instance_id = instance_id
        self.key = key
        self.reason = reason
        super().__init__(
            f"signal {key!r} for instance {instance_id!r} refused: {reason}. Nothing was written"
        )


class SuspendTimedOut(EngineError):
    """A suspension's timeout expired before its signal; memoised."""

    def __init__(self, instance_id: str, key: str) -> None:
        self.instance_id = instance_id
        self.key = key
        super().__init__(
            f"suspension {key!r} of instance {instance_id!r} timed out before a "
            "signal arrived (memoised: every re-run takes this branch)"
        )


class StepTimedOut(EngineError):
    """An attempt of a step ran longer than its ``.timeout(seconds)`` and was
    cancelled. It counts as the attempt's failure: retried if the step's
    ``retry_on`` covers it (``Exception``, the default, does)."""

    def __init__(self, instance_id: str, key: str, seconds: float) -> None:
        self.instance_id = instance_id
        self.key = key
        self.seconds = seconds
        super().__init__(
            f"step {key!r} of instance {instance_id!r}: an attempt ran longer than its "
            f"timeout of {seconds:g}s and was cancelled"
        )


class RetryAfter(Exception):
    """Raised by a step's function to ask for its next attempt ``seconds`` from
    now (an HTTP 429's Retry-After), whatever its backoff says.

    Not an EngineError: the step raises it, the engine never does. The step
    is tried again after that delay if it has attempts left (``.retry()`` or
    the builder's ``default_retry``); otherwise it fails with this error.
    ``cause`` is the error behind the request (also its ``__cause__``).
    """

    def __init__(self, seconds: float, cause: BaseException | None = None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"RetryAfter needs a number of seconds, not {seconds!r}")
        if not 0 <= seconds < float("inf"):
            raise ValueError(
                f"RetryAfter needs a finite, non-negative number of seconds, not {seconds!r}"
            )
        if cause is not None and not isinstance(cause, BaseException):
            raise TypeError(f"RetryAfter's cause must be an exception, not {cause!r}")
        self.seconds = float(seconds)
        self.cause = cause
        self.__cause__ = cause
        why = "" if cause is None else f" ({type(cause).__qualname__}: {cause})"
        super().__init__(f"asked to retry after {seconds:g}s{why}")
