"""memable-signal: deliver a signal to a suspended instance from another process.

If no engine holds the journal, the tool takes the lock and appends the
signal itself. If an engine holds it, the tool checks the journal read-only
and hands the signal over through the journal's inbox (durably: see
memable_log/_inbox.py); the engine applies it within moments.

Exit status: 0 delivered (appended, or handed over durably), 1 refused
(unknown instance, workflow mismatch, key already signalled or timed out,
damaged journal; the reason on stderr), 2 bad usage (arguments, JSON, no
journal at PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from memable_log import EngineError, JournalLocked
from memable_log._core.codec import Codec, EncodeError
from memable_log._core.index import Index
from memable_log._core.records import SIGNALLED, make
from memable_log._core.signals import check_signal
from memable_log._journal.offline import OfflineJournal
from memable_log._storage.files import FileStorage
from memable_log._storage.inbox import (
    HandoverError,
    decode_handover,
    encode_handover,
    pending,
    read_handover,
    write_handover,
)
from memable_log._storage.segments import scan, segment_numbers

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, run

PROG = "memable-signal"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deliver a signal to the suspension KEY of an instance.",
        epilog="Exit status: 0 delivered, 1 refused (reason on stderr), 2 bad usage.",
    )
    parser.add_argument("path", metavar="PATH", help="the journal directory")
    parser.add_argument("workflow", metavar="WORKFLOW", help="the instance's workflow name")
    parser.add_argument("instance", metavar="INSTANCE", help="the instance id")
    parser.add_argument("key", metavar="KEY", help="the suspension's key")
    parser.add_argument(
        "payload", metavar="JSON", nargs="?", default="null",
        help="the payload, as JSON (default: null)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        error(PROG, f"the payload is not valid JSON: {exc}")
        return EXIT_USAGE
    if not os.path.isdir(args.path) or not segment_numbers(os.listdir(args.path)):
        error(PROG, f"no journal at {args.path!r}")
        return EXIT_USAGE
    try:
        blob = Codec().encode(payload)
    except EncodeError as exc:  # JSON values always encode; a guard, not a path
        error(PROG, f"cannot encode the payload: {exc}")
        return EXIT_USAGE
    storage = FileStorage(args.path, create=False)
    now_ms = round(time.time() * 1000)
    try:
        try:
            with OfflineJournal(storage) as journal:
                check_signal(journal.index, args.workflow, args.instance, args.key, now_ms)
                journal.append([make(SIGNALLED, now_ms, args.instance, args.key, blob)])
            how = "appended to the journal"
        except JournalLocked:
            index = _read_index(storage)
            check_signal(index, args.workflow, args.instance, args.key, now_ms)
            _check_inbox(args.path, args.instance, args.key)
            data = encode_handover(args.workflow, args.instance, args.key, blob)
            write_handover(args.path, data)
            how = "handed over to the running engine"
    except EngineError as exc:
        error(PROG, str(exc))
        return EXIT_FAILED
    except OSError as exc:
        error(PROG, f"cannot write the signal: {exc}")
        return EXIT_FAILED
    if not args.quiet:
        print(f"signal {args.key!r} for instance {args.instance!r} {how}")
    return EXIT_OK


def _read_index(storage: FileStorage, attempts: int = 10) -> Index:
    """The journal's index, read without the lock while an engine runs.

    The engine's compaction deletes the segments it replaced, so a file
    listed a moment ago can be gone when it is read: read again, from the
    new listing.
    """
    for _ in range(attempts - 1):
        index = Index()
        try:
            scan(storage, index.apply)
            return index
        except FileNotFoundError:
            continue
    index = Index()
    scan(storage, index.apply)
    return index


def _check_inbox(path: str, instance_id: str, key: str) -> None:
    """Refuse a key that a hand-over still waiting in the inbox already signals."""
    for name in pending(path):
        try:
            _, waiting_instance, waiting_key, _ = decode_handover(read_handover(path, name))
        except (HandoverError, OSError):
            continue  # the engine reports damaged hand-overs; a vanished one was applied
        if (waiting_instance, waiting_key) == (instance_id, key):
            raise _Refused(
                f"a signal for key {key!r} of instance {instance_id!r} is already handed "
                "over and waiting for the engine; a key takes one signal"
            )


class _Refused(EngineError):
    pass


if __name__ == "__main__":
    sys.exit(main())
