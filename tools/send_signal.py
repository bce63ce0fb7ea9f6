"""memable-signal: deliver a signal to a suspended instance from another process.

A thin shell around ``memable_log.operations.signal``: if no engine holds
the journal, the signal is appended; if one does, it is checked read-only
and handed over through the journal's inbox (durably), and the engine
applies it within moments. Given a ``postgresql://`` URL, it is appended
to the shared log at once, and the engine that runs the instance is woken.

Exit status: 0 delivered (appended, or handed over durably), 1 refused
(unknown instance, workflow mismatch, key already signalled or timed out,
damaged journal; the reason on stderr), 2 bad usage (arguments, JSON, no
journal at PATH).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from memable_log import EngineError, NotAJournal, NotSerializable, operations

from ._common import EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_USAGE, error, run

PROG = "memable-signal"
_HOW = {
    operations.Delivery.APPENDED: "appended to the journal",
    operations.Delivery.HANDED_OVER: "handed over to the running engine",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Deliver a signal to the suspension KEY of an instance.",
        epilog=EXIT_CODES.replace("0 done", "0 delivered"),
    )
    parser.add_argument("path", metavar="PATH",
                        help="the journal directory, or a postgresql:// URL")
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
    """Run memable-signal with ``argv`` (default: the command line); return the exit status."""
    return run(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        error(PROG, f"the payload is not valid JSON: {exc}")
        return EXIT_USAGE
    except RecursionError:
        error(PROG, "the payload is nested too deeply to read")
        return EXIT_USAGE
    try:
        how = operations.signal(args.path, args.workflow, args.instance, args.key, payload)
    except NotAJournal as exc:
        error(PROG, str(exc))
        return EXIT_FAILED
    except NotSerializable as exc:  # JSON values always encode; a guard, not a path
        error(PROG, f"cannot encode the payload: {exc}")
        return EXIT_USAGE
    except EngineError as exc:
        error(PROG, str(exc))
        return EXIT_FAILED
    except OSError as exc:
        error(PROG, f"cannot write the signal: {exc}")
        return EXIT_FAILED
    except (TypeError, ValueError) as exc:  # a key that cannot name a suspension
        error(PROG, str(exc))
        return EXIT_USAGE
    if not args.quiet:
        print(f"signal {args.key!r} for instance {args.instance!r} {_HOW[how]}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
