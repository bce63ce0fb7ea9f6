"""`memable --help` and a usage error load none of the library: start-up is
part of every command's latency (bench/bench_cli.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from memable_log import Engine, operations

PROBE = """
import sys
from memable_log_tools import memable
try:
    code = memable.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("memable_log", "trio", "msgpack", "zstandard", "json")
               if m in sys.modules)
print(code, ",".join(heavy) or "-", file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["--help"], 0), (["invoke", "--help"], 0), (["instances", "J", "--since", "x"], 2),
     ([], 2)],
    ids=["help", "invoke-help", "bad-time", "nothing"],
)
def test_help_and_usage_errors_import_no_library(argv: list[str], code: int) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True,
                          text=True, check=False)
    assert done.stderr.splitlines()[-1] == f"{code} -", done.stderr


def test_invoke_loads_neither_the_listing_nor_zstandard(tmp_path: Path) -> None:
    # `memable invoke` is the command an application's scripts run often; the
    # listing's modules (dataclasses of status) and zstandard are loaded only
    # by the commands that need them.
    async def make() -> None:
        async with Engine.builder().open(tmp_path / "j").build():
            pass

    trio.run(make)
    done = subprocess.run([sys.executable, "-c", PROBE.replace(
        '("memable_log", "trio", "msgpack", "zstandard", "json")',
        '("memable_log._core.status", "memable_log._core.listing", "trio", "zstandard")'),
        "invoke", str(tmp_path / "j"), "wf", '{"n": 1}'],
        capture_output=True, text=True, check=False)
    assert done.stderr.splitlines()[-1] == "0 -", done.stderr
    assert [i.workflow for i in operations.instances(tmp_path / "j")] == ["wf"]
