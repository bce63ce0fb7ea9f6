"""memable-dump shows a published event's key and value, and a status text."""

from __future__ import annotations

from memable_log_tools import dump

from memable_log._core import records as r
from memable_log._core.codec import Codec


def test_text_shows_an_events_key_and_value_and_a_status_text() -> None:
    codec = Codec()
    published = r.view(r.make(r.PUBLISHED, 1_000, "chat-1", "tok-3", codec.encode(" sat")), 1, 40)
    status = r.view(r.make(r.STATUS_SET, 1_000, "chat-1", "generating", 2), 1, 80)
    assert published.fields["key"] == "tok-3"
    assert dump.summary(published) == 'value=" sat"'
    assert dump.summary(status) == "text=generating call=2"
    assert dump.record_json(published)["fields"] == {"key": "tok-3", "value": " sat"}
