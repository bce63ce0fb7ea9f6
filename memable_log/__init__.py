"""memable_log: durable execution for trio programs.

Each step's result is memoised under a key the author chooses, in an
append-only journal on local disk. After a crash, a code change or a
suspension, the workflow runs again from the top and finished steps return
their stored result at once. See docs/api.md for every public name.

The engine's and the reader's names load on first use, so the
command-line tools import only what their command needs (never trio).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core.errors import DuplicateStepKey as DuplicateStepKey
from ._core.errors import EngineError as EngineError
from ._core.errors import JournalClosed as JournalClosed
from ._core.errors import JournalCorrupt as JournalCorrupt
from ._core.errors import JournalFailed as JournalFailed
from ._core.errors import JournalFormatError as JournalFormatError
from ._core.errors import JournalLocked as JournalLocked
from ._core.errors import NotSerializable as NotSerializable
from ._core.errors import RetryAfter as RetryAfter
from ._core.errors import SignalAlreadyDelivered as SignalAlreadyDelivered
from ._core.errors import SignalRefused as SignalRefused
from ._core.errors import StepFailed as StepFailed
from ._core.errors import StepInterrupted as StepInterrupted
from ._core.errors import StepTimedOut as StepTimedOut
from ._core.errors import SuspendTimedOut as SuspendTimedOut
from ._core.errors import TypeMismatch as TypeMismatch
from ._core.errors import UnknownInstance as UnknownInstance
from ._core.errors import UnknownWorkflow as UnknownWorkflow
from ._core.errors import WorkflowCancelled as WorkflowCancelled
from ._core.errors import WorkflowFailed as WorkflowFailed

if TYPE_CHECKING:
    from ._core.status import ErrorInfo as ErrorInfo
    from ._core.status import Event as Event
    from ._core.status import InstanceStatus as InstanceStatus
    from ._core.status import Schedule as Schedule
    from ._core.status import StepStatus as StepStatus
    from ._core.status import Wait as Wait
    from ._engine.builder import EngineBuilder as EngineBuilder
    from ._engine.clock import Clock as Clock
    from ._engine.clock import ManualClock as ManualClock
    from ._engine.context import Context as Context
    from ._engine.context import Step as Step
    from ._engine.engine import Engine as Engine
    from ._storage.memory import MemoryStorage as MemoryStorage
    from .reader import FollowGap as FollowGap
    from .reader import JournalFollower as JournalFollower
    from .reader import JournalReader as JournalReader
    from .reader import NotAJournal as NotAJournal
    from .reader import RecordView as RecordView
    from .reader import TornTail as TornTail
    from .reader import decode_value as decode_value
    from .reader import follow_journal as follow_journal
    from .reader import read_journal as read_journal

_LAZY = {
    "FollowGap": ".reader",
    "JournalFollower": ".reader",
    "JournalReader": ".reader",
    "NotAJournal": ".reader",
    "RecordView": ".reader",
    "TornTail": ".reader",
    "decode_value": ".reader",
    "follow_journal": ".reader",
    "read_journal": ".reader",
    "Clock": "._engine.clock",
    "Context": "._engine.context",
    "Engine": "._engine.engine",
    "EngineBuilder": "._engine.builder",
    "ErrorInfo": "._core.status",
    "Event": "._core.status",
    "InstanceStatus": "._core.status",
    "ManualClock": "._engine.clock",
    "MemoryStorage": "._storage.memory",
    "Schedule": "._core.status",
    "Step": "._engine.context",
    "StepStatus": "._core.status",
    "Wait": "._core.status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memable_log' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Clock",
    "Context",
    "DuplicateStepKey",
    "Engine",
    "EngineBuilder",
    "EngineError",
    "ErrorInfo",
    "Event",
    "FollowGap",
    "InstanceStatus",
    "JournalClosed",
    "JournalCorrupt",
    "JournalFailed",
    "JournalFollower",
    "JournalFormatError",
    "JournalLocked",
    "JournalReader",
    "ManualClock",
    "MemoryStorage",
    "NotAJournal",
    "NotSerializable",
    "RecordView",
    "RetryAfter",
    "Schedule",
    "SignalAlreadyDelivered",
    "SignalRefused",
    "Step",
    "StepFailed",
    "StepInterrupted",
    "StepStatus",
    "StepTimedOut",
    "SuspendTimedOut",
    "TornTail",
    "TypeMismatch",
    "UnknownInstance",
    "UnknownWorkflow",
    "Wait",
    "WorkflowCancelled",
    "WorkflowFailed",
    "decode_value",
    "follow_journal",
    "read_journal",
]
