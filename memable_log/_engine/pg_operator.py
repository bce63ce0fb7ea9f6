"""Operator actions on a PostgreSQL journal from a shell: ``memable
invoke|cancel|restart|forget URL`` and ``memable-signal URL``.

Theory of operation. A local journal's tools append when no engine holds
it and hand the action over through its inbox when one does. A shared
journal needs neither: any engine may act on any instance (an operator
action takes the instance over, docs/postgres.md). So each command runs a
*short-lived engine session*: an ``Engine`` over a ``PostgresBackend`` that
never claims the instances of expired engines (``claims=False``: it takes
only what it must) and has no workflow registered (it runs nothing: an
instance it holds waits, as an engine waits for an unregistered workflow).

* ``signal``, ``cancel``, ``restart``, ``forget`` are the engine's own
  methods, with their checks and refusals: a signal is written unfenced
  (the instance stays where it runs); the others take the instance from
  its owner (its epoch + 1, fencing the owner out) and write as its owner.
* ``invoke`` writes the instance's ``created`` record, as the offline
  ``operations.invoke`` does (an engine's invoke needs the workflow
  registered); an id already in the log is left as it is.
* On exit the session releases its lease and sends NOTIFY: the serving
  engines claim what it holds at once (within their tailer's poll), so a
  live instance (invoked, restarted, with steps forgotten) runs there. A
  session killed mid-action holds what it took for at most its lease
  (``LEASE``), then any engine claims it.
* ``wait`` watches with a session that owns nothing (its tailer applies
  the owner's records): the instance's outcome, as ``engine.wait``, its
  value decoded as ``operations.wait`` asks (as memable-dump shows it).

Each call is one ``trio.run``; tools call these from synchronous code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from .._core import records as r
from .._core.codec import Codec, EncodeError
from .._core.errors import NotSerializable, UnknownInstance
from .._core.index import DEFAULT_INLINE_LIMIT
from .._postgres.backend import PostgresBackend
from .clock import Clock
from .engine import Engine

LEASE = 10.0  # seconds: how long a killed session holds what it took
_T = TypeVar("_T")


def _session(url: str, encode: Callable[[Any], tuple[str, Any]] | None) -> tuple[
        Engine, PostgresBackend]:
    backend = PostgresBackend(url, worker=f"memable-cli:{os.getpid()}", lease=LEASE,
                              claims=False)
    engine = Engine(backend, clock=Clock(), codec=Codec(encode), max_running=None,
                    inline_limit=DEFAULT_INLINE_LIMIT)
    return engine, backend


def _run(
    url: str,
    act: Callable[[Engine, PostgresBackend], Awaitable[_T]],
    encode: Callable[[Any], tuple[str, Any]] | None = None,
) -> _T:
    async def main() -> _T:
        engine, backend = _session(url, encode)
        async with engine:
            return await act(engine, backend)

    return trio.run(main)


def signal(url: str, workflow: str, instance_id: str, key: str, payload: Any = None, *,
           encode: Callable[[Any], tuple[str, Any]] | None = None) -> None:
    """``engine.signal`` from a short-lived session (its refusals as raised)."""
    r.check_key(key)
    _run(url, lambda engine, _: engine.signal(workflow, instance_id, key, payload), encode)


def invoke(url: str, workflow: str, input: Any = None, *, instance_id: str | None = None,
           encode: Callable[[Any], tuple[str, Any]] | None = None) -> tuple[str, bool]:
    """Write a new instance of ``workflow``: its id, and whether this call
    created it (False: the id was in the log already; nothing written)."""
    for what, value in (("workflow", workflow), ("instance_id", instance_id)):
        if value is not None and (type(value) is not str or not value):
            raise TypeError(f"{what} must be a non-empty str, not {value!r}")
    iid = instance_id if instance_id is not None else os.urandom(8).hex()
    try:
        blob = Codec(encode).encode(input)
    except EncodeError as exc:
        raise NotSerializable(f"input of workflow {workflow!r}", exc.type_name,
                              exc.reason) from None

    async def act(engine: Engine, backend: PostgresBackend) -> bool:
        try:
            engine.status(iid)
            return False  # there already: invoke is idempotent by id
        except UnknownInstance:
            pass
        now_ms = round(time.time() * 1000)
        await backend.append_many([r.make(r.CREATED, now_ms, iid, workflow, blob)])
        return backend.owns(iid)  # not ours: another engine created it meanwhile

    return iid, _run(url, act)


def cancel(url: str, instance_id: str) -> bool:
    """``engine.cancel``; False when the instance had finished (nothing written)."""

    async def act(engine: Engine, _: PostgresBackend) -> bool:
        if engine.status(instance_id).state in ("completed", "failed", "cancelled"):
            return False
        await engine.cancel(instance_id)
        return True

    return _run(url, act)


def restart(url: str, instance_id: str) -> None:
    """``engine.restart`` (a serving engine runs it once this session ends)."""
    _run(url, lambda engine, _: engine.restart(instance_id))


def forget(url: str, instance_id: str, key_or_prefix: str) -> None:
    """``engine.forget``."""
    _run(url, lambda engine, _: engine.forget(instance_id, key_or_prefix))


class _Shown(Codec):
    """Values decoded by ``show`` (``operations.wait`` gives memable-dump's
    ``decode_value``: JSON-ready, never a codec hook)."""

    def __init__(self, show: Callable[[bytes], Any]) -> None:
        super().__init__()
        self.show = show

    def decode(self, blob: bytes) -> Any:
        return self.show(blob)


def wait(url: str, instance_id: str, timeout: float | None, show: Callable[[bytes], Any]) -> Any:
    """The instance's result once it finished, as ``engine.wait`` (its
    errors), its value decoded by ``show``; TimeoutError after ``timeout``
    seconds."""

    async def main() -> Any:
        backend = PostgresBackend(url, worker=f"memable-cli:{os.getpid()}", lease=LEASE,
                                  claims=False)
        engine = Engine(backend, clock=Clock(), codec=_Shown(show),
                        max_running=None, inline_limit=DEFAULT_INLINE_LIMIT)
        async with engine:
            with trio.move_on_after(float("inf") if timeout is None else timeout):
                return await engine.wait(instance_id)
        raise TimeoutError(f"instance {instance_id!r} did not finish within {timeout:g}s")

    return trio.run(main)
