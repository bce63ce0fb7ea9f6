"""The snapshot keeps flow control (queued state, options, a cancel's
reason); one written before ``flow`` existed is refused for the full scan."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import trio

from memable_log import Context, Engine
from memable_log._core import lifecycle as lc
from memable_log._core.index import Index
from memable_log._journal.journal import Journal
from memable_log._storage import snapshot as snap
from memable_log._storage.memory import MemoryStorage
from memable_log._storage.snapshot import SNAPSHOT_NAME


def answers(index: Index) -> dict[str, Any]:
    return {
        iid: (e.workflow, e.state, e.created_ms, e.updated_ms, e.input, e.error, e.pending,
              e.last_seq, e.flow)
        for iid, e in index.instances.items()
    }


async def stuck(ctx: Context) -> None:
    await trio.sleep_forever()


async def build(storage: MemoryStorage) -> None:
    engine = Engine.builder().in_memory(storage).build()
    engine.register("job", stuck, max_running=1, key=lambda x: str(x), max_running_per_key=1)
    async with engine:
        await engine.invoke("job", 0, instance_id="run")
        await engine.invoke("job", 1, instance_id="q", priority=4, timeout=3600)
        await engine.invoke("job", 2, instance_id="late")
        await engine.invoke("job", 3, instance_id="timed", timeout=0)
        await trio.testing.wait_all_tasks_blocked()


async def open_index(storage: MemoryStorage, snapshots: bool) -> tuple[Index, bool]:
    index = Index()
    async with Journal(storage, index, snapshots=snapshots) as journal:
        journal.maintenance.keep_snapshot = False
        resumed = journal.resumed
    return index, resumed


async def test_a_snapshot_keeps_queued_instances_their_options_and_a_timeouts_reason(
    autojump_clock: Any,
) -> None:
    storage = MemoryStorage()
    await build(storage)
    fast, resumed = await open_index(storage, snapshots=True)
    assert resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)
    q = fast.instances["q"]
    assert q.state == lc.QUEUED
    assert q.flow is not None
    assert q.flow[0] == 4
    assert q.flow[2] == "1"
    assert fast.instances["timed"].state == lc.CANCELLED
    assert fast.instances["timed"].error == ("WorkflowCancelled", "timeout")


async def test_a_snapshot_written_before_flow_falls_back_to_the_full_scan(
    autojump_clock: Any,
) -> None:
    storage = MemoryStorage()
    await build(storage)
    data = storage.read(SNAPSHOT_NAME)
    head = len(snap.MAGIC) + 4
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data[head:])
    body = unpacker.unpack()
    rests = data[head + unpacker.tell():]  # the finished instances' rests follow the body
    for fields in body[5][8].values():  # the live instances' fields (snapshot_instances.py)
        del fields[-1]  # as they were before ``flow``
    packed = msgpack.packb(body, use_bin_type=True) + rests
    storage.remove(SNAPSHOT_NAME)
    file = storage.create(SNAPSHOT_NAME)
    file.write(snap.MAGIC + struct.pack("<I", zlib.crc32(packed)) + packed)
    file.sync()
    file.close()
    fast, resumed = await open_index(storage, snapshots=True)
    assert not resumed
    full, _ = await open_index(storage, snapshots=False)
    assert answers(fast) == answers(full)
    assert fast.instances["q"].state == lc.QUEUED
