"""Compaction in a child process: both ends of the pipe.

Theory of operation. Compaction is CPU work in Python (decode every record
of the sealed prefix, encode the survivors, compress): on a worker thread it
holds the GIL for long stretches, and every commit of the engine needs the
GIL to hand its fsync to a worker thread and to take the result back. So an
engine on a real directory runs ``_compactor.compact_prefix`` in a child
interpreter (``python -m memable_log._compaction.child``) with a GIL of its
own, on another core. The engine only re-points its index afterwards, in
chunks between checkpoints.

Safety. The child inherits the engine's lock descriptor: the flock stays
held until both have exited, so if the engine dies no new engine can open
the journal while the child still writes. So the child must die with the
engine, at once, or a restart right after a kill -9 finds the journal
locked. The engine keeps the write end of a pipe (the *watch* pipe) whose
read end only the child has; nobody ever writes to it, and when the engine
dies, however it dies, the kernel closes the write end. On Linux the read
end is set O_ASYNC, owned by the child, so that close raises SIGIO in the
child, whose default action ends it: the kernel does it, with no Python
code in the child (which may be deep in a zstd or msgpack call that holds
its GIL for seconds, and runs under SCHED_IDLE: a watcher thread took up
to 18 s to get the GIL on a busy machine). Elsewhere, and as a second line,
a thread blocked reading the pipe exits when the read returns end-of-file.
Not prctl(PR_SET_PDEATHSIG): it fires when the *thread* that spawned the
child exits, and trio spawns processes from a worker thread it retires
when idle, which would kill a healthy compaction; nor a poll of getppid,
which needs the GIL too. A child stopped half-way leaves a temp file that
the next start (or the service's next attempt) removes, as after any crash;
one stopped after its rename leaves a complete ``cmp-<k>``.

Priority. The child runs under SCHED_IDLE (elsewhere: nice 19): it takes
only CPU time nothing else wants, so the engine's threads, woken for a
commit, never wait for a core behind it. On a machine whose cores are all
busy, compaction waits (the journal grows meanwhile) rather than slowing
the engine down.

Protocol. stdin: one msgpack map, the request. stdout: ``[salt, next_seq,
records]``, then one array per instance with moved locations (see
``_compactor.Move``); locations travel as little-endian bytes, since inside
compacted blocks they exceed msgpack's 64-bit integers. Exit status 0 once
all of it is written; otherwise stderr says why.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import msgpack
import trio

from .._storage import crashpoints as _crashpoints
from .._storage.files import FileStorage
from .compactor import Move, compact_prefix, moves

# The child must import this very package, wherever it was loaded from.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ChildFailed(Exception):
    """The compaction child exited without finishing; the message says how."""


@dataclass
class Rewritten:
    """What a compaction wrote: the new file's salt, the seq after the
    compacted history, its record count, and the moves to apply."""

    salt: int
    next_seq: int
    records: int
    moved: Iterator[Move]


def _loc_out(value: int | None) -> bytes | None:
    return None if value is None else value.to_bytes((value.bit_length() + 7) // 8 or 1, "little")


def _loc_in(value: bytes | None) -> int | None:
    return None if value is None else int.from_bytes(value, "little")


def _decode_moves(unpacker: msgpack.Unpacker) -> Iterator[Move]:
    for iid, inp, out, steps, signals, events in unpacker:
        yield (
            iid, _loc_in(inp), _loc_in(out),
            {k: int.from_bytes(v, "little") for k, v in steps.items()},
            {k: int.from_bytes(v, "little") for k, v in signals.items()},
            {seq: int.from_bytes(v, "little") for seq, v in events},  # [seq, loc] pairs
        )


def usable(storage: object) -> bool:
    """Whether compaction of ``storage`` can run in a child process."""
    return isinstance(storage, FileStorage) and bool(sys.executable)


async def _kill(process: trio.Process) -> None:
    """Cancelled: stop the child at once (a crash, as far as the files go)."""
    process.kill()


async def compact_in_child(
    storage: FileStorage, upto: int, inline_limit: int, drop: Collection[str], snapshot: bool
) -> Rewritten:
    """Run ``compact_prefix`` in a child process; OSError if it cannot start.

    Cancelling the call kills the child; what it leaves is what a crash at
    that point leaves (see Safety).
    """
    lock_fd = storage.lock_fd
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    # The watch pipe (see Safety): both ends close-on-exec, so only the
    # child gets the read end, and only this process holds the write end.
    watch, alive = os.pipe()
    try:
        request = msgpack.packb({
            "path": storage.path, "upto": upto, "inline_limit": inline_limit,
            "drop": sorted(drop), "snapshot": snapshot, "watch": watch,
            "crash_point": _crashpoints.armed(),
        })
        done = await trio.run_process(
            [sys.executable, "-m", "memable_log._compaction.child"],
            stdin=request, capture_stdout=True, capture_stderr=True, check=False, env=env,
            pass_fds=(watch,) if lock_fd is None else (watch, lock_fd), deliver_cancel=_kill,
        )
    finally:  # the child has exited (a cancel kills it and waits)
        os.close(watch)
        os.close(alive)
    if done.returncode != 0:
        if _crashpoints.armed() is not None:  # the fuzz campaign watches fd 2
            for line in done.stderr.splitlines(keepends=True):
                if line.startswith(_crashpoints.LINE_PREFIX):
                    os.write(2, line)
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise ChildFailed(f"exit status {done.returncode}: {lines[-1] if lines else 'no message'}")
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=max(len(done.stdout), 1 << 20)
    )
    unpacker.feed(done.stdout)
    try:
        salt, next_seq, records = next(unpacker)
    except (StopIteration, ValueError) as exc:
        raise ChildFailed(f"unreadable answer: {exc!r}") from None
    return Rewritten(salt, next_seq, records, _decode_moves(unpacker))


# -- the child --------------------------------------------------------------


def _die_with_parent(watch: int) -> None:
    """End this process the moment the engine is gone (see Safety)."""
    if sys.platform.startswith("linux"):
        signal.signal(signal.SIGIO, signal.SIG_DFL)  # an ignored SIGIO would be inherited
        fcntl.fcntl(watch, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(watch, fcntl.F_SETFL, fcntl.fcntl(watch, fcntl.F_GETFL) | os.O_ASYNC)
    # Gone already (before the line above could arm the signal): end before
    # writing anything. The pipe is readable only at its end: nobody writes.
    if select.select([watch], [], [], 0)[0]:
        os._exit(3)

    def watch_thread() -> None:
        os.read(watch, 1)
        os._exit(3)

    threading.Thread(target=watch_thread, daemon=True).start()


def _step_aside() -> None:
    """Run only on CPU time the engine leaves idle (see Priority)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: the lowest nice value then
        try:
            os.nice(19)
        except OSError:
            pass


def main() -> int:
    request = msgpack.unpackb(sys.stdin.buffer.read(), raw=False)
    _die_with_parent(request["watch"])
    _step_aside()
    if request.get("crash_point"):
        _crashpoints.arm(*_crashpoints.parse(request["crash_point"]))
    storage = FileStorage(request["path"], create=False)
    fresh, salt, next_seq = compact_prefix(
        storage, request["upto"], request["inline_limit"],
        frozenset(request["drop"]), request["snapshot"],
    )
    out = sys.stdout.buffer
    pack = msgpack.Packer().pack
    out.write(pack([salt, next_seq, fresh.records]))
    for iid, inp, outcome, steps, signals, events in moves(fresh):
        out.write(pack([
            iid, _loc_out(inp), _loc_out(outcome),
            {k: _loc_out(v) for k, v in steps.items()},
            {k: _loc_out(v) for k, v in signals.items()},
            [[seq, _loc_out(v)] for seq, v in events.items()],
        ]))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
