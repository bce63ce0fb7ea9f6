"""Operator actions on a journal directory, as library functions.

What the ``memable`` command does, for any program: a cron job, a web
handler in another service, an admin script. Each function takes the
journal's path and is synchronous (no trio, no engine object). Reads
(``status``, ``steps``, ``instances``, ``wait``) take no lock, so they never
block or slow an engine that holds the journal. The actions (``invoke``,
``cancel``, ``restart``, ``forget``, ``signal``) work with or without an
engine: with none they append, with one they hand the action to it durably
through the journal directory. ``compact`` needs the journal to itself (an
engine compacts its own journal in the background)::

    from memable_log import operations

    operations.signal("orders.memable", "checkout", "order-42", "approve", {"by": "bob"})
    for st in operations.instances("orders.memable", state="suspended"):
        print(st.instance_id, st.key, st.status)

Given a ``postgresql://`` URL instead of a path, the reads replay the
shared log, and each action is written at once by a short-lived engine
session, whatever engines serve the database (``Delivery.APPENDED``;
docs/postgres.md, "Tools").

Failures are the library's typed errors, so a caller (a tool mapping them
to exit codes) can tell them apart: ``NotAJournal`` for a path that is not
a journal, ``JournalLocked``, ``JournalCorrupt``, the refusals
(``UnknownInstance``, ``SignalAlreadyDelivered``, ``SignalRefused``,
``EngineError`` for an action the instance's state does not allow,
``ActionRefused`` for one the running engine refused), ``WorkflowFailed``
and ``WorkflowCancelled`` from ``wait``, ``NotSerializable``;
``OSError`` when the disk fails.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import lifecycle as lc
from ._core import records as r
from ._core.codec import Codec, EncodeError
from ._core.errors import (
    EngineError,
    ErrorInfo,
    JournalLocked,
    NotSerializable,
    SignalAlreadyDelivered,
    UnknownInstance,
    WorkflowCancelled,
    WorkflowFailed,
)
from ._core.index import Index, InstanceEntry, child_id
from ._core.signals import check_signal
from ._journal.offline import READ_ATTEMPTS, OfflineJournal, read_index
from ._storage.files import FileStorage
from ._storage.inbox import (
    ACTION_SUFFIX,
    INBOX,
    encode_action,
    encode_handover,
    inbox_path,
    rejection,
    waiting_action,
    waiting_signal,
    write_handover,
)
from ._storage.inbox import SUFFIX as SIGNAL_SUFFIX
from .reader import (
    DEFAULT_INTERVAL,
    JournalReader,
    NotAJournal,
    RecordView,
    decode_value,
    follow_journal,
    is_segment_file,
    read_journal,
)

if TYPE_CHECKING:  # the listing's modules load when a listing is asked for:
    # ``memable invoke`` starts faster without them (bench/bench_cli.py)
    from ._core.status import InstanceStatus, StepStatus

_T = TypeVar("_T")

# Theory of operation. Reads replay the journal through the engine's own
# index without a lock (JournalReader.replay: from the index snapshot when
# the engine would trust it, then what follows); a compaction deletes the
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
    "ActionRefused",
    "CompactResult",
    "Delivery",
    "Invocation",
    "SignalAlreadyHandedOver",
    "cancel",
    "compact",
    "forget",
    "instances",
    "follow_postgres",
    "invoke",
    "is_postgres_url",
    "postgres_reader",
    "postgres_stats",
    "restart",
    "signal",
    "status",
    "steps",
    "wait",
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


class ActionRefused(EngineError):
    """The running engine refused an action handed over to it.

    Raised by ``wait`` when the engine moved the hand-over to the inbox's
    ``rejected/`` directory (an unknown workflow, say). ``handover`` is the
    file's name, ``reason`` the engine's message.
    """

    def __init__(self, handover: str, reason: str) -> None:
        self.handover = handover
        self.reason = reason
        super().__init__(f"the running engine refused the action: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """What ``invoke`` did.

    ``instance_id`` is the instance's id (the one given, or a new one);
    ``delivery`` how the invoke reached the journal, or None if an instance
    with that id was already there (nothing was written: invoke is
    idempotent by id); ``handover`` the hand-over file's name in the inbox
    when it was handed over (``wait`` watches it for a refusal), else None.
    """

    instance_id: str
    delivery: Delivery | None
    handover: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Action:
    """One operator action, in the parts ``_deliver`` needs.

    ``check(index, now_ms)`` raises the refusal, before anything is written;
    ``records(index, now_ms)`` are what to append when no engine runs
    ([]: nothing to do, which ``_deliver`` reports as None);
    ``check_inbox()`` refuses an action that a hand-over already waiting
    conflicts with; ``handover(index)`` is the inbox file's content for a
    running engine, ``suffix`` its file name's suffix.
    """

    check: Callable[[Index, int], None]
    records: Callable[[Index, int], list[list[Any]]]
    check_inbox: Callable[[], None]
    handover: Callable[[Index], bytes]
    suffix: str = ACTION_SUFFIX


@dataclass(frozen=True, slots=True)
class _Delivered:
    how: Delivery | None  # None: nothing to do
    handover: str | None = None


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
    if is_postgres_url(path):  # any engine may act on any instance there: written at once
        _pg().signal(str(path), workflow, instance_id, key, payload, encode=encode)
        return Delivery.APPENDED
    r.check_key(key)
    text = _written_journal(path)
    blob = _encode(payload, encode, f"signal {key!r}")

    def check(index: Index, now_ms: int) -> None:
        check_signal(index, workflow, instance_id, key, now_ms)

    def check_inbox() -> None:
        name = waiting_signal(text, instance_id, key)
        if name is not None:
            raise SignalAlreadyHandedOver(instance_id, key, name)

    done = _deliver(text, _Action(
        check=check,
        records=lambda _, now_ms: [r.make(r.SIGNALLED, now_ms, instance_id, key, blob)],
        check_inbox=check_inbox,
        handover=lambda _: encode_handover(workflow, instance_id, key, blob),
        suffix=SIGNAL_SUFFIX,
    ))
    assert done.how is not None
    return done.how


def invoke(
    path: str | os.PathLike[str],
    workflow: str,
    input: Any = None,
    *,
    instance_id: str | None = None,
    encode: Callable[[Any], tuple[str, Any]] | None = None,
) -> Invocation:
    """Durably record a new instance of ``workflow``, as ``engine.invoke`` does.

    With no engine holding the journal, its ``created`` record is appended
    and the instance starts at the next start of an engine (which waits for
    ``workflow`` to be registered). With one, the invoke is handed over and
    the engine applies it with ``engine.invoke`` (which refuses a workflow
    it has not registered: ``wait`` reports that as ActionRefused). An id
    already in the journal is returned as it is, and nothing is written.

    Args:
        path: the journal directory.
        workflow: the workflow's name.
        input: the input (``ctx.input``; msgpack types, or ``encode``'s).
        instance_id: the id; None picks a new random one.
        encode: the encode hook of the engine's codec, for other types.

    Returns:
        An ``Invocation``: the id, how it was delivered, the hand-over.

    Raises:
        NotAJournal: ``path`` is not a journal directory with a segment.
        NotSerializable: the input cannot be encoded.
        JournalCorrupt: the journal is damaged.
        OSError: reading or writing failed.
        TypeError: ``workflow`` or ``instance_id`` is not a non-empty str.
    """
    if is_postgres_url(path):
        iid, made = _pg().invoke(str(path), workflow, input, instance_id=instance_id,
                                 encode=encode)
        return Invocation(instance_id=iid, delivery=Delivery.APPENDED if made else None)
    _check_name("workflow", workflow)
    if instance_id is None:
        instance_id = os.urandom(8).hex()  # as secrets.token_hex(8), without its imports
    _check_name("instance_id", instance_id)
    text = _written_journal(path)
    blob = _encode(input, encode, f"input of workflow {workflow!r}")
    iid = instance_id

    def records(index: Index, now_ms: int) -> list[list[Any]]:
        if iid in index.instances:
            return []
        return [r.make(r.CREATED, now_ms, iid, workflow, blob)]

    done = _deliver(text, _Action(
        check=lambda index, now_ms: None,
        records=records,
        check_inbox=lambda: None,  # a second invoke of one id does nothing
        handover=lambda _: encode_action("invoke", iid, {"workflow": workflow, "input": blob}),
    ))
    return Invocation(instance_id=iid, delivery=done.how, handover=done.handover)


def cancel(path: str | os.PathLike[str], instance_id: str) -> Delivery | None:
    """Durably cancel a live instance and its live descendants, as
    ``engine.cancel`` does (a parent is told of its cancelled child).

    Returns:
        How it was delivered, or None if the instance had finished already
        (nothing written, as ``engine.cancel`` does nothing then).

    Raises:
        NotAJournal, UnknownInstance, JournalCorrupt, OSError; TypeError for
        an ``instance_id`` that is not a non-empty str.
    """
    if is_postgres_url(path):
        return Delivery.APPENDED if _pg().cancel(str(path), instance_id) else None
    _check_name("instance_id", instance_id)
    text = _written_journal(path)

    def records(index: Index, now_ms: int) -> list[list[Any]]:
        entry = _entry(index, instance_id)
        if entry.state not in lc.LIVE:
            return []
        return _cancel_batch(index, instance_id, now_ms)

    return _deliver(text, _Action(
        check=lambda index, _: None,
        records=records,
        check_inbox=lambda: None,  # cancelling twice does nothing the second time
        handover=lambda _: encode_action("cancel", instance_id, {}),
    )).how


def restart(path: str | os.PathLike[str], instance_id: str) -> Delivery:
    """Run a finished instance again from the top, as ``engine.restart``
    does (its memoised steps stay). A running engine starts it at once;
    with none, it runs at the next start.

    Raises:
        NotAJournal, UnknownInstance, JournalCorrupt, OSError;
        EngineError: the instance is live (only a completed, failed or
            cancelled one can be restarted), or a restart of it is already
            handed over and waiting for the engine;
        TypeError: ``instance_id`` is not a non-empty str.
    """
    if is_postgres_url(path):
        _pg().restart(str(path), instance_id)
        return Delivery.APPENDED
    _check_name("instance_id", instance_id)
    text = _written_journal(path)

    def check(index: Index, _: int) -> None:
        entry = _entry(index, instance_id)
        if entry.state in lc.LIVE:
            raise EngineError(
                f"instance {instance_id!r} is {lc.STATE_NAMES[entry.state]}; only a completed, "
                "failed or cancelled instance can be restarted"
            )

    def check_inbox() -> None:
        # The restart is of the instance as read here (see the comment at
        # the top): an action for it still waiting would change it first.
        name = waiting_action(text, None, instance_id)
        if name is not None:
            raise EngineError(f"an action on instance {instance_id!r} is already handed over "
                              f"and waiting for the engine ({INBOX}/{name}); restart it once "
                              "that is applied")

    done = _deliver(text, _Action(
        check=check,
        records=lambda _, now_ms: [r.make(r.RESTARTED, now_ms, instance_id)],
        check_inbox=check_inbox,
        handover=lambda index: encode_action(
            "restart", instance_id, {"updated_ms": index.instances[instance_id].updated_ms}
        ),
    ))
    assert done.how is not None
    return done.how


def forget(path: str | os.PathLike[str], instance_id: str, key_or_prefix: str) -> Delivery:
    """Durably forget memoised step outcomes of an instance, as
    ``engine.forget`` does: ``key``, or every key under ``prefix*``.

    Raises:
        NotAJournal, UnknownInstance, JournalCorrupt, OSError;
        TypeError: ``instance_id`` or ``key_or_prefix`` is not a non-empty str.
    """
    if is_postgres_url(path):
        _pg().forget(str(path), instance_id, key_or_prefix)
        return Delivery.APPENDED
    _check_name("instance_id", instance_id)
    if type(key_or_prefix) is not str or not key_or_prefix:
        raise TypeError(f"forget takes a non-empty str key or prefix*, not {key_or_prefix!r}")
    text = _written_journal(path)

    def check(index: Index, _: int) -> None:
        _entry(index, instance_id)

    done = _deliver(text, _Action(
        check=check,
        records=lambda _, now_ms: [r.make(r.FORGOT, now_ms, instance_id, key_or_prefix)],
        check_inbox=lambda: None,
        handover=lambda _: encode_action("forget", instance_id, {"key": key_or_prefix}),
    ))
    assert done.how is not None
    return done.how


def _cancel_batch(index: Index, instance_id: str, now_ms: int) -> list[list[Any]]:
    """The records ``engine.cancel`` appends for a live instance: its
    ``cancelled`` and its live descendants', then its parent's
    ``child_ended`` (if it has a parent not told yet)."""
    instances = index.instances
    ids = [instance_id]
    stack = [instance_id]
    while stack:
        parent = stack.pop()
        entry = instances.get(parent)
        if entry is None:
            continue
        for key in entry.child_keys():
            cid = child_id(parent, key)
            child = instances.get(cid)
            if child is not None and child.parent == parent:
                if child.state in lc.LIVE:
                    ids.append(cid)
                stack.append(cid)
    batch = [r.make(r.CANCELLED, now_ms, cid) for cid in ids]
    parent_id = instances[instance_id].parent
    told = instances.get(parent_id) if parent_id is not None else None
    if parent_id is not None and told is not None:
        key = instance_id[len(parent_id) + 1:]
        if told.done_waits is None or key not in told.done_waits:
            batch.append(r.make(r.CHILD_ENDED, now_ms, parent_id, key, lc.CANCELLED, b"",
                                None, None))
    return batch


def _deliver(path: str, action: _Action) -> _Delivered:
    """Append ``action`` if no engine holds the journal, else hand it over."""
    storage = FileStorage(path, create=False)
    now_ms = round(time.time() * 1000)
    try:
        with OfflineJournal(storage) as journal:
            action.check(journal.index, now_ms)
            recs = action.records(journal.index, now_ms)
            if not recs:
                return _Delivered(None)
            journal.append(recs)
        return _Delivered(Delivery.APPENDED)
    except JournalLocked:
        pass  # an engine runs: check without the lock, then hand over
    index = read_index(storage)
    action.check(index, now_ms)
    if not action.records(index, now_ms):
        return _Delivered(None)
    action.check_inbox()
    name = write_handover(path, action.handover(index), suffix=action.suffix)
    return _Delivered(Delivery.HANDED_OVER, name)


def _entry(index: Index, instance_id: str) -> InstanceEntry:
    entry = index.instances.get(instance_id)
    if entry is None:
        raise UnknownInstance(instance_id)
    return entry


def _check_name(what: str, value: object) -> None:
    if type(value) is not str or not value:
        raise TypeError(f"{what} must be a non-empty str, not {value!r}")


def _encode(value: Any, encode: Callable[[Any], tuple[str, Any]] | None, what: str) -> bytes:
    try:
        return Codec(encode).encode(value)
    except EncodeError as exc:
        raise NotSerializable(what, exc.type_name, exc.reason) from None


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
    # Imported here: the compactor (and the snapshot) would add to the
    # start-up of every other call of a short-lived tool.
    from ._compaction.compactor import compact_offline

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
    return _read(path, lambda reader: reader.replay().status(instance_id))


def steps(path: str | os.PathLike[str], instance_id: str) -> list[StepStatus]:
    """The memoised steps of one instance, as ``engine.steps`` reports them.

    Read without a lock, as ``status`` is.

    Raises:
        NotAJournal, UnknownInstance, JournalCorrupt, OSError.
    """
    return _read(path, lambda reader: reader.replay().steps(instance_id))


def instances(
    path: str | os.PathLike[str],
    state: str | None = None,
    *,
    workflow: str | None = None,
    prefix: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[InstanceStatus]:
    """The instances of the journal that pass every filter given.

    What ``engine.instances(...)`` would return for this journal, with the
    same filters (see ``Engine.instances``); read without a lock, so it is
    safe while an engine runs. A journal that is being compacted is read
    again from the new files.

    Raises:
        ValueError: ``state`` is not a state name, a datetime is naive, or
            ``limit`` is negative (before anything is read).
        TypeError: a filter of the wrong type.
        NotAJournal: ``path`` is not a journal directory.
        JournalCorrupt: the journal is damaged.
        OSError: reading failed.
    """
    from ._core.listing import select

    select({}, state, workflow=workflow, prefix=prefix, since=since, until=until,
           limit=limit, newest_first=newest_first)  # bad filters fail before the read
    return _read(path, lambda reader: reader.replay().instances(
        state, workflow=workflow, prefix=prefix, since=since, until=until, limit=limit,
        newest_first=newest_first,
    ))


def is_postgres_url(path: object) -> bool:
    """Whether a journal argument is a PostgreSQL URL, not a directory."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def _pg() -> Any:
    """The actions on a PostgreSQL journal (``_engine/pg_operator.py``): a
    short-lived engine session writes each one (docs/postgres.md)."""
    from ._engine import pg_operator

    return pg_operator


def postgres_stats(url: str) -> dict[str, Any]:
    """The PostgreSQL journal's shape (``memable-dump --stats URL``):
    records, next seq, bytes per table, engines holding a lease, instances
    by state."""
    from ._postgres.reader import PostgresReader

    return PostgresReader(url).stats()


def follow_postgres(
    url: str,
    emit: Callable[[RecordView], Any],
    *,
    interval: float = DEFAULT_INTERVAL,
    caught_up: Callable[[bool], Any] = lambda waiting: None,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """Every record of the PostgreSQL journal in seq order, then each new
    one (``memable-dump --follow URL``), to ``emit``, until a callback
    raises (or Ctrl-C); ``caught_up(waiting)`` after each look (``waiting``:
    no journal there yet); ``sleep`` between looks (default trio's)."""
    from ._postgres.reader import follow

    follow(url, emit, interval=interval, caught_up=caught_up, sleep=sleep)


def postgres_reader(url: str) -> JournalReader:
    """A reader of the PostgreSQL journal at ``url``: its records in seq
    order and its instances, read once (``_postgres/reader.py``)."""
    from ._postgres.reader import PostgresReader

    return PostgresReader(url)  # type: ignore[return-value]


def _read(path: str | os.PathLike[str], body: Callable[[JournalReader], _T]) -> _T:
    if is_postgres_url(path):
        return body(postgres_reader(str(path)))
    # A compaction deletes the files it replaced, so one listed a moment ago
    # can be gone when it is read: read again, from the new listing.
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return body(read_journal(path))
        except FileNotFoundError:
            continue
    return body(read_journal(path))


# -- waiting for an instance ----------------------------------------------------

# Record types that neither end an instance nor hide how it ended; any other
# type (a compacted state image, a type newer than this code) makes ``wait``
# ask the replayed index for the state.
_PLAIN_TYPES = frozenset({
    "created", "child_created", "step_done", "step_done_v2", "step_failed",
    "step_failed_v2", "step_started", "attempt_failed", "suspended", "suspended_v1",
    "signalled", "timer_set", "timer_set_v1", "timer_fired", "suspend_timed_out",
    "forgot", "parked", "status_set", "published", "child_started", "child_ended",
    "restarted",
})
_ENDS = frozenset({"completed", "failed", "cancelled"})


class _Stop(Exception):
    """Ends the follow from inside its wait."""


def wait(
    path: str | os.PathLike[str],
    instance_id: str,
    *,
    handover: str | None = None,
    timeout: float | None = None,
    interval: float = 0.01,
) -> Any:
    """The instance's result once it has finished, read by following the journal.

    Follows the journal without a lock (as ``memable-dump --follow`` does)
    until the instance is completed, failed or cancelled: at once if it has
    finished already. With no engine holding the journal it waits for one
    to run the instance. The result is returned as ``memable-dump`` shows
    values (JSON-ready: ``decode_value``), never by running a codec hook.

    Args:
        path: the journal directory.
        instance_id: the instance.
        handover: the hand-over file of an ``invoke`` that created it
            (``Invocation.handover``): while it waits in the inbox an
            instance not in the journal yet is waited for, and the engine's
            refusal of it raises ActionRefused.
        timeout: give up after this many seconds (TimeoutError); None waits
            for ever.
        interval: seconds between looks for new records.

    Raises:
        WorkflowFailed, WorkflowCancelled: how the instance ended.
        ActionRefused: the engine refused ``handover``.
        UnknownInstance: the journal has no such instance (and no hand-over
            for it is waiting).
        TimeoutError: ``timeout`` passed first.
        NotAJournal, JournalCorrupt, OSError: as the reads do.
    """
    if is_postgres_url(path):
        return _pg().wait(str(path), instance_id, timeout, decode_value)
    text = os.fspath(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: list[Any] | None = None  # [type, fields] of its last end while finished
    last_result: Any = None
    seen = False
    unsure = False  # a record whose effect only the index knows
    gone_before = False  # the hand-over was gone before this catch-up began

    def caught_up() -> None:
        nonlocal unsure, gone_before
        if unsure:
            unsure = False
            st = status(text, instance_id)
            if st.state in _ENDS and (ended is None or ended[0] != st.state):
                error = st.error or ErrorInfo("?", "?")
                raise _Stop((st.state, {"result": last_result, "error_type": error.type,
                                        "message": error.message, "traceback": ""}))
        if ended is not None:
            raise _Stop(tuple(ended))
        if not seen:
            gone = True
            if handover is not None:
                why = rejection(text, handover)
                if why is not None:
                    raise ActionRefused(handover, why or "(no reason given)")
                gone = not os.path.exists(os.path.join(inbox_path(text), handover))
            if gone and (handover is None or gone_before):
                raise UnknownInstance(instance_id)
            gone_before = gone
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"instance {instance_id!r} did not finish within {timeout}s")

    follower = follow_journal(text, interval=interval, on_wait=caught_up)
    try:
        for rec in follower:
            if rec.instance != instance_id:
                continue
            seen = True
            if rec.type in _ENDS:
                if ended is None:
                    ended = [rec.type, rec.fields]
                if rec.type == "completed":
                    last_result = rec.fields["result"]
            elif rec.type == "restarted" and ended is not None:
                ended = None
            elif rec.type not in _PLAIN_TYPES:
                unsure = True
    except _Stop as stop:
        kind, fields = stop.args[0]
        return _outcome(instance_id, kind, fields)
    finally:
        follower.close()
    raise AssertionError("a follower ends only when closed")  # pragma: no cover


def _outcome(instance_id: str, kind: str, fields: dict[str, Any]) -> Any:
    if kind == "completed":
        blob = fields.get("result")
        return None if blob is None else decode_value(blob)
    if kind == "failed":
        raise WorkflowFailed(instance_id, fields["error_type"], fields["message"],
                             fields["traceback"])
    raise WorkflowCancelled(instance_id)
