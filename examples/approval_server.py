"""An approval workflow whose answer arrives over HTTP, or from a shell.

Run it: ``python examples/approval_server.py`` (the same as ``--demo``).

The workflow fetches some data, then suspends on ``approval:v1`` with the
status "Waiting for manager approval": it is dropped from memory until a
signal arrives. Then it processes the data, or stops if the answer is no.

A small trio web server (hand-rolled HTTP/1.1) fronts the engine:

- ``POST /start`` with a JSON body starts an instance (the body is its input);
- ``GET /status/<id>`` returns ``engine.status(id)`` as JSON;
- ``POST /approve/<id>`` with a JSON body delivers it as the signal;
- ``GET /result/<id>`` waits for the instance to finish (``engine.wait``).

``--demo`` starts the server on an ephemeral port and drives two instances:
one approved through ``POST /approve``, one rejected from a shell with
``memable-signal`` (run as a subprocess; the shell command is printed), then
exits 0. ``--serve`` keeps the server running for you to try with curl (see
examples/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import trio

from memable_log import (
    Context,
    Engine,
    EngineError,
    SignalAlreadyDelivered,
    SuspendTimedOut,
    UnknownInstance,
)

WORKFLOW = "approval"
KEY = "approval:v1"


# -- the workflow (the article's approval example) -------------------------------


async def fetch_from_source(dataset: str) -> int:
    await trio.sleep(0.01)  # stands for a query
    count = 100 + sum(map(ord, dataset)) % 900
    print(f"    fetch-data:v1    ran: {count} records in {dataset!r}", flush=True)
    return count


def process(dataset: str, count: int) -> dict[str, Any]:
    print(f"    process-data:v1  ran: processed {count} records of {dataset!r}", flush=True)
    return {"processed": count}


def make_workflow(timeout: timedelta) -> Callable[[Context], Any]:
    async def approval(ctx: Context) -> dict[str, Any]:
        dataset = ctx.input["dataset"]
        count = await ctx.step("fetch-data:v1").run(fetch_from_source, dataset)
        try:
            decision = await ctx.suspend(
                KEY, status="Waiting for manager approval", timeout=timeout
            )
        except SuspendTimedOut:
            return {"outcome": "expired", "records": count}
        if not decision.get("approved"):
            return {"outcome": "rejected", "by": decision.get("by"),
                    "reason": decision.get("reason")}
        done = await ctx.step("process-data:v1").run(process, dataset, count)
        return {"outcome": "processed", "by": decision.get("by"), **done}

    return approval


# -- the web server --------------------------------------------------------------

MAX_REQUEST = 64 * 1024


class BadRequest(Exception):
    pass


class ApprovalServer:
    """Routes HTTP requests to the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            method, path, body = await read_request(stream)
            status, answer = await self.route(method, path, body)
        except BadRequest as exc:
            status, answer = 400, {"error": str(exc)}
        with contextlib.suppress(trio.BrokenResourceError):
            await send_response(stream, status, answer)

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            match method, path.strip("/").split("/"):
                case "POST", ["start"]:
                    instance_id = await self.engine.invoke(WORKFLOW, parse_json(body))
                    return 201, {"instance_id": instance_id}
                case "GET", ["status", instance_id]:
                    return 200, status_json(self.engine.status(instance_id))
                case "POST", ["approve", instance_id]:
                    await self.engine.signal(WORKFLOW, instance_id, KEY, parse_json(body))
                    return 202, {"delivered": True}
                case "GET", ["result", instance_id]:  # a long poll
                    return 200, {"result": await self.engine.wait(instance_id)}
                case _:
                    return 404, {"error": f"no route for {method} {path}"}
        except UnknownInstance as exc:
            return 404, {"error": str(exc)}
        except SignalAlreadyDelivered as exc:
            return 409, {"error": str(exc)}
        except EngineError as exc:  # WorkflowFailed, WorkflowCancelled
            return 500, {"error": str(exc)}


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def status_json(status: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, (list, tuple)):  # the pending waits, error info
            return [plain(item) for item in value]
        return value

    return {name: plain(value) for name, value in dataclasses.asdict(status).items()}


async def read_request(stream: trio.SocketStream) -> tuple[str, str, bytes]:
    """One HTTP/1.1 request: method, path and body (Content-Length only)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk or len(data) > MAX_REQUEST:
            raise BadRequest("incomplete or oversized request head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = lines[0].split(" ")
        headers = dict(line.split(":", 1) for line in lines[1:])
        length = int({k.strip().lower(): v for k, v in headers.items()}.get("content-length", 0))
    except ValueError:
        raise BadRequest("malformed request head") from None
    if length > MAX_REQUEST:
        raise BadRequest("body too large")
    while len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            raise BadRequest("body cut short")
        body += chunk
    return method, path, body[:length]


REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
           409: "Conflict", 500: "Internal Server Error"}


async def send_response(stream: trio.SocketStream, status: int, answer: Any) -> None:
    body = json.dumps(answer).encode()
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    await stream.send_all(head.encode() + body)


async def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A tiny HTTP client for the demo: one request, one connection."""
    data = b"" if body is None else json.dumps(body).encode()
    request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request.encode() + data)
        answer = b""
        async for chunk in stream:  # until the server closes the connection
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload)


# -- the demo ----------------------------------------------------------------------


async def call(port: int, method: str, path: str, body: Any = None) -> Any:
    """Make a request and print it with its answer, like a curl session."""
    sent = "" if body is None else " " + json.dumps(body)
    print(f"  {method} {path}{sent}", flush=True)
    status, answer = await http(port, method, path, body)
    shown = answer
    if path.startswith("/status/"):  # the interesting fields; the server sends them all
        shown = {name: answer[name] for name in ("state", "status", "key", "deadline", "steps")}
    print(f"    -> {status} {json.dumps(shown)}", flush=True)
    return answer


async def until_suspended(port: int, instance_id: str) -> None:
    """Poll GET /status as a client would, until the instance waits for approval."""
    with trio.fail_after(10):
        while True:  # a client of a web API has no event to wait on: it polls
            _, status = await http(port, "GET", f"/status/{instance_id}")
            if status["state"] == "suspended":
                break
            await trio.sleep(0.02)
    await call(port, "GET", f"/status/{instance_id}")


async def demo(engine: Engine, port: int, journal: str) -> None:
    print("1) Approved over HTTP: POST /approve/<id>")
    started = await call(port, "POST", "/start", {"dataset": "invoices-march"})
    first = started["instance_id"]
    await until_suspended(port, first)
    await call(port, "POST", f"/approve/{first}", {"approved": True, "by": "maria"})
    await call(port, "GET", f"/result/{first}")
    print("  A second answer for the same key is refused (a key takes one signal):")
    await call(port, "POST", f"/approve/{first}", {"approved": False, "by": "mallory"})

    print("\n2) Rejected from a shell: memable-signal")
    started = await call(port, "POST", "/start", {"dataset": "payroll-april"})
    second = started["instance_id"]
    await until_suspended(port, second)
    payload = json.dumps({"approved": False, "by": "sam", "reason": "totals do not match"})
    args = [journal, WORKFLOW, second, KEY, payload]
    print(f"  $ {shlex.join(['memable-signal', *args])}")
    print("    (run here as: python -m memable_log_tools.send_signal ...)", flush=True)
    done = await trio.run_process(
        [sys.executable, "-m", "memable_log_tools.send_signal", *args],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    print(f"    {(done.stdout + done.stderr).decode().strip()}  [exit {done.returncode}]")
    if done.returncode != 0:
        raise SystemExit("memable-signal refused the signal")
    await call(port, "GET", f"/result/{second}")

    states = {engine.status(i).state for i in (first, second)}
    print(f"\nBoth instances {' and '.join(sorted(states))}: one by HTTP, one from the shell.")


async def run(journal: str, port: int, expiry: timedelta, serve: bool) -> None:
    engine = Engine.builder().open(journal).build()
    engine.register(WORKFLOW, make_workflow(expiry))
    server = ApprovalServer(engine)
    async with engine, trio.open_nursery() as nursery:
        start = functools.partial(trio.serve_tcp, server.handle, port, host="127.0.0.1")
        listeners = await nursery.start(start)
        port = listeners[0].socket.getsockname()[1]
        print(f"Serving on http://127.0.0.1:{port}/ (journal: {journal})\n", flush=True)
        if serve:
            print(USAGE.format(port=port, journal=shlex.quote(journal)), flush=True)
            await trio.sleep_forever()
        await demo(engine, port, journal)
        nursery.cancel_scope.cancel()


USAGE = """Try it (instances suspend until you answer; Ctrl-C stops the server, and
instances waiting for approval resume from the journal when it starts again):

  curl -s -X POST localhost:{port}/start -d '{{"dataset": "invoices-march"}}'
  curl -s localhost:{port}/status/ID
  curl -s -X POST localhost:{port}/approve/ID -d '{{"approved": true, "by": "you"}}'
  curl -s localhost:{port}/result/ID
  memable-signal {journal} approval ID approval:v1 '{{"approved": false, "by": "you"}}'
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true", help="drive both paths and exit (default)")
    mode.add_argument("--serve", action="store_true", help="serve until Ctrl-C, for curl")
    parser.add_argument("--port", type=int, default=8080, help="--serve port (default 8080)")
    parser.add_argument("--journal", default="approvals.memable",
                        help="--serve journal directory (default ./approvals.memable)")
    parser.add_argument("--dir", help="--demo: keep the journal here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3 * 24 * 3600,
                        help="seconds an approval may take before it expires (default 3 days)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    expiry = timedelta(seconds=args.timeout)
    if args.serve:
        try:
            trio.run(run, args.journal, args.port, expiry, True)
        except* KeyboardInterrupt:
            print("Stopped. Instances still waiting are in the journal; they resume at the"
                  " next start.")
        return
    with tempfile.TemporaryDirectory() as tmp:
        journal = os.path.join(args.dir or tmp, "approvals.memable")
        trio.run(run, journal, 0, expiry, False)


if __name__ == "__main__":
    main()
