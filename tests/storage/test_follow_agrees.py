"""The follower reads every journal by the scan's rules: the same records, the same errors.

Both read segments with the one SegmentReader; these tests hold the
follower's own part (files held open, reading a growing file in pieces,
waiting for a torn tail, judging a segment complete once the next one
appears) to the scan's verdicts on generated journals, good and damaged
(see generated.py).

* Over a journal at rest, following shows exactly what ``read_journal``
  shows: the same records at the same places, then the same
  JournalCorrupt (class, file, offset, reason); or, where the scan ends
  cleanly or at a torn tail, it waits for more.
* Over a journal written while it follows, in pieces of random sizes (a
  segment appears with its header, as a writer's rename makes it appear;
  a compacted segment appears whole), it shows the same records and
  fails at the same byte. Only the wording may differ: seeing a segment
  grow, it can prove damage by a later commit before it knows the segment
  is not the last.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from storage.generated import damaged, journals
from support.journal import storage_from

from memable_log import JournalCorrupt
from memable_log._core.format import HEADER_SIZE
from memable_log._core.records import RecordView
from memable_log._storage.segments import ScanResult, plan_walk
from memable_log.reader import follow_journal, read_journal


class Waited(Exception):
    """Raised by the test's sleep: the follower has shown all it can."""


Outcome = tuple[list[RecordView], tuple[Any, ...] | None]


def read_all(path: Path) -> Outcome:
    """What read_journal shows: records, then an error or None."""
    views: list[RecordView] = []
    try:
        for item in read_journal(path):
            views.append(item)
    except JournalCorrupt as exc:
        return views, (type(exc), exc.file, exc.offset, exc.reason)
    return views, None


def follow_all(path: Path, actions: list[Any]) -> Outcome:
    """What follow_journal shows, running one action at each wait, until none are left."""
    pending = list(actions)
    idle = [1]  # waits with nothing left to do: a proof of damage is read twice

    def sleep(seconds: float) -> None:
        if not pending:
            if not idle[0]:
                raise Waited
            idle[0] -= 1
            return
        pending.pop(0)()

    views: list[RecordView] = []
    follower = follow_journal(path, sleep=sleep)
    try:
        for item in follower:
            views.append(item)
    except Waited:
        return views, None
    except JournalCorrupt as exc:
        return views, (type(exc), exc.file, exc.offset, exc.reason)
    finally:
        follower.close()
    raise AssertionError("a follower never ends by itself")


def verdict(outcome: Outcome) -> str:
    """How a generated journal reads, for hypothesis' statistics."""
    views, error = outcome
    shown = "records" if views else "no records"
    return f"{shown}, then " + ("the end" if error is None else error[3].split(":")[0][:30])


def write_files(path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (path / name).write_bytes(data)


@settings(max_examples=300)
@given(st.data())
def test_following_a_journal_at_rest_shows_what_reading_shows(data: st.DataObject) -> None:
    files = data.draw(damaged(data.draw(journals())))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_files(path, files)
        expected = read_all(path)
        assert follow_all(path, []) == expected
    event(verdict(expected))


def growing(path: Path, files: dict[str, bytes], cuts: list[int]) -> list[Any]:
    """Actions that write ``files`` into ``path`` as a writer would, a piece per action.

    The walk's segments appear in order; each plain one with at least its
    header, then grows by the next of ``cuts`` bytes at a time. A
    compacted segment, and files outside the walk, appear whole at once.
    """
    walk = [name for name, _ in plan_walk(storage_from(files), ScanResult())]
    whole = {name: data for name, data in files.items()
             if name not in walk or name.startswith("cmp-")}
    pieces: list[tuple[str, bytes]] = []
    sizes = iter(cuts)
    for name in walk:
        if name in whole:
            continue
        data = files[name]
        pos = min(HEADER_SIZE, len(data))
        pieces.append((name, data[:pos]))
        while pos < len(data):
            step = next(sizes, len(data))
            pieces.append((name, data[pos : pos + step]))
            pos += step

    def piece() -> None:
        name, chunk = pieces.pop(0)
        with (path / name).open("ab") as f:
            f.write(chunk)

    def first() -> None:
        write_files(path, whole)
        if pieces:
            piece()

    return [first] + [piece] * (len(pieces) - 1)


@settings(max_examples=200)
@given(st.data())
def test_following_a_journal_as_it_is_written_shows_what_reading_shows(
    data: st.DataObject,
) -> None:
    files = data.draw(damaged(data.draw(journals())))
    cuts = data.draw(st.lists(st.integers(1, 200), max_size=30))
    with tempfile.TemporaryDirectory() as done, tempfile.TemporaryDirectory() as tmp:
        write_files(Path(done), files)
        views, error = read_all(Path(done))
        path = Path(tmp)
        first, *rest = growing(path, files, cuts)
        first()
        got_views, got_error = follow_all(path, rest)
    event(verdict((views, error)))
    assert got_views == views
    if error is None:
        assert got_error is None
    else:
        # The same fault at the same byte (the wording may add a proof).
        assert got_error is not None
        assert got_error[0] is error[0]
        assert Path(got_error[1]).name == Path(error[1]).name
        assert got_error[2] == error[2]
