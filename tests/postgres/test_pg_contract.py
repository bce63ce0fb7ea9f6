"""The engine's contract tests, run again over PostgreSQL.

tests/engine's tests that take a ``home`` (support/engine.py: a journal that
outlives engine lifetimes) are collected here too, with a ``home`` whose
engines are built with ``.postgres(dsn)`` on this test's fresh database and
whose ``records()`` reads ``ml_log``. The subset: invoke and wait,
idempotent and concurrent invokes, cancel, forget and restart (the first
writer's step key counts them), and the article's promises (keys, not
positions, across a code change).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from support.engine import Home
from test_engine_basics import (
    test_cancel_of_a_finished_instance_changes_nothing,
    test_cancel_stops_a_running_step_and_survives_restart,
    test_concurrent_invokes_of_one_id_create_it_once,
    test_forget_a_prefix_leaves_other_keys_cached,
    test_forget_and_restart_after_a_fix,
    test_invoke_is_idempotent_by_instance_id,
    test_invoke_runs_the_workflow_and_wait_returns_its_result,
    test_leaving_the_engine_as_a_step_returns_raises_nothing,
    test_restart_of_a_live_instance_raises_engine_error,
    test_unencodable_input_raises_not_serializable_and_writes_nothing,
    test_unknown_workflow_raises_and_writes_nothing,
)
from test_engine_promises import (
    test_bumped_version_key_runs_again,
    test_in_flight_instance_resumes_under_changed_code,
    test_inserted_step_runs_and_the_others_stay_cached,
    test_removed_step_is_ignored_and_the_instance_completes,
    test_reordered_steps_return_their_cached_results,
)

from memable_log import Engine
from memable_log._core import records as r
from memable_log.reader import RecordView

__all__ = [
    "test_bumped_version_key_runs_again",
    "test_cancel_of_a_finished_instance_changes_nothing",
    "test_cancel_stops_a_running_step_and_survives_restart",
    "test_concurrent_invokes_of_one_id_create_it_once",
    "test_forget_a_prefix_leaves_other_keys_cached",
    "test_forget_and_restart_after_a_fix",
    "test_in_flight_instance_resumes_under_changed_code",
    "test_inserted_step_runs_and_the_others_stay_cached",
    "test_invoke_is_idempotent_by_instance_id",
    "test_invoke_runs_the_workflow_and_wait_returns_its_result",
    "test_leaving_the_engine_as_a_step_returns_raises_nothing",
    "test_removed_step_is_ignored_and_the_instance_completes",
    "test_reordered_steps_return_their_cached_results",
    "test_restart_of_a_live_instance_raises_engine_error",
    "test_unencodable_input_raises_not_serializable_and_writes_nothing",
    "test_unknown_workflow_raises_and_writes_nothing",
]


class PgHome(Home):
    """A database that outlives engine lifetimes."""

    def __init__(self, dsn: str, tmp_path: Path) -> None:
        super().__init__("disk", tmp_path)
        self.kind = "postgres"
        self.dsn = dsn

    def builder(self) -> Any:
        return Engine.builder().postgres(self.dsn, worker="contract")

    def records(self) -> list[RecordView]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT seq, rec FROM ml_log ORDER BY seq").fetchall()
        views = []
        for seq, blob in rows:
            rec = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True)
            rec[r.SEQ] = seq
            views.append(r.view(rec, 0, seq))
        return views


@pytest.fixture
def home(pg_dsn: str, tmp_path: Path) -> Home:
    return PgHome(pg_dsn, tmp_path)
