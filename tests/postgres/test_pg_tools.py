"""The tools and memable_log.operations given a postgresql:// URL: the
listing, an instance's status and its steps, read from the shared log."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from memable_log_tools import dump, memable

from memable_log import Context, Engine, EngineError, operations
from memable_log._postgres.reader import PostgresReader


async def test_memable_instances_status_and_steps_read_a_postgresql_url(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def two(ctx: Context) -> Any:
        await ctx.step("a").run(lambda: 1)
        return await ctx.step("b").run(lambda: 2)

    eng = Engine.builder().postgres(pg_dsn, worker="tools", lease=5.0).build()
    eng.register("two", two)
    with trio.fail_after(10):
        async with eng:
            await eng.invoke("two", instance_id="x")
            assert await eng.wait("x") == 2
    [st] = operations.instances(pg_dsn)
    assert (st.instance_id, st.workflow, st.state, st.steps) == ("x", "two", "completed", 2)
    assert operations.status(pg_dsn, "x").state == "completed"
    assert [s.key for s in operations.steps(pg_dsn, "x")] == ["a", "b"]
    reader = PostgresReader(pg_dsn).replay()  # what operations reads (main: replay())
    assert reader.status("x").state == "completed"
    assert memable.main(["instances", pg_dsn, "--json"]) == 0
    assert [row["instance_id"] for row in json.loads(capsys.readouterr().out)] == ["x"]
    assert memable.main(["status", pg_dsn, "x"]) == 0
    assert "completed" in capsys.readouterr().out
    assert dump.main([pg_dsn, "--json"]) == 0  # memable-dump: every record, in seq order
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(rec["seq"], rec["type"]) for rec in recs] == [
        (1, "created"), (2, "step_done"), (3, "step_done"), (4, "completed")]
    assert dump.main([pg_dsn, "--instances"]) == 0
    assert "completed" in capsys.readouterr().out
    assert memable.main(["dump", pg_dsn]) == 0
    assert "step_done" in capsys.readouterr().out


def test_a_database_without_a_journal_is_named(pg_dsn: str) -> None:
    with pytest.raises(EngineError, match="holds no memable_log journal"):
        operations.instances(pg_dsn)
