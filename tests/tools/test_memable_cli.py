"""The memable command: in-process main() calls, and a few real processes
(invoke --wait with an engine running, kill -9 while handing over)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from memable_log_tools import memable

from memable_log import Context, Engine, operations, read_journal
from memable_log._storage import crashpoints as cp
from memable_log._storage.inbox import inbox_path, pending, remove_stale_temps
from memable_log.testing import wait_for_state

TIMEOUT = 20  # seconds for a process to answer: generous, never slept


async def double(ctx: Context) -> int:
    return int(await ctx.step("double").run(lambda: 2 * ctx.input))


async def parked(ctx: Context) -> Any:
    await ctx.step("prep").run(lambda: "ready")
    return await ctx.suspend("go", status="waiting for go")


async def broken(ctx: Context) -> None:
    raise RuntimeError("broken on purpose")


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    for name, fn in [("double", double), ("parked", parked), ("broken", broken)]:
        engine.register(name, fn)
    return engine


async def populate(path: Path) -> None:
    engine = make_engine(path)
    async with engine:
        await engine.invoke("double", 2, instance_id="d")
        await engine.invoke("parked", instance_id="p")
        await engine.invoke("broken", instance_id="b")
        await engine.wait("d")
        await wait_for_state(engine, "p", "suspended")
        await wait_for_state(engine, "b", "failed")


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = memable.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- reads --------------------------------------------------------------------------------


async def test_status_steps_instances_as_text_and_json(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    code, out, _ = run(capsys, "status", journal_dir, "p")
    assert code == 0
    assert "state:       suspended" in out
    assert "waiting for go" in out
    code, out, _ = run(capsys, "status", journal_dir, "p", "--json")
    got = json.loads(out)
    st = operations.status(journal_dir, "p")
    assert set(got) == set(st.__dataclass_fields__)
    assert got["state"] == "suspended"
    assert got["waits"] == [
        {"kind": "signal", "key": "go", "deadline": None}]
    code, out, _ = run(capsys, "status", journal_dir, "b", "--json")
    assert json.loads(out)["error"] == {"type": "RuntimeError", "message": "broken on purpose"}
    code, out, _ = run(capsys, "steps", journal_dir, "p", "--json")
    steps = json.loads(out)
    assert [s["key"] for s in steps] == ["prep"]
    assert set(steps[0]) == {"key", "state", "started_at", "finished_at", "attempts", "error"}
    code, out, _ = run(capsys, "steps", journal_dir, "d")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "KEY", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"]
    code, out, _ = run(capsys, "instances", journal_dir, "--json")
    assert [i["instance_id"] for i in json.loads(out)] == ["d", "p", "b"]
    code, out, _ = run(capsys, "instances", journal_dir, "--state", "failed")
    assert [line.split()[0] for line in out.splitlines()] == ["INSTANCE", "b"]
    created = operations.status(journal_dir, "p").created_at.isoformat()
    code, out, _ = run(capsys, "instances", journal_dir, "--since", created, "--json",
                       "--newest-first", "--limit", "1")
    assert [i["instance_id"] for i in json.loads(out)] == ["b"]
    code, out, _ = run(capsys, "instances", journal_dir, "--workflow", "double",
                       "--prefix", "d", "--until", "2999-01-01", "--json")
    assert [i["instance_id"] for i in json.loads(out)] == ["d"]


# -- actions without an engine ---------------------------------------------------------


async def test_actions_offline_then_an_engine_runs_them(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await populate(journal_dir)
    code, out, err = run(capsys, "invoke", journal_dir, "double", "21", "--id", "n")
    assert (code, out) == (0, "n\n")
    assert "appended to the journal" in err
    assert run(capsys, "invoke", journal_dir, "double", "5", "--id", "n")[2].count(
        "already in the journal") == 1
    code, _, err = run(capsys, "cancel", journal_dir, "p")
    assert code == 0
    assert "cancel of instance 'p' appended" in err
    code, _, err = run(capsys, "cancel", journal_dir, "p")
    assert code == 0
    assert "nothing to cancel" in err
    assert run(capsys, "forget", journal_dir, "b", "*")[0] == 0
    assert run(capsys, "restart", journal_dir, "b")[0] == 0
    code, _, err = run(capsys, "restart", journal_dir, "n")
    assert code == 1
    assert "'n' is running; only a completed" in err
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("n") == 42
    assert operations.status(journal_dir, "p").state == "cancelled"
    code, out, _ = run(capsys, "invoke", journal_dir, "double", "0", "--id", "n", "--wait")
    assert (code, out) == (0, "42\n")  # finished already: its result at once


# -- bad input: a message and an exit status, never a traceback -----------------------


BAD_USAGE = [
    [],
    ["nosuch"],
    ["status"],
    ["status", "J"],
    ["status", "J", "d", "--bogus"],
    ["instances", "J", "--since", "yesterday"],
    ["instances", "J", "--until", "2024-13-01"],
    ["instances", "J", "--limit", "-3"],
    ["instances", "J", "--limit", "x"],
    ["instances", "J", "--state", "sleepy"],
    ["invoke", "J", "double", "{not json"],
    ["invoke", "J", "double", "[" * 100000],
    ["invoke", "J", "double", "1", "--timeout", "5"],
    ["invoke", "J", "double", "1", "--wait", "--timeout", "-1"],
    ["invoke", "J", "double", "1", "--wait", "--timeout", "nan"],
    ["invoke", "J", "", "1"],
    ["invoke", "J", "double", "1", "--id", ""],
    ["forget", "J", "d", ""],
    ["cancel", "J", ""],
    ["restart", "J"],
    ["forget", "J", "d"],
]

REFUSED = [
    ["status", "J", "nope"],
    ["steps", "J", "nope"],
    ["cancel", "J", "nope"],
    ["restart", "J", "nope"],
    ["restart", "J", "p"],
    ["forget", "J", "nope", "k"],
    ["invoke", "J", "broken", "--id", "b", "--wait"],
    ["invoke", "J", "parked", "--id", "p", "--wait", "--timeout", "0.05"],
    ["status", "MISSING", "d"],
    ["instances", "MISSING"],
    ["invoke", "MISSING", "double"],
    ["cancel", "AFILE", "d"],
    ["steps", "EMPTYDIR", "d"],
]


@pytest.fixture
async def places(journal_dir: Path, tmp_path: Path) -> dict[str, str]:
    await populate(journal_dir)
    (tmp_path / "afile").write_text("not a journal")
    (tmp_path / "emptydir").mkdir()
    return {"J": str(journal_dir), "MISSING": str(tmp_path / "missing"),
            "AFILE": str(tmp_path / "afile"), "EMPTYDIR": str(tmp_path / "emptydir")}


@pytest.mark.parametrize("argv", BAD_USAGE, ids=lambda a: " ".join(a)[:40] or "nothing")
async def test_bad_usage_exits_2_with_a_message(
    argv: list[str], places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(os.listdir(places["J"]))
    try:
        code = memable.main([places.get(a, a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code  # type: ignore[assignment]
    _out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip()
    assert sorted(os.listdir(places["J"])) == before


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a)[:40])
async def test_refusals_exit_1_with_the_reason(
    argv: list[str], places: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    records = len(list(read_journal(places["J"])))
    code = memable.main([places.get(a, a) for a in argv])
    _out, err = capsys.readouterr()
    assert code == 1, err
    assert "Traceback" not in err
    assert err.startswith("memable: ")
    assert len(list(read_journal(places["J"]))) == records
    assert not Path(places["MISSING"]).exists()  # noqa: ASYNC240 - a test's look


def test_pass_through_runs_the_tools(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(populate, journal_dir)
    code, out, _ = run(capsys, "dump", journal_dir, "--json")
    assert code == 0
    assert json.loads(out.splitlines()[0])["type"] == "created"
    code, _, _err = run(capsys, "signal", journal_dir, "parked", "p", "go", "1")
    assert code == 0
    assert operations.status(journal_dir, "p").state == "running"
    code, out, _ = run(capsys, "compact", journal_dir)
    assert code == 0
    assert "records kept" in out
    with pytest.raises(SystemExit) as exc:
        memable.main(["dump", "--help"])
    assert exc.value.code == 0
    assert "memable-dump" in capsys.readouterr().out


# -- real processes -------------------------------------------------------------------


async def communicate(argv: list[str], env: dict[str, str] | None = None) -> tuple[
        int, str, str]:
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "memable_log_tools.memable", *argv],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_invoke_wait_from_another_process_with_an_engine_running(
    journal_dir: Path,
) -> None:
    await populate(journal_dir)
    engine = make_engine(journal_dir)
    async with engine:
        code, out, err = await communicate(
            ["invoke", str(journal_dir), "double", "21", "--id", "w1", "--wait"])
        assert (code, out) == (0, "42\n"), err
        assert "handed over to the running engine" in err
        assert await engine.wait("w1") == 42
        code, out, err = await communicate(
            ["invoke", str(journal_dir), "broken", "--id", "w2", "--wait"])
        assert code == 1
        assert "broken on purpose" in err
        assert out == ""
        code, out, err = await communicate(
            ["invoke", str(journal_dir), "nosuch", "--id", "w3", "--wait"])
        assert code == 1
        assert "refused the action: unknown workflow 'nosuch'" in err
        code, out, err = await communicate(["cancel", str(journal_dir), "p"])
        assert code == 0
        assert "handed over" in err
        code, out, err = await communicate(
            ["invoke", str(journal_dir), "parked", "--id", "p", "--wait"])
        assert code == 1
        assert "'p' was cancelled" in err
        code, out, err = await communicate(["status", str(journal_dir), "w1", "--json"])
        assert json.loads(out)["state"] == "completed"


async def test_kill_9_before_the_rename_leaves_nothing_applied(journal_dir: Path) -> None:
    """The CLI killed between writing the hand-over and renaming it: never
    acknowledged, never applied; its temp file is swept once stale."""
    await populate(journal_dir)
    engine = make_engine(journal_dir)
    async with engine:
        env = dict(os.environ, **{cp.ENV: "inbox.after-temp-write:1"})
        code, out, err = await communicate(["cancel", str(journal_dir), "p"], env)
        assert code == -9
        assert "memable crash point inbox.after-temp-write" in err
        assert out == ""
        temps = [n for n in os.listdir(inbox_path(str(journal_dir))) if n.endswith(".act.tmp")]
        assert len(temps) == 1
        assert pending(str(journal_dir)) == []
        assert engine.status("p").state == "suspended"
    assert remove_stale_temps(str(journal_dir), now=1e12) == temps
    # killed after the rename: acknowledged by the file alone; applied at the next start
    env = dict(os.environ, **{cp.ENV: "inbox.after-rename:1"})
    engine = make_engine(journal_dir)
    async with engine:
        code, _, err = await communicate(["cancel", str(journal_dir), "p"], env)
        assert code == -9
        with trio.fail_after(TIMEOUT):
            await wait_for_state(engine, "p", "cancelled")
