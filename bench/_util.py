"""Small helpers for the benchmarks: repeats, medians, disks, tables.

The machine a benchmark runs on is shared and noisy, so every measurement is
repeated and quoted as a median with its range, and every rate is set
against a baseline measured in the same invocation.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field


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
