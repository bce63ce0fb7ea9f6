"""The ASGI application of memable ui (Starlette): routes, the token, the live stream.

Reads run in worker threads (``anyio.to_thread``), so a slow disk never
stalls the server. Actions are ``POST /action/{cancel,restart,forget,signal}?id=ID``
with a JSON body (``key``; ``payload`` for a signal) and need
``Authorization: Bearer TOKEN``: 403 without it. They call
``memable_log.operations``, as the ``memable`` command does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from memable_log import (
    EngineError,
    JournalCorrupt,
    NotSerializable,
    UnknownInstance,
    operations,
)
from memable_log.reader import RecordView

from . import assets, data, live, render

PAGE = 50  # instances per page, unless ?limit= says otherwise (at most MAX_PAGE)
MAX_PAGE = 1000
HEADERS = {
    # Defence in depth beside the escaping: no inline script, nothing from elsewhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BadRequest(Exception):
    """A query the page cannot use: 400 with the reason."""


def make_app(path: str, token: str, *, interval: float = live.INTERVAL) -> Starlette:
    """The app serving the journal at ``path``; actions need ``token``."""
    listing = data.Listing(path)
    listing.warm()  # the first replay starts now, not at the first request

    def page(html_text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(html_text, status_code=status, headers=HEADERS)

    def problem(status: int, message: str) -> HTMLResponse:
        return page(render.layout("error", f"<h1>{status}</h1><p>{render.esc(message)}</p>"),
                    status)

    async def in_thread(fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    async def instances(request: Request) -> Response:
        q = request.query_params
        try:
            filters = data.Filters(
                state=_state(q.get("state")), workflow=q.get("workflow") or None,
                prefix=q.get("prefix") or None, since=_time(q.get("since"), "since"),
                until=_time(q.get("until"), "until"),
            )
            limit = min(_int(q.get("limit"), PAGE, "limit", 1), MAX_PAGE)
            cursor = _int(q.get("cursor"), -1, "cursor", 0)
        except BadRequest as exc:
            return problem(400, str(exc))
        newest = q.get("order") == "newest"
        got = await in_thread(lambda: listing.page(
            filters, None if cursor < 0 else cursor, limit, newest))
        return page(render.instances_page(path, got, filters, limit, newest))

    async def instance(request: Request) -> Response:
        q = request.query_params
        iid = q.get("id", "")
        try:
            start = _int(q.get("from"), 0, "from", 0)
            count = min(_int(q.get("steps"), data.STEP_PAGE, "steps", 1), MAX_PAGE)
        except BadRequest as exc:
            return problem(400, str(exc))
        try:
            view = await in_thread(lambda: data.instance_view(listing, iid, start, count))
        except UnknownInstance:
            return problem(404, f"no instance {iid!r} in {path}")
        return page(render.instance_page(view))

    async def records(request: Request) -> Response:
        iid = request.query_params.get("id", "")
        try:
            found = await in_thread(lambda: data.instance_records(path, iid))
        except UnknownInstance:
            return problem(404, f"no instance {iid!r} in {path}")
        return page(render.records_page(iid, found))

    async def value(request: Request) -> Response:
        iid = request.query_params.get("id", "")
        key = request.query_params.get("key", "")
        try:
            found = await in_thread(lambda: data.step_value(listing, iid, key))
        except KeyError:
            return problem(404, f"no value for step {key!r} of instance {iid!r}")
        return Response(json.dumps(found, ensure_ascii=False, indent=2),
                        media_type="application/json", headers=HEADERS)

    async def stream(request: Request) -> Response:
        q = request.query_params
        iid = q.get("id", "")
        try:
            after = _int(q.get("after"), 1, "after", 0)
            t0 = _int(q.get("t0"), 0, "t0", 0)
            span = _int(q.get("span"), 1, "span", 1)
        except BadRequest as exc:
            return problem(400, str(exc))
        return EventStream(lambda: _events(listing, iid, after, t0, span, interval))

    async def action(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return JSONResponse({"error": "this action needs Authorization: Bearer TOKEN "
                                 "(the token memable ui printed at start)"}, 403)
        name = request.path_params["name"]
        iid = request.query_params.get("id", "")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, 400)
        try:
            how = await in_thread(lambda: _act(listing, name, iid, body))
        except (UnknownInstance, JournalCorrupt) as exc:
            return JSONResponse({"error": str(exc)}, 404 if isinstance(
                exc, UnknownInstance) else 500)
        except (EngineError, NotSerializable) as exc:
            return JSONResponse({"error": str(exc)}, 409)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"action": name, "instance": iid, "delivery": how})

    async def css(_: Request) -> Response:
        return Response(assets.CSS, media_type="text/css", headers=HEADERS)

    async def js(_: Request) -> Response:
        return Response(assets.JS, media_type="text/javascript", headers=HEADERS)

    return Starlette(routes=[
        Route("/", instances),
        Route("/instance", instance),
        Route("/instance/value", value),
        Route("/instance/records", records),
        Route("/instance/live", stream),
        Route("/action/{name}", action, methods=["POST"]),
        Route("/static/ui.css", css),
        Route("/static/ui.js", js),
    ])


def _act(listing: data.Listing, name: str, iid: str, body: dict[str, Any]) -> str | None:
    path = listing.path
    if name == "cancel":
        how = operations.cancel(path, iid)
    elif name == "restart":
        how = operations.restart(path, iid)
    elif name == "forget":
        how = operations.forget(path, iid, body.get("key", ""))
    elif name == "signal":
        workflow = listing.status(iid).workflow
        how = operations.signal(path, workflow, iid, body.get("key", ""), body.get("payload"))
    else:
        raise ValueError(f"no action {name!r}: cancel, restart, forget or signal")
    return None if how is None else how.value


async def _events(listing: data.Listing, iid: str, after: int, t0: int, span: int,
                  interval: float) -> AsyncGenerator[str, None]:
    """Server-Sent Events: ``step``, ``events`` and ``records`` rows, and the ``status``."""
    yield ": following the journal\n\n"
    async with aclosing(live.follow(listing.path, iid, after, interval)) as batches:
        async for batch in batches:
            for chunk in await _chunks(listing, iid, batch, t0, span):
                yield chunk


async def _chunks(listing: data.Listing, iid: str, batch: list[RecordView], t0: int,
                  span: int) -> list[str]:
    out = []
    steps = [data.step_of(rec) for rec in batch if rec.type in data.STEP_RECORDS]
    rows = "".join(render.step_row(iid, s, b, t0, span) for s, b in steps if s is not None)
    if rows:
        out.append(_sse("step", rows))
    events = "".join(render.event_row((rec.fields["key"], rec.ts_ms, rec.fields["value"]))
                     for rec in batch if rec.type == "published")
    if events:
        out.append(_sse("events", events))
    out.append(_sse("records", "".join(render.record_row(rec) for rec in batch)))
    try:
        st = await anyio.to_thread.run_sync(lambda: listing.status(iid))
    except UnknownInstance:
        return out
    out.append(_sse("status", render.status_block(st)))
    return out


class EventStream(Response):
    """A ``text/event-stream`` response that ends when the page goes away.

    Written out rather than Starlette's StreamingResponse so that the event
    generator is always closed (``aclosing``), which closes the journal
    follower and ends its thread, also when the client disconnects.
    """

    def __init__(self, events: Callable[[], AsyncGenerator[str, None]]) -> None:
        super().__init__(media_type="text/event-stream",
                         headers={**HEADERS, "Cache-Control": "no-store"})
        self._events = events
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async with trio.open_nursery() as nursery:

            async def disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(disconnected)
            async with aclosing(self._events()) as events:
                async for chunk in events:
                    await send({"type": "http.response.body", "body": chunk.encode(),
                                "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


def _sse(event: str, html_text: str) -> str:
    lines = "".join(f"data: {line}\n" for line in html_text.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


def _state(text: str | None) -> str | None:
    if not text:
        return None
    if text not in data.STATES:
        raise BadRequest(f"unknown state {text!r}; one of {', '.join(data.STATES)}")
    return text


def _time(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{what}: {text!r} is not an ISO 8601 time "
                         "(e.g. 2024-05-01T12:00:00Z or 2024-05-01)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int(text: str | None, default: int, what: str, low: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < low:
        raise BadRequest(f"{what}: {text!r} is not a whole number >= {low}")
    return int(text)
