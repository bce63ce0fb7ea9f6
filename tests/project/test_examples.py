"""Every example runs and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_quickstart_resumes_without_rerunning_finished_steps() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    run1, run2 = done.stdout.split("Run 2")
    assert "extract:v1    ran" in run1
    assert "transform:v1  ran" in run1
    assert "killed" in run1
    assert "ran" not in run2.split("load:v1")[0]  # nothing re-ran before load
    assert "load:v1       ran: loaded 3 rows" in run2
    assert "instance 'demo' completed: result 3, 3 steps" in run2
