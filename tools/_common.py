"""Helpers shared by the command-line tools: exits, safe text, times.

Conventions every tool follows (documented in each tool's --help):

* exit 0 on success, 1 when the journal (or the request) is refused or
  damaged, or the path is not a journal, 2 for bad usage, as argparse does
  (``EXIT_CODES`` says so in every --help);
* a closed output pipe (``memable-dump ... | head``) ends the tool quietly
  with the status a shell reports for SIGPIPE (141), never a traceback;
* Ctrl-C ends it quietly with status 130;
* anything taken from a journal is escaped before it reaches a terminal.
"""

from __future__ import annotations

import io
import os
import select
import stat
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as shells report it
EXIT_CODES = (
    "Exit status: 0 done; 1 refused (the reason on stderr: a path that is not a journal, a "
    "damaged journal, a refusal); 2 bad usage; 130 interrupted; 141 the output pipe closed."
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def run(body: Callable[[], int]) -> int:
    """Run a tool's body; turn a closed pipe or Ctrl-C into a quiet exit."""
    try:
        code = body()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; with the reader gone that flush
    # would print "Exception ignored ... BrokenPipeError". Point the file
    # descriptor at /dev/null so it succeeds quietly.
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests capture output): nothing to silence
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def output_closed(stream: TextIO) -> bool:
    """True if ``stream`` is a pipe or socket whose reader has gone.

    A tool that waits for input (``memable-dump --follow | head``) would
    otherwise notice only at its next write, which may never come.
    """
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False  # not a real file (tests capture output)
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # errors and hang-ups are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def is_url(path: object) -> bool:
    """Whether a tool's journal argument is a PostgreSQL URL, not a path."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://"))


def error(prog: str, message: str, stream: TextIO | None = None) -> None:
    """Print ``prog: message`` (escaped) on stderr, or on ``stream``."""
    print(f"{prog}: {escape(message)}", file=stream if stream is not None else sys.stderr)


def tolerate_unencodable(stream: TextIO) -> None:
    """Make ``stream`` write characters its encoding lacks as escapes.

    A journal may hold any text; a terminal in a non-UTF-8 locale must not
    turn that into a UnicodeEncodeError halfway through the output.
    """
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def escape(text: str) -> str:
    """``text`` with every character a terminal could act on escaped.

    Printable characters (letters of any script, digits, punctuation, the
    space) stay as they are. Controls (C0, C1), line and paragraph
    separators, bidi and other format characters and unassigned code points
    become ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def iso_ms(ts_ms: int) -> str:
    """A millisecond timestamp as UTC ISO 8601: ``2024-05-01T12:00:00.123Z``.

    Exact (no float rounding). A value outside the datetime range is shown
    as the bare number.
    """
    try:
        when = _EPOCH + timedelta(milliseconds=ts_ms)
    except OverflowError:
        return str(ts_ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def iso_datetime(when: datetime) -> str:
    """An aware datetime as ``iso_ms`` shows a timestamp (UTC, milliseconds)."""
    return iso_ms(round(when.timestamp() * 1000))


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in an ellipsis if cut."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"
