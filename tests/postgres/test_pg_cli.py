"""The command-line tools given a postgresql:// URL: actions as a
short-lived engine session beside a serving engine (``memable invoke``,
``cancel``, ``restart``, ``forget``, ``memable-signal``), and
``memable-dump --follow`` and ``--stats``.

The tools run ``trio.run`` themselves, so the async test calls them on a
worker thread (``trio.to_thread``) while its engine serves.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import trio
from memable_log_tools import dump, memable, send_signal
from test_pg_shared import engine, seen

from memable_log import Context, WorkflowCancelled, operations


async def cli(*argv: str) -> int:
    main = send_signal.main if argv[0] == "signal" else memable.main
    args = list(argv[1:]) if argv[0] == "signal" else list(argv)
    code: int = await trio.to_thread.run_sync(main, args)
    return code


async def test_actions_on_a_url_reach_the_engine_that_serves_it(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs: list[str] = []
    again = trio.Event()

    async def ask(ctx: Context) -> Any:
        def before() -> int:  # runs once per instance, and again once forgotten
            runs.append(ctx.instance_id)
            if runs.count("x") == 2:
                again.set()
            return 1

        await ctx.step("before").run(before)
        return await ctx.suspend("ok")

    async def echo(ctx: Context) -> Any:
        return ctx.input

    async def raw(ctx: Context) -> Any:
        return b"\x00\xff"

    with trio.fail_after(30):
        async with engine(pg_dsn, ask=ask, echo=echo, raw=raw) as a:
            assert await cli("invoke", pg_dsn, "ask", "--id", "x") == 0
            assert "appended to the journal" in capsys.readouterr().err
            await seen(a, "x", "suspended")  # a claimed it from the session, ran it
            assert await cli("invoke", pg_dsn, "ask", "--id", "x") == 0  # there: nothing
            assert "already in the journal" in capsys.readouterr().err
            assert await cli("signal", pg_dsn, "ask", "x", "ok", '"yes"') == 0
            assert await a.wait("x") == "yes"
            assert await cli("signal", pg_dsn, "ask", "x", "ok", "2") == 1  # finished
            assert "x" in capsys.readouterr().err
            assert await cli("forget", pg_dsn, "x", "before") == 0
            assert await cli("restart", pg_dsn, "x") == 0
            await again.wait()  # a claimed it once the session ended: its step ran again
            assert await a.wait("x") == "yes"  # its signal stays, as a restart keeps it
            assert await cli("invoke", pg_dsn, "ask", "--id", "y") == 0
            await seen(a, "y", "suspended")
            assert await cli("cancel", pg_dsn, "y") == 0
            with pytest.raises(WorkflowCancelled):
                await a.wait("y")
            assert await cli("cancel", pg_dsn, "y") == 0
            assert "finished already" in capsys.readouterr().err
            assert await cli("cancel", pg_dsn, "nope") == 1
            assert "nope" in capsys.readouterr().err
            assert await cli("invoke", pg_dsn, "echo", "[1, 2]", "--wait") == 0
            assert json.loads(capsys.readouterr().out) == [1, 2]
            assert await cli("invoke", pg_dsn, "raw", "--wait") == 0  # shown as memable-dump
            assert json.loads(capsys.readouterr().out) == {"$bytes": "00ff"}
            assert [s.state for s in a.instances()] == ["completed", "cancelled", "completed",
                                                         "completed"]
    assert runs == ["x", "x", "y"]


def test_an_unreachable_server_is_exit_1_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    for argv in (["cancel", url, "x"], ["dump", url, "--stats"], ["instances", url]):
        assert memable.main(argv) == 1
        assert "127.0.0.1:1/none" in capsys.readouterr().err


def test_dump_follows_a_url_from_before_its_journal_exists_and_stats_it(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    looks: list[int] = []

    def in_thread(*args: Any) -> None:  # the follower's trio.run is this thread's
        worker = threading.Thread(target=operations.invoke, args=args)
        worker.start()
        worker.join()

    def sleep(seconds: float) -> None:
        looks.append(1)
        if len(looks) == 1:
            in_thread(pg_dsn, "w", 1)  # makes the journal, with one instance
        elif len(looks) == 2:
            in_thread(pg_dsn, "w", 2)
        else:
            raise KeyboardInterrupt

    assert dump.main([pg_dsn, "--follow", "--json"], sleep=sleep) == 130
    out, err = capsys.readouterr()
    assert "no journal there yet" in err
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["created", "created"]
    assert dump.main([pg_dsn, "--stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["records"], stats["next_seq"], stats["instances"]["total"]) == (2, 3, 2)
    assert stats["engines"]["holding_a_lease"] == 0  # each session released its lease
    assert stats["bytes"]["ml_log"] > 0
    assert dump.main([pg_dsn, "--stats"]) == 0
    assert "holding a lease" in capsys.readouterr().out
