"""memable-dump: output, filters, exit statuses, no lock, pipes.

Journals are written by the real Journal on real directories. The command
runs in-process through ``main(argv)`` for most checks, and as a real
process where the process boundary is the point: the installed script, a
reader beside a writer that holds the lock, and ``| head``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from memable_log_tools import dump
from support.dump import run

from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._core.format import HEADER_SIZE, pack_header, segment_name, unpack_header
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log.reader import read_journal

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "format.md"
SCRIPT = Path(sys.executable).with_name("memable-dump")
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z
codec = Codec()


def story() -> list[list[Any]]:
    """Two instances that touch most record types."""
    a, b = "alpha", "beta-instance-long"
    return [
        r.make(r.CREATED, T0, a, "pipeline", codec.encode({"user": "ann"})),
        r.make(r.STEP_DONE, T0 + 1, a, "fetch:v1", codec.encode(list(range(100)))),
        r.make(r.STEP_DONE, T0 + 2, a, "fetch:v2", codec.encode(b"\x00\xff")),
        r.make(r.CREATED, T0 + 3, b, "pipeline", codec.encode(None)),
        r.make(r.STEP_STARTED, T0 + 4, b, "charge"),
        r.make(r.STEP_FAILED, T0 + 5, b, "load:v1", "ValueError", "bad row 7", "Traceback..."),
        r.make(r.SUSPENDED, T0 + 6, a, "approve", "waiting for Bob", T0 + 3_600_000),
        r.make(r.SIGNALLED, T0 + 7, a, "approve", codec.encode({"ok": True})),
        r.make(r.TIMER_SET, T0 + 8, b, "nap", T0 + 60_000),
        r.make(r.TIMER_FIRED, T0 + 9, b, "nap"),
        r.make(r.FORGOT, T0 + 10, b, "load:*"),
        r.make(r.COMPLETED, T0 + 11, a, codec.encode("x" * 5000)),
        r.make(r.FAILED, T0 + 12, b, "RuntimeError", "gave up", "Traceback..."),
        r.make(r.RESTARTED, T0 + 13, b),
        r.make(r.CANCELLED, T0 + 14, b),
    ]


async def write(
    path: Path, recs: list[list[Any]], *, batch: int = 1, segment_size: int = 1 << 20
) -> None:
    async with Journal(FileStorage(path), segment_size=segment_size) as journal:
        for i in range(0, len(recs), batch):
            await journal.append_many(recs[i : i + batch])


def numbered(n: int, size: int = 100) -> list[Any]:
    return r.make(r.CREATED, T0 + n, f"inst-{n}", "wf", codec.encode("v" * size))


@pytest.fixture
def journal(journal_dir: Path) -> Path:
    """A journal directory holding ``story()``; a sync fixture, for sync tests too."""
    trio.run(write, journal_dir, story())
    return journal_dir


# -- text output -----------------------------------------------------------------


def test_text_has_one_aligned_line_per_record(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = run(capsys, str(journal))
    assert code == 0
    assert err == ""
    recs = story()
    assert len(lines) == len(recs)
    starts = set()
    for seq, (line, rec) in enumerate(zip(lines, recs, strict=True), start=1):
        columns = line.split()[:5]
        has_key = r.SCHEMA[rec[0]][1][:1] == (("key", (str,)),)
        assert columns == [
            str(seq), f"2024-05-01T12:00:00.{seq - 1:03d}Z", r.TYPE_NAMES[rec[0]], rec[3],
            rec[4] if has_key else "-",
        ]
        starts.add(tuple(column_starts(line, columns)))
    assert len(starts) == 1, starts  # every column starts at the same place on every line


def column_starts(line: str, tokens: list[str]) -> list[int]:
    """Where each token starts (the end of each, for the right-aligned seq)."""
    places, pos = [], 0
    for i, token in enumerate(tokens):
        pos = line.index(token, pos)
        places.append(pos + len(token) if i == 0 else pos)
        pos += len(token)
    return places


def test_text_shows_the_rest_decoded_and_short(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines, _ = run(capsys, str(journal))
    by_seq = {int(line.split()[0]): line for line in lines}
    assert by_seq[1].endswith('workflow=pipeline input={"user":"ann"}')
    assert "value=[0,1,2,3," in by_seq[2]
    assert by_seq[2].endswith("…")
    assert by_seq[3].endswith('value={"$bytes":"00ff"}')
    assert by_seq[6].endswith("error=ValueError: \"bad row 7\"")
    assert "Traceback" not in by_seq[6]
    assert by_seq[7].endswith('status="waiting for Bob" deadline=2024-05-01T13:00:00.000Z')
    assert by_seq[9].endswith("deadline=2024-05-01T12:01:00.000Z")
    assert by_seq[12].split()[-1].startswith('result="xxxx')  # 5000 x's, zstd-compressed
    assert max(len(line) for line in lines) < 200


async def test_text_escapes_terminal_control_characters(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nasty = "evil\x1b]0;pwned\x07\u202e"
    await write(journal_dir, [
        r.make(r.CREATED, T0, nasty, "wf\x1b[2J", codec.encode("\x9b31m")),
        r.make(r.STEP_DONE, T0, nasty, "k\r\n", codec.encode(None)),
    ])
    code, lines, _ = run(capsys, str(journal_dir))
    assert code == 0
    text = "\n".join(lines)
    for bad in "\x1b\x07\u202e\x9b\r":
        assert bad not in text
    assert "evil\\x1b]0;pwned\\x07\\u202e" in lines[0]
    assert len(lines) == 2


# -- JSON output -----------------------------------------------------------------


def test_json_lines_carry_every_field(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, str(journal), "--json")
    assert code == 0
    objs = [json.loads(line) for line in lines]
    views = list(read_journal(journal))
    assert len(objs) == len(views) == len(story())
    for obj, view in zip(objs, views, strict=True):
        assert obj["seq"] == view.seq
        assert obj["ts_ms"] == view.ts_ms
        assert obj["type"] == view.type
        assert obj["instance"] == view.instance
        assert (obj["segment"], obj["offset"]) == (view.segment, view.offset)
        assert list(obj["fields"]) == list(view.fields)
        assert re.fullmatch(r"2024-05-01T12:\d\d:\d\d\.\d{3}Z", obj["time"])
    assert objs[0]["fields"] == {"workflow": "pipeline", "input": {"user": "ann"}}
    assert objs[1]["fields"]["value"] == list(range(100))
    assert objs[2]["fields"]["value"] == {"$bytes": "00ff"}
    assert objs[5]["fields"] == {
        "key": "load:v1", "error_type": "ValueError", "message": "bad row 7",
        "traceback": "Traceback...", "started_ms": T0 + 5, "attempts": 1,
        "errors": [["ValueError", "bad row 7"]],
    }
    assert objs[6]["fields"]["deadline_ms"] == T0 + 3_600_000
    assert objs[11]["fields"]["result"] == "x" * 5000
    assert all(line.isascii() for line in lines)


# -- filters -----------------------------------------------------------------------


def seqs(capsys: pytest.CaptureFixture[str], journal: Path, *flags: str) -> list[int]:
    code, lines, err = run(capsys, str(journal), "--json", *flags)
    assert code == 0, err
    return [json.loads(line)["seq"] for line in lines]


def test_filter_by_instance(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs(capsys, journal, "--instance", "alpha") == [1, 2, 3, 7, 8, 12]
    assert seqs(capsys, journal, "--instance", "alpha", "--instance", "beta-instance-long") == (
        list(range(1, 16))
    )
    assert seqs(capsys, journal, "--instance", "alph") == []


def test_filter_by_key_exact_and_prefix(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs(capsys, journal, "--key", "fetch:v1") == [2]
    assert seqs(capsys, journal, "--key", "fetch:*") == [2, 3]
    assert seqs(capsys, journal, "--key", "fetch:") == []
    # The forgot record's key is the pattern itself: an exact match finds it.
    assert seqs(capsys, journal, "--key", "load:*") == [6, 11]
    assert seqs(capsys, journal, "--key", "*") == [2, 3, 5, 6, 7, 8, 9, 10, 11]


def test_filter_by_type_repeated_or_comma_separated(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert seqs(capsys, journal, "--type", "created") == [1, 4]
    assert seqs(capsys, journal, "--type", "created,step_done") == [1, 2, 3, 4]
    assert seqs(capsys, journal, "--type", "created", "--type", "cancelled") == [1, 4, 15]


def test_filters_combine(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert seqs(
        capsys, journal, "--instance", "alpha", "--type", "step_done", "--key", "*:v2"
    ) == []
    assert seqs(capsys, journal, "--instance", "alpha", "--type", "step_done,signalled") == [
        2, 3, 8,
    ]


def test_unknown_type_is_a_usage_error_listing_valid_types(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        dump.main([str(journal), "--type", "created,step_dun"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown record type 'step_dun'" in err
    for name in r.TYPE_NAMES.values():
        assert name in err
    assert "seal" not in err


def test_help_documents_filters_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        dump.main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--json", "--instance", "--key", "--type", "Exit status", "$bytes"):
        assert text in out


# -- paths and damage --------------------------------------------------------------


def test_missing_path_or_not_a_journal_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for path, why in [
        (tmp_path / "nope", "no such file"),
        (tmp_path / "file", "not a directory"),
        (tmp_path / "dir", "the directory holds no segment files"),
    ]:
        code, lines, err = run(capsys, str(path))
        assert code == 1
        assert lines == []
        assert err.startswith(f"memable-dump: {path}: not a memable_log journal ({why}")
    assert not (tmp_path / "nope").exists()


async def test_corruption_prints_the_records_before_it_then_the_place(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write(journal_dir, [numbered(i) for i in range(80)], segment_size=4096)
    views = list(read_journal(journal_dir))
    damaged = next(v for v in views if v.segment == 2)  # the first record of segment 2
    seg = journal_dir / segment_name(2)
    data = bytearray(seg.read_bytes())
    data[damaged.offset + 12] ^= 0x40
    seg.write_bytes(bytes(data))
    code, lines, err = run(capsys, str(journal_dir))
    assert code == 1
    assert [int(line.split()[0]) for line in lines] == list(range(1, damaged.seq))
    assert f"{seg}: corrupt at byte {damaged.offset}: checksum mismatch" in err
    assert err.startswith("memable-dump: ")
    assert "Traceback" not in err
    code, lines, err = run(capsys, str(journal_dir), "--json")
    assert code == 1
    assert len(lines) == damaged.seq - 1
    assert f"corrupt at byte {damaged.offset}" in err


async def test_newer_format_version_is_refused_with_exit_1(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write(journal_dir, [numbered(0)])
    seg = journal_dir / segment_name(1)
    data = seg.read_bytes()
    seg.write_bytes(pack_header(unpack_header(data)._replace(version=7)) + data[HEADER_SIZE:])
    code, lines, err = run(capsys, str(journal_dir))
    assert (code, lines) == (1, [])
    assert f"memable-dump: {seg}: segment written in format version 7" in err
    assert "upgrade memable_log" in err


async def test_torn_tail_is_noted_and_is_not_an_error(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await write(journal_dir, [numbered(i) for i in range(3)])
    seg = journal_dir / segment_name(1)
    size = seg.stat().st_size
    seg.write_bytes(seg.read_bytes() + b"\x50\x00\x00\x80half")
    code, lines, err = run(capsys, str(journal_dir))
    assert code == 0
    assert len(lines) == 3
    assert f"note: {seg}: 8 bytes at byte {size} are an incomplete write" in err
    assert seg.stat().st_size == size + 8  # left as it is


# -- pipes -----------------------------------------------------------------------------


class ClosedPipe:
    """A stdout whose reader has gone."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_closed_pipe_ends_quietly(
    journal: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
) -> None:
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = dump.main([str(journal), *flags])
    assert code == 141
    assert capsys.readouterr().err == ""


async def test_head_closes_the_pipe_without_a_traceback(journal_dir: Path) -> None:
    # Far more output than a pipe buffers, so the dump is still writing when
    # head exits.
    await write(journal_dir, [numbered(i, size=60) for i in range(6000)], batch=1000)
    script = (
        f'"{sys.executable}" -m memable_log_tools.dump "$1" | head -n 1; '
        'echo "dump exit ${PIPESTATUS[0]}" >&2'
    )
    done = await trio.run_process(
        ["bash", "-c", script, "bash", str(journal_dir)],
        capture_stdout=True, capture_stderr=True,
    )
    assert done.stdout.decode().splitlines()[0].split()[:3] == [
        "1", "2024-05-01T12:00:00.000Z", "created",
    ]
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr.decode() == "dump exit 141\n"


# -- processes -----------------------------------------------------------------------


async def test_installed_script_prints_what_main_prints(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines, _ = run(capsys, str(journal), "--type", "created,completed")
    done = await trio.run_process(
        [str(SCRIPT), str(journal), "--type", "created,completed"], capture_stdout=True
    )
    assert done.stdout.decode().splitlines() == lines
    assert len(lines) == 3


async def test_dumps_while_a_journal_holds_the_lock(journal_dir: Path) -> None:
    async with Journal(FileStorage(journal_dir)) as journal:
        for rec in story()[:5]:
            await journal.append(rec)
        done = await trio.run_process(
            [sys.executable, "-m", "memable_log_tools.dump", str(journal_dir), "--json"],
            capture_stdout=True, capture_stderr=True,
        )
        assert done.stderr == b""
        assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3, 4, 5]
        # The writer was not disturbed: it appends on, and a second dump sees it.
        await journal.append(story()[5])
        done = await trio.run_process(
            [sys.executable, "-m", "memable_log_tools.dump", str(journal_dir)],
            capture_stdout=True,
        )
        assert len(done.stdout.splitlines()) == 6


async def test_dump_of_an_engine_journal(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from memable_log import Context, Engine

    async def greet(ctx: Context) -> str:
        name = await ctx.step("name:v1").run(lambda: "ann")
        return f"hello {name}"

    engine = Engine.builder().open(journal_dir).build()
    engine.register("greet", greet)
    async with engine:
        instance = await engine.invoke("greet", {"n": 1}, instance_id="i-1")
        assert await engine.wait(instance) == "hello ann"
    code, lines, _ = run(capsys, str(journal_dir), "--json", "--instance", "i-1")
    assert code == 0
    objs = [json.loads(line) for line in lines]
    assert [(o["type"], o["fields"].get("key")) for o in objs] == [
        ("created", None), ("step_done", "name:v1"), ("completed", None),
    ]
    assert objs[0]["fields"] == {"workflow": "greet", "input": {"n": 1}}
    assert objs[1]["fields"]["value"] == "ann"
    assert objs[2]["fields"]["result"] == "hello ann"


async def test_the_tool_does_not_import_trio() -> None:
    """A reader of the journal starts fast: it never loads the engine's runtime."""
    code = "import sys, memable_log_tools.dump; print('trio' in sys.modules)"
    done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    assert done.stdout.decode().strip() == "False"


# -- docs/format.md ---------------------------------------------------------------


def doc_block(marker: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL)
    assert match is not None, f"no block marked {marker} in {DOC}"
    return match.group(1)


def test_doc_example_output_is_what_the_tool_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytes.fromhex("".join(
        line.split(maxsplit=1)[1] for line in doc_block("example-hex").splitlines()
    ))
    (tmp_path / segment_name(1)).write_bytes(data)
    code, lines, _ = run(capsys, str(tmp_path))
    assert code == 0
    assert lines == doc_block("example-dump").splitlines()
    code, lines, _ = run(capsys, str(tmp_path), "--json")
    assert json.loads(lines[1]) == json.loads(doc_block("example-json"))
