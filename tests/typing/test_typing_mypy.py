"""The public API is typed (SPEC-NEXT §7), checked by running mypy.

``mypy --strict`` runs from a directory outside the checkout, on the typed
example and on snippets with ``reveal_type`` and with mistakes: it must find
the installed ``memable_log`` and its ``py.typed`` (with the README's
``pip install -e``), reveal the declared types, and catch wrong arguments.
One mypy run checks every snippet, so the test pays for mypy once. A
mistake in ``run``'s arguments reads "No overload variant of run matches"
(``run`` has one overload for async functions, one for sync ones).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

PRELUDE = """\
from dataclasses import dataclass
from datetime import datetime
from memable_log import Context, Engine

@dataclass
class Point:
    x: int

def sync_fn(a: int, b: str = "") -> Point:
    return Point(a)

async def async_fn(a: int) -> datetime:
    return datetime.now()

async def child_wf(ctx: Context) -> Point:
    return Point(1)
"""

# (snippet, what mypy must say about its last line)
REVEALS = {
    "sync_step": ("async def wf(ctx: Context) -> None:\n"
                  "    reveal_type(await ctx.step('k').run(sync_fn, 1, b='x'))",
                  'Revealed type is "snip_sync_step.Point"'),
    "async_step": ("async def wf(ctx: Context) -> None:\n"
                   "    reveal_type(await ctx.step('k').retry().run(async_fn, 1))",
                   'Revealed type is "datetime.datetime"'),
    "lambda_step": ("async def wf(ctx: Context) -> None:\n"
                    "    reveal_type(await ctx.step('k').run(lambda: [1, 2]))",
                    'Revealed type is "list[int]"'),
    "suspend_typed": ("async def wf(ctx: Context) -> None:\n"
                      "    reveal_type(await ctx.suspend('k', type=Point))",
                      'Revealed type is "snip_suspend_typed.Point"'),
    "suspend_untyped": ("async def wf(ctx: Context) -> None:\n"
                        "    reveal_type(await ctx.suspend('k', status='s'))",
                        'Revealed type is "Any"'),
    "child": ("async def wf(ctx: Context) -> None:\n"
              "    reveal_type(await ctx.child('k', child_wf))",
              'Revealed type is "snip_child.Point"'),
    "fan_out": ("async def wf(ctx: Context) -> None:\n"
                "    reveal_type(await ctx.fan_out('k', child_wf, [1, 2], concurrency=1))",
                'Revealed type is "list[snip_fan_out.Point]"'),
    "fan_out_by_name": ("async def wf(ctx: Context) -> None:\n"
                        "    reveal_type(await ctx.fan_out('k', 'child', [1]))",
                        'Revealed type is "list[Any]"'),
    "wait_child_typed": ("async def wf(ctx: Context) -> None:\n"
                         "    reveal_type(await ctx.wait_child('k', type=Point))",
                         'Revealed type is "snip_wait_child_typed.Point"'),
    "wait_child_untyped": ("async def wf(ctx: Context) -> None:\n"
                           "    reveal_type(await ctx.wait_child('k'))",
                           'Revealed type is "Any"'),
    "result": ("async def main(engine: Engine) -> None:\n"
               "    reveal_type(await engine.result('id', Point))",
               'Revealed type is "snip_result.Point"'),
    "result_generic": ("async def main(engine: Engine) -> None:\n"
                       "    reveal_type(await engine.result('id', list[Point]))",
                       'Revealed type is "list[snip_result_generic.Point]"'),
}
ERRORS = {
    "wrong_type": ("async def wf(ctx: Context) -> None:\n"
                   "    await ctx.step('k').run(sync_fn, 'one')",
                   'No overload variant of "run" of "Step" matches argument types '
                   '"Callable[[int, str], Point]", "str"'),
    "missing_arg": ("async def wf(ctx: Context) -> None:\n"
                    "    await ctx.step('k').run(async_fn)",
                    'No overload variant of "run" of "Step" matches argument type '
                    '"Callable[[int], Coroutine[Any, Any, datetime]]"'),
    "unknown_kwarg": ("async def wf(ctx: Context) -> None:\n"
                      "    await ctx.step('k').run(sync_fn, 1, c=2)",
                      'Unexpected keyword argument "c" for "run" of "Step"'),
    "wrong_use": ("async def wf(ctx: Context) -> None:\n"
                  "    p = await ctx.step('k').run(sync_fn, 1)\n"
                  "    p.y",
                  '"Point" has no attribute "y"'),
    "fan_out_use": ("async def wf(ctx: Context) -> None:\n"
                    "    ps = await ctx.fan_out('k', child_wf, [1])\n"
                    "    ps[0].y",
                    '"Point" has no attribute "y"'),
    "fan_out_not_a_workflow": ("async def wf(ctx: Context) -> None:\n"
                               "    await ctx.fan_out('k', sync_fn, [1])",
                               'Argument 2 to "fan_out" of "Context" has incompatible type'),
    "suspend_use": ("async def wf(ctx: Context) -> None:\n"
                    "    p = await ctx.suspend('k', type=Point)\n"
                    "    len(p)",
                    'Argument 1 to "len" has incompatible type "Point"'),
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy --strict, run outside the checkout, over every snippet and the example."""
    where = tmp_path_factory.mktemp("outside")
    for name, (body, _) in {**REVEALS, **ERRORS}.items():
        (where / f"snip_{name}.py").write_text(PRELUDE + "\n" + body + "\n")
    example = (ROOT / "examples" / "typed_orders.py").read_text()
    (where / "typed_orders.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary",
         "--hide-error-context", "--show-error-codes", "."],
        cwd=where, capture_output=True, text=True, timeout=600, check=False,
    )
    by_file: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        found = re.match(r"(?:\./)?([\w.]+)\.py:\d+: (.*)", line)
        assert found, f"unexpected mypy output: {line}\n{done.stdout}{done.stderr}"
        # mypy's versions differ on printing "builtins.": compare without it
        by_file.setdefault(found.group(1), []).append(found.group(2).replace("builtins.", ""))
    assert not done.stderr, done.stderr
    return by_file


def test_mypy_finds_the_installed_package_from_outside_the_checkout(
    mypy_output: dict[str, list[str]],
) -> None:
    everything = "\n".join(line for lines in mypy_output.values() for line in lines)
    assert "import-not-found" not in everything  # "Cannot find implementation or library stub"
    assert "import-untyped" not in everything  # "missing library stubs or py.typed marker"
    assert "Any" not in "".join(mypy_output["snip_sync_step"])  # the package's own types


def test_the_typed_example_passes_mypy_strict(mypy_output: dict[str, list[str]]) -> None:
    assert mypy_output.get("typed_orders") is None


@pytest.mark.parametrize("name", sorted(REVEALS))
def test_the_declared_types_are_revealed(name: str, mypy_output: dict[str, list[str]]) -> None:
    expected = REVEALS[name][1]
    assert mypy_output[f"snip_{name}"] == [f"note: {expected}"]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_mistakes_are_caught(name: str, mypy_output: dict[str, list[str]]) -> None:
    expected = ERRORS[name][1]
    lines = mypy_output[f"snip_{name}"]
    assert any(line.startswith("error: ") and expected in line for line in lines), lines


def test_the_typed_example_runs_and_its_replay_sees_the_same_types() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "typed_orders.py")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("  price    ran: 2 lines") == 1
    assert lines.count("  checkout sees a Quote: total 10.00, valid until 2030-01-01") == 2
    assert lines[-1] == ("  -> Receipt for order True: paid 10.00 at 10:00 UTC, "
                         "skus ['apple', 'pear']")
