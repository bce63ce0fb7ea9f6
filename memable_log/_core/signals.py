"""Whether a signal may be written: one rule for the engine and for tools. Pure."""

from __future__ import annotations

from collections.abc import Container

from . import lifecycle as lc
from . import records as r
from .errors import SignalAlreadyDelivered, SignalRefused, UnknownInstance
from .index import Index
from .records import check_key


def check_signal(
    index: Index,
    workflow: str,
    instance_id: str,
    key: str,
    now_ms: int,
    reserved: Container[tuple[str, str]] = (),
) -> None:
    """Raise unless the signal may be written: UnknownInstance (no such
    instance of ``workflow``), SignalRefused (it finished; the key is a
    timer's or a step's), SignalAlreadyDelivered (the key has its signal,
    or its suspension timed out).

    ``reserved`` holds (instance, key) pairs being written: a signal, or a
    suspension's timeout.
    """
    entry = index.instances.get(instance_id)
    if entry is None or entry.workflow != workflow:
        detail = f" of workflow {workflow!r}" if entry is None else (
            f" for workflow {workflow!r} (it is an instance of {entry.workflow!r})"
        )
        raise UnknownInstance(instance_id, detail)
    check_key(key)
    if (entry.signals is not None and key in entry.signals) or (instance_id, key) in reserved:
        raise SignalAlreadyDelivered(instance_id, key)
    wait = entry.waits.get(key) if entry.waits is not None else None
    ended = entry.done_waits.get(key) if entry.done_waits is not None else None
    if (wait is not None and wait[0] == lc.WAIT_TIMER) or ended == r.TIMER_FIRED:
        raise SignalRefused(instance_id, key, "the key is a timer's")
    if (wait is not None and wait[0] == lc.WAIT_CHILD) or ended == r.CHILD_ENDED:
        raise SignalRefused(instance_id, key, "the key is a child's")
    if ended is not None or (wait is not None and wait[1] is not None and now_ms >= wait[1]):
        raise SignalAlreadyDelivered(instance_id, key, "timed out")
    if entry.state in lc.FINISHED:
        raise SignalRefused(instance_id, key, f"the instance is {lc.STATE_NAMES[entry.state]}")
    if entry.has_step(key):
        raise SignalRefused(instance_id, key, "the key is a step's")
