"""Step results for the benchmarks: realistic (API-payload dicts) or small ints.

Every system in bench_engine.py imports this, so each stores the same values.
``realistic(i)`` is a dict like an API or LLM answer whose msgpack encoding
is 100 B to 4 KB, the size cycling with ``i`` (100, 250, 600, 1500, 4000:
~1.3 KB on average); ``small(i)`` is the int ``i * 2`` of the older
benchmarks. Both carry ``i * 2`` (``weight``), so a workflow's result is
the same sum either way.
"""

from __future__ import annotations

from typing import Any

SIZES = (100, 250, 600, 1500, 4000)  # msgpack bytes, roughly
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def _template(target: int) -> dict[str, Any]:
    value: dict[str, Any] = {"id": "", "n": 0, "status": "ok",
                             "message": "the request was handled; nothing to add"}
    items = []
    j = 0
    while 120 + 75 * len(items) < target:
        note = " ".join(_WORDS[(j + k) % len(_WORDS)] for k in range(5))
        items.append({"sku": f"sku-{j:05d}", "qty": j + 1, "price": 9.5 + j, "note": note})
        j += 1
    value["items"] = items
    return value


_TEMPLATES = [_template(size) for size in SIZES]


def realistic(i: int) -> dict[str, Any]:
    return {**_TEMPLATES[i % len(SIZES)], "id": f"req-{i:08d}", "n": i * 2}


def small(i: int) -> int:
    return i * 2


def weight(value: Any) -> int:
    """``i * 2`` back from either kind of value."""
    return value if isinstance(value, int) else int(value["n"])


KINDS = {"realistic": realistic, "small": small}
