"""The layers hold: each part imports only the parts below it, tools/ only
public names, and no module touches another module's private attributes.

The parts, lowest first: _core (pure: no I/O, no trio), _storage (sync I/O),
_journal, _compaction, _backend (the seam and the local journal behind it),
_postgres (the PostgreSQL backend), _engine; the public modules (``memable_log``,
``memable_log.reader``, ``memable_log.testing``, ``memable_log.operations``)
stand on all of them. Imports are read with ``ast`` (support/layers.py),
wherever they stand: in functions and ``if TYPE_CHECKING:`` blocks too.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import support.layers
from support.layers import (
    Import,
    imports,
    module_name,
    private_reads,
    python_files,
    relative,
    within,
)

import memable_log

LAYERS = ("_core", "_storage", "_journal", "_compaction", "_backend", "_postgres", "_engine")
PUBLIC_MODULES = ("memable_log.reader", "memable_log.testing", "memable_log.operations")

# Modules a pure core must not touch: the file system and processes, threads
# and the network, the event loop, the clock, and logging's handlers.
IMPURE = (
    "trio", "anyio", "asyncio", "os", "posix", "nt", "pathlib", "shutil", "tempfile", "glob",
    "io", "fcntl", "msvcrt", "mmap", "select", "selectors", "socket", "ssl", "subprocess",
    "multiprocessing", "concurrent", "threading", "_thread", "signal", "time", "logging",
    "sqlite3", "urllib", "http", "ctypes",
)

# path -> why it fails today; xfail_strict makes each mark come off once it passes.
IMPORTS_PENDING: dict[str, str] = {}
PRIVATE_PENDING: dict[str, str] = {}


def _files(folder: str, pending: dict[str, str]) -> list[object]:
    return [
        pytest.param(path, id=relative(path), marks=[pytest.mark.xfail(
            strict=True, reason=pending[relative(path)])] if relative(path) in pending else [])
        for path in python_files(folder)
    ]


def _report(what: str, offences: list[Import]) -> str:
    return f"{what}:\n" + "\n".join(f"  {offence}" for offence in offences)


def _project_imports(path: Path) -> list[tuple[Import, str]]:
    """``(import, the memable_log module it loads)`` for each import of the project."""
    found = []
    for imp in imports(path):
        project = [name for name in imp.targets if within(name, "memable_log")]
        if project:
            found.append((imp, project[-1]))
    return found


def _layer_of(name: str) -> int | None:
    """The index in LAYERS of the part ``name`` is in; None for a public module."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _reaches_above(path: Path, layer: str) -> list[Import]:
    """Imports in ``path`` (of part ``layer``) of a higher part or a public module."""
    rank = LAYERS.index(layer)
    return [
        imp for imp, name in _project_imports(path)
        if (above := _layer_of(name)) is None or above > rank
    ]


def _external(path: Path, banned: tuple[str, ...]) -> list[Import]:
    return [imp for imp in imports(path) if any(within(imp.module, b) for b in banned)]


@pytest.mark.parametrize("path", _files("memable_log/_core", IMPORTS_PENDING))
def test_core_imports_no_io_and_nothing_outside_core(path: Path) -> None:
    offences = _external(path, IMPURE) + _reaches_above(path, "_core")
    assert not offences, _report("the pure core imports I/O, trio or the parts above it", offences)


@pytest.mark.parametrize("path", _files("memable_log/_storage", IMPORTS_PENDING))
def test_storage_imports_neither_trio_nor_the_parts_above(path: Path) -> None:
    offences = _external(path, ("trio", "anyio", "asyncio")) + _reaches_above(path, "_storage")
    assert not offences, _report("storage imports trio or journal/compaction/engine", offences)


@pytest.mark.parametrize("path", _files("memable_log/_journal", IMPORTS_PENDING))
def test_journal_imports_neither_compaction_nor_engine(path: Path) -> None:
    offences = _reaches_above(path, "_journal")
    assert not offences, _report("the journal imports compaction, the engine or the API", offences)


@pytest.mark.parametrize("path", _files("memable_log/_compaction", IMPORTS_PENDING))
def test_compaction_imports_neither_backend_nor_engine(path: Path) -> None:
    offences = _reaches_above(path, "_compaction")
    assert not offences, _report("compaction imports the backend, the engine or the API", offences)


@pytest.mark.parametrize("path", _files("memable_log/_backend", IMPORTS_PENDING))
def test_backend_does_not_import_the_engine(path: Path) -> None:
    offences = _reaches_above(path, "_backend")
    assert not offences, _report("the backend imports the engine or the public API", offences)


@pytest.mark.parametrize("path", _files("memable_log/_postgres", IMPORTS_PENDING))
def test_postgres_does_not_import_the_engine(path: Path) -> None:
    offences = _reaches_above(path, "_postgres")
    assert not offences, _report("the PostgreSQL backend imports the engine or the API", offences)


@pytest.mark.parametrize("path", _files("memable_log/_engine", IMPORTS_PENDING))
def test_engine_does_not_import_the_public_modules(path: Path) -> None:
    offences = _reaches_above(path, "_engine")
    assert not offences, _report("the engine imports a public module", offences)


def _is_public(imp: Import) -> bool:
    """Whether ``imp`` names only public names of memable_log (or is not of memable_log)."""
    if not within(imp.module, "memable_log"):
        return True  # the standard library, others, and tools' own modules
    if imp.name is None or imp.name == "*":
        return imp.module == "memable_log" or imp.module in PUBLIC_MODULES
    if imp.module == "memable_log":
        return imp.name in memable_log.__all__ or f"memable_log.{imp.name}" in PUBLIC_MODULES
    return imp.module in PUBLIC_MODULES and not imp.name.startswith("_")


@pytest.mark.parametrize("path", _files("tools", IMPORTS_PENDING))
def test_tools_import_only_public_names(path: Path) -> None:
    offences = [imp for imp in imports(path) if not _is_public(imp)]
    assert not offences, _report("tools/ imports private names of memable_log", offences)


@pytest.mark.parametrize(
    "path", _files("memable_log", PRIVATE_PENDING) + _files("tools", PRIVATE_PENDING)
)
def test_no_module_touches_another_modules_private_attributes(path: Path) -> None:
    offences = private_reads(path)
    assert not offences, "private attributes of other modules' objects used:\n" + "\n".join(
        f"  {offence}" for offence in offences
    )


def test_every_pending_mark_names_an_existing_file() -> None:
    known = {relative(p) for p in python_files("memable_log", "tools")}
    assert set(IMPORTS_PENDING) | set(PRIVATE_PENDING) <= known


# -- the checks can fail -----------------------------------------------------------


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str, str], Path]:
    """Writes a file into a scratch repository root that support.layers reads from."""
    monkeypatch.setattr(support.layers, "ROOT", tmp_path)

    def write(relpath: str, source: str) -> Path:
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    return write


def test_imports_in_functions_and_type_checking_blocks_are_found_and_resolved(
    plant: Callable[[str, str], Path],
) -> None:
    path = plant("memable_log/_journal/planted.py", """\
        from typing import TYPE_CHECKING
        from .._core.records import make
        from .. import reader
        if TYPE_CHECKING:
            from .._compaction.service import CompactionService
        def later():
            import memable_log._engine.runner
            from . import journal
        """)
    assert module_name(path) == "memable_log._journal.planted"
    assert [imp.targets[-1] for imp in imports(path)] == [
        "typing.TYPE_CHECKING",
        "memable_log._core.records.make",
        "memable_log.reader",
        "memable_log._compaction.service.CompactionService",
        "memable_log._engine.runner",
        "memable_log._journal.journal",
    ]
    assert [str(imp) for imp in _reaches_above(path, "_journal")] == [
        "memable_log/_journal/planted.py:3: from .. import reader",
        "memable_log/_journal/planted.py:5: from .._compaction.service import CompactionService",
        "memable_log/_journal/planted.py:7: import memable_log._engine.runner",
    ]


def test_an_impure_import_in_the_core_is_found(plant: Callable[[str, str], Path]) -> None:
    path = plant("memable_log/_core/planted.py", """\
        import struct
        def stamp():
            import time
            from os import path
        """)
    assert [str(imp) for imp in _external(path, IMPURE)] == [
        "memable_log/_core/planted.py:3: import time",
        "memable_log/_core/planted.py:4: from os import path",
    ]


def test_private_names_imported_by_a_tool_are_found(plant: Callable[[str, str], Path]) -> None:
    path = plant("tools/planted.py", """\
        import json
        import memable_log
        from memable_log import Engine, read_journal, reader, testing
        from memable_log.reader import RecordView
        from memable_log.operations import compact
        from . import _common
        from memable_log import _core
        from memable_log.reader import _frames
        from memable_log._storage.files import FileStorage
        import memable_log._core.records
        """)
    assert [str(imp) for imp in imports(path) if not _is_public(imp)] == [
        "tools/planted.py:7: from memable_log import _core",
        "tools/planted.py:8: from memable_log.reader import _frames",
        "tools/planted.py:9: from memable_log._storage.files import FileStorage",
        "tools/planted.py:10: import memable_log._core.records",
    ]


def test_private_attributes_of_other_modules_objects_are_found(
    plant: Callable[[str, str], Path],
) -> None:
    path = plant("memable_log/_engine/planted.py", """\
        import os
        from .._core import lifecycle as lc
        from .engine import Engine

        class Box:
            __slots__ = ("_inside",)

            def __init__(self, engine: Engine, other: Box | None) -> None:
                self._engine = engine
                self._inside = other._inside if other else None  # own class: fine
                engine._index = None                             # another module's
                os._exit                                         # not the project's

            def peek(self) -> object:
                engine = self._engine
                return engine._clock, lc._TABLE, Box._helper, Box()._inside

            @staticmethod
            def _helper() -> None: ...

        def loose(thing):
            return thing._inside, thing._unknown
        """)
    assert [str(read) for read in private_reads(path)] == [
        "memable_log/_engine/planted.py:11: engine._index",
        "memable_log/_engine/planted.py:16: engine._clock",
        "memable_log/_engine/planted.py:16: lc._TABLE",
        "memable_log/_engine/planted.py:22: thing._unknown",
    ]
