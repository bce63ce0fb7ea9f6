"""memable ui over HTTP (httpx with the ASGI app): the listing, an instance, escaping."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
from memable_log_tools.ui import data
from starlette.applications import Starlette
from support.ui import HOSTILE

from memable_log import operations


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui")


def ids(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r'href="/instance\?id=([^"&]+)"', page)]


async def test_listing_filters_and_pages(app: Starlette) -> None:
    async with client(app) as http:
        everything = await http.get("/")
        assert everything.status_code == 200
        assert "9 instances in the journal" in everything.text
        assert sorted(ids(everything.text)) == ["o-1", "o-1%2Fship"] + [f"p-{i}" for i in range(7)]

        first = await http.get("/", params={"workflow": "plain", "limit": 3})
        assert ids(first.text) == ["p-0", "p-1", "p-2"]
        nxt = re.search(r'class=next href="([^"]+)"', first.text)
        assert nxt is not None
        second = await http.get(html.unescape(nxt.group(1)))
        assert ids(second.text) == ["p-3", "p-4", "p-5"]

        newest = await http.get("/", params={"workflow": "plain", "limit": 2, "order": "newest"})
        assert ids(newest.text) == ["p-6", "p-5"]
        suspended = await http.get("/", params={"state": "suspended"})
        assert ids(suspended.text) == ["o-1"]
        prefix = await http.get("/", params={"prefix": "o-1/"})
        assert ids(prefix.text) == ["o-1%2Fship"]
        late = await http.get("/", params={"since": "2999-01-01"})
        assert ids(late.text) == []
        early = await http.get("/", params={"until": "2000-01-01T00:00:00Z"})
        assert ids(early.text) == []

        bad = await http.get("/", params={"state": "sleepy"})
        assert bad.status_code == 400
        assert "unknown state &#x27;sleepy&#x27;" in bad.text
        assert (await http.get("/", params={"since": "yesterday"})).status_code == 400


async def test_instance_page_shows_steps_events_errors_children(app: Starlette) -> None:
    async with client(app) as http:
        page = await http.get("/instance", params={"id": "o-1"})
        assert page.status_code == 200
        text = page.text
        for shown in ["fetch", "charge", "ValueError: bad row", "progress", "{&quot;done&quot;: 2}",
                      "o-1/ship", "shipping", "suspended", "approve"]:
            assert shown in text, shown
        # the failed step: two attempts, its error, a red bar on the timeline
        charge = re.search(r"<tr id=\"step-[0-9a-f]+\"><td><code>charge</code>.*?</tr>", text)
        assert charge is not None
        assert 'class="state failed"' in charge.group(0)
        assert "<td class=num>2</td>" in charge.group(0)
        assert 'class="bar failed"' in charge.group(0)
        # values shortened, the full value one link away
        assert "x" * 500 not in text
        full = re.search(r'<a href="(/instance/value\?id=o-1&amp;key=key[^"]+)">full</a>', text)
        assert full is not None
        value = await http.get(html.unescape(full.group(1)))
        assert value.json() == "x" * 500
        missing = await http.get("/instance", params={"id": "nope"})
        assert missing.status_code == 404


async def test_hostile_values_are_escaped(app: Starlette) -> None:
    async with client(app) as http:
        for url, params in [("/instance", {"id": "o-1"}), ("/", {}),
                            ("/", {"workflow": HOSTILE})]:
            page = await http.get(url, params=params)
            assert "<script>alert" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
        page = (await http.get("/instance", params={"id": "o-1"})).text
        assert "key&lt;script&gt;" in page  # a step key
        assert "waiting for &lt;script&gt;" in page  # the status text
        assert "&quot;note&quot;: &quot;&lt;script&gt;" in page  # a step value


async def test_steps_from_records_match_engine_steps(journal: Path) -> None:
    """The page builds steps from the records in one pass: what operations.steps says."""
    listing = data.Listing(str(journal))
    for iid in ["o-1", "o-1/ship", "p-0"]:
        view = data.instance_view(listing, iid)
        shown = [(r.step.key, r.step.state, r.step.attempts, r.step.error,
                  r.step.started_at, r.step.finished_at) for r in view.steps]
        truth = [(s.key, s.state, s.attempts, s.error, s.started_at, s.finished_at)
                 for s in operations.steps(journal, iid)]
        assert shown == truth
