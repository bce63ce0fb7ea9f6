"""memable-compact: compact a journal that no engine holds.

A thin shell around ``memable_log.operations.compact``. Every sealed
segment, and the active one (sealed first if it has records), is rewritten
as one compacted segment holding only what is live: every record of
instances in flight, the memoised outcomes, signals and timers of
finished instances, and nothing superseded. With ``--retention``, finished
instances unchanged for longer are dropped entirely. The rewrite is
crash-safe (temp file, fsync, rename, directory fsync, then the old
segments are deleted): interrupted at any point, the journal opens with the
same contents.

Exit status: 0 compacted (or nothing to do), 1 refused (an engine holds the
journal: JournalLocked; the journal is damaged; a write failed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from memable_log import EngineError, NotAJournal, operations

from ._common import EXIT_CODES, EXIT_FAILED, EXIT_OK, error, run

PROG = "memable-compact"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (examples: 30d, 12h, 90m, 45s)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compact a journal that no engine holds, and report the space saved.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("path", metavar="PATH", help="the journal directory")
    parser.add_argument(
        "--retention", type=parse_duration, default=None, metavar="DURATION",
        help="drop completed, failed and cancelled instances unchanged for longer "
        "(e.g. 30d); default: keep them all",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run memable-compact with ``argv`` (default: the command line); return the exit status."""
    return run(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        stats = operations.compact(args.path, retention=args.retention)
    except NotAJournal as exc:
        error(PROG, str(exc))
        return EXIT_FAILED
    except EngineError as exc:  # JournalLocked, JournalCorrupt
        error(PROG, str(exc))
        return EXIT_FAILED
    except OSError as exc:
        error(PROG, f"compaction failed: {exc}; the journal still opens as it was")
        return EXIT_FAILED
    saved = stats.bytes_before - stats.bytes_after
    pct = 100 * saved / stats.bytes_before if stats.bytes_before else 0.0
    print(f"bytes before:      {stats.bytes_before:>12,}")
    print(f"bytes after:       {stats.bytes_after:>12,}  ({pct:.1f}% saved)")
    print(f"records before:    {stats.records_before:>12,}")
    print(f"records kept:      {stats.records_after:>12,}")
    print(f"instances dropped: {stats.instances_dropped:>12,}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
