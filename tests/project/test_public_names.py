"""Every public name of the public modules is in their ``__all__`` (and so in docs/api.md,
which tests/project/test_api_docs.py checks): a name defined at module level, or
re-exported as ``import x as x``, that does not start with an underscore."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

MODULES = ("memable_log", "memable_log.reader", "memable_log.operations",
           "memable_log.testing")
NOT_NAMES = {"logger"}  # a module's logging.Logger: configured by name, not imported


def public_names(module_name: str) -> set[str]:
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Assign):
            found |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            found |= {a.name for a in node.names if a.asname == a.name}  # explicit re-export
    return {name for name in found if not name.startswith("_")} - NOT_NAMES


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_is_in_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    missing = public_names(module_name) - set(module.__all__)
    assert not missing, f"{module_name}: public but not in __all__: {sorted(missing)}"
    assert all(hasattr(module, name) for name in module.__all__)
