"""An ETL pipeline against a flaky HTTP API, killed halfway and resumed.

Run it: ``python examples/etl_pipeline.py`` (``--dir DIR`` keeps the
journal and the warehouse in DIR; ``--pages N`` sets the size of the job).

The example starts a small local HTTP API (127.0.0.1, an ephemeral port)
that answers every other request with ``503`` and is sometimes too slow, so
the network steps use ``.retry(...)``. The pipeline reads how many pages
there are, then for each page extracts (HTTP), transforms (pure) and loads
(into a sqlite "warehouse") under per-page keys such as
``extract:page-3:v1``.

Run 1 happens in a child process that SIGKILLs itself in the middle of
loading page 3. Run 2 (this process, same journal) re-runs the workflow from
the top: every finished step comes back from the journal, so the API is
asked only for the pages it had not served yet, and no page reaches the
warehouse twice.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import trio

from memable_log import Context, Engine

CHILD = "--child"
TIMEOUT = 0.5  # seconds the client waits for an answer
SLOW = 2.0  # seconds a hanging request is held: longer than TIMEOUT
ROWS_PER_PAGE = 4


# -- a deliberately flaky HTTP API (hand-rolled HTTP/1.1, one request per connection)


class FlakyAPI:
    """``GET /pages`` and ``GET /orders?page=N``: every other request fails with 503,
    every fifth hangs."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.requests = 0
        self.served: list[int] = []  # pages answered with 200

    async def handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some()
            if not chunk:
                return
            buf += chunk
        method, target, _ = buf.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.requests += 1
        if self.requests % 5 == 0:
            await trio.sleep(SLOW)  # hangs, then drops the connection; the client gave up
            return
        if self.requests % 2 == 1:
            await respond(stream, 503, {"error": "busy, try again"})
            return
        if method == "GET" and target == "/pages":
            await respond(stream, 200, {"pages": self.pages})
        elif method == "GET" and target.startswith("/orders?page="):
            page = int(target.split("=", 1)[1])
            self.served.append(page)
            await respond(stream, 200, orders(page))
        else:
            await respond(stream, 404, {"error": f"no route {method} {target}"})


def orders(page: int) -> list[dict[str, Any]]:
    """The raw rows of one page, as a sloppy upstream system would send them."""
    names = ["  ada LOVELACE", "grace hopper ", " Linus torvalds", "barbara liskov"]
    rows = []
    for i in range(ROWS_PER_PAGE):
        order_id = (page - 1) * ROWS_PER_PAGE + i + 1
        amount = f" {order_id * 37 % 100 + 10}.{order_id * 13 % 100:02d} EUR "
        rows.append({"id": order_id, "customer": names[order_id % 4], "amount": amount})
    return rows


async def respond(stream: trio.SocketStream, status: int, body: Any) -> None:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    with contextlib.suppress(trio.BrokenResourceError):  # the client gave up
        await stream.send_all(head.encode() + data)


class Unavailable(Exception):
    """The API answered 5xx: worth retrying."""


class HTTPError(Exception):
    """The API answered 4xx: retrying will not help."""


async def get_json(port: int, path: str) -> Any:
    """GET http://127.0.0.1:port/path and decode the JSON body."""
    try:
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                await stream.send_all(request.encode())
                data = b""
                async for chunk in stream:  # until the server closes the connection
                    data += chunk
    except trio.TooSlowError:
        raise Unavailable(f"no answer within {TIMEOUT} s") from None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    status = int(status_line.split(" ", 2)[1])
    if status >= 500:
        raise Unavailable(status_line.split(" ", 1)[1])
    if status != 200:
        raise HTTPError(status_line.split(" ", 1)[1])
    return json.loads(body)


# -- transform and load ------------------------------------------------------------


def transform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clean names, turn " 12.05 EUR " into 1205 cents."""
    out = []
    for row in rows:
        value, currency = row["amount"].split()
        euros, cents = value.split(".")
        out.append({"id": row["id"], "customer": row["customer"].strip().title(),
                    "amount_cents": int(euros) * 100 + int(cents), "currency": currency})
    return out


def open_warehouse(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    # No unique constraint on orders on purpose: a page loaded twice would show.
    db.execute("CREATE TABLE IF NOT EXISTS orders"
               " (id INTEGER, customer TEXT, amount_cents INTEGER, currency TEXT, batch TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS batches (batch TEXT PRIMARY KEY, rows INTEGER,"
               " loaded_by TEXT)")
    return db


def load(path: str, batch: str, rows: list[dict[str, Any]], run: str) -> int:
    """Insert one batch in one transaction (blocking: the step runs it in a thread).

    A step running at a crash runs again (at least once). If a crash ever
    falls between COMMIT and the journal's fsync, the batches table makes
    the second load a no-op.
    """
    with contextlib.closing(open_warehouse(path)) as db, db:  # `with db`: commit or roll back
        if db.execute("SELECT 1 FROM batches WHERE batch = ?", (batch,)).fetchone():
            return 0
        db.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            [(r["id"], r["customer"], r["amount_cents"], r["currency"], batch) for r in rows],
        )
        if CHILD in sys.argv and batch == "page-3":
            print(f"  {'load:page-3:v1':<22} started... the process is killed (SIGKILL)"
                  " before COMMIT", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        db.execute("INSERT INTO batches VALUES (?, ?, ?)", (batch, len(rows), run))
    return len(rows)


# -- the workflow ----------------------------------------------------------------

NETWORK = {"max_attempts": 5, "initial_delay": 0.05, "backoff": 2.0,
           "retry_on": (Unavailable, OSError)}  # not HTTPError: a 404 stays a 404


def make_pipeline(port: int, warehouse: str, run: str) -> Callable[[Context], Any]:
    """The workflow, bound to where the API and the warehouse are in this run."""

    async def etl_pipeline(ctx: Context) -> dict[str, int]:
        show = Show(ctx)  # ctx.step, plus a printed line per step (demo only)
        info = await show.step("pages:v1").retry(**NETWORK).run(get_json, port, "/pages")
        loaded = 0
        for page in range(1, info["pages"] + 1):
            raw = await show.step(f"extract:page-{page}:v1").retry(**NETWORK).run(
                get_json, port, f"/orders?page={page}")
            rows = await show.step(f"transform:page-{page}:v1").run(transform, raw)
            loaded += await show.step(f"load:page-{page}:v1").in_thread().run(
                load, warehouse, f"page-{page}", rows, run)
        return {"pages": info["pages"], "rows_loaded": loaded}

    return etl_pipeline


class Show:
    """The demo's narrator: ``show.step(key)`` is ``ctx.step(key)`` that also
    prints what happened: ran, retried, or from journal.

    It counts the calls of ``fn``; a step that returns without calling it
    got its result from the journal.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def step(self, key: str) -> ShownStep:
        return ShownStep(self.ctx, key)


class ShownStep:
    def __init__(self, ctx: Context, key: str) -> None:
        self.key = key
        self.step = ctx.step(key)
        self.calls = 0
        self.failures: list[str] = []

    def retry(self, **options: Any) -> ShownStep:
        self.step.retry(**options)
        return self

    def in_thread(self) -> ShownStep:
        self.step.in_thread()
        return self

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        result = await self.step.run(self._counted(fn), *args)
        if self.calls == 0:
            how = "from journal"
        elif self.failures:
            how = f"ran, retried {len(self.failures)}x ({'; '.join(self.failures)})"
        else:
            how = "ran"
        print(f"  {self.key:<22} {how}", flush=True)
        return result

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def failed(exc: Exception) -> None:
            self.failures.append(str(exc) if str(exc) else type(exc).__name__)

        if inspect.iscoroutinefunction(fn):
            async def counted_async(*args: Any) -> Any:
                self.calls += 1
                try:
                    return await fn(*args)
                except Exception as exc:
                    failed(exc)
                    raise
            return counted_async

        def counted(*args: Any) -> Any:  # stays sync, so .in_thread() can run it
            self.calls += 1
            try:
                return fn(*args)
            except Exception as exc:
                failed(exc)
                raise
        return counted


# -- running it ------------------------------------------------------------------


async def run(directory: str, pages: int, run_name: str) -> None:
    api = FlakyAPI(pages)
    journal = os.path.join(directory, "etl.memable")
    warehouse = os.path.join(directory, "warehouse.sqlite")
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, api.handle, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        engine = Engine.builder().open(journal).build()
        engine.register("etl", make_pipeline(port, warehouse, run_name))
        async with engine:  # recovery: an interrupted instance resumes here
            instance_id = await engine.invoke("etl", instance_id="orders-nightly")
            result = await engine.wait(instance_id)
            status = engine.status(instance_id)
        print(f"  -> instance {instance_id!r} {status.state}: {result}, "
              f"{status.steps} steps in the journal\n"
              f"  -> the API got {api.requests} requests in this run and served pages {api.served}")
        nursery.cancel_scope.cancel()  # stop the API (and any slow answer still pending)


def report(directory: str) -> None:
    db = open_warehouse(os.path.join(directory, "warehouse.sqlite"))
    with contextlib.closing(db):
        total, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM orders").fetchone()
        batches = db.execute("SELECT batch, rows, loaded_by FROM batches ORDER BY rowid").fetchall()
    print(f"Warehouse: {total} order rows, {distinct} distinct ids, {len(batches)} batches:")
    for batch, rows, loaded_by in batches:
        print(f"  {batch}: {rows} rows, loaded in {loaded_by}")
    verdict = "nothing was loaded twice" if total == distinct else "DUPLICATES!"
    print(f"Finished steps did not run again after the kill; {verdict}.")


def main() -> None:
    # The engine logs each retry too (logger "memable_log"); the demo's own
    # lines say the same, so keep the output to one voice.
    logging.getLogger("memable_log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="keep the journal and warehouse here (default: a temp dir)")
    parser.add_argument("--pages", type=int, default=5, help="pages the API serves (>= 3)")
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pages < 3:
        parser.error("--pages must be at least 3 (the kill happens in page 3)")
    if args.child:
        trio.run(run, args.dir, args.pages, "run 1")
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        os.makedirs(directory, exist_ok=True)
        print("Run 1 (a child process, killed while loading page 3):", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--dir", directory, "--pages", str(args.pages), CHILD],
            check=False,
        )
        print(f"  (child exited with {child.returncode})")
        if child.returncode != -signal.SIGKILL:
            sys.exit("the child was expected to be killed by SIGKILL")
        print("Run 2 (this process, same journal and warehouse):", flush=True)
        trio.run(run, directory, args.pages, "run 2")
        report(directory)


if __name__ == "__main__":
    main()
