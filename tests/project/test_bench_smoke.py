"""The journal and compaction benchmarks run end to end in --quick mode.

It asserts that the script completes and reports every table and its JSON
keys, never any timing: figures on a shared machine are not test material.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
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


COMPACTION_ROWS = (
    "1. Bytes on disk", "plain values", "zstd values",
    "2. Step-commit latency", "compaction off", "compaction on, idle moments",
    "during compaction (all of it)", "while the engine picks / re-points",
    "while the child rewrites", "p99 during / p99 idle",
    "3. Start-up", "open, full scan (s)", "open, from snapshot (s)", "index bytes per entry",
)


def test_bench_compaction_quick_completes_and_reports_every_phase(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_compaction.py"), "--quick",
         "--data-dir", str(tmp_path / "data"), "--json", str(results)],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for row in COMPACTION_ROWS:
        assert row in proc.stdout, row
    report = json.loads(results.read_text())
    latency = report["latency"]
    # Every phase was measured: the writer ran on until a compaction had finished.
    for key in ("idle_p99", "whole_p99", "engine_p99", "child_p99", "off_p99"):
        assert latency[key]["runs"], key
    # Scratch journals removed; the start-up journal is kept for the next run.
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["startup-10000"]


def test_bench_startup_quick_completes_and_reports_every_row(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_startup.py"), "--quick",
         "--data-dir", str(tmp_path / "data"), "--json", str(results),
         "--vs-tree", str(REPO)],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for row in ("110,000 records (10,000 finished instances)", "floor: read + unpack",
                "this tree: start", "other tree: start", "first read of a finished instance",
                "this tree / other tree"):
        assert row in proc.stdout, row
    report = json.loads(results.read_text())
    assert report["records"] == 110_000
    assert len(report["this tree"]["start_s"]) == len(report["floor_s"]) == 1
