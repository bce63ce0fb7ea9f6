"""The engine and signal benchmarks run end to end in --quick mode.

They assert that the scripts complete and report every table and their
JSON keys, never any timing: figures on a shared machine are not test
material. A second pair of runs hides ``dbos`` behind a module whose import
fails, as on a machine without the ``bench`` extra: the scripts must then
report DBOS as unavailable and still measure the rest.

The four runs start together (module fixture) so the file costs the wall
time of the slowest, not of their sum.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "bench"

ENGINE_HEADERS = (
    "memable_log engine benchmark (--quick)",
    "Engine scenarios",
    "(a) 1 x",
    "(b) ",
    "(c) replay",
    "launch -> recovered result",
    "(d) 10 steps, 9 cached",
    "(e) start with",
    "resident memory after start",
)
SIGNAL_HEADERS = (
    "memable_log signal benchmark (--quick)",
    "Signal latency, ms",
    "memable_log: engine.signal -> instance completed",
    "memable-signal (spawn) -> instance completed",
    "DBOS: send -> recv'ing workflow's result",
)
ENGINE_KEYS = {"a_rate", "b_rate", "c_rate", "c_total_s", "d_ms", "d_launch_ms",
               "e_start_ms", "e_rss_mb", "e_rss_delta_mb", "e_import_ms"}


@dataclass
class Run:
    proc: subprocess.Popen[str]
    json_path: Path
    stdout: str = ""
    stderr: str = ""

    def finish(self) -> Run:
        self.stdout, self.stderr = self.proc.communicate(timeout=600)
        return self

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.json_path.read_text())
        return data


def _start(script: str, root: Path, name: str, env: dict[str, str]) -> Run:
    json_path = root / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / script), "--quick", "--data-dir", str(root / name),
         "--json", str(json_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    return Run(proc, json_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    root = tmp_path_factory.mktemp("bench-engine")
    hidden = root / "hide-dbos"
    (hidden / "dbos").mkdir(parents=True)
    (hidden / "dbos" / "__init__.py").write_text(
        'raise ImportError("dbos is hidden by the smoke test")\n')
    plain = dict(os.environ)
    no_dbos = {**plain, "PYTHONPATH": os.pathsep.join(
        [str(hidden), *filter(None, [plain.get("PYTHONPATH")])])}
    started = {
        "engine": _start("bench_engine.py", root, "engine", plain),
        "signal": _start("bench_signal.py", root, "signal", plain),
        "engine-no-dbos": _start("bench_engine.py", root, "engine-no-dbos", no_dbos),
        "signal-no-dbos": _start("bench_signal.py", root, "signal-no-dbos", no_dbos),
    }
    try:
        yield {name: run.finish() for name, run in started.items()}
    finally:
        for run in started.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def _dbos_importable() -> bool:
    return importlib.util.find_spec("dbos") is not None


def test_bench_engine_quick_reports_every_scenario(runs: dict[str, Run]) -> None:
    run = runs["engine"]
    assert run.proc.returncode == 0, run.stderr
    for header in ENGINE_HEADERS:
        assert header in run.stdout, header
    report = run.report()
    assert report["quick"] is True
    results = report["results"]
    assert set(results) >= ENGINE_KEYS
    for key in ENGINE_KEYS:
        assert results[key]["memable_log"]["runs"], key
        assert results[key]["sqlite3"]["runs"], key
    if _dbos_importable():
        assert report["unavailable"] == {}
        assert results["a_rate"]["DBOS"]["runs"]


def test_bench_signal_quick_reports_every_path(runs: dict[str, Run]) -> None:
    run = runs["signal"]
    assert run.proc.returncode == 0, run.stderr
    for header in SIGNAL_HEADERS:
        assert header in run.stdout, header
    report = run.report()
    series = report["series"]
    assert series["inproc"]["samples"] > 0
    assert series["inproc_durable"]["samples"] > 0
    unavailable = report["unavailable"]
    if "memable-signal" not in unavailable:
        assert series["xproc"]["samples"] > 0
    if _dbos_importable():
        assert "DBOS" not in unavailable
        assert series["dbos"]["samples"] > 0


def test_bench_engine_without_dbos_reports_it_unavailable(runs: dict[str, Run]) -> None:
    run = runs["engine-no-dbos"]
    assert run.proc.returncode == 0, run.stderr
    for header in ENGINE_HEADERS:
        assert header in run.stdout, header
    assert "DBOS: unavailable (ImportError: dbos is hidden by the smoke test)" in run.stdout
    report = run.report()
    assert set(report["unavailable"]) == {"DBOS"}
    results = report["results"]
    assert results["a_rate"]["DBOS"] is None
    assert results["a_rate"]["memable_log"]["runs"]


def test_bench_signal_without_dbos_reports_it_unavailable(runs: dict[str, Run]) -> None:
    run = runs["signal-no-dbos"]
    assert run.proc.returncode == 0, run.stderr
    for header in SIGNAL_HEADERS:
        assert header in run.stdout, header
    assert "DBOS: unavailable (ImportError: dbos is hidden by the smoke test)" in run.stdout
    report = run.report()
    assert "DBOS" in report["unavailable"]
    assert report["series"]["inproc"]["samples"] > 0
