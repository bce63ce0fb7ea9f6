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
from typing import Any

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


def waits_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [block for block in blocks if "async def expense" in block]
    assert found, "README.md lost its several-waits example"
    return found[0]


@pytest.mark.parametrize(("answer_after", "reminders"), [(3600.0, 0), (2 * 86400.0, 1)])
async def test_the_readme_several_waits_example_reminds_once_and_only_if_late(
    autojump_clock: Any, answer_after: float, reminders: int
) -> None:
    import trio

    from memable_log import Context, ManualClock
    from memable_log.testing import memory_engine, wait_for_state

    sent: list[float] = []
    namespace: dict[str, Any] = {
        "trio": trio, "Context": Context, "send_reminder": lambda: sent.append(1),
    }
    exec(compile(waits_example(), str(README), "exec"), namespace)
    engine, _ = memory_engine({"expense": namespace["expense"]}, clock=ManualClock())
    async with engine:
        iid = await engine.invoke("expense")
        await wait_for_state(engine, iid, "waiting")
        await trio.sleep(answer_after)
        await engine.signal("expense", iid, "approval:v1", "approved")
        assert await engine.wait(iid) == "approved"
    assert len(sent) == reminders
