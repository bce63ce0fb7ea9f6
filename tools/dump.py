"""memable-dump: print a journal's records in order, for a person or a program.

Theory of operation. The tool is a small pipeline::

    source (read_journal)  ->  RecordFilter  ->  printer (text or JSON lines)

The source reads the journal with ``memable_log.read_journal``: no lock, no
writes, so it works while an engine holds the journal and never slows it.
Each printer takes records one at a time (``emit``) and is closed at the end
(``close``); the text printer holds back its first records only to size its
columns. Later modes plug into the same pipeline: ``--follow`` is another
source (one that keeps reading the last segment), ``--instances`` and
``--stats`` are other sinks in place of the printer.

Exit status: 0 every record was printed; 1 the journal is damaged or could
not be read (the records before the damage are printed, then an error
naming the file and byte offset goes to stderr); 2 bad usage, or the path is
missing or not a journal (as ``ls`` and ``grep`` do for a bad argument);
141 the output pipe closed early (``| head``), as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from memable_log import JournalCorrupt, JournalFormatError
from memable_log._records import TYPE_BY_NAME, TYPE_NAMES
from memable_log.journal import JournalReader, NotAJournal, RecordView, decode_value, read_journal

from . import _common as c

PROG = "memable-dump"

# Widths of the text output. Identity columns (instance, key) grow to fit
# the widest value in the look-ahead, up to a cap; a longer value is printed
# whole and pushes that one line out of alignment rather than being cut.
_LOOKAHEAD = 256
_INSTANCE_CAP = 36
_KEY_CAP = 32
_TYPE_WIDTH = max(len(name) for name in TYPE_NAMES.values())
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


def _record_types(text: str) -> list[str]:
    """argparse type for --type: comma-separated record type names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TYPE_BY_NAME]
    if unknown or not names:
        what = f"unknown record type {unknown[0]!r}" if unknown else "no record type given"
        raise argparse.ArgumentTypeError(
            f"{what}; valid types: {', '.join(TYPE_NAMES.values())}"
        )
    return names


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
        if name in ("key", "traceback", "message") or value is None:
            continue
        if name == "error_type":
            message = c.clip(_text(str(fields.get("message", ""))), _MESSAGE_WIDTH)
            parts.append(f"error={_text(value)}: {message}")
        elif name == "deadline_ms":
            parts.append(f"deadline={c.iso_ms(value)}")
        elif isinstance(value, bytes):
            parts.append(f"{name}={c.clip(_compact(decode_value(value)), _VALUE_WIDTH)}")
        elif isinstance(value, str):
            parts.append(f"{name}={c.clip(_text(value), _VALUE_WIDTH)}")
        else:
            parts.append(f"{name}={value!r}")
    return " ".join(parts)


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
        """Print every held record (the columns are sized from them)."""
        held, self._held = self._held, None
        if held:
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


# -- the command ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of memable-dump."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Print the records of a memable_log journal in order. Needs no lock: "
            "safe while an engine runs."
        ),
        epilog=(
            "Text output: one line per record: seq, time (UTC), type, instance, key "
            "('-' if none), then the other fields with values decoded and shortened. "
            "--json prints every field in full; bytes appear as {\"$bytes\": HEX}. "
            "Exit status: 0 done; 1 the journal is damaged or unreadable (records "
            "before the damage are printed first); 2 bad usage, or PATH is not a "
            "journal; 141 the output pipe was closed."
        ),
    )
    parser.add_argument("path", metavar="PATH", help="the journal directory")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per line, every field"
    )
    parser.add_argument(
        "--instance", action="append", metavar="ID",
        help="only records of this instance (repeatable)",
    )
    parser.add_argument(
        "--key", metavar="KEY",
        help="only records with this key; a trailing * matches a prefix ('search:*')",
    )
    parser.add_argument(
        "--type", action="append", type=_record_types, metavar="TYPE", dest="types",
        help=f"only records of these types (repeatable or comma-separated): "
        f"{', '.join(TYPE_NAMES.values())}",
    )
    return parser


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
    when the journal turns out to be damaged further on.
    """
    try:
        for rec in records:
            if keep(rec):
                printer.emit(rec)
    finally:
        printer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run memable-dump with ``argv`` (default: the command line); return the exit status."""
    args = build_parser().parse_args(argv)
    c.tolerate_unencodable(sys.stdout)
    return c.run(lambda: _dump_command(args, sys.stdout, sys.stderr))


def _dump_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        reader: JournalReader = read_journal(args.path)
    except NotAJournal as exc:
        c.error(PROG, str(exc), err)
        return c.EXIT_USAGE
    except OSError as exc:
        c.error(PROG, f"{args.path}: cannot read: {exc.strerror or exc}", err)
        return c.EXIT_USAGE
    printer = JsonPrinter(out) if args.json else TextPrinter(out)
    try:
        dump(reader, make_filter(args), printer)
    except JournalFormatError as exc:
        c.error(PROG, f"{exc.file}: {exc.reason}", err)
        return c.EXIT_FAILED
    except JournalCorrupt as exc:
        c.error(
            PROG,
            f"{exc.file}: corrupt at byte {exc.offset}: {exc.reason}; the records "
            "before it are printed above; the journal was not changed",
            err,
        )
        return c.EXIT_FAILED
    except BrokenPipeError:
        raise  # our output was closed (| head): not a read failure; c.run handles it
    except OSError as exc:
        where = f" [{exc.filename}]" if exc.filename else ""
        c.error(PROG, f"{args.path}: read failed: {exc.strerror or exc}{where}", err)
        return c.EXIT_FAILED
    torn = reader.torn
    if torn is not None:
        c.error(
            PROG,
            f"note: {torn.file}: {torn.size} bytes at byte {torn.offset} are an "
            "incomplete write (a torn tail, or a write in progress); not shown",
            err,
        )
    return c.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
