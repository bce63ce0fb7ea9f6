"""Runs memable-dump in-process, for the tests of tests/tools/test_dump*.py."""

from __future__ import annotations

import pytest
from memable_log_tools import dump


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """``memable-dump argv...``: its exit code, stdout's lines, and stderr."""
    code = dump.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err
