"""memable-compact: compacts a journal no engine holds, and says what it did.

The journals here are real directories made by an engine with small
segments. The tool runs in-process (``main(argv)``) where that is enough,
and as a subprocess where another process must hold the journal.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from memable_log_tools.compact import main
from support.compaction import Answers, stored

from memable_log import (
    Context,
    Engine,
    StepFailed,
    UnknownInstance,
    WorkflowCancelled,
    WorkflowFailed,
)
from memable_log._storage.files import FileStorage
from memable_log.testing import wait_for_state

SEGMENT_SIZE = 4096


async def job(ctx: Context) -> Any:
    n = ctx.input
    small = await ctx.step("small").run(lambda: n)
    blob = await ctx.step("big").run(lambda: bytes([n % 256]) * 1200)
    try:
        await ctx.step("flaky").run(_fail, n)
    except StepFailed as exc:
        return [small, len(blob), exc.message]
    return None


def _fail(n: int) -> None:
    raise ValueError(f"flaky {n}")


async def waiter(ctx: Context) -> Any:
    await ctx.step("prep").run(lambda: "ready")
    return await ctx.suspend("go", status="waiting for go")


async def broken(ctx: Context) -> Any:
    raise RuntimeError("broken")


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).segment_size(SEGMENT_SIZE).compaction(False).build()
    engine.register("job", job)
    engine.register("waiter", waiter)
    engine.register("broken", broken)
    return engine


async def populate(path: Path) -> None:
    """Finished, failed, cancelled, forgotten-and-restarted and suspended instances."""
    engine = make_engine(path)
    async with engine:
        for n in range(10):
            await engine.invoke("job", n, instance_id=f"job{n}")
        for n in range(10):
            await engine.wait(f"job{n}")
        await engine.forget("job0", "big")
        await engine.restart("job0")
        await engine.wait("job0")
        await engine.invoke("broken", instance_id="broken")
        await engine.invoke("waiter", instance_id="waiting")
        await engine.invoke("waiter", instance_id="cancelled")
        await wait_for_state(engine, "waiting", "suspended")
        await wait_for_state(engine, "cancelled", "suspended")
        await engine.cancel("cancelled")
        with pytest.raises(WorkflowFailed):
            await engine.wait("broken")


async def engine_answers(path: Path) -> dict[str, Any]:
    """What an engine on the journal says about each instance."""
    out: dict[str, Any] = {}
    engine = make_engine(path)
    async with engine:
        for status in engine.instances():
            iid = status.instance_id
            result: Any = None
            if status.state == "completed":
                result = await engine.wait(iid)
            elif status.state == "failed":
                with pytest.raises(WorkflowFailed) as failed:
                    await engine.wait(iid)
                result = (failed.value.error_type, failed.value.message)
            elif status.state == "cancelled":
                with pytest.raises(WorkflowCancelled):
                    await engine.wait(iid)
            out[iid] = (status, result)
    return out


def contents(path: Path) -> Answers:
    return stored(FileStorage(path, create=False))


def report(text: str) -> dict[str, int]:
    """The numbers in the tool's report, by label."""
    numbers = {}
    for line in text.splitlines():
        match = re.match(r"([a-z ]+):\s+([\d,]+)", line)
        if match:
            numbers[match.group(1)] = int(match.group(2).replace(",", ""))
    return numbers


def journal_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.name.endswith(".mlog"))


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".mlog"))


async def test_compact_reports_what_it_did_and_changes_no_answer(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    before = contents(journal_dir)
    answers = await engine_answers(journal_dir)
    size = journal_bytes(journal_dir)
    assert len(segment_files(journal_dir)) > 3
    capsys.readouterr()

    assert main([str(journal_dir)]) == 0
    out = capsys.readouterr().out
    numbers = report(out)
    assert numbers["bytes before"] == size
    assert numbers["bytes after"] == journal_bytes(journal_dir) < size
    assert numbers["records kept"] < numbers["records before"]
    assert numbers["instances dropped"] == 0
    assert "% saved" in out
    names = segment_files(journal_dir)
    assert names[0].startswith("cmp-")
    assert len(names) == 2
    assert contents(journal_dir) == before
    assert await engine_answers(journal_dir) == answers
    # The suspended instance still takes its signal and finishes.
    engine = make_engine(journal_dir)
    async with engine:
        await engine.signal("waiter", "waiting", "go", "now")
        assert await engine.wait("waiting") == "now"


async def test_compact_twice_is_safe(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    before = contents(journal_dir)
    assert main([str(journal_dir)]) == 0
    first = report(capsys.readouterr().out)
    names = segment_files(journal_dir)
    assert main([str(journal_dir)]) == 0
    second = report(capsys.readouterr().out)
    assert segment_files(journal_dir) == names  # nothing left to do
    assert second["bytes before"] == second["bytes after"] == first["bytes after"]
    assert second["records kept"] == first["records kept"]
    assert contents(journal_dir) == before
    # New records after a compaction are compacted by the next one.
    engine = make_engine(journal_dir)
    async with engine:
        await engine.signal("waiter", "waiting", "go", 1)
        assert await engine.wait("waiting") == 1
    after_signal = contents(journal_dir)
    assert main([str(journal_dir)]) == 0
    capsys.readouterr()
    assert contents(journal_dir) == after_signal
    assert segment_files(journal_dir)[0] != names[0]


async def test_compact_with_zero_retention_drops_finished_instances(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    before = contents(journal_dir)
    finished = {iid for iid, a in before.items() if a["state"] != "suspended"}
    assert main([str(journal_dir), "--retention", "0s"]) == 0
    numbers = report(capsys.readouterr().out)
    assert numbers["instances dropped"] == len(finished) == 12
    after = contents(journal_dir)
    assert after == {"waiting": before["waiting"]}
    engine = make_engine(journal_dir)
    async with engine:
        with pytest.raises(UnknownInstance):
            engine.status("job3")
        assert engine.status("waiting").state == "suspended"
        await engine.signal("waiter", "waiting", "go", "late")
        assert await engine.wait("waiting") == "late"


async def test_compact_with_a_long_retention_keeps_recent_instances(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    before = contents(journal_dir)
    assert main([str(journal_dir), "--retention", "30d"]) == 0
    assert report(capsys.readouterr().out)["instances dropped"] == 0
    assert contents(journal_dir) == before


def compact_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "memable_log_tools.compact", *args]


async def test_compact_refuses_while_an_engine_holds_the_journal(journal_dir: Path) -> None:
    await populate(journal_dir)
    names = segment_files(journal_dir)
    before = contents(journal_dir)
    engine = make_engine(journal_dir)
    async with engine:
        done = await trio.run_process(
            compact_cmd(str(journal_dir)), capture_stdout=True, capture_stderr=True,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        assert b"is locked by another process" in done.stderr
        assert b"Traceback" not in done.stderr
        assert done.stdout == b""
        # The engine goes on undisturbed.
        await engine.signal("waiter", "waiting", "go", "still here")
        assert await engine.wait("waiting") == "still here"
    assert segment_files(journal_dir) == names
    assert {k: v for k, v in contents(journal_dir).items() if k != "waiting"} == {
        k: v for k, v in before.items() if k != "waiting"
    }


@pytest.mark.parametrize(
    "argv",
    [[], ["--retention", "soon"], ["--retention", "-3d"], ["--retention"], ["--nope"],
     ["a", "b"]],
)
def test_compact_bad_usage_exits_2(
    argv: list[str], journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal_dir.mkdir()
    full = [a if a != "a" else str(journal_dir) for a in argv]
    if argv and argv[0].startswith("--retention"):
        full = [str(journal_dir), *argv]
    with pytest.raises(SystemExit) as exit_info:
        main(full)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_compact_without_a_journal_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "missing")]) == 1
    assert "not a memable_log journal" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert "not a memable_log journal" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # nothing created


def test_compact_bad_usage_as_a_process_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        compact_cmd(str(tmp_path), "--retention", "a while"), capture_output=True, check=False
    )
    assert done.returncode == 2
    assert b"not a duration" in done.stderr
