"""memable_log: durable execution for trio programs.

Each step's result is memoised under a key the author chooses, in an
append-only journal on local disk. See SPEC in the docs for the contract.
"""

from ._errors import EngineError as EngineError
from ._errors import JournalClosed as JournalClosed
from ._errors import JournalCorrupt as JournalCorrupt
from ._errors import JournalFailed as JournalFailed
from ._errors import JournalFormatError as JournalFormatError
from ._errors import JournalLocked as JournalLocked

__all__ = [
    "EngineError",
    "JournalClosed",
    "JournalCorrupt",
    "JournalFailed",
    "JournalFormatError",
    "JournalLocked",
]
