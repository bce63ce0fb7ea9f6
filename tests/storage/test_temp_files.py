"""Only the library's own temp files are removed at open; a user's are not touched.

Recovery deletes what a crash left half-made: a segment or compacted
segment before its rename (``seg-<n>.mlog.tmp``, ``cmp-<n>.mlog.tmp``) and
the snapshot's (``index.snap.tmp``). Anything else in the journal directory
that merely ends in ``.tmp`` (a user's ``notes.tmp``, a ``backup.tmp``
directory) is not the library's to delete, and must not fail the journal
(issue 13 d: it used to do both).
"""

from __future__ import annotations

from pathlib import Path

from memable_log import Context, Engine, read_journal
from memable_log._core.format import is_temp_name


async def echo(ctx: Context) -> object:
    return await ctx.step("s").run(lambda: ctx.input)


def test_only_the_library_s_temp_names_are_its_own() -> None:
    assert is_temp_name("seg-0000000002.mlog.tmp")
    assert is_temp_name("cmp-0000000001.mlog.tmp")
    assert is_temp_name("index.snap.tmp")
    for name in ("notes.tmp", "seg-2.mlog.tmp", "seg-0000000002.mlog", "index.snap",
                 "xseg-0000000002.mlog.tmp", "LOCK.tmp", ".tmp"):
        assert not is_temp_name(name), name


async def test_a_user_s_tmp_files_survive_the_engine_s_start(journal_dir: Path) -> None:
    engine = Engine.builder().open(journal_dir).build()
    engine.register("echo", echo)
    async with engine:
        assert await engine.wait(await engine.invoke("echo", 1, instance_id="a")) == 1
    (journal_dir / "notes.tmp").write_text("mine")
    (journal_dir / "backup.tmp").mkdir()
    (journal_dir / "backup.tmp" / "inside").write_text("mine too")
    (journal_dir / "seg-0000000009.mlog.tmp").write_bytes(b"half a segment")
    assert sorted(read_journal(journal_dir).skipped) == []  # nothing read yet: known on reading
    reader = read_journal(journal_dir)
    list(reader)
    assert reader.skipped == ["seg-0000000009.mlog.tmp"]  # the user's files are not the journal's

    again = Engine.builder().open(journal_dir).build()
    again.register("echo", echo)
    async with again:  # opens: a directory named *.tmp fails nothing
        assert await again.wait("a") == 1
        assert await again.wait(await again.invoke("echo", 2, instance_id="b")) == 2
    assert (journal_dir / "notes.tmp").read_text() == "mine"
    assert (journal_dir / "backup.tmp" / "inside").read_text() == "mine too"
    assert not (journal_dir / "seg-0000000009.mlog.tmp").exists()  # ours: removed
