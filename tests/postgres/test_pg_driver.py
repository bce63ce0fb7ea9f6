"""The driver's notifications (driver.py): each payload comes with the
server process of the session that sent it, so an engine's listener can
tell its own writer's NOTIFYs from other engines'."""

from __future__ import annotations

import json

import pytest
import trio

from memable_log._postgres.driver import TEXT, TEXT_ARRAY, Conn, array, array_len


async def test_a_notification_names_the_session_that_sent_it(pg_dsn: str) -> None:
    listener = await Conn.connect(pg_dsn)
    one = await Conn.connect(pg_dsn)
    other = await Conn.connect(pg_dsn)
    try:
        await listener.run("LISTEN chan")
        await one.run("NOTIFY chan, 'a'")
        await other.run("NOTIFY chan, 'b'")
        got: list[tuple[str, int]] = []
        with trio.fail_after(5):
            while len(got) < 2:
                got += await listener.notices()
        assert got == [("a", one.pid), ("b", other.pid)]
        assert one.pid != other.pid
        await one.run("NOTIFY chan, 'c'")
        with trio.fail_after(5):
            assert await listener.notifies() == ["c"]
    finally:
        for conn in (listener, one, other):
            conn.close()


@pytest.mark.parametrize("items", [[], [b"a"], [None], [b"a", None, b""], [b"x" * 300] * 3])
async def test_a_binary_array_reaches_the_server_as_sent(
    pg_dsn: str, items: list[bytes | None]
) -> None:
    conn = await Conn.connect(pg_dsn)
    try:
        got = await conn.query(b"echo", "SELECT array_to_json($1::text[])::text", [TEXT_ARRAY],
                               [array(TEXT, items)])
        assert json.loads(bytes(got.get_value(0, 0) or b"")) == [
            None if item is None else item.decode() for item in items]
        assert array_len(array(TEXT, items)) == len(items)
    finally:
        conn.close()
