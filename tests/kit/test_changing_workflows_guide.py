"""docs/changing-workflows.md runs as printed (issue 13 p).

Every ``python`` block of the guide is a test module: each is written out
under the file name its ``<!-- example: NAME -->`` label gives and the lot
runs under pytest-trio in trio mode, as a user's suite would run them. A
block without a label, or a label without a test in it, fails here, so no
example can rot unnoticed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "changing-workflows.md"
LABELLED = re.compile(r"<!-- example: (test_\w+\.py) -->\n```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    text = GUIDE.read_text()
    found = dict(LABELLED.findall(text))
    assert len(found) == text.count("```python"), "a python block has no example label"
    return found


def test_every_example_of_the_guide_passes_under_pytest(tmp_path: Path) -> None:
    blocks = examples()
    assert len(blocks) >= 5
    tests = 0
    for name, code in blocks.items():
        assert "async def test_" in code, f"{name} has no test"
        tests += code.count("async def test_")
        (tmp_path / name).write_text(code)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tests} passed" in done.stdout


def test_the_guide_is_linked_from_the_readme_and_the_api_reference() -> None:
    root = GUIDE.parent.parent
    assert "docs/changing-workflows.md" in (root / "README.md").read_text()
    assert "(changing-workflows.md)" in (root / "docs" / "api.md").read_text()
