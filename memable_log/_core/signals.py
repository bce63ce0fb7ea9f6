"""Whether a signal may be written: one rule for the engine and for tools. Pure."""

from __future__ import annotations

from collections.abc import Container

from . import lifecycle as lc
from .errors import SignalAlreadyDelivered, UnknownInstance
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
    """Raise UnknownInstance or SignalAlreadyDelivered unless the signal may be written.

    ``reserved`` holds (instance, key) pairs whose signal is being written.
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
    if (entry.done_waits is not None and key in entry.done_waits) or (
        entry.state == lc.SUSPENDED
        and entry.wait_key == key
        and entry.deadline_ms is not None
        and now_ms >= entry.deadline_ms
    ):
        raise SignalAlreadyDelivered(instance_id, key, "timed out")
