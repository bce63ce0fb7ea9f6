"""Puts fuzz/ on the import path, so tests can run the crash campaigns' code.

The campaigns are scripts (``python fuzz/powerloss.py``) that import their
siblings (``_workload``, ``_ledger``) by name; importing this module first
lets a test import them the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
FUZZ = REPO / "fuzz"

if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

# The campaigns, for tests to import from here (after the path is set).
import _ledger as ledger  # noqa: E402
import _workload as workload  # noqa: E402
import faults  # noqa: E402
import killnine  # noqa: E402
import mutate  # noqa: E402
import powerloss  # noqa: E402

__all__ = ["FUZZ", "REPO", "faults", "killnine", "ledger", "mutate", "powerloss", "workload"]
