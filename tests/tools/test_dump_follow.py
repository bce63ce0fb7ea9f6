"""memable-dump --follow: new records as they come, none twice, none partial.

Two kinds of test. The first runs the real thing: an engine appending in a
child process (small segments, so they roll; background compaction on,
so segments are rewritten and deleted under the follower) and followers
as real processes, whose stdout the test reads line by line, with
timeouts, never sleeping. The child works in rounds and waits for the test
between them, so the follower is never more than a round behind.

The second kind drives the follower in-process through ``main(argv,
sleep=...)``: each time the follower waits, the injected ``sleep`` performs
the next change to the journal (appends through a real Journal, a torn
tail, a writer restart that cuts it, an offline compaction, damage), then
interrupts it as Ctrl-C would. So every race the follower must survive
happens at a known point, the same way on every run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from memable_log_tools import dump

from memable_log import JournalCorrupt
from memable_log._compaction.compactor import compact_offline
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._core.format import compacted_name, segment_name
from memable_log._core.framing import encode_frame
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage
from memable_log.reader import FollowGap, follow_journal, read_journal

T0 = 1_714_564_800_000
codec = Codec()
TIMEOUT = 20  # seconds for any one expected line: generous, never slept


def numbered(n: int, size: int = 100, instance: str | None = None) -> list[Any]:
    return r.make(r.CREATED, T0 + n, instance or f"inst-{n}", "wf", codec.encode("v" * size))


async def append(path: Path, recs: list[list[Any]], segment_size: int = 4096) -> None:
    """Open the journal as a writer would (recovery included), append, close."""
    async with Journal(FileStorage(path), segment_size=segment_size) as journal:
        for rec in recs:
            await journal.append(rec)


def write(path: Path, first: int, count: int, **kw: Any) -> Callable[[], None]:
    """An action: append records ``first .. first+count-1`` (one commit each)."""
    return lambda: trio.run(append, path, [numbered(i, **kw) for i in range(first, first + count)])


def compact(path: Path) -> Callable[[], None]:
    """An action: compact everything offline (seals the active segment, deletes the rest)."""

    def run() -> None:
        compact_offline(FileStorage(path), now_ms=T0, retention_ms=None)

    return run


def follow(
    capsys: pytest.CaptureFixture[str], path: Path, actions: list[Callable[[], None]],
    *flags: str,
) -> tuple[int, list[str], str, int]:
    """Run ``memable-dump PATH --follow`` in-process.

    Each time the follower waits, the next action runs; when none are
    left, the wait raises KeyboardInterrupt, as Ctrl-C does. Returns the
    exit status, stdout lines, stderr and how many waits were left unused.
    """
    pending = list(actions)

    def sleep(seconds: float) -> None:
        assert 0 < seconds <= 1
        if not pending:
            raise KeyboardInterrupt
        pending.pop(0)()

    code = dump.main([str(path), "--follow", *flags], sleep=sleep)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err, len(pending)


def seqs(lines: list[str]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


def journal_json(path: Path) -> list[dict[str, Any]]:
    """What plain ``memable-dump --json`` shows for the journal now."""
    return [dump.record_json(view) for view in read_journal(path)]


# -- in-process, deterministic ---------------------------------------------------


def test_prints_what_is_there_then_new_records_across_roll_over(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 6)])
    code, lines, err, unused = follow(
        capsys, journal_dir, [write(journal_dir, 6, 60), write(journal_dir, 66, 5)], "--json",
    )
    assert (code, err, unused) == (130, "", 0)
    assert seqs(lines) == list(range(1, 71))
    views = list(read_journal(journal_dir))
    assert len({v.segment for v in views}) >= 3  # the follower crossed roll-overs
    assert [json.loads(line) for line in lines] == journal_json(journal_dir)


def test_text_lines_appear_each_time_the_follower_catches_up(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 4)])
    shown: list[list[str]] = []

    def look() -> None:
        shown.append(capsys.readouterr().out.splitlines())

    code, lines, _, _ = follow(
        capsys, journal_dir, [look, write(journal_dir, 4, 2), look, look],
    )
    assert code == 130
    # Printed before the first wait, although far fewer than the text
    # printer's look-ahead: it flushes whenever the follower catches up.
    assert [int(line.split()[0]) for line in shown[0]] == [1, 2, 3]
    assert [int(line.split()[0]) for line in shown[1]] == [4, 5]
    assert shown[2] == []
    assert lines == []
    assert shown[1][0].split()[2:4] == ["created", "inst-4"]


def test_text_columns_are_sized_by_the_first_records_of_an_empty_journal(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [])
    records = [numbered(i, instance=f"instance-{i:03d}") for i in range(1, 12)]
    code, lines, _, _ = follow(
        capsys, journal_dir,
        [lambda: None, lambda: trio.run(append, journal_dir, records), lambda: None],
    )
    assert code == 130
    assert [line.split()[0] for line in lines] == [str(i) for i in range(1, 12)]
    # Sized on all eleven (seq up to two digits): every column lines up.
    assert len({line.index("created") for line in lines}) == 1
    assert len({line.index("workflow=") for line in lines}) == 1


@pytest.mark.parametrize("torn_size", [11, 3000])
def test_a_torn_tail_cut_by_a_restarted_writer_shows_no_partial_or_repeated_record(
    journal_dir: Path, capsys: pytest.CaptureFixture[str], torn_size: int
) -> None:
    """The follower reads the torn bytes, then the writer cuts them and writes anew.

    11 bytes of torn tail is less than what the restarted writer appends
    (the file grows past where the follower had read); 3000 is more (the
    file shrinks). Either way the records after the cut are read from the
    cut, once each.
    """
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 6)], 1 << 20)
    seg = journal_dir / segment_name(1)
    # The start of a real frame, as a crash mid-write leaves it, then junk.
    frame = encode_frame(b"\x96" + b"x" * 4000, salt=0, batch_start=True, batch_end=True)

    def tear() -> None:
        with seg.open("ab") as f:
            f.write(frame[:torn_size])

    before = seg.stat().st_size
    code, lines, err, unused = follow(
        capsys, journal_dir,
        [tear, lambda: None, lambda: trio.run(
            append, journal_dir, [numbered(i) for i in range(6, 9)], 1 << 20
        )],
        "--json",
    )
    assert (code, err, unused) == (130, "", 0)
    assert seqs(lines) == list(range(1, 9))
    assert [json.loads(line) for line in lines] == journal_json(journal_dir)
    assert json.loads(lines[5])["offset"] == before  # the first record after the cut


def test_bad_bytes_followed_by_a_later_commit_are_corruption(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 4)], 1 << 20)
    seg = journal_dir / segment_name(1)
    damaged: list[int] = []

    def write_then_damage() -> None:
        start = seg.stat().st_size
        trio.run(append, journal_dir, [numbered(i) for i in range(4, 7)], 1 << 20)
        data = bytearray(seg.read_bytes())
        data[start + 12] ^= 0x01  # record 4; records 5 and 6 are later commits
        seg.write_bytes(bytes(data))
        damaged.append(start)

    # (one more wait: the follower reads a proof of damage twice before it trusts it)
    code, lines, err, _ = follow(capsys, journal_dir, [write_then_damage, lambda: None], "--json")
    assert code == 1
    assert seqs(lines) == [1, 2, 3]
    assert f"{seg}: corrupt at byte {damaged[0]}: checksum mismatch" in err
    assert "once durable" in err
    assert "Traceback" not in err


def test_bad_bytes_at_the_end_of_a_sealed_segment_are_corruption_not_a_wait(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage with nothing durable after it in its segment, but a next segment:
    the segment was sealed (its torn tail cut) before the next one appeared."""
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 60)])
    views = list(read_journal(journal_dir))
    last_of_first = max(v.offset for v in views if v.segment == 1)
    seg = journal_dir / segment_name(1)
    data = bytearray(seg.read_bytes())
    length = int.from_bytes(data[last_of_first : last_of_first + 3], "little")
    seal_at = last_of_first + 8 + length  # the seal: nothing after it in its segment
    data[seal_at + 9] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as expected:
        list(read_journal(journal_dir))
    assert expected.value.offset == seal_at
    code, lines, err, unused = follow(capsys, journal_dir, [lambda: None], "--json")
    assert (code, unused) == (1, 1)  # decided at once: it never waited
    assert seqs(lines) == [v.seq for v in views if v.segment == 1]
    assert f"{seg}: corrupt at byte {seal_at}: checksum mismatch" in err


def test_a_segment_deleted_by_compaction_while_followed_is_read_to_its_end(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 4)])

    def write_compact_write() -> None:
        write(journal_dir, 4, 3)()  # still in segment 1
        compact(journal_dir)()  # seals it, deletes it: the follower holds it open
        write(journal_dir, 7, 3)()

    code, lines, err, unused = follow(capsys, journal_dir, [write_compact_write], "--json")
    assert (code, err, unused) == (130, "", 0)
    assert not (journal_dir / segment_name(1)).exists()
    assert (journal_dir / compacted_name(1)).exists()
    assert seqs(lines) == list(range(1, 10))  # no rewritten (seq 0) history, no repeat
    tail = [obj for obj in journal_json(journal_dir) if obj["seq"] > 0]
    assert [json.loads(line) for line in lines[6:]] == tail


def test_a_follower_that_falls_behind_a_compaction_reports_the_gap(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 4)])

    def race_ahead() -> None:
        write(journal_dir, 4, 100)()  # many segments...
        compact(journal_dir)()  # ...rewritten and deleted before the follower looks
        write(journal_dir, 104, 2)()

    code, lines, err, _ = follow(capsys, journal_dir, [race_ahead], "--json")
    assert code == 130
    shown = seqs(lines)
    assert shown == sorted(set(shown))  # increasing, nothing twice
    assert shown[:3] == [1, 2, 3]
    assert shown[-2:] == [104, 105]
    # It read its own segment to the seal, then found the next ones gone.
    missing = [n for n in range(1, 106) if n not in shown]
    assert missing == list(range(missing[0], 104))
    assert (
        f"note: records {missing[0]}..103 were compacted before they could be read" in err
    )


def test_starts_with_the_compacted_history_then_follows(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 20)])
    compact(journal_dir)()
    write(journal_dir, 20, 3)()
    before = journal_json(journal_dir)
    assert [obj["seq"] for obj in before] == [0] * 19 + [20, 21, 22]
    code, lines, err, _ = follow(capsys, journal_dir, [write(journal_dir, 23, 2)], "--json")
    assert (code, err) == (130, "")
    assert [json.loads(line) for line in lines] == journal_json(journal_dir)
    assert seqs(lines) == [0] * 19 + [20, 21, 22, 23, 24]


def test_a_compacted_segment_without_its_seal_is_corruption(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 20)])
    compact(journal_dir)()
    cmp = journal_dir / compacted_name(1)
    data = cmp.read_bytes()
    cmp.write_bytes(data[:-11])  # the seal frame [0, 20]: 8 bytes of header, 3 of payload
    with pytest.raises(JournalCorrupt, match="without a seal") as info:
        list(read_journal(journal_dir))
    code, lines, err, _ = follow(capsys, journal_dir, [lambda: None], "--json")
    assert code == 1
    assert seqs(lines) == [0] * 19
    assert f"{cmp}: corrupt at byte {info.value.offset}: segment ends without a seal" in err


def test_waits_for_the_first_segment_of_a_new_journal(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal_dir.mkdir()
    (journal_dir / "LOCK").write_bytes(b"")
    code, lines, _, unused = follow(
        capsys, journal_dir, [lambda: None, write(journal_dir, 1, 2)], "--json"
    )
    assert (code, unused) == (130, 0)
    assert seqs(lines) == [1, 2]


def test_filters_apply_to_followed_records(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def story(start: int) -> Callable[[], None]:
        recs = []
        for i in range(start, start + 20):
            recs.append(numbered(i, instance=f"i{i % 3}") if i == i % 3 else
                        r.make(r.STEP_DONE, T0 + i, f"i{i % 3}", f"k{i}", codec.encode(i)))
        return lambda: trio.run(append, journal_dir, recs)

    story(0)()
    code, lines, _, _ = follow(
        capsys, journal_dir, [story(20), story(40)],
        "--json", "--instance", "i1", "--type", "step_done", "--key", "k*",
    )
    assert code == 130
    objs = [json.loads(line) for line in lines]
    expected = [
        obj for obj in journal_json(journal_dir)
        if obj["instance"] == "i1" and obj["type"] == "step_done"
    ]
    assert objs == expected
    assert len(objs) == 19  # i1: 1, 4, ..., 58, less its created record


def test_a_segment_deleted_before_it_was_sealed_is_an_error(
    journal_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 3)])
    seg = journal_dir / segment_name(1)
    code, lines, err, _ = follow(capsys, journal_dir, [seg.unlink], "--json")
    assert code == 1
    assert seqs(lines) == [1, 2]
    assert "deleted before it was sealed" in err


def test_a_path_that_is_not_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A missing path is waited for instead (test_dump_follow_waits.py).
    (tmp_path / "nope").write_text("")
    code, lines, err, unused = follow(capsys, tmp_path / "nope", [])
    assert (code, lines, unused) == (1, [], 0)
    assert "not a memable_log journal (not a directory" in err


def test_the_follower_api_holds_files_only_while_it_runs(journal_dir: Path) -> None:
    trio.run(append, journal_dir, [numbered(i) for i in range(1, 80)])
    fds_before = len(os.listdir("/proc/self/fd"))
    waits: list[float] = []
    gaps: list[FollowGap] = []
    follower = follow_journal(
        journal_dir, interval=0.25, sleep=waits.append, on_gap=gaps.append
    )
    got = [next(follower).seq for _ in range(79)]
    assert got == list(range(1, 80))
    assert follower.next_seq == 80
    assert waits == []  # never waited: there was always a record to read
    assert len(os.listdir("/proc/self/fd")) > fds_before  # segments held open
    follower.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert gaps == []


# -- real processes --------------------------------------------------------------

CHILD = r'''
"""An engine appending in rounds; tiny segments, background compaction on."""
import json
import sys

import trio

from memable_log import Context, Engine


async def main(path: str, first: int, rounds: int, per_round: int) -> None:
    async def work(ctx: Context) -> int:
        got = await ctx.step("fetch:v1").run(lambda: {"n": ctx.input, "pad": "x" * 200})
        return await ctx.step("store:v1").run(lambda: got["n"] * 2)

    engine = Engine.builder().open(path).segment_size(4096).build()
    engine.register("work", work)
    async with engine:
        compaction, compacted = engine._backend.compaction, trio.Event()
        original = compaction.compact

        async def compact(*args):
            nonlocal compacted
            await original(*args)
            compacted, event = trio.Event(), compacted
            event.set()

        compaction.compact = compact
        if first == 0:  # something for the followers to show before the rounds
            await engine.wait(await engine.invoke("work", -1, instance_id="warm-up"))
        print(json.dumps({"last_seq": engine._backend.journal.writer.next_seq - 1}), flush=True)
        for rnd in range(first, first + rounds):
            await trio.to_thread.run_sync(sys.stdin.readline)
            ids = [
                await engine.invoke("work", i, instance_id=f"r{rnd}-{i}")
                for i in range(per_round)
            ]
            for instance_id in ids:
                await engine.wait(instance_id)
            # Compaction runs in a child process: let it catch up, so each
            # round's report comes after the compactions of its roll-overs.
            maintenance = engine._backend.journal.maintenance
            while compaction.compacted_upto < maintenance.applied_segment - 1:
                await compacted.wait()
            # Private, for the test only: the last seq, and compactions so far.
            print(json.dumps({
                "last_seq": engine._backend.journal.writer.next_seq - 1,
                "compactions": engine._backend.compaction.runs,
            }), flush=True)


trio.run(main, sys.argv[1], *map(int, sys.argv[2:]))
'''


class Lines:
    """The lines a process writes on a pipe, read as they come (with a timeout)."""

    def __init__(self, stream: trio.abc.ReceiveStream, what: str) -> None:
        self._stream = stream
        self._buf = b""
        self.what = what
        self.seen: list[str] = []

    async def next(self) -> str:
        with trio.fail_after(TIMEOUT):
            while b"\n" not in self._buf:
                chunk = await self._stream.receive_some(1 << 16)
                if not chunk:
                    raise AssertionError(f"{self.what} ended; last lines: {self.seen[-3:]}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        text = line.decode()
        self.seen.append(text)
        return text



async def spawn(argv: list[str], stdin: bool = False) -> trio.Process:
    """Start ``argv`` with stdout and stderr (and stdin) piped to the test."""
    return await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        # Ctrl-C reaches it even when the suite runs as a background job
        # (a shell without job control starts those with SIGINT ignored,
        # and a child inherits that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


async def test_follows_an_engine_in_another_process_across_roll_over_and_compaction(
    journal_dir: Path, tmp_path: Path
) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    per_round, lifetimes = 16, [(0, 5), (5, 4)]  # (first round, rounds) per engine lifetime
    total = per_round * sum(rounds for _, rounds in lifetimes) + 1  # and the warm-up
    processes: list[trio.Process] = []
    followers: list[Lines] = []
    try:
        for first, rounds in lifetimes:
            writer = await spawn(
                [sys.executable, str(child), str(journal_dir), str(first), str(rounds),
                 str(per_round)], stdin=True,
            )
            processes.append(writer)
            assert writer.stdout is not None
            assert writer.stdin is not None
            said = Lines(writer.stdout, "the writer")
            ready = json.loads(await said.next())
            if not followers:  # started once, they follow both engine lifetimes
                for flags in (["--json"], ["--type", "completed"]):
                    follower = await spawn(
                        [sys.executable, "-m", "memable_log_tools.dump", str(journal_dir),
                         "--follow", "--interval", "0.01", *flags],
                    )
                    processes.append(follower)
                    assert follower.stdout is not None
                    followers.append(Lines(follower.stdout, f"the follower {flags}"))
                # The followers have read the journal before the rounds start.
                while json.loads(await followers[0].next())["seq"] != ready["last_seq"]:
                    pass
                await followers[1].next()
            json_lines = followers[0]
            compactions = 0
            for _ in range(rounds):
                await writer.stdin.send_all(b"go\n")
                report = json.loads(await said.next())
                compactions = report["compactions"]
                # Lock-step: the next round starts once the follower has
                # shown this one, so it is never a compaction cycle behind.
                while json.loads(await json_lines.next())["seq"] != report["last_seq"]:
                    pass
            await writer.stdin.aclose()
            with trio.fail_after(TIMEOUT):
                assert await writer.wait() == 0
            assert compactions > 0  # this lifetime compacted under the followers
        json_lines, text_lines = followers
        while len(text_lines.seen) < total:
            await text_lines.next()
        for follower in processes[1:3]:
            follower.send_signal(signal.SIGINT)  # Ctrl-C
            with trio.fail_after(TIMEOUT):
                assert await follower.wait() == 130
            assert follower.stderr is not None
            assert await follower.stderr.receive_some(1 << 16) == b""  # no traceback, no gap
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    shown = [json.loads(line) for line in json_lines.seen]  # every line is whole JSON
    final = read_journal(journal_dir)
    journal = [dump.record_json(view) for view in final]
    last = final.next_seq - 1
    assert final.files[0].startswith("cmp-")  # history was rewritten meanwhile
    # Every record once, in order, none missing: seqs 1..last exactly.
    assert [obj["seq"] for obj in shown] == list(range(1, last + 1))
    # The records still plain in the journal are exactly those shown.
    by_seq = {obj["seq"]: obj for obj in shown}
    plain = [obj for obj in journal if obj["seq"] > 0]
    assert plain
    assert all(by_seq[obj["seq"]] == obj for obj in plain)
    # And every instance's whole story was shown, in order.
    stories: dict[str, list[tuple[str, Any]]] = {}
    for obj in shown:
        stories.setdefault(obj["instance"], []).append((obj["type"], obj["fields"].get("key")))
    assert len(stories) == total
    assert {tuple(story) for story in stories.values()} == {(
        ("created", None), ("step_done", "fetch:v1"), ("step_done", "store:v1"),
        ("completed", None),
    )}
    completed = [obj["seq"] for obj in shown if obj["type"] == "completed"]
    assert [int(line.split()[0]) for line in text_lines.seen] == completed
    assert {status.state for status in read_journal(journal_dir).instances()} == {"completed"}


async def test_a_follower_stops_when_its_reader_goes(journal_dir: Path) -> None:
    """``memable-dump --follow | head -1``: ends with 141 even with nothing new to print."""
    await append(journal_dir, [numbered(i) for i in range(1, 4)])
    process = await spawn(
        [sys.executable, "-m", "memable_log_tools.dump", str(journal_dir), "--follow",
         "--interval", "0.01"],
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        lines = Lines(process.stdout, "the follower")
        assert (await lines.next()).split()[:3] == ["1", "2024-05-01T12:00:00.001Z", "created"]
        await process.stdout.aclose()  # the reader goes away, as head does
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 141
        assert await process.stderr.receive_some(1 << 16) == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
