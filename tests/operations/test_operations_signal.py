"""operations.signal: appended with no engine, handed over to a running one.

The journals are real directories. A running engine is one in this
process (``async with engine``); the operation then runs on a worker
thread, as a blocking call in another program would, and meets the
engine's lock exactly as another process does (flock locks are per open
file, not per process).
"""

from __future__ import annotations

import struct
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from memable_log import (
    Context,
    Engine,
    JournalCorrupt,
    NotAJournal,
    NotSerializable,
    SignalAlreadyDelivered,
    UnknownInstance,
    operations,
)
from memable_log._storage.files import FileStorage
from memable_log._storage.inbox import pending
from memable_log.reader import read_journal
from memable_log.testing import wait_for_state

Delivery = operations.Delivery


async def approval(ctx: Context) -> list[Any]:
    count = await ctx.step("fetch-data:v1").run(lambda: 3)
    approved = await ctx.suspend("approval:v1", status="Waiting for manager approval")
    return [count, approved]


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


def _encode_money(value: Any) -> tuple[str, Any]:
    if isinstance(value, Money):
        return "money", value.cents
    raise TypeError(type(value).__name__)


def _decode_money(tag: str, plain: Any) -> Any:
    assert tag == "money"
    return f"{plain} cents"


def make_engine(path: Path) -> Engine:
    engine = Engine.builder().open(path).codec(_encode_money, _decode_money).build()
    engine.register("approval", approval)
    return engine


async def suspended(path: Path, *ids: str) -> None:
    """Instances of ``approval`` suspended at ``approval:v1``; no engine left running."""
    engine = make_engine(path)
    async with engine:
        for instance_id in ids:
            await engine.invoke("approval", instance_id=instance_id)
        for instance_id in ids:
            await wait_for_state(engine, instance_id, "suspended")


def signals(path: Path) -> list[tuple[str, str]]:
    return [(r.instance, r.fields["key"]) for r in read_journal(path) if r.type == "signalled"]


async def signal_off_thread(path: Path, *args: Any) -> Delivery:
    return await trio.to_thread.run_sync(operations.signal, path, *args)


async def test_signal_with_no_engine_is_appended_and_resumes_at_next_start(
    journal_dir: Path,
) -> None:
    await suspended(journal_dir, "a1")
    how = operations.signal(journal_dir, "approval", "a1", "approval:v1", {"by": "ann"})
    assert how is Delivery.APPENDED
    assert signals(journal_dir) == [("a1", "approval:v1")]
    assert pending(str(journal_dir)) == []
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, {"by": "ann"}]


async def test_signal_with_a_running_engine_is_handed_over_and_applied(
    journal_dir: Path,
) -> None:
    await suspended(journal_dir, "a1")
    engine = make_engine(journal_dir)
    async with engine:
        how = await signal_off_thread(journal_dir, "approval", "a1", "approval:v1", True)
        assert how is Delivery.HANDED_OVER
        assert await engine.wait("a1") == [3, True]
    assert pending(str(journal_dir)) == []
    assert signals(journal_dir) == [("a1", "approval:v1")]


async def test_second_signal_for_a_key_is_refused_with_and_without_engine(
    journal_dir: Path,
) -> None:
    await suspended(journal_dir, "a1")
    operations.signal(journal_dir, "approval", "a1", "approval:v1", 1)
    with pytest.raises(SignalAlreadyDelivered, match="already has a signal"):
        operations.signal(journal_dir, "approval", "a1", "approval:v1", 2)
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, 1]
        with pytest.raises(SignalAlreadyDelivered, match="already has a signal"):
            await signal_off_thread(journal_dir, "approval", "a1", "approval:v1", 3)
    assert signals(journal_dir) == [("a1", "approval:v1")]
    assert pending(str(journal_dir)) == []


async def test_signal_for_a_key_already_waiting_in_the_inbox_is_refused(
    journal_dir: Path,
) -> None:
    await suspended(journal_dir, "a1")
    storage = FileStorage(journal_dir)
    storage.lock()  # an engine's lock, without an engine applying hand-overs
    try:
        first = operations.signal(journal_dir, "approval", "a1", "approval:v1", "first")
        with pytest.raises(operations.SignalAlreadyHandedOver) as refused:
            operations.signal(journal_dir, "approval", "a1", "approval:v1", "second")
    finally:
        storage.unlock()
    assert first is Delivery.HANDED_OVER
    assert isinstance(refused.value, SignalAlreadyDelivered)
    assert (refused.value.instance_id, refused.value.key) == ("a1", "approval:v1")
    assert [refused.value.handover] == pending(str(journal_dir))
    assert "already handed over and waiting for the engine" in str(refused.value)
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, "first"]


@pytest.mark.parametrize("engine_running", [False, True])
async def test_unknown_instance_and_workflow_mismatch_are_refused_and_write_nothing(
    journal_dir: Path, engine_running: bool
) -> None:
    await suspended(journal_dir, "a1")
    storage = FileStorage(journal_dir)
    if engine_running:
        storage.lock()
    try:
        with pytest.raises(UnknownInstance, match="unknown instance 'nope'"):
            operations.signal(journal_dir, "approval", "nope", "approval:v1")
        with pytest.raises(UnknownInstance, match="instance of 'approval'"):
            operations.signal(journal_dir, "other", "a1", "approval:v1")
    finally:
        storage.unlock()
    assert signals(journal_dir) == []
    assert pending(str(journal_dir)) == []


async def test_payload_goes_through_the_encode_hook_given(journal_dir: Path) -> None:
    await suspended(journal_dir, "a1", "a2")
    with pytest.raises(NotSerializable, match="signal 'approval:v1'"):
        operations.signal(journal_dir, "approval", "a1", "approval:v1", Money(5))
    assert signals(journal_dir) == []
    operations.signal(journal_dir, "approval", "a1", "approval:v1", Money(5), encode=_encode_money)
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, "5 cents"]
        deliver = partial(operations.signal, encode=_encode_money)
        await trio.to_thread.run_sync(deliver, journal_dir, "approval", "a2", "approval:v1",
                                      Money(7))
        assert await engine.wait("a2") == [3, "7 cents"]


def test_signal_to_a_path_that_is_not_a_journal_creates_nothing(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    lock_only = tmp_path / "lock-only"
    lock_only.mkdir()
    (lock_only / "LOCK").touch()
    for path, reason in [
        (tmp_path / "missing", "no such file"),
        (a_file, "not a directory"),
        (empty, "no segment files"),
        (lock_only, "no segment files"),
    ]:
        with pytest.raises(NotAJournal, match=reason):
            operations.signal(path, "approval", "a1", "approval:v1")
    assert not (tmp_path / "missing").exists()
    assert list(empty.iterdir()) == []
    assert [p.name for p in lock_only.iterdir()] == ["LOCK"]


async def test_signal_to_a_damaged_journal_raises_journal_corrupt(journal_dir: Path) -> None:
    await suspended(journal_dir, "a1")
    segment = journal_dir / "seg-0000000001.mlog"
    data = bytearray(segment.read_bytes())
    data[60] ^= 0xFF  # inside the first record: later commits prove it was durable
    segment.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=r"seg-0000000001\.mlog"):
        operations.signal(journal_dir, "approval", "a1", "approval:v1")
    storage = FileStorage(journal_dir)
    storage.lock()
    try:
        with pytest.raises(JournalCorrupt):
            operations.signal(journal_dir, "approval", "a1", "approval:v1")
    finally:
        storage.unlock()
    assert pending(str(journal_dir)) == []


async def test_handover_file_in_the_documented_format_is_applied(journal_dir: Path) -> None:
    """The bytes of docs/format.md's hand-over file, built here by hand: what
    any memable-signal ever wrote is applied by the engine."""
    await suspended(journal_dir, "a1")
    blob = b"\x00" + msgpack.packb("by hand")
    body = msgpack.packb(["approval", "a1", "approval:v1", blob], use_bin_type=True)
    inbox = journal_dir / "inbox"
    inbox.mkdir()
    name = f"{1:020d}-1-00000000.sig"
    (inbox / name).write_bytes(b"MMBLSIG1" + struct.pack("<I", zlib.crc32(body)) + body)
    engine = make_engine(journal_dir)
    async with engine:
        assert await engine.wait("a1") == [3, "by hand"]
    assert list(inbox.iterdir()) == []
