"""Big journals: an instance page shows a page of its steps; the listing starts
from the index snapshot."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest
from memable_log_tools.ui import data
from memable_log_tools.ui.app import make_app
from support.ui import HOSTILE, TOKEN

from memable_log import Context, Engine, JournalCorrupt, operations
from memable_log.reader import JournalReader, RecordView, decode_value

STEPS = 25


async def many(ctx: Context) -> int:
    for i in range(STEPS):
        await ctx.step(f"step-{i:02d}{HOSTILE}").run(lambda i=i: {"i": i, "note": HOSTILE})
    return STEPS


async def journal_of_many(tmp_path: Path) -> Path:
    path = tmp_path / "many.memable"
    engine = Engine.builder().open(path).build()
    engine.register("many", many)
    async with engine:
        await engine.invoke("many", instance_id="m")
        await engine.wait("m")
    return path


def keys(page: str) -> list[int]:
    return [int(k) for k in re.findall(r"<td><code>step-(\d\d)&lt;script&gt;", page)]


def link(page: str, label: str) -> str | None:
    found = re.search(rf'class="page {label}" href="([^"]+)"', page)
    return None if found is None else html.unescape(found.group(1))


async def test_an_instance_page_shows_one_page_of_its_steps(tmp_path: Path) -> None:
    path = await journal_of_many(tmp_path)
    app = make_app(str(path), TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ui") as http:
        first = (await http.get("/instance", params={"id": "m", "steps": 10})).text
        assert keys(first) == list(range(10))
        assert f"steps 1\u201310 of {STEPS}" in first
        assert "<tbody id=steps data-tail=0>" in first
        assert link(first, "previous") is None
        nxt = link(first, "next")
        assert nxt is not None
        second = (await http.get(nxt)).text
        assert keys(second) == list(range(10, 20))
        last_link = link(second, "last")
        assert last_link is not None
        last = (await http.get(last_link)).text
        assert keys(last) == list(range(20, STEPS))
        assert "<tbody id=steps data-tail=1>" in last  # the live view appends here
        assert link(last, "next") is None
        assert link(last, "first") is not None
        # every value on the page still escaped
        assert HOSTILE not in last
        assert "&lt;script&gt;" in last
        # the default page holds data.STEP_PAGE steps; this instance fits in it
        whole = (await http.get("/instance", params={"id": "m"})).text
        assert keys(whole) == list(range(STEPS))
        assert STEPS <= data.STEP_PAGE
        assert (await http.get("/instance", params={"id": "m", "from": "x"})).status_code == 400


async def test_the_listing_starts_from_the_index_snapshot(tmp_path: Path) -> None:
    """The engine closed cleanly (index.snap): the listing reads what follows it only,
    and says what operations.instances says."""
    path = await journal_of_many(tmp_path)
    listing = data.Listing(str(path))
    snap = listing.snapshot()
    assert snap.replay.resumed
    truth = operations.instances(path)
    assert snap.ids == [st.instance_id for st in truth]
    assert listing.page(data.Filters(), None, 10).rows == list(enumerate(truth))
    (path / "index.snap").unlink()
    listing = data.Listing(str(path))
    assert not listing.snapshot().replay.resumed
    assert listing.page(data.Filters(), None, 10).rows == list(enumerate(truth))


async def test_an_instance_page_reads_no_record_once_the_journal_is_replayed(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its steps, values (the large one at its record's location), events and children
    come from the replay the listing holds: no pass over the journal."""
    app = make_app(str(journal), TOKEN)
    listing = data.Listing(str(journal))
    listing.snapshot()

    def no_pass(self: JournalReader) -> RecordView:
        raise AssertionError("the instance page passed over the journal")

    monkeypatch.setattr(JournalReader, "__next__", no_pass)
    view = data.instance_view(listing, "o-1")
    assert [r.step.key for r in view.steps] == [s.key for s in operations.steps(journal, "o-1")]
    big = next(r for r in view.steps if r.step.key.startswith("key"))
    assert big.blob is not None
    assert decode_value(big.blob) == "x" * 500
    assert [k for k, _, _ in view.events] == ["progress"]
    assert [c.instance_id for c in view.children] == ["o-1/ship"]
    monkeypatch.undo()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ui") as http:
        page = (await http.get("/instance", params={"id": "o-1"})).text
        found = re.search(r'href="(/instance/records\?id=o-1)"', page)
        assert found is not None
        records = (await http.get(found.group(1))).text
        assert "<td>created</td>" in records
        assert "<td>suspended</td>" in records
        assert HOSTILE not in records
        missing = await http.get("/instance/records", params={"id": "nope"})
        assert missing.status_code == 404


class StaleOnce(data.Listing):
    """A listing whose next answer is a replay taken before a compaction: the
    compaction ran between the replay and the read of a value."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.stale: data.Snapshot | None = super().snapshot()
        operations.compact(path)  # deletes the segment its large values are in

    def snapshot(self, fresh: bool = True) -> data.Snapshot:
        stale, self.stale = self.stale, None
        return stale if stale is not None else super().snapshot(fresh)


@pytest.mark.parametrize("page", ["instance", "full value"])
async def test_a_value_moved_by_a_compaction_since_the_replay_is_read_from_a_new_one(
    journal: Path, page: str,
) -> None:
    big = f"key{HOSTILE}"
    listing = StaleOnce(journal)
    stale = listing.stale
    assert stale is not None
    with pytest.raises((OSError, JournalCorrupt)):  # the stale replay cannot read it
        stale.replay.step_values("o-1", [big])
    if page == "full value":
        assert data.step_value(listing, "o-1", big) == "x" * 500
        return
    view = data.instance_view(listing, "o-1")
    row = next(r for r in view.steps if r.step.key == big)
    assert row.blob is not None
    assert decode_value(row.blob) == "x" * 500
