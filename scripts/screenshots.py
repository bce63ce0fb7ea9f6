"""Screenshots of memable ui for docs/ui.md, taken by headless Chromium.

Run from the repository root::

    .venv/bin/python scripts/screenshots.py

Uses the system's Chromium (``chromium`` or ``chromium-browser``); if there
is none, installs it with ``apt-get install -y chromium`` (as root, or
with sudo). Writes a demo journal to a temp directory (orders, one failed,
one waiting for approval with a child, a step that was retried), starts
``memable ui`` on it on a free port, and saves one PNG per page under
docs/img/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from memable_log import Context, Engine
from memable_log.testing import wait_for_state

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
PAGES = {
    "ui-instances.png": "/",
    "ui-instances-failed.png": "/?state=failed",
    "ui-instance.png": "/instance?id=order-1003",
}


_TRIED: set[int] = set()


async def _charge(n: int) -> dict[str, Any]:
    await trio.sleep(0.05)
    if n % 4 == 3 and n not in _TRIED:  # the card service fails once: a retried step
        _TRIED.add(n)
        raise ConnectionError("card service timed out")
    return {"charged": n * 10, "currency": "EUR"}


async def order(ctx: Context) -> Any:
    n = int(ctx.input["n"])
    await ctx.step("reserve").run(lambda: {"sku": f"sku-{n}", "qty": 1})
    await ctx.step("price").run(lambda: {"amount": n * 10, "tax": n})
    await ctx.set_status("charging the card")
    await ctx.step("charge").retry(max_attempts=3, initial_delay=0.01).run(_charge, n)
    await ctx.publish("progress", {"charged": True})
    if n % 5 == 0:
        raise RuntimeError(f"warehouse {n % 3} is closed")
    if n == 1003:
        await ctx.child("ship", "shipping", {"order": n})
        return await ctx.suspend("approve", status="waiting for a manager's approval")
    await ctx.step("notify").run(lambda: f"mail sent for order {n}")
    return {"order": n, "ok": True}


async def shipping(ctx: Context) -> str:
    return str(await ctx.step("label").run(lambda: "label-7731"))


async def populate(path: Path) -> None:
    engine = Engine.builder().open(path).build()
    engine.register("order", order)
    engine.register("shipping", shipping)
    async with engine:
        for n in range(1000, 1012):
            await engine.invoke("order", {"n": n}, instance_id=f"order-{n}")
        for n in range(1000, 1012):
            await wait_for_state(engine, f"order-{n}", "completed", "failed", "suspended")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("screenshots: no Chromium here; installing it (apt-get install -y chromium)",
          file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "chromium"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("screenshots: apt-get installed no chromium command")
    return found


def shoot(browser: str, url: str, out: Path) -> None:
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1280,900", f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=120,
    )
    print(f"screenshots: {out.relative_to(ROOT)} <- {url}")


def main() -> int:
    browser = chromium()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memable-ui-shots-") as tmp:
        path = Path(tmp) / "orders.memable"
        trio.run(populate, path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "memable_log_tools.memable", "ui", str(path), "--port", "0"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"at (http://\S+)/$", line.strip())
            if not found:
                raise SystemExit(f"screenshots: memable ui said {line!r}")
            for name, route in PAGES.items():
                shoot(browser, found.group(1) + quote(route, safe="/?=&"), OUT / name)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
