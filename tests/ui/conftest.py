"""Fixtures of tests/ui: the journal of support/ui.py, and the app over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from memable_log_tools.ui.app import make_app
from starlette.applications import Starlette
from support.ui import TOKEN, populate


@pytest.fixture
async def journal(tmp_path: Path) -> Path:
    path = tmp_path / "j.memable"
    await populate(path)
    return path


@pytest.fixture
def app(journal: Path) -> Starlette:
    return make_app(str(journal), TOKEN)
