"""The code passes the linters: ``ruff check`` over the repository and
``mypy --strict`` over memable_log/ and tools/, run by the test command itself.

Both read their settings from pyproject.toml and keep their caches in the
repository (``.ruff_cache``, ``.mypy_cache``, both git-ignored), so only
the first run on a clean clone pays for mypy's full check (~15-60 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False,
    )


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-fix", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing_in_the_package_and_tools() -> None:
    done = _run("mypy", "--strict", "--cache-dir", ".mypy_cache", "memable_log", "tools")
    assert done.returncode == 0, done.stdout + done.stderr
