"""docs/api.md is what tools/gen_api_docs.py generates from the docstrings;
docs/design.md's lifecycle table is the engine's transition table."""

from __future__ import annotations

import re

from memable_log_tools import gen_api_docs

import memable_log
from memable_log import operations, testing
from memable_log import reader as journal


def test_api_md_is_up_to_date() -> None:
    expected = gen_api_docs.render()
    current = gen_api_docs.API_MD.read_text()
    assert current == expected, (
        "docs/api.md is stale: run `python tools/gen_api_docs.py` and commit the result"
    )


def test_api_md_documents_every_public_name() -> None:
    text = gen_api_docs.API_MD.read_text()
    for module in (memable_log, journal, operations, testing):
        for name in module.__all__:
            owner = "memable_log.reader" if name in journal.__all__ else module.__name__
            assert f"\n### {owner}.{name}\n" in text, f"{owner}.{name} is missing"


def test_docstrings_render_as_markdown() -> None:
    doc = gen_api_docs._render_doc(
        "Do a thing with ``x``.\n\nArgs:\n    x: the thing,\n        spanning lines.\n"
        "    y (int): another.\n\nReturns:\n    Nothing.\n\nExample::\n\n    do(1)\n\nEnd."
    )
    assert doc == (
        "Do a thing with `x`.\n\n**Args:**\n\n- `x`: the thing,\n  spanning lines.\n"
        "- `y`: another.\n\n**Returns:**\n\n  Nothing.\n\nExample:\n\n```python\ndo(1)\n```\n\n"
        "End.\n"
    )


def test_design_md_lifecycle_table_is_the_transition_table() -> None:
    from memable_log._core import lifecycle as lc
    from memable_log._core import records as r

    text = (gen_api_docs.ROOT / "docs" / "design.md").read_text()
    table = text.split("| From | Record | To |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    groups = {
        "any live state": lc.LIVE, "any finished state": lc.FINISHED,
        "any parked state": lc.PARKED,
    }
    documented: dict[tuple[int, int], int] = {}
    for row in table.splitlines():
        source, record, target = (cell.strip() for cell in row.strip("|").split("|"))
        sources = groups.get(source) or {lc.STATE_BY_NAME[source]}
        rtypes = [r.TYPE_BY_NAME[name] for name in re.findall(r"`(\w+)`", record)]
        targets = [lc.STATE_BY_NAME[name.strip()] for name in target.split("/")]
        assert len(rtypes) == len(targets), row
        for state in sources:
            for rtype, new in zip(rtypes, targets, strict=True):
                documented[state, rtype] = new
    assert documented == dict(lc.TRANSITIONS)
