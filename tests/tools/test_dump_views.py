"""memable-dump --instances and --stats: the journal replayed through the engine's index.

One journal is written record by record with fixed times, so the table can
be checked to the character; another is written by a real engine with an
instance in every state, so the tool's answer can be compared with what
the engine itself said, before and after compaction.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from memable_log_tools import dump
from support.dump import run
from support.suspend import until_state

from memable_log import Context, Engine, JournalCorrupt
from memable_log._compaction.compactor import compact_offline
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._core.format import (
    FORMAT_VERSION,
    SegmentHeader,
    compacted_name,
    pack_header,
    segment_name,
)
from memable_log._core.framing import encode_frame
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log.reader import JournalReader, RecordView, read_journal

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z
HOUR = 3_600_000
codec = Codec()


def every_state() -> list[list[Any]]:
    """An instance in each state, with steps, a status text, deadlines and an error."""
    return [
        r.make(r.CREATED, T0, "run-1", "etl", codec.encode(None)),
        r.make(r.STEP_DONE, T0 + 1, "run-1", "extract:v1", codec.encode([1, 2])),
        r.make(r.STEP_STARTED, T0 + 2, "run-1", "charge"),  # not memoised: not counted
        r.make(r.CREATED, T0 + 3, "suspended-instance-2", "approval", codec.encode({"n": 2})),
        r.make(r.STEP_DONE, T0 + 4, "suspended-instance-2", "draft", codec.encode("d")),
        r.make(r.SUSPENDED, T0 + 5, "suspended-instance-2", "approve", "waiting for Bob",
               T0 + HOUR),
        r.make(r.PARKED, T0 + 5, "suspended-instance-2", ["approve"]),
        r.make(r.CREATED, T0 + 6, "sleep-3", "etl", codec.encode(None)),
        r.make(r.TIMER_SET, T0 + 7, "sleep-3", "nap", T0 + 2 * HOUR),
        r.make(r.PARKED, T0 + 7, "sleep-3", ["nap"]),
        r.make(r.CREATED, T0 + 8, "done-4", "etl", codec.encode(None)),
        r.make(r.STEP_DONE, T0 + 9, "done-4", "extract:v1", codec.encode(1)),
        r.make(r.STEP_DONE, T0 + 10, "done-4", "load:v1", codec.encode(2)),
        r.make(r.COMPLETED, T0 + 11, "done-4", codec.encode("ok")),
        r.make(r.CREATED, T0 + 12, "fail-5", "etl", codec.encode(None)),
        r.make(r.STEP_FAILED, T0 + 13, "fail-5", "load:v1", "ValueError", "bad row 7", "tb"),
        r.make(r.FAILED, T0 + 14, "fail-5", "StepFailed", "step load:v1 failed: ValueError: "
               "bad row 7", "Traceback (most recent call last): ..."),
        r.make(r.CREATED, T0 + 15, "cancel-6", "approval", codec.encode(None)),
        r.make(r.SUSPENDED, T0 + 16, "cancel-6", "approve", None, None),
        r.make(r.CANCELLED, T0 + 17, "cancel-6"),
    ]


async def write(path: Path, recs: list[list[Any]], segment_size: int = 1 << 20) -> None:
    async with Journal(FileStorage(path), segment_size=segment_size) as journal:
        for rec in recs:
            await journal.append(rec)


@pytest.fixture
def journal(journal_dir: Path) -> Path:
    trio.run(write, journal_dir, every_state())
    return journal_dir


def compact(path: Path) -> None:
    compact_offline(FileStorage(path), now_ms=T0, retention_ms=None)


# -- --instances -----------------------------------------------------------------

TABLE = """\
INSTANCE              WORKFLOW  STATE      STATUS                                    KEY      DEADLINE                  STEPS  UPDATED
run-1                 etl       running    -                                         -        -                             1  2024-05-01T12:00:00.002Z
suspended-instance-2  approval  suspended  waiting for Bob                           approve  2024-05-01T13:00:00.000Z      1  2024-05-01T12:00:00.005Z
sleep-3               etl       sleeping   -                                         nap      2024-05-01T14:00:00.000Z      0  2024-05-01T12:00:00.007Z
done-4                etl       completed  -                                         -        -                             2  2024-05-01T12:00:00.011Z
fail-5                etl       failed     StepFailed: step load:v1 failed: ValueE…  -        -                             1  2024-05-01T12:00:00.014Z
cancel-6              approval  cancelled  -                                         -        -                             0  2024-05-01T12:00:00.017Z
"""  # noqa: E501 - the table is wider than a line of code


def test_instances_table_has_every_state_aligned(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = run(capsys, str(journal), "--instances")
    assert (code, err) == (0, "")
    assert "\n".join(lines) + "\n" == TABLE


def test_instances_table_is_the_same_after_compaction(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compact(journal)
    reader = read_journal(journal)
    reader.instances()
    assert reader.files == [compacted_name(1), segment_name(2)]
    assert reader.records == reader.compacted > 0  # all history, rewritten
    code, lines, _ = run(capsys, str(journal), "--instances")
    assert code == 0
    assert "\n".join(lines) + "\n" == TABLE


def test_instances_json_has_one_object_per_instance(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run(capsys, str(journal), "--instances", "--json")
    assert code == 0
    objs = [json.loads(line) for line in lines]
    assert [o["instance_id"] for o in objs] == [
        "run-1", "suspended-instance-2", "sleep-3", "done-4", "fail-5", "cancel-6",
    ]
    assert objs[1] == {
        "instance_id": "suspended-instance-2", "workflow": "approval", "state": "suspended",
        "status": "waiting for Bob", "key": "approve", "deadline": "2024-05-01T13:00:00.000Z",
        "waits": [{"kind": "signal", "key": "approve", "deadline": "2024-05-01T13:00:00.000Z"}],
        "steps": 1, "error": None, "created_at": "2024-05-01T12:00:00.003Z",
        "updated_at": "2024-05-01T12:00:00.005Z", "parent": None,
    }
    assert objs[4]["error"] == {
        "type": "StepFailed", "message": "step load:v1 failed: ValueError: bad row 7",
    }
    assert objs[4]["state"] == "failed"
    assert objs[2]["key"] == "nap"
    assert objs[2]["deadline"] == "2024-05-01T14:00:00.000Z"
    assert all(line.isascii() for line in lines)


def test_instances_filter_by_state_and_id(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def ids(*flags: str) -> list[str]:
        code, lines, err = run(capsys, str(journal), "--instances", "--json", *flags)
        assert code == 0, err
        return [json.loads(line)["instance_id"] for line in lines]

    assert ids("--state", "suspended,sleeping") == ["suspended-instance-2", "sleep-3"]
    assert ids("--state", "failed", "--state", "running") == ["run-1", "fail-5"]
    assert ids("--instance", "done-4", "--instance", "cancel-6") == ["done-4", "cancel-6"]
    assert ids("--instance", "done-4", "--state", "failed") == []
    _, lines, _ = run(capsys, str(journal), "--instances", "--state", "completed")
    assert lines[0].split() == [
        "INSTANCE", "WORKFLOW", "STATE", "STATUS", "KEY", "DEADLINE", "STEPS", "UPDATED",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["done-4"]


def test_finding_a_failed_instance_then_its_traceback(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path in docs/operations.md: table, then the failure records."""
    _, lines, _ = run(capsys, str(journal), "--instances", "--json", "--state", "failed")
    failed = json.loads(lines[0])["instance_id"]
    _, lines, _ = run(
        capsys, str(journal), "--json", "--instance", failed, "--type", "failed,step_failed"
    )
    objs = [json.loads(line) for line in lines]
    assert [o["type"] for o in objs] == ["step_failed", "failed"]
    assert objs[1]["fields"]["traceback"] == "Traceback (most recent call last): ..."


def test_instances_escape_what_they_show(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nasty = "evil\x1b]0;pwned\x07"
    trio.run(write, journal_dir, [
        r.make(r.CREATED, T0, nasty, "wf\x1b[2J", codec.encode(None)),
        r.make(r.SUSPENDED, T0, nasty, "k\r\n", "status\x9b31m", None),
        r.make(r.PARKED, T0, nasty, ["k\r\n"]),
    ])
    code, lines, _ = run(capsys, str(journal_dir), "--instances")
    assert code == 0
    text = "\n".join(lines)
    for bad in "\x1b\x07\x9b\r":
        assert bad not in text
    assert lines[1].startswith("evil\\x1b]0;pwned\\x07  wf\\x1b[2J  suspended  status\\x9b31m")


def test_an_empty_journal_has_a_header_and_no_instances(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(write, journal_dir, [])
    code, lines, _ = run(capsys, str(journal_dir), "--instances")
    assert code == 0
    assert len(lines) == 1
    assert lines[0].startswith("INSTANCE")
    code, lines, _ = run(capsys, str(journal_dir), "--instances", "--json")
    assert (code, lines) == (0, [])


# -- a real engine's journal -------------------------------------------------------


async def engine_journal(path: Path) -> list[dict[str, Any]]:
    """A journal with an instance in every state; what the engine said about each."""
    blocked = trio.Event()

    async def ok(ctx: Context) -> str:
        await ctx.step("a").run(lambda: "x" * 100)  # enough to roll a few 4 KiB segments
        return "done"

    async def bad(ctx: Context) -> None:
        await ctx.step("a").run(lambda: 1)
        raise ValueError("bad row 7")

    async def waiter(ctx: Context) -> Any:
        await ctx.step("a").run(lambda: 1)
        return await ctx.suspend("approve", status="waiting for Bob", timeout=3600)

    async def sleeper(ctx: Context) -> None:
        await ctx.timer("nap", 3600)

    async def stuck(ctx: Context) -> None:
        async def forever() -> None:
            blocked.set()
            await trio.sleep_forever()

        await ctx.step("block").run(forever)

    engine = Engine.builder().open(path).segment_size(4096).compaction(False).build()
    for name, fn in [("ok", ok), ("bad", bad), ("waiter", waiter), ("sleeper", sleeper),
                     ("stuck", stuck)]:
        engine.register(name, fn)  # type: ignore[arg-type]
    async with engine:
        for i in range(30):
            await engine.wait(await engine.invoke("ok", i, instance_id=f"ok-{i}"))
        with pytest.raises(Exception, match="bad row 7"):
            await engine.wait(await engine.invoke("bad", instance_id="bad-1"))
        for iid, name in [("w-1", "waiter"), ("w-2", "waiter"), ("s-1", "sleeper")]:
            await engine.invoke(name, instance_id=iid)
        await engine.invoke("stuck", instance_id="stuck-1")
        await blocked.wait()
        for iid, state in [("w-1", "suspended"), ("w-2", "suspended"), ("s-1", "sleeping")]:
            await until_state(engine, iid, state)
        await engine.cancel("w-2")
        said = [dump.instance_json(status) for status in engine.instances()]
    return said


async def test_instances_match_what_the_engine_says_before_and_after_compaction(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = await engine_journal(journal_dir)
    assert {o["state"] for o in said} == {
        "running", "suspended", "sleeping", "completed", "failed", "cancelled",
    }
    code, lines, _ = run(capsys, str(journal_dir), "--instances", "--json")
    assert code == 0
    assert [json.loads(line) for line in lines] == said
    before_stats = stats(capsys, journal_dir)
    assert before_stats["segments"]["plain"] > 1
    assert before_stats["segments"]["compacted"] == 0
    compact(journal_dir)
    code, lines, _ = run(capsys, str(journal_dir), "--instances", "--json")
    assert [json.loads(line) for line in lines] == said
    after_stats = stats(capsys, journal_dir)
    assert after_stats["instances"] == before_stats["instances"]
    assert after_stats["instances"]["by_state"] == {
        "running": 1, "suspended": 1, "sleeping": 1, "completed": 30, "failed": 1,
        "cancelled": 1, "waiting": 0, "queued": 0,
    }
    assert after_stats["segments"]["compacted"] == 1
    assert after_stats["records"]["plain"] == 0
    assert after_stats["next_seq"] == before_stats["next_seq"]
    assert after_stats["bytes"]["segments"] < before_stats["bytes"]["segments"]


# -- --stats ---------------------------------------------------------------------


def stats(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    code, lines, err = run(capsys, str(path), "--stats", "--json")
    assert code == 0, err
    assert len(lines) == 1
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_stats_of_a_plain_journal(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    got = stats(capsys, journal)
    seg = journal / segment_name(1)
    others = sum(
        (journal / name).stat().st_size for name in os.listdir(journal) if name != seg.name
    )
    assert got == {
        "path": str(journal),
        "segments": {"plain": 1, "compacted": 0, "files": [seg.name]},
        "records": {"total": 20, "compacted": 0, "plain": 20},
        "next_seq": 21,
        "bytes": {
            "segments": seg.stat().st_size, "leftovers": 0, "other": others,
            "total": seg.stat().st_size + others,
        },
        "leftovers": [],
        "instances": {"total": 6, "by_state": {
            "running": 1, "suspended": 1, "sleeping": 1, "completed": 1, "failed": 1,
            "cancelled": 1, "waiting": 0, "queued": 0,
        }},
        "torn_tail": None,
        "zero_tail": None,
    }
    code, lines, _ = run(capsys, str(journal), "--stats")
    assert code == 0
    text = dict(line.split(None, 1) for line in lines if not line.startswith(" "))
    assert text["segments"] == f"1: 0 compacted, 1 plain ({seg.name})"
    assert text["records"] == "20: 0 compacted, 20 plain; next seq 21"
    assert text["instances"] == "6"
    assert text["torn"] == "tail    none"
    assert [line.split() for line in lines if line.startswith(" ")] == [
        [state, "1"] for state in
        ("running", "suspended", "sleeping", "completed", "failed", "cancelled")
    ] + [["waiting", "0"], ["queued", "0"]]


def test_stats_of_a_compacted_journal_with_leftovers_and_a_torn_tail(
    journal: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = tmp_path / "old-seg-1"
    shutil.copy(journal / segment_name(1), old)
    compact(journal)
    rewritten = len(list(read_journal(journal)))
    trio.run(write, journal, [r.make(r.STEP_DONE, T0 + 20, "run-1", "transform:v1",
                                     codec.encode(3))])
    # A leftover a crash kept from deletion, and a torn write at the end.
    shutil.copy(old, journal / segment_name(1))
    last = journal / segment_name(2)
    size = last.stat().st_size
    with last.open("ab") as f:
        f.write(b"\x50\x00\x00\x80half")
    got = stats(capsys, journal)
    assert got["segments"] == {
        "plain": 1, "compacted": 1, "files": [compacted_name(1), segment_name(2)],
    }
    assert got["records"] == {"total": rewritten + 1, "compacted": rewritten, "plain": 1}
    assert got["next_seq"] == 22
    assert got["leftovers"] == [segment_name(1)]
    assert got["bytes"]["leftovers"] == old.stat().st_size
    assert got["bytes"]["segments"] == (
        (journal / compacted_name(1)).stat().st_size + size + 8
    )
    assert got["torn_tail"] == {"file": segment_name(2), "segment": 2, "offset": size, "size": 8}
    assert got["instances"]["by_state"]["running"] == 1
    code, lines, err = run(capsys, str(journal), "--stats")
    assert code == 0
    assert f"note: {last}: 8 bytes at byte {size} are an incomplete write" in err
    assert any(
        line.startswith("segments") and line.endswith(
            f"2: 1 compacted, 1 plain ({compacted_name(1)}, {segment_name(2)})"
        ) for line in lines
    )
    assert any(line.startswith("leftovers") and segment_name(1) in line for line in lines)
    assert any(line.startswith("torn tail") and f"8 bytes at byte {size:,}" in line
               for line in lines)


def test_compacted_records_show_their_state_image(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compact(journal)
    code, lines, _ = run(capsys, str(journal), "--type", "state_image")
    assert code == 0
    by_instance = {line.split()[3]: line for line in lines}
    # Every instance with a registered wait (a cancelled one's too: its deadline stays).
    assert set(by_instance) == {"suspended-instance-2", "sleep-3", "cancel-6"}
    assert by_instance["suspended-instance-2"].split(None, 5)[5] == (
        'state=suspended pending=approve waits={"approve":"signal until '
        '2024-05-01T13:00:00.000Z"}'
    )
    assert by_instance["sleep-3"].endswith(
        'state=sleeping pending=nap waits={"nap":"timer until 2024-05-01T14:00:00.000Z"}'
    )
    assert all(line.split()[0] == "0" for line in lines)  # rewritten history: seq 0
    code, lines, _ = run(capsys, str(journal), "--type", "state_image", "--json",
                         "--instance", "sleep-3")
    obj = json.loads(lines[0])
    assert obj["seq"] == 0
    assert obj["segment"] == 1
    assert obj["fields"] == {
        "state": 2, "pending": ["nap"], "waits": {"nap": [1, T0 + 2 * HOUR, None]},
        "done_waits": {},
    }


# -- errors and usage ----------------------------------------------------------------


def test_damage_stops_the_views_with_the_place(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    views = list(read_journal(journal))
    seg = journal / segment_name(1)
    data = bytearray(seg.read_bytes())
    data[views[3].offset + 12] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as info:
        read_journal(journal).instances()
    for flag in ("--instances", "--stats"):
        code, lines, err = run(capsys, str(journal), flag)
        assert (code, lines) == (1, [])
        assert f"{seg}: corrupt at byte {info.value.offset}" in err
        assert "nothing is shown: the answer needs the whole journal" in err


def test_a_record_the_index_cannot_apply_is_corruption(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Well-formed, but for an instance never created: no writer makes it.
    ghost = [r.STEP_DONE_V2, 1, T0, "ghost", "k", codec.encode(1)]
    journal_dir.mkdir()
    (journal_dir / segment_name(1)).write_bytes(
        pack_header(SegmentHeader(FORMAT_VERSION, 0, 7, 1, 1))
        + encode_frame(msgpack.packb(ghost), 7, batch_start=True, batch_end=True)
    )
    code, lines, err = run(capsys, str(journal_dir), "--instances")
    assert (code, lines) == (1, [])
    assert "corrupt at byte 40: record for unknown instance 'ghost'" in err
    code, lines, err = run(capsys, str(journal_dir))
    assert (code, lines) == (1, [])  # plain reading refuses it too (issue 13 k)
    assert "record for unknown instance 'ghost'" in err


def test_a_segment_compaction_deletes_mid_read_asks_to_run_again(
    journal_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trio.run(write, journal_dir, [
        r.make(r.CREATED, T0 + i, f"i-{i}", "wf", codec.encode("v" * 200)) for i in range(60)
    ], 4096)
    third = journal_dir / segment_name(3)

    class Racing(JournalReader):
        """A reader that a compaction overtakes after its first record."""

        def __next__(self) -> RecordView:
            view = super().__next__()
            if view.seq == 1:
                third.unlink()
            return view

    monkeypatch.setattr(
        dump, "read_journal", lambda path: Racing(FileStorage(path, create=False))
    )
    code, lines, err = run(capsys, str(journal_dir), "--json")
    assert code == 1
    assert lines  # the records before it
    assert err == (
        f"memable-dump: {third}: vanished while being read: a compaction replaced it; "
        "run the command again (the journal is fine)\n"
    )


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--follow", "--instances"], "--follow and --instances cannot be used together"),
        (["--stats", "--instances"], "--instances and --stats cannot be used together"),
        (["--state", "failed"], "--state goes with --instances"),
        (["--stats", "--state", "failed"], "--state goes with --instances"),
        (["--instances", "--key", "k"], "--key and --type filter records"),
        (["--stats", "--type", "created"], "--key and --type filter records"),
        (["--stats", "--instance", "x"], "--instance does not go with --stats"),
        (["--instances", "--state", "asleep"], "unknown state 'asleep'"),
        (["--follow", "--interval", "0"], "is not a number of seconds"),
    ],
)
def test_options_that_do_not_go_together_are_bad_usage(
    journal: Path, capsys: pytest.CaptureFixture[str], flags: list[str], why: str
) -> None:
    with pytest.raises(SystemExit) as info:
        dump.main([str(journal), *flags])
    assert info.value.code == 2
    assert why in capsys.readouterr().err


def test_help_documents_the_views(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        dump.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--follow", "--instances", "--state", "--stats", "--interval", "130",
                 "compacted"):
        assert text in out


# -- docs/operations.md ---------------------------------------------------------------

OPERATIONS = Path(__file__).resolve().parent.parent.parent / "docs" / "operations.md"
BUSY_CHILD = r'''
"""An engine that keeps appending until its stdin closes (tiny segments, compaction on)."""
import sys

import trio

from memable_log import Context, Engine


async def main(path: str) -> None:
    async def work(ctx: Context) -> str:
        return await ctx.step("s").run(lambda: "x" * 300)

    engine = Engine.builder().open(path).segment_size(4096).build()
    engine.register("work", work)
    async with engine, trio.open_nursery() as nursery:
        compaction = engine._backend.compaction

        async def busy() -> None:
            i = 0
            while True:
                await engine.wait(await engine.invoke("work", i, instance_id=f"i-{i}"))
                i += 1
                # Compaction runs in a child process: say so once one is done.
                if i >= 40 and compaction.runs and not said:
                    said.append(i)
                    print("busy", flush=True)

        said = []

        nursery.start_soon(busy)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


trio.run(main, sys.argv[1])
'''


async def test_the_documented_live_backup_restores_while_the_engine_writes(
    journal_dir: Path, tmp_path: Path
) -> None:
    text = OPERATIONS.read_text()
    block = text.split("<!-- backup-live -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    backup = tmp_path / "backup.memable"
    script = block.replace("orders.memable", str(journal_dir)).replace(
        "/backups/orders-$(date +%F).memable", str(backup)
    ) + '\n[ -d "$dst" ]'  # the script's status: a copy was kept
    child = tmp_path / "busy.py"
    child.write_text(BUSY_CHILD)
    writer = await trio.lowlevel.open_process(
        [sys.executable, str(child), str(journal_dir)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdin is not None
        said = b""
        with trio.fail_after(30):
            while not said.endswith(b"\n"):
                said += await writer.stdout.receive_some(100)
        assert said == b"busy\n"  # 40 instances in: segments rolled and compacted
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        done = await trio.run_process(
            ["bash", "-c", script], env=env, capture_stdout=True, capture_stderr=True, check=False,
        )
        await writer.stdin.aclose()  # the engine stops only now: the copy raced it
        with trio.fail_after(30):
            assert await writer.wait() == 0
    finally:
        if writer.returncode is None:
            writer.kill()
            await writer.wait()
    assert done.returncode == 0, done.stderr  # the copy reads back whole
    assert b"1 compacted" in done.stdout  # the walk was copied: cmp- first
    copied = {status.instance_id: status.state for status in read_journal(backup).instances()}
    final = {status.instance_id: status for status in read_journal(journal_dir).instances()}
    assert len(copied) >= 40
    assert set(copied) <= set(final)
    assert set(copied.values()) <= {"completed", "running"}  # at most the one in flight
    # Restore: an engine opens the copy and finishes what was in flight.

    async def work(ctx: Context) -> str:
        return await ctx.step("s").run(lambda: "x" * 300)

    engine = Engine.builder().open(backup).compaction(False).build()
    engine.register("work", work)
    async with engine:
        for iid, state in copied.items():
            if state == "running":
                with trio.fail_after(30):
                    assert await engine.wait(iid) == "x" * 300
        assert {st.state for st in engine.instances()} == {"completed"}
