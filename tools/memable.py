"""memable: operate a journal from the shell (SPEC-NEXT section 6).

Argument parsing and printing only: every command is one call of
``memable_log.operations`` (the pass-through commands ``dump``, ``compact``
and ``signal`` run ``memable-dump``, ``memable-compact`` and
``memable-signal`` with the rest of the line, exactly as those tools).

Reads (``status``, ``steps``, ``instances``) take no lock and print text,
or with ``--json`` one JSON value whose objects carry ``InstanceStatus``'s
and ``StepStatus``'s field names (times as UTC ISO 8601). Actions
(``invoke``, ``cancel``, ``restart``, ``forget``) are appended when no
engine holds the journal and handed over to it durably when one does.
Given a ``postgresql://`` URL, reads replay the shared log, and actions are
appended at once by a short-lived engine session (any engine may act on
any instance there); a serving engine runs what they leave live.

Exit status: 0 done; 1 refused (the reason on stderr: unknown instance, a
state that does not allow the action, an engine's refusal, a failed or
cancelled instance for ``invoke --wait``, a damaged journal, a path that is
not a journal); 2 bad usage (arguments, JSON, times); 130 interrupted;
141 the output pipe closed early.

Start-up is part of every command's latency (``invoke --wait`` aims at
100 ms in all), so this module imports only argparse at the top: the
library (msgpack, zstandard, the reader) is imported when a command runs,
and ``--help`` or a usage error never loads it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _common as c

if TYPE_CHECKING:
    from datetime import datetime

    from memable_log import InstanceStatus, StepStatus
    from memable_log.operations import Delivery

PROG = "memable"
_PASS_THROUGH = ("dump", "compact", "signal", "ui")


def _how(delivery: Delivery) -> str:
    return {"appended": "appended to the journal",
            "handed over": "handed over to the running engine"}[delivery.value]


class _Usage(Exception):
    """Bad usage found after parsing (a JSON input, a time): exit 2."""


def _when(text: str) -> datetime:
    """argparse type: an ISO 8601 time; one without a zone is UTC."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z or 2024-05-01)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``memable`` command's parser; with ``only`` (a command's name),
    one with that command alone, which parses its arguments the same way.

    A command's own parser is all one run needs, and building all of them
    costs a run of ``memable invoke`` more than its work does.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate a memable_log journal: invoke, cancel, restart, forget, signal; "
        "read status, steps and instances; dump and compact.",
        epilog=c.EXIT_CODES + " Run `memable COMMAND -h` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (text, add) in _SUBCOMMANDS.items():
        if only is None or name == only:
            cmd = sub.add_parser(name, help=text, description=text, epilog=c.EXIT_CODES)
            cmd.add_argument("path", metavar="PATH",
                             help="the journal directory, or a postgresql:// URL")
            add(cmd)
    if only is None:
        for name, tool in [("dump", "memable-dump"), ("compact", "memable-compact"),
                           ("signal", "memable-signal")]:
            sub.add_parser(name, help=f"run {tool} (same arguments; see {tool} -h)",
                           add_help=False)
        sub.add_parser("ui", help="serve a web page over the journal (see memable ui -h; "
                       "needs memable-log[ui])", add_help=False)
    return parser


def _invoke_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("workflow", metavar="WORKFLOW", help="the workflow's name")
    cmd.add_argument("input", metavar="JSON", nargs="?", default="null",
                     help="the input, as JSON (default: null)")
    cmd.add_argument("--id", dest="instance_id", metavar="ID",
                     help="the instance id (default: a new random one); an id already "
                     "in the journal is left as it is")
    cmd.add_argument("--wait", action="store_true",
                     help="wait until the instance finishes and print its result as JSON "
                     "(exit 1 if it failed or was cancelled)")
    cmd.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="with --wait: give up after this long (exit 1)")


def _id_argument(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("instance_id", metavar="ID", help="the instance id")


def _forget_arguments(cmd: argparse.ArgumentParser) -> None:
    _id_argument(cmd)
    cmd.add_argument("key", metavar="KEY_OR_PREFIX", help="a step key, or a prefix ending in *")


def _read_arguments(cmd: argparse.ArgumentParser) -> None:
    _id_argument(cmd)
    cmd.add_argument("--json", action="store_true", help="print JSON")


def _instances_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--state", metavar="S", help="only those in state S (running, "
                     "suspended, sleeping, waiting, completed, failed, cancelled, ...)")
    cmd.add_argument("--workflow", metavar="W", help="only instances of workflow W")
    cmd.add_argument("--prefix", metavar="P", help="only ids starting with P")
    cmd.add_argument("--since", type=_when, metavar="T",
                     help="only those created at or after T (ISO 8601; no zone: UTC)")
    cmd.add_argument("--until", type=_when, metavar="T", help="only those created before T")
    cmd.add_argument("--limit", type=_count, metavar="N", help="at most N of them")
    cmd.add_argument("--newest-first", action="store_true", help="newest first")
    cmd.add_argument("--json", action="store_true", help="print JSON")


# name: (what it does, what adds its arguments after PATH), in --help's order
_SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "invoke": ("Start an instance of WORKFLOW (its id is printed).", _invoke_arguments),
    "cancel": ("Cancel a live instance (and its live children).", _id_argument),
    "restart": ("Run a completed, failed or cancelled instance again.", _id_argument),
    "forget": ("Forget memoised steps: KEY, or every key under PREFIX*.", _forget_arguments),
    "status": ("Print one instance's status.", _read_arguments),
    "steps": ("Print one instance's memoised steps with their times.", _read_arguments),
    "instances": ("List instances, in creation order.", _instances_arguments),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run memable with ``argv`` (default: the command line); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _PASS_THROUGH:
        return _pass_through(args_list[0], args_list[1:])
    only = args_list[0] if args_list and args_list[0] in _SUBCOMMANDS else None
    args = build_parser(only).parse_args(args_list)
    c.tolerate_unencodable(sys.stdout)
    return c.run(lambda: _guarded(args))


def _pass_through(name: str, rest: list[str]) -> int:
    if name == "ui":
        from .ui import serve

        return serve.main(rest)
    if name == "dump":
        from . import dump as tool
    elif name == "compact":
        from . import compact as tool  # type: ignore[no-redef]
    else:
        from . import send_signal as tool  # type: ignore[no-redef]
    code: int = tool.main(rest)
    return code


def _guarded(args: argparse.Namespace) -> int:
    """Run the command; turn every refusal into a message and an exit status."""
    from memable_log import (
        EngineError,
        JournalCorrupt,
        NotAJournal,
        WorkflowCancelled,
        WorkflowFailed,
    )

    try:
        return _COMMANDS[args.command](args)
    except _Usage as exc:
        c.error(PROG, str(exc))
        return c.EXIT_USAGE
    except NotAJournal as exc:
        c.error(PROG, str(exc))
        return c.EXIT_FAILED
    except JournalCorrupt as exc:
        c.error(PROG, f"{exc}; the journal was not changed")
        return c.EXIT_FAILED
    except (WorkflowFailed, WorkflowCancelled) as exc:
        c.error(PROG, str(exc))
        return c.EXIT_FAILED
    except EngineError as exc:  # the refusals: unknown instance, a state, the engine's
        c.error(PROG, str(exc))
        return c.EXIT_FAILED
    except TimeoutError as exc:
        c.error(PROG, str(exc))
        return c.EXIT_FAILED
    except BrokenPipeError:
        raise  # our output was closed (| head); c.run handles it
    except OSError as exc:
        where = f" [{exc.filename}]" if exc.filename else ""
        c.error(PROG, f"{args.path}: {exc.strerror or exc}{where}")
        return c.EXIT_FAILED
    except (TypeError, ValueError) as exc:  # an empty id or key, an unknown state
        c.error(PROG, str(exc))
        return c.EXIT_USAGE


# -- actions --------------------------------------------------------------------------


def _invoke(args: argparse.Namespace) -> int:
    import json

    from memable_log import NotSerializable, operations

    try:
        value = json.loads(args.input)
    except json.JSONDecodeError as exc:
        raise _Usage(f"the input is not valid JSON: {exc}") from None
    except RecursionError:
        raise _Usage("the input is nested too deeply to read") from None
    if args.timeout is not None and not args.wait:
        raise _Usage("--timeout goes with --wait")
    if args.timeout is not None and not args.timeout > 0:
        raise _Usage("--timeout must be a number of seconds > 0")
    try:
        got = operations.invoke(args.path, args.workflow, value, instance_id=args.instance_id)
    except NotSerializable as exc:  # JSON values always encode; a guard
        raise _Usage(f"cannot encode the input: {exc}") from None
    how = "already in the journal; nothing written" if got.delivery is None else _how(
        got.delivery)
    c.error(PROG, f"instance {got.instance_id!r} of {args.workflow!r} {how}")
    if not args.wait:
        print(c.escape(got.instance_id))
        return c.EXIT_OK
    if got.delivery is operations.Delivery.APPENDED and not c.is_url(args.path):
        c.error(PROG, "no engine holds the journal: waiting for one to run the instance")
    result = operations.wait(args.path, got.instance_id, handover=got.handover,
                             timeout=args.timeout)
    print(json.dumps(result, ensure_ascii=False))
    return c.EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    from memable_log import operations

    how = operations.cancel(args.path, args.instance_id)
    if how is None:
        c.error(PROG, f"instance {args.instance_id!r} has finished already; nothing to cancel")
    else:
        c.error(PROG, f"cancel of instance {args.instance_id!r} {_how(how)}")
    return c.EXIT_OK


def _restart(args: argparse.Namespace) -> int:
    from memable_log import operations

    how = operations.restart(args.path, args.instance_id)
    c.error(PROG, f"restart of instance {args.instance_id!r} {_how(how)}")
    return c.EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from memable_log import operations

    how = operations.forget(args.path, args.instance_id, args.key)
    c.error(PROG, f"forget {args.key!r} of instance {args.instance_id!r} {_how(how)}")
    return c.EXIT_OK


# -- reads ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    import json

    from memable_log import operations

    st = operations.status(args.path, args.instance_id)
    if args.json:
        print(json.dumps(status_json(st), ensure_ascii=False))
        return c.EXIT_OK
    for name, value in status_json(st).items():
        if name == "waits":
            value = ", ".join(f"{w['kind']} {w['key']}" + (
                f" until {w['deadline']}" if w["deadline"] else "") for w in value) or None
        elif name == "error" and value is not None:
            value = f"{value['type']}: {value['message']}"
        print(f"{name + ':':<12} {c.escape('-' if value is None else str(value))}")
    return c.EXIT_OK


def _steps(args: argparse.Namespace) -> int:
    import json

    from memable_log import operations

    found = operations.steps(args.path, args.instance_id)
    if args.json:
        print(json.dumps([step_json(s) for s in found], ensure_ascii=False))
        return c.EXIT_OK
    rows = [["KEY", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"]]
    for s in found:
        j = step_json(s)
        error = j["error"]
        rows.append([s.key, s.state, str(s.attempts), j["started_at"] or "-",
                     j["finished_at"] or "-",
                     c.clip(f"{error['type']}: {error['message']}", 60) if error else "-"])
    _table(rows)
    return c.EXIT_OK


def _instances(args: argparse.Namespace) -> int:
    import json

    from memable_log import operations

    found = operations.instances(
        args.path, args.state, workflow=args.workflow, prefix=args.prefix, since=args.since,
        until=args.until, limit=args.limit, newest_first=args.newest_first,
    )
    if args.json:
        print(json.dumps([status_json(st) for st in found], ensure_ascii=False))
        return c.EXIT_OK
    rows = [["INSTANCE", "WORKFLOW", "STATE", "STEPS", "CREATED", "UPDATED", "STATUS"]]
    for st in found:
        rows.append([st.instance_id, st.workflow, st.state, str(st.steps),
                     c.iso_datetime(st.created_at), c.iso_datetime(st.updated_at),
                     c.clip(st.status, 40) if st.status is not None else "-"])
    _table(rows)
    return c.EXIT_OK


def _table(rows: list[list[str]]) -> None:
    rows = [[c.escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def status_json(st: InstanceStatus) -> dict[str, Any]:
    """An InstanceStatus as a JSON object with its field names."""
    return _record(st)


def step_json(step: StepStatus) -> dict[str, Any]:
    """A StepStatus as a JSON object with its field names."""
    return _record(step)


def _record(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _jsonable(value: Any) -> Any:
    """Times as UTC ISO 8601; an ErrorInfo or a Wait as an object."""
    from datetime import datetime

    from memable_log import ErrorInfo, Wait

    if isinstance(value, datetime):
        return c.iso_datetime(value)
    if isinstance(value, ErrorInfo):
        return {"type": value.type, "message": value.message}
    if isinstance(value, Wait):
        return {"kind": value.kind, "key": value.key, "deadline": _jsonable(value.deadline)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "invoke": _invoke,
    "cancel": _cancel,
    "restart": _restart,
    "forget": _forget,
    "status": _status,
    "steps": _steps,
    "instances": _instances,
}


if __name__ == "__main__":
    sys.exit(main())
