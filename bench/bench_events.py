"""Events benchmark: from ``ctx.publish`` to an ``engine.events()`` reader woken.

Run from the repository root::

    .venv/bin/python bench/bench_events.py            # full run, a few seconds
    .venv/bin/python bench/bench_events.py --quick    # a smoke check
    .venv/bin/python bench/bench_events.py --json bench/results/events.json

One engine on a journal on disk; one instance publishes events one at a
time, and an in-process reader (``async for ev in engine.events(id)``)
takes each. The workflow publishes the next event only once the reader has
the last one, so every sample starts with the reader idle, blocked in the
iterator (woken by the engine, nothing polls). Measured per event:

* publish -> reader: from the call of ``ctx.publish`` to the reader holding
  the ``Event``: the durable write (one commit, one fsync) and the wake-up;
* durable -> reader: from ``ctx.publish`` returning (the record on disk
  and applied) to the reader holding it: the wake-up alone.

Quoted: the median of the per-round medians, and the p99 over all samples.
Target (issue 14): publish -> reader <= 1 ms median, on disk.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import trio
from _util import (
    Stat,
    bench_parser,
    machine_line,
    open_data_dir,
    print_banner,
    progress,
    scratch_dir,
    table,
    write_json,
)

from memable_log import Context, Engine

TARGET_MS = 1.0


@dataclass(frozen=True)
class Sizes:
    runs: int
    events: int  # per round


FULL = Sizes(runs=5, events=400)
QUICK = Sizes(runs=1, events=20)


async def one_round(path: str, events: int) -> tuple[list[float], list[float]]:
    """(publish -> reader, durable -> reader) in ms, one sample per event."""
    called: list[float] = []
    returned: list[float] = []
    got: list[float] = []
    turn = [trio.Event() for _ in range(events + 1)]

    async def publisher(ctx: Context) -> int:
        for i in range(events):
            await turn[i].wait()  # the reader has the last event and waits again
            called.append(time.perf_counter())
            await ctx.publish(f"e{i}", i)
            returned.append(time.perf_counter())
        return events

    engine = Engine.builder().open(path).build()
    engine.register("pub", publisher)
    async with engine:
        iid = await engine.invoke("pub")
        turn[0].set()
        async for ev in engine.events(iid):
            got.append(time.perf_counter())
            turn[ev.seq].set()
        await engine.wait(iid)
    total = [(g - c) * 1000 for c, g in zip(called, got, strict=True)]
    wake = [(g - r) * 1000 for r, g in zip(returned, got, strict=True)]
    return total, wake


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        __doc__, quick="a smoke check", data_dir="where the journals go (on the disk to measure)",
        runs="rounds (default 5)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or sizes.runs
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("events", args.quick, data_dir, disk)
    total, wake = Stat(), Stat()
    all_total: list[float] = []
    all_wake: list[float] = []
    for n in range(runs):
        progress(f"round {n + 1}/{runs}")
        with scratch_dir(data_dir, "events-") as where:
            t, w = trio.run(one_round, os.path.join(where, "journal"), sizes.events)
        total.add(statistics.median(t))
        wake.add(statistics.median(w))
        all_total += t
        all_wake += w
    rows = [
        ["publish -> reader (on disk)", f"{total.median:.3f}", f"{p99(all_total):.3f}",
         f"<= {TARGET_MS:g}"],
        ["durable -> reader (the wake-up)", f"{wake.median:.3f}", f"{p99(all_wake):.3f}", ""],
    ]
    print(table(f"{sizes.events} events x {runs} rounds, ms",
                ["latency", "median", "p99", "target"], rows))
    print(machine_line(data_dir))
    out: dict[str, Any] = {
        "events": sizes.events, "runs": runs, "target_ms": TARGET_MS,
        "publish_to_reader_ms": total.as_dict(), "durable_to_reader_ms": wake.as_dict(),
        "p99_publish_to_reader_ms": p99(all_total), "p99_durable_to_reader_ms": p99(all_wake),
    }
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
