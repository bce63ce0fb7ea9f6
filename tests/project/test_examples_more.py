"""The ETL, approval and research-agent examples run and do what they say.

Each example runs as a subprocess, as a user would run it; the assertions
read its output and, where the example leaves files behind (``--dir``), the
journal, the warehouse and the LLM bill themselves.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

from memable_log import decode_value, read_journal

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
STEP_LINE = re.compile(r"^  (\S+:v1)\s+(ran.*|from journal)$", re.MULTILINE)


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def step_done_keys(journal: Path) -> Counter[str]:
    return Counter(
        rec.fields["key"] for rec in read_journal(journal) if rec.type == "step_done"
    )


def test_etl_pipeline_resumes_without_rerunning_and_loads_every_row_once(
    tmp_path: Path,
) -> None:
    out = run_example("etl_pipeline.py", "--dir", str(tmp_path), "--pages", "5")
    run1, run2 = out.split("Run 2")
    assert "load:page-3:v1         started... the process is killed" in run1
    assert "(child exited with -9)" in run1
    assert "retried" in run1  # the flaky API forced retries
    outcome = dict(STEP_LINE.findall(run2))
    pages_1_to_3 = [f"{kind}:page-{page}:v1"
                    for page in (1, 2, 3) for kind in ("extract", "transform", "load")]
    for key in ["pages:v1", *pages_1_to_3[:-1]]:  # all that finished before the kill
        assert outcome[key] == "from journal", key
    assert outcome["load:page-3:v1"].startswith("ran")
    for page in (4, 5):
        for kind in ("extract", "transform", "load"):
            assert outcome[f"{kind}:page-{page}:v1"].startswith("ran")
    assert "served pages [4, 5]" in run2  # nothing already extracted was fetched again

    with sqlite3.connect(tmp_path / "warehouse.sqlite") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM orders ORDER BY id")]
        batches = dict(db.execute("SELECT batch, loaded_by FROM batches"))
    db.close()
    assert ids == list(range(1, 21))  # every row exactly once
    assert batches == {"page-1": "run 1", "page-2": "run 1", "page-3": "run 2",
                       "page-4": "run 2", "page-5": "run 2"}
    keys = step_done_keys(tmp_path / "etl.memable")
    assert len(keys) == 16
    assert set(keys.values()) == {1}


def test_approval_demo_completes_by_http_and_by_memable_signal(tmp_path: Path) -> None:
    out = run_example("approval_server.py", "--demo", "--dir", str(tmp_path))
    assert '"state": "suspended", "status": "Waiting for manager approval"' in out
    assert '-> 202 {"delivered": true}' in out
    assert '{"result": {"outcome": "processed", "by": "maria"' in out
    assert "-> 409 " in out  # a second answer for the same key
    assert "$ memable-signal " in out
    assert "handed over to the running engine  [exit 0]" in out
    assert '{"result": {"outcome": "rejected", "by": "sam"' in out

    records = list(read_journal(tmp_path / "approvals.memable"))
    suspended = [rec for rec in records if rec.type == "suspended"]
    assert [rec.fields["status"] for rec in suspended] == ["Waiting for manager approval"] * 2
    signalled = [decode_value(rec.fields["payload"]) for rec in records if rec.type == "signalled"]
    assert [payload["by"] for payload in signalled] == ["maria", "sam"]  # the 409 wrote nothing
    results = [decode_value(rec.fields["result"]) for rec in records if rec.type == "completed"]
    assert [result["outcome"] for result in results] == ["processed", "rejected"]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_approval_serve_mode_answers_curl_style_requests(tmp_path: Path) -> None:
    example = load_example("approval_server.py")
    http: Any = example.http
    journal = tmp_path / "approvals.memable"
    command = [sys.executable, str(EXAMPLES / "approval_server.py"), "--serve", "--port", "0",
               "--journal", str(journal)]
    # A shell without job control starts background jobs with SIGINT ignored,
    # and that is inherited: give the server the default, as a terminal would.
    proc = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    try:
        with trio.fail_after(30):
            await drive_server(proc, http, journal)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


async def drive_server(proc: trio.Process, http: Any, journal: Path) -> None:
    """Play a curl session against ``--serve``, then stop it with Ctrl-C (SIGINT)."""
    assert proc.stdout is not None
    head = b""
    while b"\n" not in head:
        chunk = await proc.stdout.receive_some()
        assert chunk, "the server exited before it was serving"
        head += chunk
    serving = re.search(rb"http://127\.0\.0\.1:(\d+)/", head)
    assert serving is not None, head
    port = int(serving.group(1))

    status, started = await http(port, "POST", "/start", {"dataset": "q3"})
    assert status == 201
    first = started["instance_id"]
    # Sent whether or not the instance has reached its suspension yet: kept either way.
    assert await http(port, "POST", f"/approve/{first}", {"approved": True, "by": "t"}) == (
        202, {"delivered": True})
    status, answer = await http(port, "GET", f"/result/{first}")
    assert (status, answer["result"]["outcome"], answer["result"]["by"]) == (
        200, "processed", "t")
    status, state = await http(port, "GET", f"/status/{first}")
    assert (status, state["state"], state["steps"]) == (200, "completed", 2)
    assert (await http(port, "POST", f"/approve/{first}", {"approved": False}))[0] == 409
    assert (await http(port, "GET", "/status/no-such-id"))[0] == 404

    _, started = await http(port, "POST", "/start", {"dataset": "q4"})
    second = started["instance_id"]
    signal_cli = await trio.run_process(
        [sys.executable, "-m", "memable_log_tools.send_signal", str(journal), "approval",
         second, "approval:v1", '{"approved": false, "by": "cli"}'],
        capture_stdout=True, check=False,
    )
    assert signal_cli.returncode == 0
    _, answer = await http(port, "GET", f"/result/{second}")
    assert answer["result"]["outcome"] == "rejected"

    proc.send_signal(signal.SIGINT)
    assert await proc.wait() == 0
    rest = b""
    while chunk := await proc.stdout.receive_some():
        rest += chunk
    assert b"Stopped." in rest


def test_research_agent_pays_each_llm_call_once_across_the_crash(tmp_path: Path) -> None:
    out = run_example("research_agent.py", "--dir", str(tmp_path), "--cooldown", "0.2")
    run1, run2 = out.split("Run 2")
    assert "timers/summarise:v1          started... the process is killed" in run1
    ran = re.compile(r"^  (\S+:v1)\s+ran: ", re.MULTILINE)
    topics = ("journals", "replay", "idempotency", "timers")
    assert set(ran.findall(run1)) == {"agent/plan:v1"} | {
        f"{t}/search:v1" for t in topics} | {f"{t}/summarise:v1" for t in topics[:3]}
    # Run 2: the plan, three sub-agents and the last one's search from the journal.
    assert ran.findall(run2) == ["timers/summarise:v1", "agent/report:v1"]
    assert "from journal (no call made): timers/search:v1" in run2
    assert "agent/cooldown:v1            sleeping 0.2 s" in run2
    assert "agent/cooldown:v1            deadline passed" in run2
    assert "[status] planning" in run1
    assert "[status] done" in run2
    assert "4 sub-agents; report:" in run2

    bill = [json.loads(line) for line in (tmp_path / "llm-bill.jsonl").read_text().splitlines()]
    prompts = [call["prompt"] for call in bill]
    assert len(prompts) == 6  # plan, four summaries, report
    assert len(set(prompts)) == len(prompts)  # no LLM call paid twice
    assert [call["run"] for call in bill] == ["run 1"] * 4 + ["run 2"] * 2
    assert "LLM bill: 6 calls for 6 distinct prompts" in out

    journal = tmp_path / "agent.memable"
    records = list(read_journal(journal))
    done = Counter((rec.instance, rec.fields["key"]) for rec in records
                   if rec.type == "step_done")
    assert set(done.values()) == {1}  # every step's result written once
    assert len(done) == 2 + 2 * len(topics)
    children = [rec.instance for rec in records if rec.type == "child_created"]
    assert children == [f"research-1/topics:v1:{i}" for i in range(4)]  # each started once
    ended = [rec.fields["key"] for rec in records if rec.type == "child_ended"]
    assert sorted(ended) == [f"topics:v1:{i}" for i in range(4)]
    # Each event published once, the plan by run 1; engine.events read them in order.
    assert [rec.fields["key"] for rec in records if rec.type == "published"] == [
        "plan", "summaries", "report"]
    events = re.findall(r"^    seq (\d+)  (\w+)", run2, re.MULTILINE)
    assert events == [("1", "plan"), ("2", "summaries"), ("3", "report")]
    types = [rec.type for rec in records if rec.fields.get("key") == "cooldown:v1"]
    assert types == ["timer_set", "timer_fired"]
    audit = out.split("Audit: $ memable-dump")[1]
    assert len(re.findall(r"  step_done\s+research-1", audit)) == len(done)
    assert len(re.findall(r"  child_created\s+research-1/topics:v1:\d", audit)) == 4
    assert re.search(r"  timer_fired\s+research-1  +cooldown:v1", audit)
