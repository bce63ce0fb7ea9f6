"""The article's research agent, with sub-agents and a fake LLM that bills every call.

Run it: ``python examples/research_agent.py`` (``--dir DIR`` keeps the
journal and the bill in DIR; ``--cooldown SECONDS`` sets the timer).

The agent asks the LLM for a plan (a list of topics), then hands each topic
to a sub-agent: a child workflow, ``topic-agent``, started with
``ctx.fan_out("topics:v1", "topic-agent", topics, concurrency=2)``, two at a
time. Each sub-agent runs a web search (``search:v1``) and asks the LLM to
summarise it (``summarise:v1``), in its own instance
(``research-1/topics:v1:<i>``) with its own keys. The agent then waits on a
durable cooldown timer (``cooldown:v1``: 300 s against a real provider's
rate limit, 0.3 s of real time here) and asks for the final report. As it
goes it says where it is (``ctx.set_status``, read by ``engine.watch``)
and publishes its plan, its summaries and its report as events
(``ctx.publish``, read by ``engine.events``).

The fake LLM is deterministic and writes every answered call to a bill
(``llm-bill.jsonl``), as a provider's invoice would. Run 1 is a child
process killed as the last sub-agent starts its summary (once the three
others have finished). Run 2 (this process, same journal) resumes: the
plan, the three finished sub-agents and the last one's search come from the
journal, so the bill ends with exactly one call per distinct prompt; its
events show the plan published once, by run 1. Last, ``memable-dump``
prints the journal's audit.
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
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from memable_log import Context, Engine

CHILD = "--child"
QUESTION = "How do durable-execution engines make AI agents crash-proof?"
TOPICS = ["journals", "replay", "idempotency", "timers"]
PARENT = "research-1"
FAN_OUT = "topics:v1"
CRASH_IN = f"{PARENT}/{FAN_OUT}:{len(TOPICS) - 1}"  # run 1 dies as this sub-agent summarises


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


def make_agent(
    llm: FakeLLM, cooldown: float, before_crash: Callable[[], Awaitable[None]] | None
) -> tuple[Callable[[Context], Any], Callable[[Context], Any]]:
    """The research agent and its sub-agent, bound to this run's LLM client.

    ``before_crash`` is set in run 1 only: the last sub-agent awaits it (the
    others finishing), then the process kills itself.
    """

    async def summarise(topic: str, hits: list[dict[str, str]]) -> dict[str, Any]:
        titles = "; ".join(hit["title"] for hit in hits)
        return await llm.complete(f"Summarise for {topic}: {titles}")

    async def topic_agent(ctx: Context) -> str:
        topic = ctx.input
        show = Show(ctx, topic)
        hits = await show.step("search:v1").run(web_search, topic)
        if before_crash is not None and ctx.instance_id == CRASH_IN:
            await before_crash()
            print(f"  {topic + '/summarise:v1':<28} started... the process is killed "
                  "(SIGKILL) before it calls the LLM", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        answer = await show.step("summarise:v1").run(summarise, topic, hits)
        return str(answer["content"])

    async def research_agent(ctx: Context) -> str:
        show = Show(ctx, "agent")  # ctx.step, plus a printed line per step (demo only)
        await ctx.set_status("planning")
        plan = await show.step("plan:v1").run(
            llm.complete, f"Plan the research: which topics answer {ctx.input!r}?")
        topics = plan["content"]["topics"]
        await ctx.publish("plan", topics)

        await ctx.set_status(f"researching {len(topics)} topics, two at a time")
        show.flush()
        # One sub-agent per topic, each a child workflow with its own journal
        # entries; two at a time, as the provider limits our rate.
        summaries = await ctx.fan_out(FAN_OUT, "topic-agent", topics, concurrency=2)
        print(f"  {'agent/' + FAN_OUT:<28} {len(summaries)} sub-agents finished", flush=True)
        await ctx.publish("summaries", summaries)

        await ctx.set_status("cooling down")
        await show.timer("cooldown:v1", cooldown)  # let the rate limit recover
        await ctx.set_status("writing the report")
        report = await show.step("report:v1").run(
            llm.complete, "Write the final report from: " + " | ".join(summaries))
        await ctx.publish("report", report["content"])
        await ctx.set_status("done")
        return str(report["content"])

    return research_agent, topic_agent


class Show:
    """The demo's narrator: ``ctx.step`` and ``ctx.timer`` that print what happened.

    A step whose function was not called got its result from the journal;
    such steps are listed together on one line.
    """

    def __init__(self, ctx: Context, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.cached: list[str] = []
        print(f"  -- {ctx.instance_id} runs from the top --", flush=True)

    def step(self, key: str) -> ShownStep:
        return ShownStep(self, key)

    async def timer(self, key: str, seconds: float) -> None:
        self.flush()
        name = f"{self.label}/{key}"
        try:
            await self.ctx.timer(key, seconds)
        except BaseException:  # the engine unwinds a sleeping workflow with a BaseException
            print(f"  {name:<28} sleeping {seconds} s, dropped from memory until the timer"
                  " fires", flush=True)
            raise
        print(f"  {name:<28} deadline passed, carry on", flush=True)

    def flush(self) -> None:
        if self.cached:
            text = f"from journal (no call made): {', '.join(self.cached)}"
            print(textwrap.fill(text, 96, initial_indent="  ", subsequent_indent="    "),
                  flush=True)
            self.cached.clear()

    def done(self, key: str, called: bool, result: Any) -> None:
        key = f"{self.label}/{key}"
        if not called:
            self.cached.append(key)
            return
        self.flush()
        if isinstance(result, dict) and "usage" in result:
            what = f"LLM call, {result['usage']} tokens paid"
        else:
            what = f"tool call, {len(result)} results"
        print(f"  {key:<28} ran: {what}", flush=True)


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

    async def others_finished() -> None:  # run 1: the other sub-agents' results are durable
        for i in range(len(TOPICS) - 1):
            await engine.wait(f"{PARENT}/{FAN_OUT}:{i}")

    agent, sub_agent = make_agent(llm, cooldown, others_finished if run_name == "run 1" else None)
    engine.register("research-agent", agent)
    engine.register("topic-agent", sub_agent)
    async with engine:  # recovery: an interrupted instance and its children resume here
        instance_id = await engine.invoke("research-agent", QUESTION, instance_id=PARENT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show_status, engine, instance_id)
            report = await engine.wait(instance_id)
        status = engine.status(instance_id)
        children = [s for s in engine.instances() if s.parent == instance_id]
        print(f"  -> instance {instance_id!r} {status.state}, {status.steps} steps of its "
              f"own, {len(children)} sub-agents; report: {report[:50]!r}...")
        print(f"  events of {instance_id!r} (engine.events, resumable by seq):")
        async for event in engine.events(instance_id):
            value = json.dumps(event.value)
            shown = value if len(value) <= 60 else value[:60] + "..."
            print(f"    seq {event.seq}  {event.key:<10} {shown}")


async def show_status(engine: Engine, instance_id: str) -> None:
    """Print the agent's status text each time it changes (``engine.watch``)."""
    shown = None
    async for status in engine.watch(instance_id):
        if status.status != shown:
            shown = status.status
            print(f"  [status] {shown}", flush=True)


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
               "--type", "step_done,child_created,child_ended,published,timer_fired"]
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
        print(f"Run 1 (a child process, killed as {CRASH_IN} summarises):", flush=True)
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
