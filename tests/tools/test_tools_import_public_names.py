"""tools/ import only public names of memable_log: what a tool does, any program can."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import memable_log

TOOLS = Path(__file__).resolve().parents[2] / "tools"
PUBLIC_MODULES = {"memable_log", "memable_log.reader", "memable_log.operations",
                  "memable_log.testing"}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import of memable_log in ``path``; name None for ``import m``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return [(module, name) for module, name in found if module.split(".")[0] == "memable_log"]


def test_tools_import_only_public_names_of_memable_log() -> None:
    seen = 0
    for path in sorted(TOOLS.glob("*.py")):
        for module, name in _imports(path):
            seen += 1
            where = f"{path.name}: {module}" + (f".{name}" if name else "")
            assert module in PUBLIC_MODULES, f"{where}: a private module"
            if name is None:
                continue
            assert not name.startswith("_"), f"{where}: a private name"
            assert hasattr(importlib.import_module(module), name) or (
                f"{module}.{name}" in PUBLIC_MODULES
            ), f"{where}: no such name"
    assert seen > 0
    assert "operations" not in memable_log.__all__  # a namespace, imported explicitly
