"""memable ui: the listing of a journal of 100,000 instances, and an instance of 10,000 steps.

Run from the repository root (needs the ui extra)::

    .venv/bin/python bench/bench_ui.py                    # 100,000 instances, 10,000 steps
    .venv/bin/python bench/bench_ui.py --instances 10000  # a smoke check

An engine writes a journal (on /dev/shm when there is one) with one
instance of a workflow that runs S steps, then N finished instances of a
one-step workflow are appended to it (records as the engine writes them,
through the offline journal: an engine takes minutes to run 100,000); an
engine opens and closes it once before the last ``--after`` of them
(1,000), so its index snapshot covers all but those, as after an engine
that stopped cleanly and a little work since. A second journal holds the
instance of S steps alone. The app
(``make_app``) is then asked over HTTP (httpx with the ASGI app, in
process, so the network is not measured) for:

* the first page of the listing, cold: the journal read once, from its
  index snapshot (and again without it, the whole journal replayed);
* the first page again, warm: the listing kept until the journal changes;
* a page deep in the listing (``cursor`` near the end), and a filtered one;
* the page of the instance with S steps (its first 200 steps): in the
  big journal, from the listing's replay (no record read), and alone in
  its own (cold: the replay; then again).

Each is timed over a few runs; the median is printed. Targets (issue 16):
the listing pages without loading every instance into the page, and the
instance of 10,000 steps renders in <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

import httpx
import trio
from memable_log_tools.ui.app import make_app

from memable_log import Context, Engine
from memable_log._core import records as r
from memable_log._core.codec import Codec
from memable_log._journal.offline import OfflineJournal
from memable_log._storage.files import FileStorage


async def one(ctx: Context) -> int:
    return int(await ctx.step("only").run(lambda: 1))


async def many(ctx: Context) -> int:
    for i in range(int(ctx.input)):
        await ctx.step(f"step-{i:05d}").run(lambda i=i: {"i": i, "text": "x" * 40})
    return int(ctx.input)


async def build(path: str, instances: int, steps: int, after: int) -> None:
    engine = Engine.builder().open(path).build()
    engine.register("one", one)
    engine.register("many", many)
    async with engine:
        await engine.invoke("many", steps, instance_id="big")
        await engine.wait("big")
    add_instances(path, instances - after)
    async with Engine.builder().open(path).build():
        pass  # an engine's clean close writes the index snapshot (index.snap)
    add_instances(path, after, start=instances - after)


def add_instances(path: str, instances: int, start: int = 0) -> None:
    """Append ``instances`` finished one-step instances, as an engine would
    have written them (an engine takes minutes for 100,000; this, seconds)."""
    blob = Codec().encode(1)
    now = int(time.time() * 1000)
    with OfflineJournal(FileStorage(path, create=False)) as journal:
        for first in range(start, start + instances, 1000):
            recs = []
            for i in range(first, min(first + 1000, start + instances)):
                iid = f"i-{i:06d}"
                ts = now + i
                recs += [r.make(r.CREATED, ts, iid, "one", blob),
                         r.make(r.STEP_DONE, ts, iid, "only", blob, ts, 1),
                         r.make(r.COMPLETED, ts, iid, blob)]
            journal.append(recs)


async def timed(runs: int, fn: Callable[[], Awaitable[httpx.Response]]) -> tuple[float, int]:
    times = []
    size = 0
    for _ in range(runs):
        t = time.perf_counter()
        got = await fn()
        times.append(time.perf_counter() - t)
        assert got.status_code == 200, got.text[:300]
        size = len(got.content)
    return statistics.median(times), size


async def measure(path: str, alone: str, instances: int, runs: int) -> None:
    app = make_app(path, "bench")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ui", timeout=600) as http:
        rows = []
        cold, size = await timed(1, lambda: http.get("/"))
        rows.append(("listing, first page, cold (snapshot + the rest)", cold, size))
        for name, params in [
            ("listing, first page, warm", {}),
            ("listing, a page near the end", {"cursor": str(instances - 100)}),
            ("listing, newest first", {"order": "newest"}),
            ("listing, filtered (prefix), first page", {"prefix": "i-09"}),
        ]:
            took, size = await timed(runs, lambda p=params: http.get("/", params=p))
            rows.append((name, took, size))
        took, size = await timed(1, lambda: http.get("/instance", params={"id": "big"}))
        rows.append(("the instance of many steps, in that journal", took, size))
    os.rename(os.path.join(path, "index.snap"), os.path.join(path, "index.snap.off"))
    app = make_app(path, "bench")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ui", timeout=600) as http:
        cold, size = await timed(1, lambda: http.get("/"))
        rows.append(("listing, first page, cold, no snapshot", cold, size))
    os.rename(os.path.join(path, "index.snap.off"), os.path.join(path, "index.snap"))
    app = make_app(alone, "bench")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://ui", timeout=600) as http:
        took, size = await timed(1, lambda: http.get("/instance", params={"id": "big"}))
        rows.append(("the instance of many steps alone, cold", took, size))
        took, size = await timed(runs, lambda: http.get("/instance", params={"id": "big"}))
        rows.append(("the instance of many steps alone, again", took, size))
    width = max(len(r[0]) for r in rows)
    for name, took, size in rows:
        print(f"{name:<{width}}  {took * 1000:9.1f} ms  {size / 1024:9.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--after", type=int, default=1000,
                        help="instances appended after the engine's index snapshot")
    args = parser.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-ui-") as tmp:
        path = os.path.join(tmp, "j.memable")
        alone = os.path.join(tmp, "alone.memable")
        t = time.perf_counter()
        trio.run(build, path, args.instances, args.steps, min(args.after, args.instances))
        trio.run(build, alone, 0, args.steps, 0)
        size = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
                   if n.endswith(".mlog"))
        print(f"journal: {args.instances:,} instances + one of {args.steps:,} steps, "
              f"{size / 2**20:.1f} MiB, written in {time.perf_counter() - t:.1f} s; "
              f"the last {min(args.after, args.instances):,} after the index snapshot")
        trio.run(measure, path, alone, args.instances, args.runs)


if __name__ == "__main__":
    main()
