"""memable-dump shows schedules and debounce records readably (times as UTC)."""

from __future__ import annotations

from memable_log_tools import dump

from memable_log._core import records as r
from memable_log._core.codec import Codec

T = 1_700_000_040_000  # 2023-11-14T22:14:00Z


def test_text_shows_schedules_and_debounce_with_their_times() -> None:
    blob = Codec().encode({"n": 1})
    views = [r.view(rec, 1, 40) for rec in (
        r.make(r.SCHEDULE_SET, T, r.ENGINE, "every", "report", "* * * * *", blob, True, T),
        r.make(r.SCHEDULE_TICKED, T, r.ENGINE, "every", T + 60_000),
        r.make(r.SCHEDULE_REMOVED, T, r.ENGINE, "every"),
        r.make(r.DEBOUNCE_SET, T, r.ENGINE, "sync", "acct-1", 2, blob, T + 5_000),
        r.make(r.DEBOUNCE_SET, T, r.ENGINE, "sync", "acct-1", 2, b"", None),
    )]
    assert [dump.summary(v) for v in views] == [
        'name=every workflow=report cron="* * * * *" input={"n":1} catch_up=True '
        "after=2023-11-14T22:14:00.000Z",
        "name=every tick=2023-11-14T22:15:00.000Z",
        "name=every",
        'workflow=sync debounce_key=acct-1 n=2 input={"n":1} due=2023-11-14T22:14:05.000Z',
        "workflow=sync debounce_key=acct-1 n=2 started",
    ]
    assert dump.record_json(views[0])["instance"] == ""
