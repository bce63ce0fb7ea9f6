"""The wheel holds the whole package: pyproject.toml lists every subpackage.

setuptools puts in a wheel only the packages listed in ``[tool.setuptools]
packages``; the editable install hides a missing one (it maps the whole
directory), the README's ``pip install .`` does not.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "memable_log").rglob("__init__.py")
    }
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
    assert (ROOT / "memable_log" / "py.typed").exists()
