"""memable-signal: from another process, with and without a running engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from memable_log import Context, Engine
from memable_log._core.codec import Codec
from memable_log._storage.files import FileStorage
from memable_log._storage.inbox import encode_handover, pending, write_handover
from memable_log.reader import read_journal


async def approval(ctx: Context) -> list[object]:
    count = await ctx.step("fetch-data:v1").run(lambda: 3)
    approved = await ctx.suspend("approval:v1", status="Waiting for manager approval")
    return [count, approved]


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).build()
    engine.register("approval", approval)
    return engine


def signal_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "memable_log_tools.send_signal", str(path), *args]


async def run_cli(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        signal_cmd(path, *args), capture_stdout=True, capture_stderr=True, check=False
    )


async def suspended_instances(path: Path, *ids: str) -> None:
    engine = make_engine(path)
    async with engine:
        for instance_id in ids:
            await engine.invoke("approval", instance_id=instance_id)
        while any(engine.status(i).state != "suspended" for i in ids):
            await trio.testing.wait_all_tasks_blocked()


def signal_records(path: Path) -> list[tuple[str, str]]:
    return [(r.instance, r.fields["key"]) for r in read_journal(path) if r.type == "signalled"]


async def test_signal_without_engine_appends_it_itself(journal_dir: Path) -> None:
    await suspended_instances(journal_dir, "a1")
    done = await run_cli(journal_dir, "approval", "a1", "approval:v1", "true")
    assert done.returncode == 0, done.stderr
    assert b"appended" in done.stdout
    assert signal_records(journal_dir) == [("a1", "approval:v1")]
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, True]


async def test_signal_with_running_engine_is_handed_over(journal_dir: Path) -> None:
    await suspended_instances(journal_dir, "a1")
    engine = make_engine(journal_dir)
    async with engine:
        done = await run_cli(journal_dir, "approval", "a1", "approval:v1", '{"by": "ann"}')
        assert done.returncode == 0, done.stderr
        assert b"handed over" in done.stdout
        assert await engine.wait("a1") == [3, {"by": "ann"}]
    assert pending(str(journal_dir)) == []
    assert signal_records(journal_dir) == [("a1", "approval:v1")]


async def test_second_signal_for_a_key_is_refused_with_and_without_engine(
    journal_dir: Path,
) -> None:
    await suspended_instances(journal_dir, "a1")
    assert (await run_cli(journal_dir, "approval", "a1", "approval:v1")).returncode == 0
    again = await run_cli(journal_dir, "approval", "a1", "approval:v1")
    assert again.returncode == 1
    assert b"already has a signal" in again.stderr
    engine = make_engine(journal_dir)
    async with engine:
        await engine.wait("a1")
        online = await run_cli(journal_dir, "approval", "a1", "approval:v1")
        assert online.returncode == 1
        assert b"already has a signal" in online.stderr
    assert signal_records(journal_dir) == [("a1", "approval:v1")]


async def test_refusals_and_usage_errors_exit_codes(journal_dir: Path, tmp_path: Path) -> None:
    await suspended_instances(journal_dir, "a1")
    unknown = await run_cli(journal_dir, "approval", "nope", "approval:v1")
    assert unknown.returncode == 1
    assert b"unknown instance 'nope'" in unknown.stderr
    mismatch = await run_cli(journal_dir, "other-workflow", "a1", "approval:v1")
    assert mismatch.returncode == 1
    assert b"instance of 'approval'" in mismatch.stderr
    bad_json = await run_cli(journal_dir, "approval", "a1", "approval:v1", "{nope")
    assert bad_json.returncode == 2
    assert b"not valid JSON" in bad_json.stderr
    no_journal = await run_cli(tmp_path / "missing", "approval", "a1", "approval:v1")
    assert no_journal.returncode == 1
    missing_args = await trio.run_process(
        [sys.executable, "-m", "memable_log_tools.send_signal", str(journal_dir)],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert missing_args.returncode == 2
    assert signal_records(journal_dir) == []


@pytest.mark.parametrize(
    ("key", "payload", "says"),
    [
        ("", "null", b"a key must be a non-empty str"),
        ("approval:*", "null", b"ends in '*'"),
        ("approval:v1", "[" * 3000 + "]" * 3000, b"nested too deeply"),
    ],
    ids=["empty-key", "prefix-key", "deep-json"],
)
async def test_bad_input_is_a_usage_error_with_a_message_and_no_traceback(
    journal_dir: Path, key: str, payload: str, says: bytes
) -> None:
    """Issue 13 e: these printed a traceback and exited 1."""
    await suspended_instances(journal_dir, "a1")
    done = await run_cli(journal_dir, "approval", "a1", key, payload)
    assert done.returncode == 2
    assert says in done.stderr
    assert b"Traceback" not in done.stderr
    assert signal_records(journal_dir) == []


async def test_handover_left_while_engine_was_down_is_applied_at_start(
    journal_dir: Path,
) -> None:
    await suspended_instances(journal_dir, "a1")
    blob = Codec().encode("late")
    write_handover(str(journal_dir), encode_handover("approval", "a1", "approval:v1", blob))
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, "late"]
    assert pending(str(journal_dir)) == []


async def test_handover_applied_before_a_crash_is_not_applied_twice(journal_dir: Path) -> None:
    # The engine appended the signal, then died before deleting the hand-over:
    # the next start finds the key signalled, drops the file, writes nothing.
    await suspended_instances(journal_dir, "a1")
    assert (await run_cli(journal_dir, "approval", "a1", "approval:v1", "1")).returncode == 0
    blob = Codec().encode(2)
    write_handover(str(journal_dir), encode_handover("approval", "a1", "approval:v1", blob))
    engine = make_engine(journal_dir)
    async with engine:
        assert pending(str(journal_dir)) == []  # applied (refused) during start
        assert await engine.wait("a1") == [3, 1]
    assert signal_records(journal_dir) == [("a1", "approval:v1")]


async def test_racing_handovers_for_one_key_apply_the_first(journal_dir: Path) -> None:
    await suspended_instances(journal_dir, "a1")
    for value in ("first", "second"):
        blob = Codec().encode(value)
        write_handover(str(journal_dir), encode_handover("approval", "a1", "approval:v1", blob))
    engine = make_engine(journal_dir)
    async with engine:
        assert pending(str(journal_dir)) == []
        assert await engine.wait("a1") == [3, "first"]
    assert signal_records(journal_dir) == [("a1", "approval:v1")]


async def test_cli_refuses_key_already_waiting_in_the_inbox(journal_dir: Path) -> None:
    await suspended_instances(journal_dir, "a1")
    blob = Codec().encode(1)
    write_handover(str(journal_dir), encode_handover("approval", "a1", "approval:v1", blob))
    # Hold the lock as an engine would, without applying the hand-over.
    storage = FileStorage(journal_dir)
    storage.lock()
    try:
        refused = await run_cli(journal_dir, "approval", "a1", "approval:v1")
    finally:
        storage.unlock()
    assert refused.returncode == 1
    assert b"already handed over" in refused.stderr


async def test_temp_files_of_dead_tools_are_deleted_at_start(journal_dir: Path) -> None:
    """memable-signal killed before its rename leaves ``*.sig.tmp``: never
    acknowledged, so garbage once its writer is gone (and it is not fresh)."""
    await suspended_instances(journal_dir, "a1")
    done = await trio.run_process(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_stdout=True
    )
    dead = int(done.stdout)  # exited and reaped: no such process now
    inbox = journal_dir / "inbox"
    inbox.mkdir(exist_ok=True)
    old = time.time() - 3600
    names = {
        "gone": f"{time.time_ns():020d}-{dead}-0a0b0c0d.sig.tmp",  # dead writer, old
        "fresh": f"{time.time_ns():020d}-{dead}-1a1b1c1d.sig.tmp",  # dead writer, just now
        "alive": f"{time.time_ns():020d}-{os.getpid()}-2a2b2c2d.sig.tmp",  # alive, old
    }
    for what, name in names.items():
        (inbox / name).write_bytes(b"half a hand-over")
        if what != "fresh":
            os.utime(inbox / name, (old, old))
    async with make_engine(journal_dir):
        pass
    assert sorted(os.listdir(inbox)) == sorted([names["fresh"], names["alive"]])


async def test_signals_that_can_never_be_consumed_exit_1_and_write_nothing(
    journal_dir: Path,
) -> None:
    await suspended_instances(journal_dir, "a1")
    step_key = await run_cli(journal_dir, "approval", "a1", "fetch-data:v1")
    assert step_key.returncode == 1
    assert b"refused: the key is a step's" in step_key.stderr
    assert b"Traceback" not in step_key.stderr
    assert (await run_cli(journal_dir, "approval", "a1", "approval:v1", "true")).returncode == 0
    engine = make_engine(journal_dir)
    async with engine:
        await engine.wait("a1")
    finished = await run_cli(journal_dir, "approval", "a1", "later")
    assert finished.returncode == 1
    assert b"refused: the instance is completed" in finished.stderr
    assert signal_records(journal_dir) == [("a1", "approval:v1")]
