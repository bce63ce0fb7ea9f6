"""CI runs the README's test command, which lints too (tests/project/test_lint.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Install what the tests need and run the full suite:", 1)[1]
    found = re.search(r"```sh\n(.+?)\n```", section)
    assert found is not None, "README.md lost its test command"
    command = found.group(1)
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in script, f".ci/run does not run the README's test command: {command}"
    assert "'.[test]'" in command, "the test extra carries ruff and mypy, which the tests run"
