"""memable-dump --follow started before the journal exists waits for it (issue 13 l).

An operator starts the follower first, then the application: the path
does not exist yet, or is an empty directory the application just made.
With --follow that is a wait, announced once on stderr; without it, a
missing path is refused (exit 1, named). In-process tests drive
the follower's waits (each wait performs the next change to the file
system); one test runs the real command and reads its output as it comes,
with timeouts, never sleeping.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from memable_log_tools import dump

from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log.reader import NotAJournal, follow_journal

T0 = 1_714_564_800_000
TIMEOUT = 20  # seconds for any one expected line: generous, never slept
codec = Codec()


def numbered(n: int) -> list[Any]:
    return r.make(r.CREATED, T0 + n, f"inst-{n}", "wf", codec.encode(n))


async def append(path: Path, first: int, count: int) -> None:
    async with Journal(FileStorage(path)) as journal:
        for n in range(first, first + count):
            await journal.append(numbered(n))


def write(path: Path, first: int, count: int) -> Callable[[], None]:
    return lambda: trio.run(append, path, first, count)


def follow(
    capsys: pytest.CaptureFixture[str], path: Path, actions: list[Callable[[], None]],
    *flags: str,
) -> tuple[int, list[str], str, int]:
    """``memable-dump PATH --follow``; each wait runs the next action, then Ctrl-C."""
    pending = list(actions)

    def sleep(seconds: float) -> None:
        if not pending:
            raise KeyboardInterrupt
        pending.pop(0)()

    code = dump.main([str(path), "--follow", *flags], sleep=sleep)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err, len(pending)


def seqs(lines: list[str]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


def test_follow_waits_for_a_journal_not_created_yet(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nothing = lambda: None  # noqa: E731 - a wait in which nothing happens
    code, lines, err, unused = follow(
        capsys, journal_dir,
        [nothing, journal_dir.mkdir, nothing, write(journal_dir, 1, 3), write(journal_dir, 4, 2)],
        "--json",
    )
    assert (code, unused) == (130, 0)
    assert seqs(lines) == [1, 2, 3, 4, 5]
    assert err.count("waiting") == 1  # said once, however long it waits
    assert f"{journal_dir}: no journal there yet; waiting for it" in err


def test_follow_waits_for_the_first_segment_of_an_empty_journal_dir(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal_dir.mkdir()
    (journal_dir / "notes.txt").write_text("the application keeps other files here too")
    code, lines, err, unused = follow(
        capsys, journal_dir, [write(journal_dir, 1, 2)], "--json",
    )
    assert (code, unused) == (130, 0)
    assert seqs(lines) == [1, 2]
    assert "waiting for it" in err


def test_follow_of_an_existing_journal_says_nothing_about_waiting(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, 1, 2)
    code, lines, err, _ = follow(capsys, journal_dir, [], "--json")
    assert (code, seqs(lines), err) == (130, [1, 2], "")


def test_follow_of_a_file_is_still_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "journal.memable"
    a_file.write_text("not a journal")
    code, lines, err, unused = follow(capsys, a_file, [lambda: None])
    assert (code, lines, unused) == (1, [], 1)  # at once: never waited
    assert "not a memable_log journal (not a directory)" in err


def test_a_file_appearing_where_the_journal_was_awaited_is_refused(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err, unused = follow(capsys, journal_dir, [lambda: journal_dir.write_text("x")])
    assert (code, lines, unused) == (1, [], 0)
    assert f"{journal_dir}: not a memable_log journal (not a directory)" in err


def test_without_follow_a_missing_path_is_refused(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dump.main([str(journal_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{journal_dir}: not a memable_log journal (no such file or directory)" in err


def test_the_api_waits_only_when_asked(journal_dir: Path) -> None:
    with pytest.raises(NotAJournal, match="no such file"):
        follow_journal(journal_dir)
    looks: list[bool] = []

    def sleep(_: float) -> None:
        looks.append(follower.waiting_for_journal)
        if len(looks) == 2:
            trio.run(append, journal_dir, 1, 1)

    follower = follow_journal(journal_dir, wait_for_journal=True, sleep=sleep)
    assert follower.waiting_for_journal  # until it has looked and found one
    assert next(follower).seq == 1
    assert looks == [True, True]
    assert not follower.waiting_for_journal
    follower.close()


async def test_the_command_started_first_follows_the_journal_once_created(
    journal_dir: Path,
) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "memable_log_tools.dump", str(journal_dir), "--follow",
         "--json", "--interval", "0.01"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # Ctrl-C reaches it even when the suite runs as a background job
        # (started with SIGINT ignored, which a child inherits).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(TIMEOUT):
            note = b""
            while b"\n" not in note:  # it has looked, found nothing, and waits
                note += await process.stderr.receive_some(1 << 16)
            assert b"no journal there yet; waiting for it" in note
            await append(journal_dir, 1, 3)
            out = b""
            while out.count(b"\n") < 3:
                chunk = await process.stdout.receive_some(1 << 16)
                assert chunk, "the follower ended early"
                out += chunk
            assert seqs(out.decode().splitlines()) == [1, 2, 3]
            process.send_signal(signal.SIGINT)  # Ctrl-C
            code = await process.wait()
            rest = await process.stderr.receive_some(1 << 16)
            assert code == 130, (note + rest).decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
