"""memable-dump: print a journal's records in order, for a person or a program.

Theory of operation. The tool is a small pipeline::

    source  ->  RecordFilter  ->  sink

The source is ``read_journal`` (the records there are) or, with
``--follow``, ``follow_journal`` (those, then each new one as it is
appended, across roll-over and compaction). Both take no lock and write
nothing, so the tool runs while an engine holds the journal and never slows
it. The sink is a printer, text or JSON lines: each takes records one at a
time (``emit``), may hold some back (the text printer sizes its columns on
its first records) until ``flush``, and is closed at the end (``close``).
When following, the follower calls ``flush`` each time it has caught up,
so a line appears as soon as its record is durable. A follower may be
started before the application creates the journal: it says so once on
stderr and waits for the journal to appear.

``--instances`` and ``--stats`` replace the printer: they replay the whole
journal through the engine's own index (``JournalReader.instances``) and
print a table of instances, or the journal's size and shape.

Exit status: 0 every record was printed; 1 the journal is damaged or could
not be read (the records before the damage are printed, then an error
naming the file and byte offset goes to stderr); 2 bad usage, or the path is
missing or not a journal (as ``ls`` and ``grep`` do for a bad argument; with
``--follow`` a missing path, or a directory with no journal in it yet, is
waited for instead, and only a path that is not a directory is bad usage);
130 interrupted (Ctrl-C, the way to stop ``--follow``); 141 the output pipe
closed early (``| head``), as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from memable_log import EngineError, InstanceStatus, JournalCorrupt, JournalFormatError
from memable_log.reader import (
    DEFAULT_INTERVAL,
    INSTANCE_STATES,
    RECORD_TYPES,
    FollowGap,
    JournalReader,
    NotAJournal,
    RecordView,
    decode_value,
    follow_journal,
    is_segment_file,
    read_journal,
)

from . import _common as c

PROG = "memable-dump"

# Widths of the text output. Identity columns (instance, key) grow to fit
# the widest value in the look-ahead, up to a cap; a longer value is printed
# whole and pushes that one line out of alignment rather than being cut.
_LOOKAHEAD = 256
_INSTANCE_CAP = 36
_KEY_CAP = 32
_TYPE_WIDTH = max(len(name) for name in RECORD_TYPES.values())
_VALUE_WIDTH = 60  # one decoded value in the text output
_MESSAGE_WIDTH = 80  # an error message in the text output
_BARE = re.compile(r"[\w.:/@+\-]+")


# -- filtering --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records to show; None in a field means "any".

    ``key`` matches a record's key exactly, or as a prefix when it ends in
    ``*``. Records without a key never match a key filter.
    """

    instances: frozenset[str] | None = None
    key: str | None = None
    types: frozenset[str] | None = None

    def __call__(self, rec: RecordView) -> bool:
        if self.types is not None and rec.type not in self.types:
            return False
        if self.instances is not None and rec.instance not in self.instances:
            return False
        if self.key is not None:
            key = rec.fields.get("key")
            if not isinstance(key, str):
                return False
            if self.key.endswith("*"):
                return key.startswith(self.key[:-1])
            return key == self.key
        return True


def _names(text: str, valid: Iterable[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        problem = f"unknown {what} {unknown[0]!r}" if unknown else f"no {what} given"
        raise argparse.ArgumentTypeError(f"{problem}; valid: {', '.join(valid)}")
    return names


def _record_types(text: str) -> list[str]:
    """argparse type for --type: comma-separated record type names."""
    return _names(text, RECORD_TYPES.values(), "record type")


def _states(text: str) -> list[str]:
    """argparse type for --state: comma-separated instance state names."""
    return _names(text, INSTANCE_STATES, "state")


def _interval(text: str) -> float:
    """argparse type for --interval: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


# -- printing ---------------------------------------------------------------


def _time(rec: RecordView) -> str:
    return c.iso_ms(rec.ts_ms)


def _compact(value: Any) -> str:
    """A decoded value as one line of compact JSON, safe for a terminal."""
    return c.escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _text(value: str) -> str:
    """A string field: bare if it is a plain word, else quoted."""
    if _BARE.fullmatch(value):
        return value
    return _compact(value)


def summary(rec: RecordView) -> str:
    """The fields of ``rec`` other than its key, in one short line.

    Values are decoded and cut to a readable width; a deadline is shown as a
    UTC time; a traceback is left out (``--json`` shows it).
    """
    fields = rec.fields
    parts: list[str] = []
    for name, value in fields.items():
        if name in ("key", "traceback", "message") or value is None or value == {}:
            continue
        if name == "error_type":
            message = c.clip(_text(str(fields.get("message", ""))), _MESSAGE_WIDTH)
            parts.append(f"error={_text(value)}: {message}")
        elif name == "deadline_ms":
            parts.append(f"deadline={c.iso_ms(value)}")
        elif name in _ENGINE_TIMES and type(value) is int:  # schedules, debounce
            parts.append(f"{_ENGINE_TIMES[name]}={c.iso_ms(value)}")
        elif rec.type == "debounce_set" and name == "input" and fields.get("due_ms") is None:
            parts.append("started")  # the start was made: no input, no due time
        elif name in _STEP_FIELDS:
            shown = _step_field(name, value)
            if shown and not (name == "started_ms" and value == rec.ts_ms):
                parts.append(shown)
        elif rec.type.startswith("state_image") and name == "state":
            parts.append(f"state={_state_name(value)}")
        elif rec.type == "child_ended" and name in ("state", "value"):
            # The child's outcome: its state by name; its value only if it
            # completed (a failed child's traceback is in --json).
            if name == "state":
                parts.append(f"state={_state_name(value)}")
            elif fields.get("state") == _COMPLETED:
                parts.append(f"value={c.clip(_compact(decode_value(value)), _VALUE_WIDTH)}")
        elif isinstance(value, dict):  # state images: waits, timers, done_waits
            waits = {k: _wait_text(name, v) for k, v in value.items()}
            parts.append(f"{name}={c.clip(_compact(waits), _VALUE_WIDTH)}")
        elif isinstance(value, list):  # parked keys, an image's pending keys
            if value:
                parts.append(f"{name}={c.clip(_text(','.join(value)), _VALUE_WIDTH)}")
        elif isinstance(value, bytes):
            parts.append(f"{name}={c.clip(_compact(decode_value(value)), _VALUE_WIDTH)}")
        elif isinstance(value, str):
            parts.append(f"{name}={c.clip(_text(value), _VALUE_WIDTH)}")
        else:
            parts.append(f"{name}={value!r}")
    return " ".join(parts)


# Times in engine-level records (schedule_set, schedule_ticked, debounce_set).
_ENGINE_TIMES = {"after_ms": "after", "tick_ms": "tick", "due_ms": "due"}

# Format version 3's step fields (step_done, step_failed, attempt_failed).
_STEP_FIELDS = frozenset({"started_ms", "attempts", "errors"})


def _step_field(name: str, value: Any) -> str:
    """A step's start as a time (left out by the caller when it is the
    record's own), its attempts unless just one, and the type of each
    attempt's error (the last one's message is its ``error=``)."""
    if name == "started_ms" and type(value) is int:
        return f"started={c.iso_ms(value)}"
    if name == "attempts":
        return "" if value == 1 else f"attempts={value!r}"
    if name == "errors" and type(value) is list:
        types = [str(e[0]) if type(e) is list and e else "?" for e in value]
        return "" if len(types) < 2 else f"errors={c.clip(_text(','.join(types)), _VALUE_WIDTH)}"
    return f"{name}={_compact(value)}"


class TextPrinter:
    """One aligned line per record: seq, time, type, instance, key, the rest.

    The first records are held back (up to a look-ahead) to size the
    columns; ``flush`` prints what is held, ``close`` ends the output.
    """

    def __init__(self, out: TextIO, lookahead: int = _LOOKAHEAD) -> None:
        self._out = out
        self._lookahead = lookahead
        self._held: list[RecordView] | None = []
        self._widths = (1, 1, 1)  # seq, instance, key

    def emit(self, rec: RecordView) -> None:
        if self._held is None:
            self._write(rec)
            return
        self._held.append(rec)
        if len(self._held) >= self._lookahead:
            self.flush()

    def flush(self) -> None:
        """Print every held record (the columns are sized from them).

        With nothing held yet (a followed journal that is still empty), it
        goes on holding, so the first records to come size the columns.
        """
        held = self._held
        if held:
            self._held = None
            self._widths = (
                max(len(str(rec.seq)) for rec in held),
                min(max(len(c.escape(rec.instance)) for rec in held), _INSTANCE_CAP),
                min(max(len(_key(rec)) for rec in held), _KEY_CAP),
            )
            for rec in held:
                self._write(rec)
        self._out.flush()

    def close(self) -> None:
        self.flush()

    def _write(self, rec: RecordView) -> None:
        seq_w, inst_w, key_w = self._widths
        line = (
            f"{rec.seq:>{seq_w}}  {_time(rec)}  {rec.type:<{_TYPE_WIDTH}}  "
            f"{c.escape(rec.instance):<{inst_w}}  {_key(rec):<{key_w}}  {summary(rec)}"
        )
        self._out.write(line.rstrip() + "\n")


def _wait_text(table: str, value: Any) -> Any:
    """One entry of a state image's table, readable: a deadline as a time,
    a wait as its kind and deadline, an ended wait as the record that ended it."""
    if table == "timers" and type(value) is int:
        return c.iso_ms(value)
    if table == "waits" and type(value) is list and len(value) == 3:
        kind, deadline, _ = value
        name = ("signal", "timer", "child")[kind] if kind in (0, 1, 2) else str(kind)
        return f"{name} until {c.iso_ms(deadline)}" if type(deadline) is int else name
    return RECORD_TYPES.get(value, value) if type(value) is int else value


_COMPLETED = INSTANCE_STATES.index("completed")


def _state_name(state: int) -> str:
    return INSTANCE_STATES[state] if 0 <= state < len(INSTANCE_STATES) else str(state)


def _key(rec: RecordView) -> str:
    key = rec.fields.get("key")
    return c.escape(key) if isinstance(key, str) else "-"


def record_json(rec: RecordView) -> dict[str, Any]:
    """The JSON object ``--json`` prints for ``rec`` (see docs/format.md).

    Every field is kept; value blobs are decoded with ``decode_value``, so
    bytes appear as ``{"$bytes": "<hex>"}``.
    """
    return {
        "seq": rec.seq,
        "time": _time(rec),
        "ts_ms": rec.ts_ms,
        "type": rec.type,
        "instance": rec.instance,
        "fields": {
            name: decode_value(value) if isinstance(value, bytes) else value
            for name, value in rec.fields.items()
        },
        "segment": rec.segment,
        "offset": rec.offset,
    }


class JsonPrinter:
    """One JSON object per line (ASCII only, so any terminal or pipe takes it)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def emit(self, rec: RecordView) -> None:
        self._out.write(json.dumps(record_json(rec), ensure_ascii=True) + "\n")

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self.flush()


# -- instances and stats -----------------------------------------------------

_STATUS_WIDTH = 40  # the status (or error) column of the instance table
_COLUMN_CAPS = {"INSTANCE": _INSTANCE_CAP, "WORKFLOW": 24, "KEY": _KEY_CAP}


def instance_json(status: InstanceStatus) -> dict[str, Any]:
    """The JSON object ``--instances --json`` prints for one instance.

    The fields of ``InstanceStatus``; times as UTC ISO 8601 strings.
    """
    error = status.error
    return {
        "instance_id": status.instance_id,
        "workflow": status.workflow,
        "state": status.state,
        "status": status.status,
        "key": status.key,
        "deadline": c.iso_datetime(status.deadline) if status.deadline is not None else None,
        "waits": [
            {"kind": w.kind, "key": w.key,
             "deadline": c.iso_datetime(w.deadline) if w.deadline is not None else None}
            for w in status.waits
        ],
        "steps": status.steps,
        "error": {"type": error.type, "message": error.message} if error is not None else None,
        "created_at": c.iso_datetime(status.created_at),
        "updated_at": c.iso_datetime(status.updated_at),
        "parent": status.parent,
    }


def _status_text(status: InstanceStatus) -> str:
    if status.error is not None:
        text = f"{status.error.type}: {status.error.message}"
    elif status.status is not None:
        text = status.status
    else:
        return "-"
    return c.clip(c.escape(text), _STATUS_WIDTH)


def instance_rows(statuses: Iterable[InstanceStatus]) -> list[dict[str, str]]:
    """The cells of the instance table, one dict (column -> text) per instance."""
    return [
        {
            "INSTANCE": c.escape(st.instance_id),
            "WORKFLOW": c.escape(st.workflow),
            "STATE": st.state,
            "STATUS": _status_text(st),
            "KEY": c.escape(st.key) if st.key is not None else "-",
            "DEADLINE": c.iso_datetime(st.deadline) if st.deadline is not None else "-",
            "STEPS": str(st.steps),
            "UPDATED": c.iso_datetime(st.updated_at),
        }
        for st in statuses
    ]


def print_instance_table(statuses: Sequence[InstanceStatus], out: TextIO) -> None:
    """An aligned table: a header line, then one line per instance.

    Identity columns grow to fit their widest value up to a cap; a longer
    value is printed whole and pushes its line out of alignment rather
    than being cut. The status text (or, for a failed instance, the error)
    is cut to a readable width.
    """
    rows = instance_rows(statuses)
    columns = ["INSTANCE", "WORKFLOW", "STATE", "STATUS", "KEY", "DEADLINE", "STEPS", "UPDATED"]
    widths = {
        col: min(
            max([len(col), *(len(row[col]) for row in rows)]), _COLUMN_CAPS.get(col, 1 << 30)
        )
        for col in columns
    }
    for row in [dict(zip(columns, columns, strict=True)), *rows]:
        cells = [
            row[col].rjust(widths[col]) if col == "STEPS" else row[col].ljust(widths[col])
            for col in columns
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def stats_json(reader: JournalReader, statuses: Sequence[InstanceStatus]) -> dict[str, Any]:
    """What ``--stats --json`` prints: the journal's shape, after a full read."""
    files = reader.files
    compacted = [name for name in files if name.startswith("cmp-")]
    sizes = _sizes(reader.location)
    segment_bytes = sum(sizes.pop(name, 0) for name in files)
    leftover_bytes = sum(sizes.pop(name, 0) for name in reader.skipped)
    other_bytes = sum(sizes.values())
    by_state = Counter(st.state for st in statuses)
    torn = reader.torn
    zeros = reader.zero_tail
    return {
        "path": reader.location,
        "segments": {
            "plain": len(files) - len(compacted),
            "compacted": len(compacted),
            "files": files,
        },
        "records": {
            "total": reader.records,
            "compacted": reader.compacted,
            "plain": reader.records - reader.compacted,
        },
        "next_seq": reader.next_seq,
        "bytes": {
            "segments": segment_bytes,
            "leftovers": leftover_bytes,
            "other": other_bytes,
            "total": segment_bytes + leftover_bytes + other_bytes,
        },
        "leftovers": reader.skipped,
        "instances": {
            "total": len(statuses),
            "by_state": {state: by_state.get(state, 0) for state in INSTANCE_STATES},
        },
        "torn_tail": None if torn is None else {
            "file": os.path.basename(torn.file), "segment": torn.segment,
            "offset": torn.offset, "size": torn.size,
        },
        "zero_tail": None if zeros is None else {
            "file": os.path.basename(zeros[0]), "offset": zeros[1], "size": zeros[2],
        },
    }


def _sizes(path: str) -> dict[str, int]:
    """Sizes of the regular files in the journal directory (not its inbox)."""
    sizes = {}
    for entry in os.scandir(path):
        try:
            if entry.is_file(follow_symlinks=False):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue  # deleted meanwhile (a compaction's leftovers)
    return sizes


def print_stats(stats: dict[str, Any], out: TextIO) -> None:
    """``stats_json``'s facts as aligned lines for a person."""
    seg, recs, size = stats["segments"], stats["records"], stats["bytes"]
    files = seg["files"]
    plain = [name for name in files if name.startswith("seg-")]
    shown = []
    if seg["compacted"]:
        shown.append(files[0])
    if plain:
        shown.append(plain[0] if len(plain) == 1 else f"{plain[0]} .. {plain[-1]}")
    lines = [
        ("journal", c.escape(stats["path"])),
        ("segments", f"{len(files)}: {seg['compacted']} compacted, {seg['plain']} plain"
         + (f" ({', '.join(shown)})" if shown else "")),
        ("records", f"{recs['total']:,}: {recs['compacted']:,} compacted, "
         f"{recs['plain']:,} plain; next seq {stats['next_seq']:,}"),
        ("bytes", f"{size['total']:,} on disk: {size['segments']:,} in segments, "
         f"{size['leftovers']:,} in leftovers, {size['other']:,} in other files"),
    ]
    if stats["leftovers"]:
        lines.append(("leftovers", ", ".join(stats["leftovers"]) + " (deleted by the next "
                      "compaction or engine start)"))
    inst = stats["instances"]
    lines.append(("instances", f"{inst['total']:,}"))
    lines += [(f"  {state}", f"{count:,}") for state, count in inst["by_state"].items()]
    torn = stats["torn_tail"]
    lines.append(("torn tail", "none" if torn is None else (
        f"{torn['size']:,} bytes at byte {torn['offset']:,} of {torn['file']} (a write "
        "in progress, or the remains of a crash: the next engine start cuts it off)"
    )))
    zeros = stats.get("zero_tail")
    if zeros is not None:
        lines.append(("zero tail", f"{zeros['size']:,} bytes at byte {zeros['offset']:,} of "
                      f"{zeros['file']} (preallocated by the writer, not yet written: unused "
                      "space, not damage)"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        out.write(f"{label:<{width}}  {value}\n")


def print_pg_stats(stats: dict[str, Any], out: TextIO) -> None:
    """``PostgresReader.stats``'s facts as aligned lines for a person."""
    size, engines, inst = stats["bytes"], stats["engines"], stats["instances"]
    lines = [
        ("journal", c.escape(f"PostgreSQL {stats['url']}")),
        ("records", f"{stats['records']:,} in ml_log; next seq {stats['next_seq']:,}"),
        ("bytes", f"{size['total']:,} with indexes: ml_log {size['ml_log']:,}, "
         f"ml_instances {size['ml_instances']:,}, ml_workers {size['ml_workers']:,}"),
        ("engines", f"{engines['holding_a_lease']:,} holding a lease "
         f"({engines['rows']:,} worker rows)"),
        ("instances", f"{inst['total']:,}"),
    ]
    lines += [(f"  {state}", f"{count:,}") for state, count in inst["by_state"].items()]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        out.write(f"{label:<{width}}  {value}\n")


# -- the command ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of memable-dump."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Print the records of a memable_log journal in order, follow new ones, "
            "or show its instances or statistics. Needs no lock: safe while an "
            "engine runs."
        ),
        epilog=(
            "Text output: one line per record: seq, time (UTC), type, instance, key "
            "('-' if none), then the other fields with values decoded and shortened. "
            "--json prints every field in full; bytes appear as {\"$bytes\": HEX}. "
            "Records of a compacted segment (history rewritten by compaction) come "
            "first, with seq 0. "
            "Exit status: 0 done; 1 refused: PATH is not a journal (--follow waits for a "
            "PATH that does not exist yet, or holds no journal yet) or cannot be read, "
            "or the journal is damaged (records before the damage are printed first); "
            "2 bad usage; 130 interrupted (Ctrl-C stops --follow); 141 the output pipe "
            "was closed."
        ),
    )
    parser.add_argument("path", metavar="PATH",
                        help="the journal directory, or a postgresql:// URL")
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON object per line: every field of each record (or instance, "
        "or the statistics)",
    )
    parser.add_argument(
        "--instance", action="append", metavar="ID",
        help="only records (or instances) with this id (repeatable)",
    )
    parser.add_argument(
        "--key", metavar="KEY",
        help="only records with this key; a trailing * matches a prefix ('search:*')",
    )
    parser.add_argument(
        "--type", action="append", type=_record_types, metavar="TYPE", dest="types",
        help=f"only records of these types (repeatable or comma-separated): "
        f"{', '.join(RECORD_TYPES.values())}",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing new records as they are appended, across segment roll-over "
        "and compaction, until interrupted (Ctrl-C); if PATH holds no journal yet, wait "
        "for one",
    )
    parser.add_argument(
        "--interval", type=_interval, default=DEFAULT_INTERVAL, metavar="SECONDS",
        help=f"with --follow: how often to look for new records (default {DEFAULT_INTERVAL})",
    )
    parser.add_argument(
        "--instances", action="store_true",
        help="print a table of instances (id, workflow, state, status text or error, "
        "key, deadline, memoised steps, last update) instead of records",
    )
    parser.add_argument(
        "--state", action="append", type=_states, metavar="STATE", dest="states",
        help=f"with --instances: only instances in these states (repeatable or "
        f"comma-separated): {', '.join(INSTANCE_STATES)}",
    )
    parser.add_argument(
        "--stats", action="store_true",
        help="print the journal's segments, records, bytes on disk, instances by state "
        "and torn tail",
    )
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that do not go together (exit 2, as argparse does)."""
    modes = [flag for flag, on in (("--follow", args.follow), ("--instances", args.instances),
                                   ("--stats", args.stats)) if on]
    if len(modes) > 1:
        parser.error(f"{modes[0]} and {modes[1]} cannot be used together")
    mode = modes[0] if modes else None
    if args.states and mode != "--instances":
        parser.error("--state goes with --instances")
    if mode in ("--instances", "--stats") and (args.key is not None or args.types):
        parser.error(f"--key and --type filter records: they do not go with {mode}")
    if mode == "--stats" and args.instance:
        parser.error("--instance does not go with --stats")


def make_filter(args: argparse.Namespace) -> RecordFilter:
    """The record filter the parsed arguments ask for."""
    types = [name for group in args.types or () for name in group]
    return RecordFilter(
        instances=frozenset(args.instance) if args.instance else None,
        key=args.key,
        types=frozenset(types) if types else None,
    )


def dump(
    records: Iterable[RecordView], keep: RecordFilter, printer: TextPrinter | JsonPrinter
) -> None:
    """Print every record that ``keep`` accepts; the printer is always closed.

    Closing in ``finally`` prints the records held for sizing columns even
    when the journal turns out to be damaged further on, or when following
    is interrupted.
    """
    try:
        for rec in records:
            if keep(rec):
                printer.emit(rec)
    finally:
        printer.close()


def main(
    argv: Sequence[str] | None = None, *, sleep: Callable[[float], None] | None = None
) -> int:
    """Run memable-dump with ``argv`` (default: the command line); return the exit status.

    ``sleep`` is how ``--follow`` waits between looks for new records
    (default: the follower's own wait).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    c.tolerate_unencodable(sys.stdout)
    out, err = sys.stdout, sys.stderr
    if args.instances:
        return c.run(lambda: _guarded(args, err, lambda: _instances_command(args, out, err)))
    if args.stats:
        return c.run(lambda: _guarded(args, err, lambda: _stats_command(args, out, err)))
    if args.follow:
        return c.run(lambda: _guarded(args, err, lambda: _follow_command(args, out, err, sleep)))
    return c.run(lambda: _guarded(args, err, lambda: _dump_command(args, out, err)))


def _guarded(args: argparse.Namespace, err: TextIO, body: Callable[[], int]) -> int:
    """Run a command; turn a missing journal, damage or a read error into a message."""
    after = (
        "the records before it are printed above" if not (args.instances or args.stats)
        else "nothing is shown: the answer needs the whole journal"
    )
    try:
        return body()
    except NotAJournal as exc:
        c.error(PROG, str(exc), err)
        return c.EXIT_FAILED
    except _CannotOpen as exc:
        c.error(PROG, f"{args.path}: cannot read: {exc.strerror or exc}", err)
        return c.EXIT_FAILED
    except JournalFormatError as exc:
        c.error(PROG, f"{exc.file}: {exc.reason}", err)
        return c.EXIT_FAILED
    except JournalCorrupt as exc:
        c.error(
            PROG,
            f"{exc.file}: corrupt at byte {exc.offset}: {exc.reason}; {after}; the journal "
            "was not changed",
            err,
        )
        return c.EXIT_FAILED
    except EngineError as exc:  # a postgresql:// URL: no server, no journal there
        c.error(PROG, str(exc), err)
        return c.EXIT_FAILED
    except BrokenPipeError:
        raise  # our output was closed (| head): not a read failure; c.run handles it
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and _is_segment(exc.filename):
            # A compaction replaced (and deleted) a file of the walk as it was read.
            c.error(
                PROG, f"{exc.filename}: vanished while being read: a compaction replaced "
                "it; run the command again (the journal is fine)", err,
            )
            return c.EXIT_FAILED
        where = f" [{exc.filename}]" if exc.filename else ""
        c.error(PROG, f"{args.path}: read failed: {exc.strerror or exc}{where}", err)
        return c.EXIT_FAILED


def _is_segment(path: object) -> bool:
    return isinstance(path, str) and is_segment_file(os.path.basename(path))


class _CannotOpen(OSError):
    """The journal directory could not be opened at all: refused (exit 1)."""


def _open(path: str) -> JournalReader:
    from memable_log import operations

    if operations.is_postgres_url(path):  # the same records, from its log
        return operations.postgres_reader(path)
    try:
        return read_journal(path)
    except NotAJournal:
        raise
    except OSError as exc:
        raise _CannotOpen(exc.errno, exc.strerror) from exc


def _note_torn(reader: JournalReader, err: TextIO) -> None:
    torn = reader.torn
    if torn is not None:
        c.error(
            PROG,
            f"note: {torn.file}: {torn.size} bytes at byte {torn.offset} are an "
            "incomplete write (a torn tail, or a write in progress); not shown",
            err,
        )


def _dump_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    reader = _open(args.path)
    printer = JsonPrinter(out) if args.json else TextPrinter(out)
    dump(reader, make_filter(args), printer)
    _note_torn(reader, err)
    return c.EXIT_OK


def _follow_command(
    args: argparse.Namespace, out: TextIO, err: TextIO, sleep: Callable[[float], None] | None
) -> int:
    printer = JsonPrinter(out) if args.json else TextPrinter(out)
    if c.is_url(args.path):
        return _follow_url(args, printer, out, err, sleep)
    waited = _caught_up(args, printer, out, err)

    def caught_up() -> None:
        waited(follower.waiting_for_journal)

    def gap(missing: FollowGap) -> None:
        c.error(
            PROG,
            f"note: records {missing.first_seq}..{missing.next_seq - 1} were compacted "
            "before they could be read (this reader fell behind); their effect is in the "
            "compacted segment, the records themselves are gone",
            err,
        )

    try:
        follower = follow_journal(
            args.path, interval=args.interval, sleep=sleep, on_wait=caught_up, on_gap=gap,
            wait_for_journal=True,
        )
    except NotAJournal:
        raise
    except OSError as exc:
        raise _CannotOpen(exc.errno, exc.strerror) from exc
    try:
        dump(follower, make_filter(args), printer)
    finally:
        follower.close()
    return c.EXIT_OK  # pragma: no cover - following ends only by an exception


def _caught_up(
    args: argparse.Namespace, printer: TextPrinter | JsonPrinter, out: TextIO, err: TextIO,
) -> Callable[[bool], None]:
    """What --follow does each time it has read everything: note once that
    the journal is not there yet (``waiting``), flush, and stop if the
    output was closed (a pipe's reader gone)."""
    noted = False

    def caught_up(waiting: bool) -> None:
        nonlocal noted
        if waiting and not noted:
            noted = True
            c.error(PROG, f"note: {args.path}: no journal there yet; waiting for it to "
                    "appear (Ctrl-C to stop)", err)
        printer.flush()
        if c.output_closed(out):
            raise BrokenPipeError(errno.EPIPE, "the output was closed")

    return caught_up


def _follow_url(
    args: argparse.Namespace, printer: TextPrinter | JsonPrinter, out: TextIO, err: TextIO,
    sleep: Callable[[float], None] | None,
) -> int:
    """--follow of a postgresql:// URL: the log read as an engine's tailer reads it."""
    from memable_log.operations import follow_postgres

    keep = make_filter(args)
    caught_up = _caught_up(args, printer, out, err)

    def emit(rec: RecordView) -> None:
        if keep(rec):
            printer.emit(rec)

    try:
        follow_postgres(args.path, emit, interval=args.interval, caught_up=caught_up,
                        sleep=sleep)
    finally:
        printer.close()
    return c.EXIT_OK  # pragma: no cover - following ends only by an exception


def _read_instances(args: argparse.Namespace, err: TextIO) -> tuple[JournalReader, list[Any]]:
    reader = _open(args.path)
    statuses = reader.instances()
    _note_torn(reader, err)
    return reader, statuses


def _instances_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _, statuses = _read_instances(args, err)
    states = {name for group in args.states or () for name in group}
    chosen = [
        st for st in statuses
        if (not args.instance or st.instance_id in args.instance)
        and (not states or st.state in states)
    ]
    if args.json:
        for st in chosen:
            out.write(json.dumps(instance_json(st), ensure_ascii=True) + "\n")
    else:
        print_instance_table(chosen, out)
    return c.EXIT_OK


def _stats_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if c.is_url(args.path):
        from memable_log.operations import postgres_stats

        stats = postgres_stats(args.path)
        if args.json:
            out.write(json.dumps(stats, ensure_ascii=True) + "\n")
        else:
            print_pg_stats(stats, out)
        return c.EXIT_OK
    reader, statuses = _read_instances(args, err)
    stats = stats_json(reader, statuses)
    if args.json:
        out.write(json.dumps(stats, ensure_ascii=True) + "\n")
    else:
        print_stats(stats, out)
    return c.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
