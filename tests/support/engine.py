"""Helpers shared by the engine tests: journals that outlive engines, call counters.

A test of the engine's promises needs the same journal under several engine
lifetimes. ``Home`` hands out the engine for each lifetime, in one of three
forms that must all behave alike:

* ``disk``: a new Engine on ``.open(path)`` for every lifetime;
* ``memory``: a new Engine on one shared ``MemoryStorage``;
* ``reentered``: one ``.in_memory()`` engine whose ``async with`` block is
  entered again (the builder documents that as a restart). Names register
  once, so each registered name dispatches to the function given for the
  current lifetime.

``Home.records()`` reads the journal back through ``JournalReader`` (no
lock, so it works while an engine runs) for assertions on what was written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from memable_log import Context, Engine, MemoryStorage
from memable_log._storage.files import FileStorage
from memable_log.reader import JournalReader, RecordView

Workflow = Callable[[Context], Awaitable[Any]]

KINDS = ("disk", "memory", "reentered")


class Home:
    """Where a journal lives across engine lifetimes (see the module comment)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        assert kind in KINDS
        self.kind = kind
        self.path = tmp_path / "journal.memable"
        self.storage = MemoryStorage() if kind == "memory" else None
        self._engine: Engine | None = None
        self._current: dict[str, Workflow] = {}

    def builder(self) -> Any:
        if self.kind == "disk":
            return Engine.builder().open(self.path)
        return Engine.builder().in_memory(self.storage)

    def engine(self, workflows: dict[str, Workflow], **settings: Any) -> Engine:
        """The engine for the next lifetime, running ``workflows``.

        ``settings`` are builder calls, e.g. ``max_running=2`` or, for
        several arguments, a tuple: ``codec=(encode, decode)``. For the
        re-entered form they only apply to the first lifetime.
        """
        if self.kind != "reentered":
            engine = _configure(self.builder(), settings).build()
            for name, fn in workflows.items():
                engine.register(name, fn)
            return engine
        if self._engine is None:
            self._engine = _configure(Engine.builder().in_memory(), settings).build()
        self._current.update(workflows)
        for name in workflows:
            if name not in self._engine._host.workflows:
                self._engine.register(name, self._dispatch(name))
        return self._engine

    def _dispatch(self, name: str) -> Workflow:
        async def dispatch(ctx: Context) -> Any:
            return await self._current[name](ctx)

        return dispatch

    def records(self) -> list[RecordView]:
        """Every record of the journal, in order."""
        if self.kind == "disk":
            storage: Any = FileStorage(str(self.path), create=False)
        elif self.kind == "memory":
            storage = self.storage
        else:
            assert self._engine is not None
            storage = self._engine._backend.make_storage()
        return list(JournalReader(storage))


def _configure(builder: Any, settings: dict[str, Any]) -> Any:
    for name, arg in settings.items():
        args = arg if isinstance(arg, tuple) else (arg,)
        builder = getattr(builder, name)(*args)
    return builder


def of_type(records: list[RecordView], rtype: str, key: str | None = None) -> list[RecordView]:
    """The records of one type (and, if given, one key)."""
    return [
        rec for rec in records
        if rec.type == rtype and (key is None or rec.fields.get("key") == key)
    ]


class Calls:
    """Counts calls per step key; ``fn(key, value)`` is a step body that counts itself."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.order: list[str] = []

    def fn(self, key: str, value: Any = None) -> Callable[[], Any]:
        def body() -> Any:
            self.counts[key] += 1
            self.order.append(key)
            return value if value is not None else f"{key}-result"

        return body

    def __getitem__(self, key: str) -> int:
        return self.counts[key]


class Gate:
    """An event a step awaits, plus an event saying the step got there."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = trio.Event()

    async def __call__(self, value: Any = None) -> Any:
        self.entered.set()
        await self.release.wait()
        return value


async def wait(engine: Engine, instance_id: str, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    """``engine.wait`` with a timeout, so a broken engine fails the test instead of hanging."""
    with trio.fail_after(timeout):
        return await engine.wait(instance_id)
