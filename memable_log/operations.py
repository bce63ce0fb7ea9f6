"""Operator actions on a journal directory, as library functions.

What ``memable-signal``, ``memable-compact`` and ``memable-dump --instances``
do, for any program: a cron job, a web handler in another service, an
admin script. Each function takes the journal's path and is synchronous
(no trio, no engine object). Reads take no lock, so they never block or
slow an engine that holds the journal. ``signal`` works with or without
an engine: with none it appends, with one it hands the signal to it
durably through the journal directory. ``compact`` needs the journal to
itself (an engine compacts its own journal in the background)::

    from memable_log import operations

    operations.signal("orders.memable", "checkout", "order-42", "approve", {"by": "bob"})
    for st in operations.instances("orders.memable", state="suspended"):
        print(st.instance_id, st.key, st.status)

Failures are the library's typed errors, so a caller (a tool mapping them
to exit codes) can tell them apart: ``NotAJournal`` for a path that is not
a journal, ``JournalLocked``, ``JournalCorrupt``, the refusals
(``UnknownInstance``, ``SignalAlreadyDelivered``, ``SignalRefused``),
``NotSerializable``;
``OSError`` when the disk fails.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._compaction.compactor import compact_offline
from ._core import records as r
from ._core.codec import Codec, EncodeError
from ._core.errors import JournalLocked, NotSerializable, SignalAlreadyDelivered, UnknownInstance
from ._core.index import Index
from ._core.lifecycle import STATE_NAMES
from ._core.signals import check_signal
from ._core.status import InstanceStatus
from ._journal.offline import READ_ATTEMPTS, OfflineJournal, read_index
from ._storage.files import FileStorage
from ._storage.inbox import encode_handover, waiting_signal, write_handover
from .reader import NotAJournal, is_segment_file, read_journal

# Theory of operation. Reads replay the journal through the engine's own
# index without a lock (JournalReader.instances); a compaction deletes the
# files it replaced, so a read it disturbs is read again. Actions that
# write share one path, _deliver: with no engine, take the lock
# (OfflineJournal), check the request against the index, append; with an
# engine holding the lock (JournalLocked), check it against the index read
# without the lock and against the hand-overs already waiting, then hand it
# to the engine durably through the journal's inbox (_storage/inbox.py),
# which applies it with the same checks. The actions SPEC-NEXT section 6
# adds (invoke, cancel, forget, restart) are further _Action values on that
# path, each with a hand-over body of its own (the plan is in
# _storage/inbox.py's docstring): no second mechanism.

__all__ = [
    "CompactResult",
    "Delivery",
    "SignalAlreadyHandedOver",
    "compact",
    "instances",
    "signal",
    "status",
]


class Delivery(enum.Enum):
    """How an action reached the journal; durable either way.

    ``APPENDED``: no engine held the journal, so the action was appended
    (and fsynced) directly. ``HANDED_OVER``: an engine holds the journal;
    the action waits durably in the journal's ``inbox/`` and the engine
    applies it within moments (or at its next start, if it stops first).
    """

    APPENDED = "appended"
    HANDED_OVER = "handed over"


class SignalAlreadyHandedOver(SignalAlreadyDelivered):
    """A signal for the key is already handed over and waiting for the engine.

    A ``SignalAlreadyDelivered``: the key takes one signal, and that one is
    on its way. ``instance_id`` and ``key`` name the suspension; ``handover``
    is the waiting hand-over file's name in the journal's ``inbox/``.
    """

    def __init__(self, instance_id: str, key: str, handover: str) -> None:
        super().__init__(instance_id, key)
        self.handover = handover
        # The message stays what memable-signal has always printed.
        self.args = (
            f"a signal for key {key!r} of instance {instance_id!r} is already handed "
            "over and waiting for the engine; a key takes one signal",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactResult:
    """What ``compact`` did.

    ``bytes_before`` and ``bytes_after`` are the sizes of the segment files,
    ``records_before`` the records read, ``records_after`` the records kept
    (equal when there was nothing to do), ``instances_dropped`` the finished
    instances the retention removed, ``upto`` the number of the last segment
    the compacted segment replaces (0 for an empty journal).
    """

    bytes_before: int
    bytes_after: int
    records_before: int
    records_after: int
    instances_dropped: int
    upto: int


# -- writing actions ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Action:
    """One operator action, in the parts ``_deliver`` needs.

    ``check(index, now_ms)`` raises the refusal, before anything is written;
    ``records(now_ms)`` are appended when no engine runs; ``check_inbox()``
    refuses an action that a hand-over already waiting conflicts with;
    ``handover`` is the inbox file's content for a running engine.
    """

    check: Callable[[Index, int], None]
    records: Callable[[int], list[list[Any]]]
    check_inbox: Callable[[], None]
    handover: bytes


def signal(
    path: str | os.PathLike[str],
    workflow: str,
    instance_id: str,
    key: str,
    payload: Any = None,
    *,
    encode: Callable[[Any], tuple[str, Any]] | None = None,
) -> Delivery:
    """Durably deliver ``payload`` to the suspension ``key`` of an instance.

    The same as ``engine.signal``, from outside the engine's process: with
    no engine holding the journal, the signal is appended; with one, it is
    handed over through the journal directory and the engine applies it
    (also after a crash of either side: once this returns, it is on disk).

    Args:
        path: the journal directory.
        workflow: the instance's workflow name.
        instance_id: the instance.
        key: the suspension's key.
        payload: the value ``ctx.suspend`` returns (msgpack types).
        encode: the encode hook of the engine's codec, for other types
            (see ``EngineBuilder.codec``).

    Returns:
        ``Delivery.APPENDED`` or ``Delivery.HANDED_OVER``.

    Raises:
        NotAJournal: ``path`` is not a journal directory with a segment.
        NotSerializable: the payload cannot be encoded.
        UnknownInstance: no such instance, or it is not of ``workflow``.
        SignalAlreadyDelivered: the key has a signal, or timed out; its
            subclass ``SignalAlreadyHandedOver`` when the signal for it is
            still waiting in the inbox.
        SignalRefused: the instance has finished, or the journal shows
            ``key`` as a timer's or a step's; nothing is written.
        JournalCorrupt: the journal is damaged.
        OSError: reading or writing failed.
        TypeError, ValueError: ``key`` cannot name a suspension (empty, not
            a str, or ending in ``*``); nothing is read or written.
    """
    r.check_key(key)
    text = _written_journal(path)
    try:
        blob = Codec(encode).encode(payload)
    except EncodeError as exc:
        raise NotSerializable(f"signal {key!r}", exc.type_name, exc.reason) from None

    def check(index: Index, now_ms: int) -> None:
        check_signal(index, workflow, instance_id, key, now_ms)

    def check_inbox() -> None:
        name = waiting_signal(text, instance_id, key)
        if name is not None:
            raise SignalAlreadyHandedOver(instance_id, key, name)

    return _deliver(text, _Action(
        check=check,
        records=lambda now_ms: [r.make(r.SIGNALLED, now_ms, instance_id, key, blob)],
        check_inbox=check_inbox,
        handover=encode_handover(workflow, instance_id, key, blob),
    ))


def _deliver(path: str, action: _Action) -> Delivery:
    """Append ``action`` if no engine holds the journal, else hand it over."""
    storage = FileStorage(path, create=False)
    now_ms = round(time.time() * 1000)
    try:
        with OfflineJournal(storage) as journal:
            action.check(journal.index, now_ms)
            journal.append(action.records(now_ms))
        return Delivery.APPENDED
    except JournalLocked:
        pass  # an engine runs: check without the lock, then hand over
    action.check(read_index(storage), now_ms)
    action.check_inbox()
    write_handover(path, action.handover)
    return Delivery.HANDED_OVER


def _written_journal(path: str | os.PathLike[str]) -> str:
    """``path`` as text if it is a journal with a segment; NotAJournal otherwise.

    Stricter than ``read_journal``: a directory with only a lock file is an
    empty journal to a reader, but a writer must not make one of a
    directory it was merely pointed at.
    """
    text = os.fspath(path)
    if not os.path.isdir(text):
        reason = "not a directory" if os.path.exists(text) else "no such file or directory"
        raise NotAJournal(text, reason)
    if not any(is_segment_file(name) for name in os.listdir(text)):
        raise NotAJournal(text, "the directory holds no segment files")
    return text


# -- compaction -----------------------------------------------------------------


def compact(
    path: str | os.PathLike[str], *, retention: float | timedelta | None = None
) -> CompactResult:
    """Compact a journal that no engine holds.

    Every sealed segment, and the active one (sealed first if it has
    records), is rewritten as one compacted segment holding only what is
    live. Crash-safe: interrupted at any point, the journal opens with the
    same contents. A running engine compacts its journal itself.

    Args:
        path: the journal directory.
        retention: drop completed, failed and cancelled instances unchanged
            for longer than this (seconds or a timedelta); None keeps them.

    Returns:
        A ``CompactResult`` (nothing to do is not an error).

    Raises:
        NotAJournal: ``path`` is not a journal directory with a segment.
        ValueError: ``retention`` is negative.
        JournalLocked: an engine (or another tool) holds the journal.
        JournalCorrupt: the journal is damaged; nothing was changed.
        OSError: a write failed; the journal still opens as it was.
    """
    text = _written_journal(path)
    retention_ms = None
    if retention is not None:
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else retention
        if not seconds >= 0:
            raise ValueError("retention must be >= 0 seconds, or None")
        retention_ms = round(seconds * 1000)
    stats = compact_offline(
        FileStorage(text, create=False),
        now_ms=round(time.time() * 1000),
        retention_ms=retention_ms,
    )
    return CompactResult(
        bytes_before=stats.bytes_before,
        bytes_after=stats.bytes_after,
        records_before=stats.records_before,
        records_after=stats.records_after,
        instances_dropped=stats.instances_dropped,
        upto=stats.upto,
    )


# -- reading --------------------------------------------------------------------


def status(path: str | os.PathLike[str], instance_id: str) -> InstanceStatus:
    """The status of one instance, as ``engine.status`` would report it.

    Read without a lock: safe while an engine runs, and it never slows it.

    Args:
        path: the journal directory.
        instance_id: the instance.

    Returns:
        The instance's ``InstanceStatus``.

    Raises:
        NotAJournal: ``path`` is not a journal directory.
        UnknownInstance: no such instance in the journal.
        JournalCorrupt: the journal is damaged.
        OSError: reading failed.
    """
    for st in _statuses(path):
        if st.instance_id == instance_id:
            return st
    raise UnknownInstance(instance_id)


def instances(path: str | os.PathLike[str], state: str | None = None) -> list[InstanceStatus]:
    """Every instance in the journal, in creation order, or those in ``state``.

    What ``engine.instances(state)`` would return for this journal; read
    without a lock, so it is safe while an engine runs. A journal that is
    being compacted is read again from the new files.

    Args:
        path: the journal directory.
        state: a state name (``"suspended"``, ...) or None for all.

    Returns:
        A list of ``InstanceStatus``.

    Raises:
        ValueError: ``state`` is not a state name.
        NotAJournal: ``path`` is not a journal directory.
        JournalCorrupt: the journal is damaged.
        OSError: reading failed.
    """
    if state is not None and state not in STATE_NAMES:
        raise ValueError(f"unknown state {state!r}; one of {', '.join(STATE_NAMES)}")
    return [st for st in _statuses(path) if state is None or st.state == state]


def _statuses(path: str | os.PathLike[str]) -> list[InstanceStatus]:
    # A compaction deletes the files it replaced, so one listed a moment ago
    # can be gone when it is read: read again, from the new listing.
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return read_journal(path).instances()
        except FileNotFoundError:
            continue
    return read_journal(path).instances()
