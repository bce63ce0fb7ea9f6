"""memable-dump shows children readably: their records, and each instance's parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from support.dump import run

from memable_log._core import lifecycle as lc
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.journal import Journal
from memable_log._storage.files import FileStorage

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00.000Z
codec = Codec()


def with_children() -> list[list[Any]]:
    return [
        r.make(r.CREATED, T0, "p", "parent", codec.encode(None)),
        r.make(r.CHILD_CREATED, T0 + 1, "p/a", "child", codec.encode(1), "p", "a"),
        r.make(r.CHILD_STARTED, T0 + 1, "p", "a", "p/a"),
        r.make(r.CHILD_CREATED, T0 + 2, "p/b", "child", codec.encode(2), "p", "b"),
        r.make(r.CHILD_STARTED, T0 + 2, "p", "b", "p/b"),
        r.make(r.PARKED, T0 + 3, "p", ["a", "b"]),
        r.make(r.COMPLETED, T0 + 4, "p/a", codec.encode({"answer": 10})),
        r.make(r.CHILD_ENDED, T0 + 4, "p", "a", lc.COMPLETED, codec.encode({"answer": 10}),
               None, None),
        r.make(r.FAILED, T0 + 5, "p/b", "ValueError", "bad", "Traceback: line 1"),
        r.make(r.CHILD_ENDED, T0 + 5, "p", "b", lc.FAILED, b"Traceback: line 1",
               "ValueError", "bad"),
    ]


async def write(path: Path, recs: list[list[Any]]) -> None:
    async with Journal(FileStorage(path)) as journal:
        for rec in recs:
            await journal.append(rec)


@pytest.fixture
def journal(journal_dir: Path) -> Path:
    trio.run(write, journal_dir, with_children())
    return journal_dir


def test_child_records_read_as_what_they_mean(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run(capsys, str(journal))
    assert code == 0
    text = "\n".join(lines)
    assert "child_created" in text
    assert "parent=p child_key=a" in text
    assert "child_id=p/a" in text
    ended = [line for line in lines if "child_ended" in line]
    assert 'state=completed value={"answer":10}' in ended[0]
    assert "state=failed error=ValueError: bad" in ended[1]
    assert "Traceback" not in ended[1]  # as a failed record's: in --json only


def test_instances_show_the_parent_and_child_waits(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run(capsys, str(journal), "--instances", "--json")
    assert code == 0
    objs = {o["instance_id"]: o for o in map(json.loads, lines)}
    assert objs["p/a"]["parent"] == "p"
    assert objs["p"]["parent"] is None
    assert objs["p"]["state"] == "running"  # woken by its first child's end
    assert objs["p/b"]["state"] == "failed"
