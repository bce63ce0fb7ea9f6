"""tools/ui imports only public names of memable_log (as every tool does), and the
library never imports the ui (its extra is optional)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "tools" / "ui"
PUBLIC_MODULES = {"memable_log", "memable_log.reader", "memable_log.operations"}


def test_ui_imports_only_public_names_of_memable_log() -> None:
    seen = 0
    for path in sorted(UI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module.split(".")[0] == "memable_log"
            ):
                assert node.module in PUBLIC_MODULES, f"{path.name}: {node.module}"
                module = importlib.import_module(node.module)
                for alias in node.names:
                    seen += 1
                    assert not alias.name.startswith("_"), f"{path.name}: {alias.name}"
                    assert hasattr(module, alias.name), f"{path.name}: {alias.name}"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "memable_log" for a in node.names)
    assert seen > 0


def test_memable_help_does_not_load_the_ui() -> None:
    code = ("import sys; from memable_log_tools import memable\n"
            "try:\n    memable.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'starlette' not in sys.modules and 'memable_log_tools.ui' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
