"""The README's short example is safe to run again (issue 13 n).

Run twice against the same journal (as after a crash, or a second start of
the program), it must not run the pipeline twice: the example invokes with
a fixed instance id, so the second run finds the instance and its memoised
steps. The code block is executed as the README shows it, with the three
step functions it leaves to the reader filled in with counters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md lost its example"
    return blocks[0]


def test_running_the_readme_example_twice_runs_the_pipeline_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the example keeps its journal in the working directory
    calls: list[str] = []

    async def fetch_from_api() -> list[int]:
        calls.append("extract")
        return [3, 1, 2]

    def normalise(data: list[int]) -> list[int]:
        calls.append("transform")
        return sorted(data)

    def load(rows: list[int]) -> None:
        calls.append("load")

    code = compile(example(), str(README), "exec")
    for _ in range(2):
        exec(code, {"fetch_from_api": fetch_from_api, "normalise": normalise, "load": load})
    assert calls == ["extract", "transform", "load"]
    assert capsys.readouterr().out.split() == ["3", "3"]
    assert os.path.isdir(tmp_path / "workflows.memable")
