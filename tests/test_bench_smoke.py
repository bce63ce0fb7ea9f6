"""The journal benchmark runs end to end in --quick mode.

It asserts that the script completes and reports every table and its JSON
keys, never any timing: figures on a shared machine are not test material.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench_journal.py"

TABLE_HEADERS = (
    "Write throughput",
    "raw write+fsync, 1 writer",
    "journal, 1 writer",
    "journal, 64 writers",
    "sqlite3 WAL FULL, 1 writer",
    "Start-up (",
    "open: lock + scan + index + recover",
    "open from the index snapshot",
    "Index memory",
    "Start-up time split",
    "reader: frames, crc, decode, check",
    "apply (index)",
)


def test_bench_journal_quick_completes_and_reports_every_table(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--data-dir", str(tmp_path / "data"),
         "--json", str(results)],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for header in TABLE_HEADERS:
        assert header in proc.stdout, header
    report = json.loads(results.read_text())
    assert report["quick"] is True
    assert set(report["writes"]) == {
        "raw_fsync", "journal_1_writer", "journal_64_writers", "sqlite_1_writer",
    }
    assert report["startup"]["records"] == 10_000
    assert report["startup"]["index"]["default"]["entries"] == 9_000
