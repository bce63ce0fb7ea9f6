"""The article's research agent, with a fake LLM that bills every call.

Run it: ``python examples/research_agent.py`` (``--dir DIR`` keeps the
journal and the bill in DIR; ``--cooldown SECONDS`` sets the timer).

The agent asks the LLM for a plan (a list of topics), runs a web search per
topic as parallel tool calls in a trio nursery, asks the LLM to summarise
each topic (keys ``search:{topic}:v1``, ``summarise:{topic}:v1``), waits on
a durable cooldown timer (``cooldown:v1``: 300 s against a real provider's
rate limit, 0.3 s of real time here), and asks for the final report.

The fake LLM is deterministic and writes every answered call to a bill
(``llm-bill.jsonl``), as a provider's invoice would. Run 1 is a child
process killed just before its third summary. Run 2 (this process, same
journal) re-runs the workflow from the top: the plan, the searches and the
first two summaries come from the journal, so the bill ends with exactly one
call per distinct prompt. Last, ``memable-dump`` prints the journal's audit
of every step.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

import trio

from memable_log import Context, Engine

CHILD = "--child"
QUESTION = "How do durable-execution engines make AI agents crash-proof?"
TOPICS = ["journals", "replay", "idempotency", "timers"]
CRASH_BEFORE = f"summarise:{TOPICS[2]}:v1"  # run 1 dies as this step starts


# -- the fake world: an LLM that bills, a search tool ------------------------------


class FakeLLM:
    """A deterministic stand-in for a paid LLM API.

    Each answer carries its ``usage`` (tokens), as real APIs report it, and
    each answered call is appended to the bill file: it outlives the crash,
    so the demo can add up what both runs paid.
    """

    def __init__(self, bill: str, run: str) -> None:
        self.bill = bill
        self.run = run

    async def complete(self, prompt: str) -> dict[str, Any]:
        await trio.sleep(0.02)  # network and thinking time
        if prompt.startswith("Plan"):
            content: Any = {"topics": TOPICS}
        else:
            digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
            content = f"[{digest}] " + " ".join(prompt.split()[1:12]) + " ..."
        tokens = len(prompt.split()) * 3 + len(json.dumps(content).split()) * 4
        line = json.dumps({"run": self.run, "prompt": prompt, "tokens": tokens})
        async with await trio.open_file(self.bill, "a") as bill:
            await bill.write(line + "\n")
        return {"content": content, "usage": tokens}


async def web_search(topic: str) -> list[dict[str, str]]:
    """A pretend search API: slow, free, and answers in a topic-dependent time."""
    await trio.sleep(0.01 * (1 + len(topic) % 4))
    return [{"title": f"{topic.title()} in practice, part {n}",
             "url": f"https://example.org/{topic}/{n}"} for n in (1, 2, 3)]


# -- the workflow ----------------------------------------------------------------


def make_agent(llm: FakeLLM, cooldown: float) -> Callable[[Context], Any]:
    """The research agent, bound to this run's LLM client."""

    async def summarise(topic: str, hits: list[dict[str, str]]) -> dict[str, Any]:
        if CHILD in sys.argv and f"summarise:{topic}:v1" == CRASH_BEFORE:
            print(f"  {CRASH_BEFORE:<26} started... the process is killed (SIGKILL) "
                  "before it calls the LLM", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        titles = "; ".join(hit["title"] for hit in hits)
        return await llm.complete(f"Summarise for {topic}: {titles}")

    async def research_agent(ctx: Context) -> str:
        show = Show(ctx)  # ctx.step, plus a printed line per step (demo only)
        plan = await show.step("plan:v1").run(
            llm.complete, f"Plan the research: which topics answer {ctx.input!r}?")
        topics = plan["content"]["topics"]

        found: dict[str, list[dict[str, str]]] = {}

        async def search(topic: str) -> None:
            found[topic] = await show.step(f"search:{topic}:v1").run(web_search, topic)

        async with trio.open_nursery() as nursery:  # tool calls run in parallel
            for topic in topics:
                nursery.start_soon(search, topic)

        summaries = []
        for topic in topics:  # LLM calls one at a time: the provider limits our rate
            answer = await show.step(f"summarise:{topic}:v1").run(summarise, topic, found[topic])
            summaries.append(answer["content"])

        await show.timer("cooldown:v1", cooldown)  # let the rate limit recover
        report = await show.step("report:v1").run(
            llm.complete, "Write the final report from: " + " | ".join(summaries))
        return str(report["content"])

    return research_agent


class Show:
    """The demo's narrator: ``ctx.step`` and ``ctx.timer`` that print what happened.

    A step whose function was not called got its result from the journal;
    such steps are listed together on one line.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cached: list[str] = []
        print("  -- the workflow runs from the top --", flush=True)

    def step(self, key: str) -> ShownStep:
        return ShownStep(self, key)

    async def timer(self, key: str, seconds: float) -> None:
        self.flush()
        try:
            await self.ctx.timer(key, seconds)
        except BaseException:  # the engine unwinds a sleeping workflow with a BaseException
            print(f"  {key:<26} sleeping {seconds} s, dropped from memory until the timer"
                  " fires", flush=True)
            raise
        print(f"  {key:<26} deadline passed, carry on", flush=True)

    def flush(self) -> None:
        if self.cached:
            text = f"from journal (no call made): {', '.join(self.cached)}"
            print(textwrap.fill(text, 96, initial_indent="  ", subsequent_indent="    "),
                  flush=True)
            self.cached.clear()

    def done(self, key: str, called: bool, result: Any) -> None:
        if not called:
            self.cached.append(key)
            return
        self.flush()
        if isinstance(result, dict) and "usage" in result:
            what = f"LLM call, {result['usage']} tokens paid"
        else:
            what = f"tool call, {len(result)} results"
        print(f"  {key:<26} ran: {what}", flush=True)


class ShownStep:
    def __init__(self, show: Show, key: str) -> None:
        self.show = show
        self.key = key

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        called = False

        async def counted(*args: Any) -> Any:
            nonlocal called
            called = True
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        result = await self.show.ctx.step(self.key).run(counted, *args)
        self.show.done(self.key, called, result)
        return result


# -- running it ------------------------------------------------------------------


async def run(directory: str, cooldown: float, run_name: str) -> None:
    llm = FakeLLM(os.path.join(directory, "llm-bill.jsonl"), run_name)
    engine = Engine.builder().open(os.path.join(directory, "agent.memable")).build()
    engine.register("research-agent", make_agent(llm, cooldown))
    async with engine:  # recovery: an interrupted instance resumes here
        instance_id = await engine.invoke("research-agent", QUESTION, instance_id="research-1")
        report = await engine.wait(instance_id)
        status = engine.status(instance_id)
    print(f"  -> instance {instance_id!r} {status.state}, {status.steps} steps in the journal;"
          f" report: {report[:60]!r}...")


def bill_summary(directory: str) -> None:
    with open(os.path.join(directory, "llm-bill.jsonl")) as bill:
        calls = [json.loads(line) for line in bill]
    prompts = {call["prompt"] for call in calls}
    tokens = sum(call["tokens"] for call in calls)
    first = [call for call in calls if call["run"] == "run 1"]
    print(f"LLM bill: {len(calls)} calls for {len(prompts)} distinct prompts, {tokens} tokens.")
    verdict = "no call was paid twice" if len(calls) == len(prompts) else "SOME CALLS PAID TWICE!"
    print(f"  {verdict}; without the journal, run 2 would have paid again for run 1's "
          f"{len(first)} calls ({sum(call['tokens'] for call in first)} tokens).")


def audit(directory: str) -> None:
    command = ["memable-dump", os.path.join(directory, "agent.memable"),
               "--type", "step_done,timer_set,timer_fired"]
    print(f"Audit: $ {' '.join(command)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "memable_log_tools.dump", *command[1:]], check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="keep the journal and the bill here (default: a temp dir)")
    parser.add_argument("--cooldown", type=float, default=0.3,
                        help="seconds of the cooldown timer (default 0.3)")
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    if args.child:
        trio.run(run, args.dir, args.cooldown, "run 1")
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        os.makedirs(directory, exist_ok=True)
        print(f"Run 1 (a child process, killed as {CRASH_BEFORE} starts):", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--dir", directory, "--cooldown", str(args.cooldown),
             CHILD], check=False,
        )
        print(f"  (child exited with {child.returncode})")
        if child.returncode != -signal.SIGKILL:
            sys.exit("the child was expected to be killed by SIGKILL")
        print("Run 2 (this process, same journal and bill):", flush=True)
        trio.run(run, directory, args.cooldown, "run 2")
        bill_summary(directory)
        audit(directory)


if __name__ == "__main__":
    main()
