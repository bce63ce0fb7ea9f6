"""Tracing: what OpenTelemetry spans cost per step, and that tracing off costs nothing.

Run from the repository root::

    .venv/bin/python bench/bench_tracing.py                    # on vs off, this checkout
    .venv/bin/python bench/bench_tracing.py --versus ../other  # off: this vs a checkout

The machine the benchmarks run on is shared and loaded, so every figure is
the trio thread's CPU time (``time.thread_time``: preemption does not
count) per plain step, journal in memory, in a fresh process per sample,
the modes interleaved round by round; a figure is the median over rounds,
a comparison a ratio of medians. A sample runs ``--steps`` executed steps
once, then replays them ``--replays`` times (memoised: the least is kept).

Modes: ``off`` (no ``.tracing()``), ``noop`` (``.tracing()`` with the API's
no-op provider: what the hooks cost with nothing recording),
``sdk`` (the SDK's TracerProvider, spans recorded, no exporter) and
``sdk-memory`` (SDK with a SimpleSpanProcessor into an InMemorySpanExporter).
``--versus DIR`` runs ``off`` from this checkout and from DIR (main's
commit before tracing, say) side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from _util import cpu_per_step

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("off", "noop", "sdk", "sdk-memory")


def _builder(mode: str) -> Any:
    from memable_log import Engine

    builder = Engine.builder().in_memory()
    if mode == "off":
        return builder
    from opentelemetry import trace

    if mode == "noop":
        return builder.tracing(trace.NoOpTracerProvider())
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    if mode == "sdk-memory":
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return builder.tracing(provider)


async def _cpu_child(mode: str, steps: int, replays: int) -> dict[str, float]:
    """CPU time per step (bench/_util.py cpu_per_step)."""
    return await cpu_per_step(_builder(mode), steps, replays)


def _sample(checkout: str, mode: str, steps: int, replays: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": checkout}  # that checkout's memable_log first
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cpu-child", mode,
                          str(steps), str(replays)], capture_output=True, text=True,
                         check=True, env=env, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _rounds(sides: dict[str, tuple[str, str]], rounds: int, steps: int,
            replays: int) -> dict[str, dict[str, list[float]]]:
    got: dict[str, dict[str, list[float]]] = {
        side: {"executed_us": [], "memoised_us": []} for side in sides}
    for r in range(rounds):
        for side in list(sides) if r % 2 == 0 else list(reversed(sides)):
            checkout, mode = sides[side]
            for key, value in _sample(checkout, mode, steps, replays).items():
                got[side][key].append(value)
    return got


def on_off(rounds: int, steps: int, replays: int) -> None:
    got = _rounds({mode: (ROOT, mode) for mode in MODES}, rounds, steps, replays)
    print(f"CPU time per step (trio thread), in memory, median of {rounds} interleaved "
          f"rounds of {steps} steps:")
    print(f"  {'mode':<11} {'executed':>9} {'memoised':>9}   executed over off")
    off = statistics.median(got["off"]["executed_us"])
    for mode in MODES:
        ex = statistics.median(got[mode]["executed_us"])
        me = statistics.median(got[mode]["memoised_us"])
        extra = "" if mode == "off" else f"   +{ex - off:.1f} us ({ex / off:.2f}x)"
        print(f"  {mode:<11} {ex:>7.2f}us {me:>7.2f}us{extra}")


def versus(other: str, rounds: int, steps: int, replays: int) -> None:
    sides = {"this": (ROOT, "off"), "other": (os.path.abspath(other), "off")}
    got = _rounds(sides, rounds, steps, replays)
    print(f"tracing off, CPU time per step (trio thread), in memory, {rounds} interleaved "
          f"rounds: this = {ROOT}, other = {sides['other'][0]}")
    for key in ("executed_us", "memoised_us"):
        this, that = (statistics.median(got[side][key]) for side in sides)
        per_round = statistics.median(
            x / y for x, y in zip(got["this"][key], got["other"][key], strict=True))
        print(f"  {key}: this {this:.2f}, other {that:.2f}; ratio of medians "
              f"{this / that:.3f}, median of per-round ratios {per_round:.3f}")
        for side in sides:
            print(f"    {side}: {', '.join(f'{v:.2f}' for v in got[side][key])}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cpu-child"]:
        import trio

        print(json.dumps(trio.run(_cpu_child, argv[1], int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versus", metavar="DIR", help="a checkout to compare tracing off with")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--replays", type=int, default=10)
    args = parser.parse_args(argv)
    if args.versus:
        versus(args.versus, args.rounds, args.steps, args.replays)
    else:
        on_off(args.rounds, args.steps, args.replays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
