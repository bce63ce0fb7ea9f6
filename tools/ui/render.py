"""HTML for the pages of memable ui; every value from a journal goes through ``esc``.

Server-rendered, no template engine and no build step: each function
returns a string. Values are decoded for display (``decode_value``: never
running code) and shortened; the full value is one link away. Rows that
the live view sends (``step_row``, ``record_row``, ``event_row``,
``status_block``) are the same functions the page uses.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from memable_log import InstanceStatus, StepStatus
from memable_log.reader import RecordView, decode_value

from .data import STATES, STEP_PAGE, Event, Filters, InstanceView, Page

SHORT = 120  # characters of a value shown inline


def esc(value: str) -> str:
    """Text for HTML (element content or a quoted attribute)."""
    return html.escape(value, quote=True)


def url(route: str, **params: object) -> str:
    """A link with its query, escaped for an attribute."""
    query = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return esc(route + ("?" + urlencode(query) if query else ""))


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def when_ms(ms: int) -> str:
    return when(datetime.fromtimestamp(ms / 1000, tz=UTC))


def short(value: Any, width: int = SHORT) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def blob_text(blob: bytes | None) -> str:
    return "-" if blob is None else short(decode_value(blob))


def dom_id(kind: str, key: str) -> str:
    return f"{kind}-{hashlib.sha1(key.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def layout(title: str, body: str, *, live: str | None = None) -> str:
    attr = f' data-live="{esc(live)}"' if live is not None else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} - memable ui</title>"
        '<link rel=stylesheet href="/static/ui.css"><script src="/static/ui.js" defer></script>'
        f"</head><body{attr}><header><a href=\"/\">memable ui</a> "
        f"<span class=muted>{esc(title)}</span>"
        '<label class=token>token <input id=token type=password autocomplete=off '
        'placeholder="printed at start"></label></header>'
        f"<main>{body}</main></body></html>"
    )


# -- the listing ------------------------------------------------------------------------


def instances_page(path: str, page: Page, filters: Filters, limit: int,
                   newest_first: bool) -> str:
    opts = "".join(
        f"<option{' selected' if filters.state == s else ''}>{esc(s)}</option>"
        for s in STATES
    )
    form = (
        "<form class=filters method=get action=\"/\">"
        f"<label>state <select name=state><option value=\"\">any</option>{opts}</select></label>"
        f"<label>workflow <input name=workflow value=\"{esc(filters.workflow or '')}\"></label>"
        f"<label>id prefix <input name=prefix value=\"{esc(filters.prefix or '')}\"></label>"
        f"<label>since <input name=since placeholder=2024-05-01 "
        f"value=\"{esc(when(filters.since) if filters.since else '')}\"></label>"
        f"<label>until <input name=until "
        f"value=\"{esc(when(filters.until) if filters.until else '')}\"></label>"
        f"<label><input type=checkbox name=order value=newest{' checked' if newest_first else ''}>"
        " newest first</label>"
        f"<input type=hidden name=limit value=\"{limit}\"><button>filter</button></form>"
    )
    rows = "".join(
        "<tr>"
        f"<td><a href=\"{url('/instance', id=st.instance_id)}\">{esc(st.instance_id)}</a></td>"
        f"<td>{esc(st.workflow)}</td><td class=\"state {esc(st.state)}\">{esc(st.state)}</td>"
        f"<td class=num>{st.steps}</td><td>{esc(when(st.created_at))}</td>"
        f"<td>{esc(when(st.updated_at))}</td>"
        f"<td>{esc(short_text(st.status))}</td><td>{esc(error_text(st))}</td></tr>"
        for _, st in page.rows
    )
    more = ""
    if page.next is not None:
        link = url("/", **_query(filters), limit=limit, cursor=page.next,
                   order="newest" if newest_first else None)
        more = f"<a class=next href=\"{link}\">next page \u2192</a>"
    body = (
        f"<h1>Instances <span class=muted>{esc(path)}</span></h1>{form}"
        f"<p class=muted>{page.total} instances in the journal as of {esc(when(page.as_of))}"
        f" (reload for newer); {len(page.rows)} shown</p>"
        "<table class=list><thead><tr><th>instance</th><th>workflow</th><th>state</th>"
        "<th>steps</th><th>created</th><th>updated</th><th>status</th><th>error</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>{more}"
    )
    return layout("instances", body)


def _query(filters: Filters) -> dict[str, object]:
    return {"state": filters.state, "workflow": filters.workflow, "prefix": filters.prefix,
            "since": when(filters.since) if filters.since else None,
            "until": when(filters.until) if filters.until else None}


def short_text(text: str | None, width: int = 80) -> str:
    if text is None:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def error_text(st: InstanceStatus) -> str:
    return "-" if st.error is None else short_text(f"{st.error.type}: {st.error.message}")


# -- one instance -----------------------------------------------------------------------


def status_block(st: InstanceStatus) -> str:
    waits = "".join(
        f"<li>{esc(w.kind)} <code>{esc(w.key)}</code>"
        + (f" until {esc(when(w.deadline))}" if w.deadline else "") + "</li>"
        for w in st.waits
    ) or "<li class=muted>none</li>"
    parent = ("-" if st.parent is None else
              f"<a href=\"{url('/instance', id=st.parent)}\">{esc(st.parent)}</a>")
    pairs = [
        ("workflow", esc(st.workflow)),
        ("state", f"<span class=\"state {esc(st.state)}\">{esc(st.state)}</span>"),
        ("status text", esc(st.status) if st.status is not None else "-"),
        ("error", esc(error_text(st))),
        ("steps", str(st.steps)),
        ("created", esc(when(st.created_at))),
        ("updated", esc(when(st.updated_at))),
        ("parent", parent),
        ("waits", f"<ul>{waits}</ul>"),
    ]
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in pairs)
    return f"<dl id=status class=status>{items}</dl>"


def step_row(instance_id: str, step: StepStatus, blob: bytes | None, t0_ms: int,
             span_ms: int, value_link: str | None = None) -> str:
    """One step's row; ``value_link``: ``value_base(instance_id)``, given by
    a caller rendering many rows (it is the same for each)."""
    start = step.started_at
    end = step.finished_at
    state = esc(step.state)
    bar = ""
    duration = "-"
    if start is not None:
        s_ms = start.timestamp() * 1000
        e_ms = end.timestamp() * 1000 if end is not None else s_ms
        left = min(max((s_ms - t0_ms) / span_ms * 100, 0.0), 100.0)
        width = min(max((e_ms - s_ms) / span_ms * 100, 0.4), 100.0 - left)
        bar = (f"<div class=\"bar {state}\" "
               f"style=\"margin-left:{left:.2f}%;width:{width:.2f}%\"></div>")
        if end is not None:
            duration = f"{(e_ms - s_ms) / 1000:.3f} s"
    error = "-" if step.error is None else short_text(f"{step.error.type}: {step.error.message}")
    value = "-"
    if blob is not None:
        base = value_link if value_link is not None else value_base(instance_id)
        link = esc(base + quote(step.key, safe=""))
        value = f"<code>{esc(blob_text(blob))}</code> <a href=\"{link}\">full</a>"
    return (
        f"<tr id=\"{dom_id('step', step.key)}\"><td><code>{esc(step.key)}</code></td>"
        f"<td class=\"state {state}\">{state}</td>"
        f"<td class=num>{step.attempts}</td><td>{esc(when(start))}</td>"
        f"<td class=num>{duration}</td><td class=timeline>{bar}</td>"
        f"<td class=err>{esc(error)}</td><td>{value}</td></tr>"
    )


def step_pager(instance_id: str, start: int, count: int, total: int) -> str:
    """Which steps the page shows, and links to the first, previous, next and last pages."""
    if total <= count and start == 0:
        return f"<p class=muted>{total} steps</p>"
    last = (total - 1) // count * count
    links = []
    for label, at, on in [("first", 0, start > 0), ("previous", max(start - count, 0), start > 0),
                          ("next", start + count, start + count < total),
                          ("last", last, start + count < total)]:
        if on:
            link = url("/instance", id=instance_id, steps=count if count != STEP_PAGE else None,
                       **{"from": at})
            links.append(f"<a class=\"page {label}\" href=\"{link}\">{label}</a>")
    end = min(start + count, total)
    return (f"<p class=pager>steps {start + 1 if total else 0}\u2013{end} of {total} "
            + " ".join(links) + "</p>")


def value_base(instance_id: str) -> str:
    """The link to a step's full value, but for the quoted key at its end."""
    return f"/instance/value?id={quote(instance_id, safe='')}&key="


def record_row(rec: RecordView) -> str:
    fields = []
    for name, value in rec.fields.items():
        if isinstance(value, bytes | bytearray):
            text = blob_text(bytes(value))
        elif name == "traceback":
            continue
        else:
            text = short(value)
        fields.append(f"{name}={text}")
    return (f"<tr><td class=num>{rec.seq}</td><td>{esc(when_ms(rec.ts_ms))}</td>"
            f"<td>{esc(rec.type)}</td><td><code>{esc(short_text(' '.join(fields), 200))}</code>"
            "</td></tr>")


def event_row(event: Event) -> str:
    key, ts_ms, blob = event
    return (f"<tr><td>{esc(when_ms(ts_ms))}</td><td><code>{esc(key)}</code>"
            f"</td><td><code>{esc(blob_text(blob))}</code></td></tr>")


def records_page(instance_id: str, records: list[RecordView]) -> str:
    """An instance's latest journal records (``/instance/records``)."""
    rows = "".join(record_row(rec) for rec in records)
    back = url("/instance", id=instance_id)
    body = (f"<h1>{esc(instance_id)} <span class=muted>journal records</span></h1>"
            f"<p><a href=\"{back}\">\u2190 the instance</a> &middot; its latest "
            f"{len(records)} records</p>{_records_table(rows)}")
    return layout(instance_id, body)


def _records_table(rows: str) -> str:
    return ("<table><thead><tr><th>seq</th><th>at</th><th>type</th><th>fields</th></tr>"
            f"</thead><tbody id=records>{rows}</tbody></table>")


def child_rows(children: Iterable[InstanceStatus]) -> str:
    return "".join(
        f"<tr><td><a href=\"{url('/instance', id=st.instance_id)}\">{esc(st.instance_id)}</a>"
        f"</td><td>{esc(st.workflow)}</td><td class=\"state {esc(st.state)}\">{esc(st.state)}"
        "</td></tr>"
        for st in children
    )


def span_of(view: InstanceView) -> tuple[int, int]:
    """The timeline's start and length (ms): creation to the last thing known."""
    t0 = round(view.status.created_at.timestamp() * 1000)
    t1 = round(view.status.updated_at.timestamp() * 1000)
    for row in view.steps:
        for moment in (row.step.started_at, row.step.finished_at):
            if moment is not None:
                t1 = max(t1, round(moment.timestamp() * 1000))
    return t0, max(t1 - t0, 1)


def instance_page(view: InstanceView) -> str:
    """The instance page, with the page of its steps the view holds.

    Only that page of the timeline is rendered (an instance of 10,000
    steps would otherwise be megabytes of HTML); links go to the pages
    around it. The live view adds new steps to the last page only: the
    ``steps`` body says whether it is the tail (``data-tail``).
    """
    st = view.status
    iid = st.instance_id
    t0, span = span_of(view)
    base = value_base(iid)
    total = len(view.steps)
    start, count = view.start, view.count
    shown = view.steps[start:start + count]
    tail = start + count >= total
    steps = "".join(step_row(iid, row.step, row.blob, t0, span, base) for row in shown)
    events = "".join(event_row(event) for event in view.events)
    actions = (
        f"<section class=actions data-id=\"{esc(iid)}\" data-workflow=\"{esc(st.workflow)}\">"
        "<h2>Actions</h2><p class=muted>need the token printed by <code>memable ui</code></p>"
        "<button data-action=cancel>cancel</button> <button data-action=restart>restart</button>"
        " <label>key <input name=key></label> <button data-action=forget>forget key</button>"
        " <label>payload (JSON) <input name=payload value=null></label>"
        " <button data-action=signal>signal key</button> <output id=result></output></section>"
    )
    body = (
        f"<h1>{esc(iid)}</h1>{status_block(st)}"
        f"<p>input <code>{esc(blob_text(view.input))}</code>"
        f" &middot; result <code>{esc(blob_text(view.result))}</code></p>{actions}"
        f"<h2>Steps <span class=muted>timeline from {esc(when_ms(t0))}, "
        f"{span / 1000:.3f} s</span></h2>{step_pager(iid, start, count, total)}"
        "<table class=steps><thead><tr><th>key</th><th>state</th><th>attempts</th>"
        "<th>started</th><th>took</th><th class=timeline>timeline</th><th>error</th>"
        f"<th>value</th></tr></thead><tbody id=steps data-tail={'1' if tail else '0'}>{steps}"
        "</tbody></table><p id=steps-more class=muted hidden></p>"
        "<h2>Events</h2><table><thead><tr><th>at</th><th>key</th><th>value</th></tr></thead>"
        f"<tbody id=events>{events}</tbody></table>"
        "<h2>Children</h2><table><thead><tr><th>instance</th><th>workflow</th><th>state</th>"
        f"</tr></thead><tbody id=children>{child_rows(view.children)}</tbody></table>"
        "<h2>Journal records <span class=muted>(appended since the page was shown; "
        f"live)</span></h2><p><a href=\"{url('/instance/records', id=iid)}\">its latest "
        f"records</a> <span class=muted>(reads the whole journal)</span></p>{_records_table('')}"
    )
    live = url("/instance/live", id=iid, after=view.next_seq, t0=t0, span=span)
    return layout(iid, body, live=html.unescape(live))
