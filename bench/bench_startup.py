"""Start-up from the index snapshot of a large journal (issue 18's goal:
1,000,000 records in <= 0.25 s).

The journal: ``--instances`` finished instances (default 90,909), each a
``created``, 9 step outcomes of ~40-byte dict values and a ``completed``:
999,999 records by default, written straight through the segment writer
(bench_journal.py's start-up journal, finished; building it through an
engine would take minutes), then opened once by an engine, whose clean exit
writes the snapshot. Finished instances, because a journal of a million
records is mostly those: retention keeps them a week by default.
bench_journal.py times a Journal's open from the snapshot of the same
records with every instance still running.

Each round starts a fresh process that times ``async with engine:`` (open,
snapshot load and check, the tail scan, the resume scan) with compaction
off, then reads one finished instance's result (its fields decoded at that
first read). Rounds alternate between this tree and, with ``--vs-tree``,
another source tree (each with its own copy of the journal: their
snapshots may differ in version), so both see the same machine. The
baseline measured in the same run is the floor of any start from this
snapshot: reading the file and unpacking its msgpack body, in one process.

    .venv/bin/python bench/bench_startup.py --runs 5
    .venv/bin/python bench/bench_startup.py --runs 7 --vs-tree /tmp/base
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import (
    Stat,
    bench_parser,
    fmt_range,
    machine_line,
    open_data_dir,
    print_banner,
    progress,
    ratios,
    table,
    write_json,
)
from bench_journal import build_startup_journal

GOAL_S = 0.25


async def _etl(ctx: Any) -> int:
    return 0


async def measure(path: str) -> dict[str, Any]:
    """One start (in this fresh process): seconds to enter, then the first read."""
    from memable_log import Engine

    engine = Engine.builder().open(path).compaction(False).build()
    engine.register("etl.pipeline", _etl)
    t = time.perf_counter()
    async with engine:
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        result = await engine.wait("order-00000000")
        first_read_s = time.perf_counter() - t
    return {"start_s": start_s, "first_read_s": first_read_s, "result": result}


def floor(path: str) -> dict[str, Any]:
    """Reading the snapshot and unpacking its msgpack body (the finished
    instances' rests after it are left as they are): no start can do less."""
    import msgpack

    t = time.perf_counter()
    with open(os.path.join(path, "index.snap"), "rb") as f:
        data = f.read()
    unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False,
                                max_buffer_size=len(data))
    unpacker.feed(memoryview(data)[12:])
    unpacker.unpack()
    return {"floor_s": time.perf_counter() - t, "snapshot_bytes": len(data)}


def child(tree: str, what: str, path: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (tree, os.path.dirname(os.path.abspath(__file__))) if p))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", what, path],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        what, path = sys.argv[2], sys.argv[3]
        if what == "measure":
            import trio

            got: dict[str, Any] = trio.run(measure, path)
        elif what == "floor":
            got = floor(path)
        else:
            raise SystemExit(f"unknown child {what!r}")
        print(json.dumps(got))
        return 0
    parser = bench_parser(__doc__ or "", quick="10,000 instances, 1 round",
                          data_dir="where the journals live", runs="rounds (default 5)")
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--vs-tree", default=None, help="another source tree, measured alike")
    args = parser.parse_args()
    instances = args.instances or (10_000 if args.quick else 90_909)
    runs = args.runs or (1 if args.quick else 5)
    data_dir, disk = open_data_dir(args.data_dir)
    print_banner("memable_log start-up from a snapshot", args.quick, data_dir, disk)
    print(machine_line(data_dir))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here}
    if args.vs_tree:
        trees["other tree"] = os.path.abspath(args.vs_tree)
    base = os.path.join(data_dir, f"startup-finished-{instances}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    progress(f"building {instances:,} finished instances")
    master = os.path.join(base, "journal")
    records = build_startup_journal(master, instances, finished=True)
    paths = {}
    for name, tree in trees.items():
        paths[name] = os.path.join(base, name.replace(" ", "-"))
        shutil.copytree(master, paths[name])
        child(tree, "measure", paths[name])  # full scan; its clean exit writes the snapshot
    stats = {name: (Stat(), Stat()) for name in trees}
    floors = Stat()
    for n in range(runs):
        progress(f"round {n + 1}/{runs}")
        floors.add(child(here, "floor", paths["this tree"])["floor_s"])
        for name, tree in trees.items():
            got = child(tree, "measure", paths[name])
            stats[name][0].add(got["start_s"])
            stats[name][1].add(got["first_read_s"])
    size = os.path.getsize(os.path.join(paths["this tree"], "index.snap"))
    def shown(stat: Stat, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
        scaled = Stat([v * scale for v in stat.values])
        return f"{fmt.format(scaled.median)} ({fmt_range(scaled, fmt)})"

    rows = [["floor: read + unpack of the snapshot's body, s", shown(floors), "", ""]]
    for name in trees:
        start, first = stats[name]
        rows.append([f"{name}: start (async with engine:), s", shown(start),
                     f"{ratios(start, floors).median:.2f}x",
                     "met" if start.median <= GOAL_S else "MISSED"])
        rows.append([f"{name}: first read of a finished instance, ms",
                     shown(first, 1000, "{:.2f}"), "", ""])
    if args.vs_tree:
        rows.append(["this tree / other tree, start", "",
                     f"{ratios(stats['this tree'][0], stats['other tree'][0]).median:.2f}x", ""])
    print(table(f"{records:,} records ({instances:,} finished instances), snapshot "
                f"{size / 1e6:.1f} MB; median (range) of {runs} interleaved rounds",
                ["", "value", "vs floor", f"goal <= {GOAL_S} s"], rows))
    print(machine_line(data_dir))
    if args.json:
        write_json(args.json, {"records": records, "instances": instances,
                               "floor_s": floors.values,
                               **{name: {"start_s": s.values, "first_read_s": f.values}
                                  for name, (s, f) in stats.items()}})
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
