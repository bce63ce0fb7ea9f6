"""How every campaign ends: its summary as one JSON line, the violations,
optionally a JSON file with both, and the exit status (1 on any violation)."""

from __future__ import annotations

import json
from typing import Any


def finish(summary: dict[str, Any], violations: list[str], json_path: str | None,
           *, show: int | None) -> int:
    """Print ``summary`` and the first ``show`` violations (None: all); write
    ``summary`` and every violation to ``json_path`` if given; the exit status."""
    print(json.dumps(summary))
    for line in violations if show is None else violations[:show]:
        print("VIOLATION", line)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**summary, "violation_list": violations}, f)
    return 1 if violations else 0
