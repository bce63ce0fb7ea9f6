"""``memable ui PATH [--port N] [--host H]``: serve the page until Ctrl-C.

Checks the path first (a path that is not a journal: exit 1 with the
reason), makes a random token for the actions, serves ``app.make_app``
with Hypercorn's trio worker, and prints the URL (with the port the
system picked for ``--port 0``) and the token on stdout once it listens.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Sequence

from .. import _common as c

PROG = "memable ui"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a web page over a journal: instances, steps as a timeline, "
        "live updates; actions need the token printed at start. Safe while an engine runs.",
        epilog=c.EXIT_CODES,
    )
    parser.add_argument("path", metavar="PATH", help="the journal directory")
    parser.add_argument("--port", type=int, default=8700,
                        help="the port (default 8700; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        c.error(PROG, f"--port {args.port} is not a port number (0..65535)")
        return c.EXIT_USAGE
    from memable_log import NotAJournal
    from memable_log.reader import read_journal

    try:
        read_journal(args.path)
    except NotAJournal as exc:
        c.error(PROG, str(exc))
        return c.EXIT_FAILED
    try:
        import hypercorn  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        c.error(PROG, f"{exc.name} is not installed: pip install 'memable-log[ui]'")
        return c.EXIT_FAILED
    return c.run(lambda: _serve(str(args.path), args.host, args.port))


def _serve(path: str, host: str, port: int) -> int:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from .app import make_app

    token = secrets.token_urlsafe(24)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    app = make_app(path, token)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            for bind in binds:
                print(f"memable ui: serving {path} at {bind}/", flush=True)
            print(f"memable ui: token for actions: {token}", flush=True)

    try:
        trio.run(main)
    except OSError as exc:  # the port is taken, say
        c.error(PROG, f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return c.EXIT_FAILED
    return c.EXIT_OK
