"""An action handed over through the inbox is applied exactly once: its
hand-over's name is durable in the batch of its records (handover_applied),
and a hand-over found there after a crash between the append and the file's
removal is only deleted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trio

from memable_log import Context, Engine, operations, read_journal
from memable_log._core.codec import Codec
from memable_log._storage.inbox import (
    ACTION_SUFFIX,
    REJECTED,
    encode_action,
    pending,
    write_handover,
)

RUNS: list[str] = []


async def counted(ctx: Context) -> int:
    RUNS.append(ctx.instance_id)
    return int(await ctx.step("s").run(lambda: len(RUNS)))


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    engine.register("counted", counted)
    return engine


def types(path: Path, iid: str = "c") -> list[str]:
    return [rec.type for rec in read_journal(path) if rec.instance == iid]


async def run_once(path: Path) -> None:
    engine = make_engine(path)
    async with engine:
        await engine.invoke("counted", instance_id="c")
        assert await engine.wait("c") == 1


async def test_a_forget_found_applied_after_a_crash_is_not_applied_again(
    journal_dir: Path,
) -> None:
    """The engine applied a forget, the step ran again, and the engine died
    before deleting the file: the next start must not forget the new run."""
    RUNS.clear()
    await run_once(journal_dir)
    path = str(journal_dir)
    name = write_handover(path, encode_action("forget", "c", {"key": "s"}),
                          suffix=ACTION_SUFFIX)
    data = (journal_dir / "inbox" / name).read_bytes()
    engine = make_engine(journal_dir)
    async with engine:  # applied before the start returns
        assert pending(path) == []
        assert engine.steps("c") == []
        await engine.restart("c")
        assert await engine.wait("c") == 2  # the step ran again
    (journal_dir / "inbox" / name).write_bytes(data)  # as if never deleted
    engine = make_engine(journal_dir)
    async with engine:
        assert pending(str(journal_dir)) == []  # deleted, not applied
        assert [s.key for s in engine.steps("c")] == ["s"]
    assert types(journal_dir).count("forgot") == 1
    assert not (journal_dir / "inbox" / REJECTED).exists()
    # the marker survives compaction (and goes with its instance)
    operations.compact(journal_dir)
    applied = [rec for rec in read_journal(journal_dir) if rec.type == "handover_applied"]
    assert [(rec.fields["name"], rec.fields["instance_id"]) for rec in applied] == [(name, "c")]


CHILD = textwrap.dedent("""
    import sys, trio
    from memable_log import Engine

    async def counted(ctx):
        return await ctx.step("s").run(lambda: 1)

    async def main():
        engine = Engine.builder().open(sys.argv[1]).build()
        engine.register("counted", counted)
        async with engine:
            pass

    trio.run(main)
""")


def test_kill_9_between_applying_and_removing_applies_each_action_once(
    journal_dir: Path,
) -> None:
    RUNS.clear()
    trio.run(run_once, journal_dir)
    path = str(journal_dir)
    names = [
        write_handover(path, encode_action("forget", "c", {"key": "s"}), suffix=ACTION_SUFFIX),
        write_handover(path, encode_action("invoke", "d", {"workflow": "counted",
                                                           "input": Codec().encode(None)}),
                       suffix=ACTION_SUFFIX),
    ]
    for n in (1, 2):  # die after applying the forget, then after the invoke
        env = {**os.environ, "MEMABLE_CRASH_POINT": f"inbox.before-remove:{n}"}
        child = subprocess.run([sys.executable, "-c", CHILD, path], env=env,
                               capture_output=True, text=True, timeout=60)
        assert child.returncode == -9, child.stderr
        assert "memable crash point inbox.before-remove" in child.stderr
        assert len(pending(path)) == 2 - (n - 1)  # the one applied is still there
    applied = [rec.fields["name"] for rec in read_journal(journal_dir)
               if rec.type == "handover_applied"]
    assert applied == names
    child = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert pending(path) == []
    assert types(journal_dir).count("forgot") == 1
    assert not (journal_dir / "inbox" / REJECTED).exists()
