"""The page's stylesheet and its little script (served from /static; no build step)."""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{background:#233;color:#eee;padding:.5em 1em;display:flex;gap:1em;align-items:center}
header a{color:#fff;font-weight:bold;text-decoration:none}
header .token{margin-left:auto}
main{padding:0 1em 2em}
.muted{color:#888;font-weight:normal;font-size:.9em}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{border-bottom:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
td.num{text-align:right}
.list td:nth-child(5),.list td:nth-child(6),.steps td:nth-child(4){white-space:nowrap}
code{font-size:.9em;word-break:break-all}
.filters{display:flex;flex-wrap:wrap;gap:.75em;align-items:end;margin:.5em 0}
.filters label{display:flex;flex-direction:column;font-size:.85em}
.state.completed,.state.done{color:#176f2c}.state.failed{color:#b00020}
.state.cancelled{color:#777}.state.running{color:#0b5cad}
.state.suspended,.state.sleeping,.state.waiting,.state.queued{color:#a86400}
dl.status{display:grid;grid-template-columns:9em 1fr;gap:.2em 1em}
dl.status dt{color:#666}dl.status dd{margin:0}dl.status ul{margin:0;padding-left:1.2em}
td.timeline{width:30%;min-width:10em}
.bar{height:.8em;background:#5a8fd6;border-radius:2px;min-width:2px}
.bar.failed{background:#d05050}.bar.interrupted{background:#d0a040}
td.err{color:#b00020}
.actions{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}
tr.new{background:#fff7d6}
.pager a{margin-left:.5em}
"""

JS = """
'use strict';
const tokenBox = document.getElementById('token');
tokenBox.value = sessionStorage.getItem('memable-token') || '';
tokenBox.addEventListener('change', () => sessionStorage.setItem('memable-token', tokenBox.value));

function rows(html) {
  const t = document.createElement('tbody');
  t.innerHTML = html;  // server-rendered, every value escaped
  return [...t.children];
}

const live = document.body.dataset.live;
if (live) {
  const source = new EventSource(live);
  const steps = document.getElementById('steps');
  let more = 0;
  source.addEventListener('step', (e) => {
    for (const row of rows(e.data)) {
      row.classList.add('new');
      const old = document.getElementById(row.id);
      if (old) old.replaceWith(row);
      else if (steps.dataset.tail === '1') steps.append(row);
      else {  // a new step, on a later page than this one
        const note = document.getElementById('steps-more');
        note.textContent = (++more) + ' new steps since, on the last page';
        note.hidden = false;
      }
    }
  });
  for (const name of ['records', 'events']) {
    source.addEventListener(name, (e) => {
      for (const row of rows(e.data)) {
        row.classList.add('new');
        document.getElementById(name).append(row);
      }
    });
  }
  source.addEventListener('status', (e) => {
    const t = document.createElement('div');
    t.innerHTML = e.data;
    document.getElementById('status').replaceWith(t.firstElementChild);
  });
}

const actions = document.querySelector('.actions');
if (actions) {
  actions.addEventListener('click', async (e) => {
    const name = e.target.dataset && e.target.dataset.action;
    if (!name) return;
    const out = document.getElementById('result');
    const body = {key: actions.querySelector('[name=key]').value};
    try { body.payload = JSON.parse(actions.querySelector('[name=payload]').value); }
    catch (err) { out.textContent = 'payload is not JSON: ' + err; return; }
    const q = new URLSearchParams({id: actions.dataset.id});
    const r = await fetch('/action/' + name + '?' + q, {method: 'POST',
      headers: {'Authorization': 'Bearer ' + tokenBox.value, 'Content-Type': 'application/json'},
      body: JSON.stringify(body)});
    const text = await r.text();
    out.textContent = r.status + ' ' + text;
  });
}
"""
