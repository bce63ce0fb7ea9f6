"""memable ui's actions: 403 without the token; with it, handed over as `memable` does."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from memable_log_tools.ui.app import make_app
from support.ui import TOKEN, make_engine, wait_record

from memable_log import operations
from memable_log.testing import wait_for_state

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def client(path: Path) -> httpx.AsyncClient:
    app = make_app(str(path), TOKEN)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui")


async def test_actions_need_the_token(journal: Path) -> None:
    before = operations.status(journal, "o-1")
    async with client(journal) as http:
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
            got = await http.post("/action/cancel", params={"id": "o-1"}, headers=headers)
            assert got.status_code == 403
            assert "Authorization: Bearer TOKEN" in got.json()["error"]
        got = await http.get("/action/cancel", params={"id": "o-1"}, headers=AUTH)
        assert got.status_code == 405  # a GET never acts
    assert operations.status(journal, "o-1") == before


async def test_actions_with_the_token_are_handed_over_to_a_running_engine(
    journal: Path,
) -> None:
    engine = make_engine(journal)
    async with engine, client(journal) as http:
        got = await http.post("/action/signal", params={"id": "o-1"}, headers=AUTH,
                              json={"key": "approve", "payload": {"by": "bob"}})
        assert got.json() == {"action": "signal", "instance": "o-1", "delivery": "handed over"}
        assert await engine.wait("o-1") == {"by": "bob"}
        again = await http.post("/action/signal", params={"id": "o-1"}, headers=AUTH,
                                json={"key": "approve"})
        assert again.status_code == 409  # refused as memable signal refuses it
        await engine.invoke("stepper", instance_id="s-1")
        await wait_for_state(engine, "s-1", "suspended")
        got = await http.post("/action/cancel", params={"id": "s-1"}, headers=AUTH)
        assert got.json()["delivery"] == "handed over"
        got = await http.post("/action/forget", params={"id": "s-1"}, headers=AUTH,
                              json={"key": "before"})
        assert got.json()["delivery"] == "handed over"
        got = await http.post("/action/restart", params={"id": "p-0"}, headers=AUTH)
        assert got.json()["delivery"] == "handed over"
        for instance_id, rtype in [("s-1", "cancelled"), ("s-1", "forgot"),
                                   ("p-0", "restarted")]:
            await trio.to_thread.run_sync(wait_record, journal, instance_id, rtype)
        unknown = await http.post("/action/cancel", params={"id": "nope"}, headers=AUTH)
        assert unknown.status_code == 404
        bad = await http.post("/action/explode", params={"id": "s-1"}, headers=AUTH)
        assert bad.status_code == 400


async def test_actions_append_when_no_engine_runs(journal: Path) -> None:
    async with client(journal) as http:
        got = await http.post("/action/cancel", params={"id": "o-1"}, headers=AUTH)
        assert got.json()["delivery"] == "appended"
    assert operations.status(journal, "o-1").state == "cancelled"
