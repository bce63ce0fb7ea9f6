"""The live view: follow the journal in a thread, hand an instance's new records to trio.

``follow(path, instance_id, after)`` is an async iterator of batches of
that instance's records with a sequence number >= ``after`` (the page
showed the ones before). A thread of its own runs ``follow_journal`` (the
follower ``memable-dump --follow`` uses: no lock, every complete record
once, across roll-over and compaction) and sends a batch each time it has
caught up; closing the iterator closes the follower, which ends the thread.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator

import trio

from memable_log.reader import RecordView, follow_journal

INTERVAL = 0.1  # seconds between looks for new records, as memable-dump --follow


async def follow(path: str, instance_id: str, after: int,
                 interval: float = INTERVAL) -> AsyncGenerator[list[RecordView], None]:
    send, receive = trio.open_memory_channel[list[RecordView]](1)
    token = trio.lowlevel.current_trio_token()
    batch: list[RecordView] = []

    def flush() -> None:
        if batch:
            out = batch.copy()
            batch.clear()
            trio.from_thread.run(send.send, out, trio_token=token)

    follower = follow_journal(path, interval=interval, on_wait=flush)

    def run() -> None:
        try:
            for rec in follower:
                if rec.instance == instance_id and rec.seq >= after:
                    batch.append(rec)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
            pass  # the page went away
        finally:
            follower.close()
            try:
                trio.from_thread.run_sync(send.close, trio_token=token)
            except trio.RunFinishedError:
                pass

    thread = threading.Thread(target=run, name=f"memable-ui follow {instance_id}", daemon=True)
    thread.start()
    try:
        async with receive:
            async for got in receive:
                yield got
    finally:
        follower.close()
