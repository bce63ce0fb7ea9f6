"""Talking to the outside while a workflow runs: status text, events, watchers.

Theory of operation (SPEC-NEXT §3). Two records carry it, applied by the
index like any other: ``status_set`` (the instance's status text) and
``published`` (one event of its event stream). The index keeps the latest
text and every event, in journal order: an event's ``seq`` is its place in
that stream, from 1, the same after a restart or a compaction (which
rewrites the stream in order). So a reader that reconnects with the last
``seq`` it saw misses nothing and sees nothing twice.

Writing (the Context's ``set_status`` and ``publish`` call these):

* a publish claims its key in the run's key space (steps, waits and events
  share it: a key twice in a run is DuplicateStepKey) and writes nothing
  if the journal already has the event: a re-run publishes nothing twice.
  ``RunTalk.published`` holds the instance's published keys for the run
  (built once, at its first publish), so a re-run's replay of a long
  stream costs a set lookup per event.
* ``set_status`` has no key. A run numbers its calls (1, 2, ...) and each
  record carries its call's number: call ``n`` writes only if ``n`` is past
  the latest recorded call's number and its text differs from the current
  one. A re-run's calls up to where the earlier run got therefore write
  nothing, whether or not their text is the same; later ones write as the
  first run did. Calls from branches running side by side take numbers in
  the order they are made.

Reading. The engine touches an instance's *listeners* after every append
for it (``Host.touch``): an ``events()`` reader or an ``event()`` waiter
sets a trio event and looks at the index again; a ``watch()`` computes the
status there and then, so it sees every change of state, status text and
step count in order even while its consumer is busy. Nobody polls. A
listener is registered only while its iterator lives (a weak set), so the
step path, with nobody reading, tests one empty dict.
"""

from __future__ import annotations

import collections
import math
import weakref
from collections.abc import Callable
from typing import Any

import trio

from .._core import lifecycle as lc
from .._core import records as r
from .._core.errors import EngineError
from .._core.index import InstanceEntry
from .._core.status import Event, InstanceStatus, from_ms, status_of
from .host import Host


class RunTalk:
    """What one run of an instance knows about its own status and events."""

    __slots__ = ("calls", "published")

    def __init__(self) -> None:
        self.calls = 0  # set_status calls made by this run
        self.published: set[str] | None = None  # keys in the stream, once needed


async def set_status(host: Host, talk: RunTalk, instance_id: str, text: str) -> None:
    """Record ``text`` as the status (see the module comment for re-runs)."""
    if type(text) is not str:
        raise TypeError(f"a status text must be a str, not {text!r}")
    talk.calls += 1
    entry = host.entry(instance_id)
    if talk.calls <= entry.status_calls or text == entry.status:
        return
    await host.append(r.make(r.STATUS_SET, host.now_ms(), instance_id, text, talk.calls))


def published(talk: RunTalk, entry: InstanceEntry, key: str) -> bool:
    """Whether the instance's stream has an event ``key``."""
    keys = talk.published
    if keys is None:
        keys = talk.published = {k for k, _, _ in entry.events or ()}
    return key in keys


async def publish(
    host: Host, talk: RunTalk, instance_id: str, entry: InstanceEntry, key: str, value: Any
) -> None:
    """Append event ``key`` (claimed already) unless the stream has it."""
    if published(talk, entry, key):
        return  # a re-run: published by an earlier run
    if entry.has_step(key):
        raise EngineError(
            f"key {key!r} of instance {instance_id!r} is a step in the journal, not an event: "
            "steps, waits and events share one key space, give each its own key"
        )
    blob = host.encode(value, f"event {key!r}")
    await host.append(r.make(r.PUBLISHED, host.now_ms(), instance_id, key, blob))
    assert talk.published is not None
    talk.published.add(key)


# -- reading ------------------------------------------------------------------------


class _Listener:
    """Registered with the host while alive; ``woken`` is set at each touch."""

    def __init__(
        self, host: Host, instance_id: str, on_touch: Callable[[], None] | None = None
    ) -> None:
        self.host = host
        self.instance_id = instance_id
        self.on_touch = on_touch
        self.woken = trio.Event()
        group = host.listeners.get(instance_id)
        if group is None:
            group = host.listeners[instance_id] = weakref.WeakSet()
        group.add(self)

    def touched(self) -> None:
        if self.on_touch is not None:
            self.on_touch()
        self.woken.set()

    async def wait(self) -> None:
        """Until the next touch (or at once if one came since the last wait)."""
        await self.woken.wait()
        self.woken = trio.Event()

    def close(self) -> None:
        group = self.host.listeners.get(self.instance_id)
        if group is not None:
            group.discard(self)
            if not group:
                del self.host.listeners[self.instance_id]


def _running(host: Host, instance_id: str) -> InstanceEntry:
    """The instance's entry, with the engine running (EngineError if not)."""
    host.require()
    return host.entry(instance_id)


async def event(
    host: Host, instance_id: str, key: str, timeout: float | None  # noqa: ASYNC109 (the API's)
) -> Any:
    """The value published under ``key``, waiting for it if needed."""
    entry = _running(host, instance_id)
    if timeout is not None and not (isinstance(timeout, int | float) and timeout >= 0):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    listener = _Listener(host, instance_id)
    try:
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                for name, _, value in entry.events or ():
                    if name == key:
                        return await host.value(value, r.PUBLISHED_VALUE)
                if entry.state in lc.FINISHED:
                    raise EngineError(
                        f"instance {instance_id!r} is {lc.STATE_NAMES[entry.state]} and never "
                        f"published event {key!r}"
                    )
                await listener.wait()
                entry = _running(host, instance_id)
        raise TimeoutError(
            f"instance {instance_id!r} published no event {key!r} within {timeout} s"
        )
    finally:
        listener.close()


class EventStream:
    """``engine.events()``: the instance's events after ``after``, in order,
    as they are published; ends once the instance has finished and every
    event was yielded."""

    def __init__(self, host: Host, instance_id: str, after: int | None) -> None:
        if after is not None and (type(after) is not int or after < 0):
            raise ValueError(f"after must be an event seq (an int >= 0) or None, not {after!r}")
        _running(host, instance_id)
        self._host = host
        self._instance_id = instance_id
        self._seq = after or 0  # the last seq yielded
        self._listener: _Listener | None = _Listener(host, instance_id)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        listener = self._listener
        if listener is None:
            raise StopAsyncIteration
        while True:
            entry = _running(self._host, self._instance_id)
            stream = entry.events or ()
            if self._seq < len(stream):
                key, at, value = stream[self._seq]
                decoded = await self._host.value(value, r.PUBLISHED_VALUE)
                self._seq += 1
                return Event(key, decoded, self._seq, from_ms(at))
            if entry.state in lc.FINISHED:
                self.aclose_now()
                raise StopAsyncIteration
            await listener.wait()

    def aclose_now(self) -> None:
        """Stop listening (the iterator yields nothing more)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def aclose(self) -> None:
        self.aclose_now()


def _shape(status: InstanceStatus) -> tuple[str, str | None, int]:
    return status.state, status.status, status.steps


class StatusWatch:
    """``engine.watch()``: the current status, then one per change of state,
    status text or step count; ends after a finished state."""

    def __init__(self, host: Host, instance_id: str) -> None:
        entry = _running(host, instance_id)
        self._host = host
        self._instance_id = instance_id
        first = status_of(instance_id, entry)
        self._queue: collections.deque[InstanceStatus] = collections.deque([first])
        self._last = _shape(first)
        self._done = False
        self._listener: _Listener | None = _Listener(host, instance_id, self._touched)

    def _touched(self) -> None:
        """Right after a record of the instance was applied: queue its
        status if it changed, so none is lost while the consumer is busy."""
        entry = self._host.index.instances.get(self._instance_id)
        if entry is not None and self._listener is not None:
            status = status_of(self._instance_id, entry)
            shape = _shape(status)
            if shape != self._last:
                self._last = shape
                self._queue.append(status)

    def __aiter__(self) -> StatusWatch:
        return self

    async def __anext__(self) -> InstanceStatus:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._queue:
                status = self._queue.popleft()
                if status.state in _FINISHED_NAMES:
                    self._done = True
                    self.aclose_now()
                return status
            if self._listener is None:
                raise StopAsyncIteration
            _running(self._host, self._instance_id)
            await self._listener.wait()
            _running(self._host, self._instance_id)

    def aclose_now(self) -> None:
        """Stop listening (the iterator yields what it holds, then ends)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def aclose(self) -> None:
        self._done = True
        self.aclose_now()


_FINISHED_NAMES = frozenset(lc.STATE_NAMES[s] for s in lc.FINISHED)
