"""memable ui as a real server: the live view over Server-Sent Events, the command itself."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from memable_log_tools import memable
from memable_log_tools.ui.app import make_app
from support.ui import HOSTILE, TOKEN, make_engine

from memable_log.testing import wait_for_state

TIMEOUT = 20  # seconds for the server to answer: generous, never slept


async def test_live_view_sends_a_step_appended_while_connected(journal: Path) -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    engine = make_engine(journal)
    with trio.fail_after(TIMEOUT):
        async with engine, trio.open_nursery() as nursery:
            binds = await nursery.start(serve, make_app(str(journal), TOKEN, interval=0.01),
                                        config)
            await engine.invoke("stepper", instance_id="s-1")
            await wait_for_state(engine, "s-1", "suspended")
            async with httpx.AsyncClient(base_url=binds[0]) as http:
                page = (await http.get("/instance", params={"id": "s-1"})).text
                assert "after-go" not in page
                live = re.search(r'data-live="([^"]+)"', page)
                assert live is not None
                async with http.stream("GET", html.unescape(live.group(1))) as events:
                    assert events.headers["content-type"].startswith("text/event-stream")
                    lines = events.aiter_lines()
                    assert (await anext(lines)).startswith(": following")
                    await engine.signal("stepper", "s-1", "go", None)
                    seen: list[str] = []
                    async for line in lines:
                        seen.append(line)
                        if line.startswith("data:") and "after-go" in line:
                            break
                    assert "event: step" in seen
                    step = seen[-1]
                    assert 'class="state done"' in step
                    assert "went &lt;script&gt;" in step
                    assert HOSTILE not in step
                    assert "before" not in "".join(seen)  # shown on the page already
            nursery.cancel_scope.cancel()


async def test_command_serves_on_a_free_port_and_prints_the_url(journal: Path) -> None:
    await trio.to_thread.run_sync(_serve_and_fetch, journal)


def _serve_and_fetch(journal: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "memable_log_tools.memable", "ui", str(journal), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the server listens; never slept
        found = re.match(r"memable ui: serving .* at (http://127\.0\.0\.1:\d+)/$", first.strip())
        assert found, first
        token_line = proc.stdout.readline()
        assert re.match(r"memable ui: token for actions: \S{20,}$", token_line.strip())
        page = httpx.get(found.group(1) + "/", timeout=TIMEOUT)
        assert page.status_code == 200
        assert "o-1" in page.text
        denied = httpx.post(found.group(1) + "/action/cancel?id=o-1", timeout=TIMEOUT)
        assert denied.status_code == 403
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("where", ["missing", "file", "empty"])
def test_a_bad_path_exits_1_naming_it(tmp_path: Path, where: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / where
    if where == "file":
        path.write_text("x")
    elif where == "empty":
        path.mkdir()
    assert memable.main(["ui", str(path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memable ui: ")
    assert str(path) in err
    reason = {"missing": "no such file or directory", "file": "not a directory",
              "empty": "holds no segment files"}[where]
    assert reason in err
