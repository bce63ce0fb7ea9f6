"""Records as ``ml_log`` rows: which kinds the log treats apart, a row's
bytes back into a record, and a batch of records into ``ml_append``'s
parameters.

Why apart from the backend: these are pure functions of the records and of
what the engine holds (its epochs, its count of resets per instance), the
part of a write that needs no connection; the group commit (commit.py)
sends what ``encode`` makes.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .._core import records as r
from .driver import BYTEA, INT8, TEXT, array, int8

NEW = frozenset({r.CREATED, r.CHILD_CREATED})
OUTCOMES = frozenset({r.STEP_DONE, r.STEP_FAILED})
# Records that end a wait: at most one per instance and key in the log.
ENDS = frozenset({r.SIGNALLED, r.TIMER_FIRED, r.SUSPEND_TIMED_OUT})
RESETS = frozenset({r.FORGOT, r.RESTARTED})
# Records another engine may write for an instance this one owns: a signal
# (its wait's end is unique in the log), a child's end (written with the
# child's own outcome, which its owner's epoch fences).
UNFENCED = frozenset({r.SIGNALLED, r.CHILD_ENDED})
# Records another engine may be waiting for: a NOTIFY wakes its tailer.
NOTIFY = frozenset({r.CREATED, r.CHILD_CREATED, r.SIGNALLED, r.COMPLETED, r.FAILED,
                    r.CANCELLED, r.CANCELLED_FOR})
# Records that take an instance out of the queue: it starts, or it ends
# (lifecycle.py: the only ways out of QUEUED). ``ml_instances.queued`` is
# true only between a ``queued`` and one of these: an engine with room
# never takes an instance that runs (lease.take_queued).
UNQUEUE = frozenset({r.DEQUEUED, r.COMPLETED, r.FAILED, r.CANCELLED, r.CANCELLED_FOR})
_T, _F = b"\x01", b"\x00"


def unpack(blob: bytes, seq: int) -> list[Any]:
    """A row's ``rec`` as a checked record with its seq."""
    rec = msgpack.unpackb(blob, raw=False, strict_map_key=True, use_list=True)
    r.check(rec)
    rec[r.SEQ] = seq
    return rec  # type: ignore[no-any-return]


def encode(
    writer: str, recs: list[list[Any]], epochs: dict[str, int], resets: dict[str, int]
) -> list[bytes | None]:
    """``ml_append``'s parameters for ``recs``: the rows, the instances they
    create, and the fence (every other instance with the epoch this engine
    holds, -1 for none). Another engine's instance of which the batch only
    signals (or ends a child: the child's outcome beside it is fenced) is
    left unfenced. A step's outcome gets its ``step_key`` (the instance's
    count of resets, then the key), a wait's end ``w`` then the same. Last,
    the instances the batch leaves queued and those it takes out of the
    queue (``UNQUEUE``), by each one's last such record."""
    pack = msgpack.Packer().pack
    insts: list[bytes | None] = []
    keys: list[bytes | None] = []
    blobs: list[bytes | None] = []
    made: dict[str, None] = {}  # instances this batch creates (fenced by that)
    fence: dict[str, int] = {}  # the others, with the epoch we hold (-1: none)
    notify = False
    queue: dict[str, bool] = {}  # instance -> queued after this batch
    signals = {rec[r.INSTANCE] for rec in recs
               if rec[r.TYPE] in UNFENCED and rec[r.INSTANCE] not in epochs}
    for rec in recs:
        rtype, inst = rec[r.TYPE], rec[r.INSTANCE]
        insts.append(inst.encode())
        if rtype in NEW:
            made[inst] = None
        elif inst in signals and rtype not in UNFENCED:
            signals.discard(inst)
    for rec in recs:
        rtype, inst = rec[r.TYPE], rec[r.INSTANCE]
        if rtype not in NEW and inst != r.ENGINE and inst not in made and (
            inst not in signals
        ):
            fence[inst] = epochs.get(inst, -1)
        if rtype in OUTCOMES:
            keys.append(f"{resets.get(inst, 0)}:{rec[r.KEY]}".encode())
        elif rtype in ENDS:  # "w": never a step's (those start with a digit)
            keys.append(f"w{resets.get(inst, 0)}:{rec[r.KEY]}".encode())
        else:
            keys.append(None)
        blobs.append(pack(rec))
        notify = notify or rtype in NOTIFY
        if rtype == r.QUEUED:
            queue[inst] = True
        elif rtype in UNQUEUE:
            queue[inst] = False
    return [
        writer.encode(), array(TEXT, insts), array(TEXT, keys), array(BYTEA, blobs),
        array(TEXT, [i.encode() for i in made]), array(TEXT, [i.encode() for i in fence]),
        array(INT8, [int8(e) for e in fence.values()]), _T if notify else _F,
        array(TEXT, [i.encode() for i, q in queue.items() if q]),
        array(TEXT, [i.encode() for i, q in queue.items() if not q]),
    ]
