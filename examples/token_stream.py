"""An LLM-like step's tokens, streamed to a browser as Server-Sent Events.

Run it: ``python examples/token_stream.py`` (the same as ``--demo``).

The workflow ``chat`` runs one step, ``generate:v1``, an async function
that stands for a language model: it produces the answer token by token
and publishes each one (``await ctx.publish(f"tok-{i}", token)``) as it
goes, then returns the whole text. Every token is durable before the next
one is produced, and each has its event ``seq`` (1, 2, ...), the same after
any restart.

A small trio web server (hand-rolled HTTP/1.1) serves:

- ``GET /``: a page that starts a chat and shows its tokens as they come
  (the browser's ``EventSource``, which reconnects by itself);
- ``POST /chat`` with a JSON body ``{"prompt": ..., "id": ...}`` starts an
  instance (an existing ``id`` is returned as it is) and answers ``{"id": ...}``;
- ``GET /events/<id>``: the instance's events as ``text/event-stream``,
  ``id: <seq>`` on each, from the one after the request's ``Last-Event-ID``
  (``engine.events(id, after=...)``); ``event: end`` once it has finished.

So a client that loses its connection, or whose server is killed and
started again, reconnects with the last ``id`` it saw and misses nothing
and sees nothing twice: the stream is the journal's.

``--demo`` starts a chat, reads a few tokens, stops the engine in the
middle of the generation (the workflow is interrupted as by a crash),
opens it again on the same directory (the instance resumes: the step runs
again, and the tokens already published are not published twice),
reconnects with ``Last-Event-ID`` and reads to the end; it checks that
every token arrived exactly once. ``--serve --port N --dir D`` runs the
server until killed (tests/project kills it with SIGKILL mid-stream and
starts it again).

The fake model is deterministic, so its re-run after a crash produces the
same tokens. A real model is not: give it the tokens already published
(``engine.events``) and ask it to continue, or the stream would join two
different answers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from typing import Any

import trio

from memable_log import Context, Engine, EngineError, UnknownInstance

WORKFLOW = "chat"
MAX_REQUEST = 64 * 1024
TOKEN_SECONDS = 0.02  # how long the fake model takes per token


# -- the workflow -------------------------------------------------------------------


def answer_tokens(prompt: str) -> list[str]:
    """What the fake model answers, token by token (deterministic)."""
    words = f"You asked about {prompt}. Durable steps keep every token you were sent, " \
            "so a reconnecting reader resumes exactly where it left off.".split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


async def chat(ctx: Context) -> str:
    prompt = ctx.input["prompt"]
    await ctx.set_status("generating")

    async def generate(prompt: str) -> str:
        tokens = answer_tokens(prompt)
        for i, token in enumerate(tokens):
            await trio.sleep(TOKEN_SECONDS)  # the model thinks
            await ctx.publish(f"tok-{i}", token)  # durable, then readers are woken
        return "".join(tokens)

    text: str = await ctx.step("generate:v1").run(generate, prompt)
    await ctx.set_status("done")
    return text


def build(directory: str) -> Engine:
    engine = Engine.builder().open(os.path.join(directory, "chat.memable")).build()
    engine.register(WORKFLOW, chat)
    return engine


# -- the HTTP server ----------------------------------------------------------------


class BadRequest(Exception):
    pass


async def read_request(stream: trio.abc.ReceiveStream) -> tuple[str, str, dict[str, str], bytes]:
    """One HTTP/1.1 request: method, path, headers (lower-case names), body."""
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
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        length = int(headers.get("content-length", 0))
    except ValueError:
        raise BadRequest("malformed request head") from None
    if length > MAX_REQUEST:
        raise BadRequest("body too large")
    while len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            raise BadRequest("body cut short")
        body += chunk
    return method, path, headers, body[:length]


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def sse(seq: int, key: str, token: Any) -> bytes:
    return f"id: {seq}\nevent: token\ndata: {json.dumps({'key': key, 'token': token})}\n\n".encode()


PAGE = b"""<!doctype html><meta charset="utf-8"><title>token stream</title>
<p><input id="q" value="durable execution"> <button id="go">ask</button></p><pre id="out"></pre>
<script>
document.getElementById("go").onclick = async () => {
  const prompt = document.getElementById("q").value;
  const id = "chat-" + Date.now();
  await fetch("/chat", {method: "POST", body: JSON.stringify({prompt, id})});
  const out = document.getElementById("out"); out.textContent = "";
  const source = new EventSource("/events/" + id);  // reconnects with Last-Event-ID
  source.addEventListener("token", (e) => { out.textContent += JSON.parse(e.data).token; });
  source.addEventListener("end", () => source.close());
};
</script>"""


class Server:
    """Routes requests to the engine it holds (the demo swaps it on a restart)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            method, path, headers, body = await read_request(stream)
            if method == "GET" and path == "/":
                await stream.send_all(response("200 OK", PAGE, "text/html; charset=utf-8"))
            elif method == "POST" and path == "/chat":
                request = json.loads(body or b"{}")
                iid = await self.engine.invoke(
                    WORKFLOW, {"prompt": str(request.get("prompt", ""))},
                    instance_id=request.get("id"),
                )
                await stream.send_all(response("200 OK", json.dumps({"id": iid}).encode()))
            elif method == "GET" and path.startswith("/events/"):
                await self.stream_events(stream, path[len("/events/"):], headers)
            else:
                await stream.send_all(response("404 Not Found", b'{"error": "not found"}'))
        except (BadRequest, ValueError) as exc:
            await stream.send_all(response("400 Bad Request", json.dumps(
                {"error": str(exc)}).encode()))
        except trio.BrokenResourceError:
            pass  # the client went away
        finally:
            await stream.aclose()

    async def stream_events(self, stream: trio.SocketStream, iid: str,
                            headers: dict[str, str]) -> None:
        last = headers.get("last-event-id", "")
        after = int(last) if last.isdigit() else None
        try:
            events = self.engine.events(iid, after=after)
        except UnknownInstance:
            await stream.send_all(response("404 Not Found", b'{"error": "no such chat"}'))
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
                              b"retry: 200\n\n")
        try:
            async for event in events:
                await stream.send_all(sse(event.seq, event.key, event.value))
            await stream.send_all(b"event: end\ndata: {}\n\n")
        except EngineError:
            pass  # the engine stopped: the client reconnects with Last-Event-ID


async def serve(directory: str, port: int) -> None:
    engine = build(directory)
    async with engine:
        server = Server(engine)
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        bound = listeners[0].socket.getsockname()[1]
        print(f"listening on http://127.0.0.1:{bound}", flush=True)
        await trio.serve_listeners(server.handle, listeners)


# -- a client, for the demo ----------------------------------------------------------


async def post_chat(port: int, prompt: str, iid: str) -> str:
    body = json.dumps({"prompt": prompt, "id": iid}).encode()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: "
                              + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["id"])


async def read_events(port: int, iid: str, last: int | None, limit: int | None,
                      seen: list[tuple[int, str]]) -> bool:
    """Read the SSE stream into ``seen`` (seq, token); True once it ended."""
    head = f"GET /events/{iid} HTTP/1.1\r\nHost: x\r\n"
    if last is not None:
        head += f"Last-Event-ID: {last}\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all((head + "\r\n").encode())
        buffer = b""
        read = 0
        while chunk := await stream.receive_some():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                              if ": " in line)
                if fields.get("event") == "end":
                    return True
                if fields.get("event") == "token":
                    seen.append((int(fields["id"]), json.loads(fields["data"])["token"]))
                    read += 1
                    if limit is not None and read >= limit:
                        return False
    return False


async def demo(directory: str) -> int:
    iid, prompt = "chat-1", "durable execution"
    seen: list[tuple[int, str]] = []
    for life in (1, 2):
        engine = build(directory)
        async with engine, trio.open_nursery() as nursery:
            server = Server(engine)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, server.handle, listeners)
            if life == 1:
                await post_chat(port, prompt, iid)
                await read_events(port, iid, None, 5, seen)
                print(f"life 1: read {len(seen)} tokens, last id {seen[-1][0]}: "
                      f"{''.join(t for _, t in seen)!r}")
                print("life 1: the engine stops mid-generation (as a crash would)")
            else:
                last = seen[-1][0]
                ended = await read_events(port, iid, last, None, seen)
                print(f"life 2: reconnected with Last-Event-ID: {last}; stream ended: {ended}")
                text = await engine.wait(iid)
                print(f"life 2: instance {iid} {engine.status(iid).state}, "
                      f"status {engine.status(iid).status!r}")
            nursery.cancel_scope.cancel()
    seqs = [seq for seq, _ in seen]
    tokens = "".join(t for _, t in seen)
    exact = seqs == list(range(1, len(answer_tokens(prompt)) + 1))
    print(f"seen {len(seen)} tokens, ids {seqs[0]}..{seqs[-1]}, each exactly once: {exact}")
    print(f"text: {tokens}")
    return 0 if exact and tokens == text else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true", help="the demo (the default)")
    mode.add_argument("--serve", action="store_true", help="serve until killed")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dir", help="journal directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        directory = args.dir or temp
        if args.serve:
            trio.run(functools.partial(serve, directory, args.port))
            return 0
        return trio.run(demo, directory)


if __name__ == "__main__":
    sys.exit(main())
