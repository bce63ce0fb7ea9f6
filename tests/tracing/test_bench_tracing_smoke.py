"""bench/bench_tracing.py runs end to end in a tiny configuration.

It asserts that every mode is reported, never any timing: figures on a
shared machine are not test material.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_bench_tracing_reports_every_mode() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_tracing.py"), "--rounds", "1",
         "--steps", "20", "--replays", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    modes = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert modes == ["off", "noop", "sdk", "sdk-memory"]
