"""Small helpers for the benchmarks: repeats, medians, disks, tables, and the
scaffolding every benchmark's main shares (options, the data dir, the banner,
progress lines, the machine's load, the JSON file).

The machine a benchmark runs on is shared and noisy, so every measurement is
repeated and quoted as a median with its range, and every rate is set
against a baseline measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".data")


@dataclass
class Stat:
    """Repeated measurements of one quantity."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.values}


def ratios(num: Stat, den: Stat) -> Stat:
    """Per-round ratios of two interleaved series (robust to drift)."""
    return Stat([a / b for a, b in zip(num.values, den.values, strict=True) if b])


def ratios_if_paired(num: Stat | None, den: Stat | None) -> Stat | None:
    """``ratios``, or None when a series is missing or they have different rounds."""
    if num is None or den is None or len(num.values) != len(den.values):
        return None
    return ratios(num, den)


@dataclass(frozen=True)
class Disk:
    device: str
    fstype: str
    mount: str


def disk_of(path: str) -> Disk:
    """The mount (device, file-system type) holding ``path``."""
    path = os.path.realpath(path)
    best = Disk("?", "?", "")
    with open("/proc/mounts") as f:
        for line in f:
            device, mount, fstype, *_ = line.split()
            mount = mount.replace("\\040", " ")
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best.mount):
                best = Disk(device, fstype, mount)
    return best


@contextmanager
def scratch_dir(base: str, prefix: str) -> Iterator[str]:
    """A fresh directory under ``base`` (on the disk being measured), removed after."""
    os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_range(stat: Stat, fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(stat.low)}..{fmt.format(stat.high)}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        out = [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  " + "  ".join(out).rstrip()

    sep = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([title, line(header), sep, *(line(r) for r in rows)])


# -- a benchmark's main ----------------------------------------------------------------


def bench_parser(doc: str, *, quick: str, data_dir: str, runs: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes (--quick, --json, --data-dir,
    --runs), described by the first line of ``doc`` and the given help texts."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="PATH", help="also write results as JSON to PATH")
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help=data_dir)
    parser.add_argument("--runs", type=int, help=runs)
    return parser


def open_data_dir(path: str) -> tuple[str, Disk]:
    """``path`` made absolute and created, and the disk it is on."""
    data_dir = os.path.abspath(path)
    os.makedirs(data_dir, exist_ok=True)
    return data_dir, disk_of(data_dir)


def progress(msg: str) -> None:
    """A progress line on stderr (stdout holds the report)."""
    print(f"... {msg}", file=sys.stderr, flush=True)


def print_banner(what: str, quick: bool, data_dir: str, disk: Disk) -> None:
    """The report's first two lines: which benchmark, and the disk it measures."""
    print(f"memable_log {what} benchmark{' (--quick)' if quick else ''}")
    print(f"  data dir {data_dir}: {disk.device} ({disk.fstype}, mounted on {disk.mount})")


def warn_if_in_memory(disk: Disk) -> None:
    if disk.fstype in ("tmpfs", "ramfs"):
        print("  WARNING: the data dir is in memory; fsync costs nothing here")


def fsync_probe(data_dir: str, n: int = 300) -> float:
    """Raw 128-byte write + fsync appends per second: the disk's state right now."""
    with scratch_dir(data_dir, "probe-") as d:
        fd = os.open(os.path.join(d, "probe.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            record = b"p" * 127 + b"\n"
            os.write(fd, record)
            os.fsync(fd)
            t = time.perf_counter()
            for _ in range(n):
                os.write(fd, record)
                os.fsync(fd)
            return n / (time.perf_counter() - t)
        finally:
            os.close(fd)


def machine_line(data_dir: str) -> str:
    """Load and raw fsync rate: how busy the shared machine and its disk are."""
    return (f"load {os.getloadavg()[0]:.2f}, raw write+fsync {fsync_probe(data_dir):,.0f}/s")


def write_json(path: str, out: dict[str, Any], **dump: Any) -> None:
    """Write ``out`` to ``path`` (its directory created) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2, **dump)
    print(f"\nresults written to {path}")


async def cpu_per_step(builder: Any, steps: int, replays: int) -> dict[str, float]:
    """The trio thread's CPU time per step of an engine built by ``builder``:
    ``steps`` plain steps executed, then the least of ``replays`` replays of
    them (CPU time: a loaded machine preempting the process does not count).
    Shared by bench_typed and bench_tracing, each run in a child process."""
    import trio

    from memable_log import Context

    marks: list[float] = []

    def make_int() -> int:
        return 42

    async def wf(ctx: Context) -> None:
        t = time.thread_time()
        for i in range(steps):
            await ctx.step(f"s{i}").run(make_int)
        marks.append(time.thread_time() - t)
        await ctx.suspend(f"go{len(marks)}")

    engine = builder.build()
    engine.register("wf", wf)
    async with engine:
        iid = await engine.invoke("wf")
        for k in range(1, replays + 1):
            while len(marks) < k or engine.status(iid).state != "suspended":  # noqa: ASYNC110
                await trio.sleep(0.001)  # a benchmark's driver: no public event for this
            await engine.signal("wf", iid, f"go{k}", None)
        while len(marks) < replays + 1:  # noqa: ASYNC110
            await trio.sleep(0.001)
        await engine.cancel(iid)
    return {"executed_us": marks[0] / steps * 1e6,
            "memoised_us": min(marks[1:]) / steps * 1e6}
