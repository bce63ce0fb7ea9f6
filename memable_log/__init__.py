"""memable_log: durable execution for trio programs.

Each step's result is memoised under a key the author chooses, in an
append-only journal on local disk. After a crash, a code change or a
suspension, the workflow runs again from the top and finished steps return
their stored result at once. See docs/api.md for every public name.

The engine's names load on first use, so the command-line tools, which
never run an engine, start without importing trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import DuplicateStepKey as DuplicateStepKey
from ._errors import EngineError as EngineError
from ._errors import JournalClosed as JournalClosed
from ._errors import JournalCorrupt as JournalCorrupt
from ._errors import JournalFailed as JournalFailed
from ._errors import JournalFormatError as JournalFormatError
from ._errors import JournalLocked as JournalLocked
from ._errors import NotSerializable as NotSerializable
from ._errors import SignalAlreadyDelivered as SignalAlreadyDelivered
from ._errors import StepFailed as StepFailed
from ._errors import StepInterrupted as StepInterrupted
from ._errors import SuspendTimedOut as SuspendTimedOut
from ._errors import UnknownInstance as UnknownInstance
from ._errors import UnknownWorkflow as UnknownWorkflow
from ._errors import WorkflowCancelled as WorkflowCancelled
from ._errors import WorkflowFailed as WorkflowFailed
from .journal import FollowGap as FollowGap
from .journal import JournalFollower as JournalFollower
from .journal import JournalReader as JournalReader
from .journal import NotAJournal as NotAJournal
from .journal import RecordView as RecordView
from .journal import TornTail as TornTail
from .journal import decode_value as decode_value
from .journal import follow_journal as follow_journal
from .journal import read_journal as read_journal

if TYPE_CHECKING:
    from ._builder import EngineBuilder as EngineBuilder
    from ._clock import Clock as Clock
    from ._clock import ManualClock as ManualClock
    from ._context import Context as Context
    from ._context import Step as Step
    from ._engine import Engine as Engine
    from ._memstorage import MemoryStorage as MemoryStorage
    from ._status import ErrorInfo as ErrorInfo
    from ._status import InstanceStatus as InstanceStatus

_LAZY = {
    "Clock": "._clock",
    "Context": "._context",
    "Engine": "._engine",
    "EngineBuilder": "._builder",
    "ErrorInfo": "._status",
    "InstanceStatus": "._status",
    "ManualClock": "._clock",
    "MemoryStorage": "._memstorage",
    "Step": "._context",
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
    "SignalAlreadyDelivered",
    "Step",
    "StepFailed",
    "StepInterrupted",
    "SuspendTimedOut",
    "TornTail",
    "UnknownInstance",
    "UnknownWorkflow",
    "WorkflowCancelled",
    "WorkflowFailed",
    "decode_value",
    "follow_journal",
    "read_journal",
]
