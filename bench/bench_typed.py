"""Typed values: what decoding into declared types costs per step.

Run from the repository root::

    .venv/bin/python bench/bench_typed.py                    # cost per step by value type
    .venv/bin/python bench/bench_typed.py --versus ../other  # bench_engine (a), (c) vs a checkout

Default: one workflow of N steps, each returning the same kind of value,
on a journal in memory (``--disk``: on disk, where fsync hides it), first
run (executed) and replay (memoised) timed
separately, for: an int (the plain path), a plain dict of the same fields,
a dataclass of five fields (UUID, datetime, Decimal, str, int), and a
pydantic model of the same fields. The cost of a type is its per-step time
minus the plain dict's, median over interleaved rounds.

``--versus DIR``: bench_engine.py's (a) 1,000 executed steps and (c)
10,000 memoised steps (``--c-steps``), run alternately from this checkout and the one in DIR (the
commit before, say) in fresh processes, reported as ratios of medians: the
plain path must be no slower. Wall-clock rates swing 2-3x on a loaded
machine, so it also reports the trio thread's CPU time per plain step, in
memory, executed and memoised (the least of 10 replays), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pydantic  # the test extra has it
from _util import cpu_per_step

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass
class Row:
    id: UUID
    at: datetime
    amount: Decimal
    name: str
    count: int


ROW = Row(UUID(int=12345), datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC),
          Decimal("12.34"), "widget", 7)
PLAIN = {"id": str(ROW.id), "at": ROW.at.isoformat(), "amount": str(ROW.amount),
         "name": ROW.name, "count": ROW.count}


def make_int() -> int:
    return 7


def make_plain() -> dict[str, Any]:
    return dict(PLAIN)


def make_row() -> Row:
    return ROW


class Model(pydantic.BaseModel):
    id: UUID
    at: datetime
    amount: Decimal
    name: str
    count: int


MODEL = Model(id=ROW.id, at=ROW.at, amount=ROW.amount, name=ROW.name, count=ROW.count)


def make_model() -> Model:
    return MODEL


async def _child(kind: str, path: str, steps: int) -> dict[str, float]:
    import trio

    from memable_log import Context, Engine

    fn = {"int": make_int, "dict": make_plain, "dataclass": make_row, "pydantic": make_model}[kind]
    marks: list[float] = []

    async def wf(ctx: Context) -> None:
        marks.append(time.perf_counter())
        for i in range(steps):
            await ctx.step(f"s{i}").run(fn)
        marks.append(time.perf_counter())
        if len(marks) == 2:
            await ctx.suspend("again")

    builder = Engine.builder()
    engine = (builder.in_memory() if path == ":memory:" else builder.open(path)).build()
    engine.register("wf", wf)
    async with engine:
        iid = await engine.invoke("wf")
        while engine.status(iid).state not in ("suspended", "failed"):  # noqa: ASYNC110
            await trio.sleep(0.001)  # a benchmark's driver: the engine has no public event
        await engine.signal("wf", iid, "again", None)
        await engine.wait(iid)
    first, replay = marks[1] - marks[0], marks[3] - marks[2]
    return {"first_us": first / steps * 1e6, "replay_us": replay / steps * 1e6}


def conversion_alone(rounds: int) -> None:
    """In one process: what a step's value costs the codec, with and without
    its type (to_plain, encode, decode, from_plain; decode, from_plain)."""
    import timeit

    from memable_log._core.codec import Codec
    from memable_log._core.typed import plan_of

    codec = Codec()
    print("the value alone, in this process (median of rounds of 20,000):")
    print(f"  {'value':<10} {'written':>10} {'replayed':>10}")
    for kind, tp, value in (("dict", dict, PLAIN), ("dataclass", Row, ROW),
                            ("pydantic", Model, MODEL)):
        plan = plan_of(tp)
        blob = codec.encode(plan.to_plain(value) if plan else value)

        def written(plan: Any = plan, value: Any = value) -> Any:
            data = codec.encode(plan.to_plain(value) if plan else value)
            back = codec.decode(data)
            return plan.from_plain(back) if plan else back

        def replayed(plan: Any = plan, blob: bytes = blob) -> Any:
            back = codec.decode(blob)
            return plan.from_plain(back) if plan else back

        n = 20_000
        w = statistics.median(timeit.repeat(written, number=n, repeat=rounds)) / n * 1e6
        r = statistics.median(timeit.repeat(replayed, number=n, repeat=rounds)) / n * 1e6
        print(f"  {kind:<10} {w:>8.1f}us {r:>8.1f}us")


async def _cpu_child(steps: int, replays: int) -> dict[str, float]:
    """CPU time per step (bench/_util.py cpu_per_step)."""
    from memable_log import Engine

    return await cpu_per_step(Engine.builder().in_memory(), steps, replays)


def per_type(rounds: int, steps: int, disk: bool) -> None:
    kinds = ["int", "dict", "dataclass", "pydantic"]
    results: dict[str, dict[str, list[float]]] = {
        k: {"first_us": [], "replay_us": []} for k in kinds}
    base = tempfile.mkdtemp(prefix="bench-typed-", dir=os.path.join(HERE, ".data")
                            if os.path.isdir(os.path.join(HERE, ".data")) else None)
    try:
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else reversed(kinds):
                path = os.path.join(base, f"{kind}-{r}.memable") if disk else ":memory:"
                out = subprocess.run([sys.executable, __file__, "--child", kind, path,
                                      str(steps)], capture_output=True, text=True, check=True)
                for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    results[kind][key].append(value)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    where = "on disk" if disk else "in memory: the conversion's CPU cost, not hidden by fsync"
    print(f"per step, median of {rounds} rounds of {steps} steps (journal {where}):")
    print(f"  {'value':<10} {'executed':>10} {'memoised':>10}   cost over a plain dict")
    med = {k: {q: statistics.median(v) for q, v in results[k].items()} for k in kinds}
    for kind in kinds:
        first, replay = med[kind]["first_us"], med[kind]["replay_us"]
        extra = ("" if kind in ("int", "dict") else
                 f"   +{first - med['dict']['first_us']:.1f} us executed, "
                 f"+{replay - med['dict']['replay_us']:.1f} us memoised")
        print(f"  {kind:<10} {first:>8.1f}us {replay:>8.1f}us{extra}")


def _engine_child(checkout: str, scenario: str, path: str, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": checkout}  # that checkout's memable_log first
    script = os.path.join(checkout, "bench", "bench_engine.py")
    out = subprocess.run([sys.executable, script, "--child", scenario, "--dir", path, *extra],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def versus(other: str, rounds: int, steps: int, c_steps: int) -> None:
    sides = {"this": ROOT, "other": os.path.abspath(other)}
    a: dict[str, list[float]] = {side: [] for side in sides}
    c: dict[str, list[float]] = {side: [] for side in sides}
    base = tempfile.mkdtemp(prefix="bench-versus-")
    try:
        prepared = {}
        for side in sides:  # (c)'s journal, prepared once per side, recovered from copies
            prepared[side] = os.path.join(base, f"{side}-prepared.memable")
            _engine_child(sides[side], "prepare", prepared[side], "--steps", str(c_steps),
                          "--crash-after", str(c_steps))
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                path = os.path.join(base, f"{side}-{r}-a.memable")
                res = _engine_child(sides[side], "steps", path, "--steps", str(steps))
                a[side].append(steps / res["elapsed"])
                shutil.rmtree(path, ignore_errors=True)
            for side in order:
                path = os.path.join(base, f"{side}-{r}-c.memable")
                shutil.copytree(prepared[side], path)
                res = _engine_child(sides[side], "recover", path, "--steps", str(c_steps))
                c[side].append(c_steps / res["replay"])
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    cpu: dict[str, dict[str, list[float]]] = {
        side: {"executed_us": [], "memoised_us": []} for side in sides}
    for r in range(rounds):
        for side in list(sides) if r % 2 == 0 else list(reversed(sides)):
            env = {**os.environ, "PYTHONPATH": sides[side]}
            out = subprocess.run([sys.executable, __file__, "--cpu-child", "5000", "10"],
                                 capture_output=True, text=True, check=True, env=env,
                                 cwd=tempfile.gettempdir())
            for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                cpu[side][key].append(value)
    print(f"in memory, the trio thread's CPU time per plain step, {rounds} interleaved rounds:")
    for key in ("executed_us", "memoised_us"):
        this, that = (statistics.median(cpu[side][key]) for side in sides)
        per_round = statistics.median(
            x / y for x, y in zip(cpu["this"][key], cpu["other"][key], strict=True))
        print(f"  {key}: this {this:.2f}, other {that:.2f}; time ratio of medians "
              f"{this / that:.3f}, median of per-round ratios {per_round:.3f}")
    print(f"bench_engine (a) and (c), {rounds} interleaved rounds, this = {ROOT}, "
          f"other = {sides['other']}")
    for label, series in (("(a) executed steps/s", a), ("(c) memoised steps/s", c)):
        this, that = statistics.median(series["this"]), statistics.median(series["other"])
        per_round = statistics.median(x / y for x, y in zip(series["this"], series["other"],
                                                             strict=True))
        print(f"  {label}: this {this:,.0f}, other {that:,.0f}; ratio of medians "
              f"{this / that:.3f}, median of per-round ratios {per_round:.3f}")
        for side in sides:
            print(f"    {side}: {', '.join(f'{v:,.0f}' for v in series[side])}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cpu-child"]:
        import trio

        print(json.dumps(trio.run(_cpu_child, int(argv[1]), int(argv[2]))))
        return 0
    if argv[:1] == ["--child"]:
        import trio

        kind, path, steps = argv[1], argv[2], int(argv[3])
        print(json.dumps(trio.run(_child, kind, path, steps)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versus", metavar="DIR", help="a checkout to compare (a), (c) with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--c-steps", type=int, default=10_000,
                        help="--versus: (c)'s memoised steps (1,000 replay in ~10 ms, less "
                        "than a time slice of a loaded machine)")
    parser.add_argument("--disk", action="store_true", help="the journal on disk, not in memory")
    args = parser.parse_args(argv)
    if args.versus:
        versus(args.versus, args.rounds, args.steps, args.c_steps)
    else:
        conversion_alone(args.rounds)
        per_type(args.rounds, args.steps, args.disk)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
