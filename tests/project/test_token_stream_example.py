"""examples/token_stream.py: tokens as Server-Sent Events, across a kill -9.

The server runs as a subprocess, as a user would run it. The test is the
browser: it starts a chat, reads a few tokens, SIGKILLs the server in the
middle of the generation, starts it again on the same directory (the
instance resumes), reconnects with ``Last-Event-ID`` and reads to the end.
Every token must arrive exactly once, in order, and the journal must hold
each event once.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

from memable_log import read_journal

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "token_stream.py"
TIMEOUT = 30.0


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_stream", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_server(directory: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--serve", "--port", "0", "--dir", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening on http://127.0.0.1:PORT"
    assert line.startswith("listening on"), line + (proc.stderr.read() if proc.stderr else "")
    return proc, int(line.rsplit(":", 1)[1])


def request(port: int, head: str, body: bytes = b"") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    conn.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return conn


def post_chat(port: int, prompt: str, iid: str) -> str:
    body = json.dumps({"prompt": prompt, "id": iid}).encode()
    with request(port, "POST /chat HTTP/1.1\r\nHost: t\r\n", body) as conn:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["id"])


def read_events(
    port: int, iid: str, last: int | None, limit: int | None, seen: list[tuple[int, str]]
) -> bool:
    """SSE events into ``seen`` as (id, token); True if the stream said it ended."""
    head = f"GET /events/{iid} HTTP/1.1\r\nHost: t\r\n"
    if last is not None:
        head += f"Last-Event-ID: {last}\r\n"
    with request(port, head) as conn:
        buffer = b""
        status = None
        while chunk := conn.recv(65536):
            buffer += chunk
            if status is None and b"\r\n\r\n" in buffer:
                status_head, buffer = buffer.split(b"\r\n\r\n", 1)
                status = status_head.split(b"\r\n")[0]
                assert status == b"HTTP/1.1 200 OK", status_head
                assert b"text/event-stream" in status_head
            while status is not None and b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
                )
                if fields.get("event") == "end":
                    return True
                if fields.get("event") == "token":
                    seen.append((int(fields["id"]), json.loads(fields["data"])["token"]))
                    if limit is not None and len(seen) >= limit:
                        return False
    return False


def test_a_reader_reconnecting_after_a_kill_9_sees_every_token_exactly_once(
    tmp_path: Path,
) -> None:
    prompt, iid = "kill -9", "chat-k9"
    expected = example().answer_tokens(prompt)
    seen: list[tuple[int, str]] = []
    server, port = start_server(tmp_path)
    try:
        assert post_chat(port, prompt, iid) == iid
        assert not read_events(port, iid, None, 4, seen)
    finally:
        server.kill()  # SIGKILL, mid-generation
        server.communicate(timeout=TIMEOUT)  # and close its pipes
    assert [seq for seq, _ in seen] == [1, 2, 3, 4]
    assert len(seen) < len(expected)  # it was killed in the middle

    server, port = start_server(tmp_path)  # the instance resumes on start
    try:
        assert read_events(port, iid, seen[-1][0], None, seen)
        # Reconnecting again from the start replays the whole stream.
        again: list[tuple[int, str]] = []
        assert read_events(port, iid, None, None, again)
    finally:
        server.kill()
        server.communicate(timeout=TIMEOUT)  # and close its pipes
    assert [seq for seq, _ in seen] == list(range(1, len(expected) + 1))
    assert [token for _, token in seen] == expected
    assert again == seen
    published = Counter(
        rec.fields["key"] for rec in read_journal(tmp_path / "chat.memable")
        if rec.type == "published"
    )
    assert published == Counter(f"tok-{i}" for i in range(len(expected)))


def test_the_demo_checks_its_own_stream() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reconnected with Last-Event-ID: 5; stream ended: True" in done.stdout
    assert "each exactly once: True" in done.stdout
