"""The serving side of a PostgreSQL journal: the tailer, the listener, the
periodic claim, and the read-back that waits for a poll.

Theory of operation. The tailer (tailer.py) applies other writers' rows
(``Host.apply_row``), woken by NOTIFY (sent by batches that create, signal
or end an instance; not by this engine's own, whose sender is its writer
session: those rows were applied as they were written) or every ``poll``
seconds. Every lease/3 it claims the
instances whose owner's lease expired (lease.py) and checks that no other
engine took the live ones this engine holds (an operator action there);
claimed instances are owned once the poll after the claim has read their
records (``Host.adopt``: the engine resumes them). An engine that lost its
lease rejoins here, between two polls, as soon as the database answers
(``Host.rejoin``), and adopts the instances it got back the same way. The listener and the
tailer make a lost connection again; the tail keeps its cursor and gaps,
and after a reconnect the tailer adopts instances the database says this
engine owns that a claim cut off before its reply did not tell it.

``read_back`` waits until a poll that starts after the call has ended:
every record committed before the call is then in the index.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import trio

from .._core import lifecycle as lc
from .._core import records as r
from .._core.errors import EngineError
from . import schema
from .driver import Conn
from .errors import PostgresJournalFailed
from .lease import claim, next_expiry, owned, taken
from .tailer import Tail

if TYPE_CHECKING:
    from .._backend.seam import EngineCalls
    from .._core.index import Index

logger = logging.getLogger("memable_log")


class Host(Protocol):
    """What the serving side needs of its backend."""

    writer: str
    lease: float
    poll: float
    claims: bool  # False: never claims expired engines' instances
    epochs: dict[str, int]
    index: Index | None
    calls: EngineCalls | None

    @property
    def failed(self) -> str | None: ...

    @property
    def refusing(self) -> str | None: ...

    def fail(self, exc: BaseException | str) -> str: ...

    def stop(self, lost: list[str]) -> None: ...

    def adopt(self, got: dict[str, int]) -> None: ...

    @property
    def out(self) -> bool: ...

    async def rejoin(self, conn: Conn, tail: Tail) -> dict[str, int] | None: ...

    @property
    def sender(self) -> int | None:
        """The server process of this engine's writer session (None: none yet)."""

    def apply_row(self, seq: int, blob: bytes) -> Any: ...

    async def connect(self, role: str) -> Conn: ...


class Follower:
    """The tailer and listener of one open. See the module comment."""

    def __init__(self, host: Host, tail: Tail) -> None:
        self.host = host
        self.tail = tail
        self.wake = trio.Event()  # the tailer looks now
        self.next_claim = trio.current_time() + host.lease / 3  # trio time
        self._polls = [0, 0]  # tail polls started, ended (``polls``)
        self._polled = trio.Event()
        self._pending: dict[str, int] = {}  # claimed, not yet read: owned after the next poll

    @property
    def polls(self) -> int:
        """Tail polls ended so far."""
        return self._polls[1]

    async def read_back(self) -> None:
        """Until a tail poll that starts after now has ended: another
        engine's record that won over ours is then in the index."""
        after = self._polls[0]
        while self._polls[1] <= after:
            if self.host.calls is None:
                raise EngineError("the PostgreSQL journal cannot read back: it is not serving")
            if self.host.failed is not None:  # the tailer stopped
                raise PostgresJournalFailed(self.host.failed)
            self.wake.set()
            await self._polled.wait()

    async def listen(self) -> None:
        while True:  # a lost connection: another (NOTIFYs meanwhile: the poll finds them)
            try:
                listener = await self.host.connect("listener")
            except EngineError as exc:
                await self._retry("listener", exc)
                continue
            try:
                await listener.run(f"LISTEN {schema.CHANNEL}")
                self.wake.set()  # what was sent while it listened to nothing
                while True:
                    got = await listener.notices()
                    if any(payload == "released" for payload, _ in got):
                        self.next_claim = 0.0  # an engine stopped: claim its instances now
                    own = self.host.sender
                    if any(pid != own for _, pid in got):
                        self.wake.set()  # not for this engine's own rows: applied as written
            except psycopg.OperationalError as exc:
                await self._retry("listener", exc)
            finally:
                listener.close()

    async def _retry(self, role: str, exc: BaseException) -> None:
        logger.warning("PostgreSQL journal: the %s connection is lost (%s); reconnecting",
                       role, exc)
        await trio.sleep(self.host.poll)

    async def run(self) -> None:
        """The tailer, until cancelled or the backend fails."""
        again = False
        while True:  # a lost connection: another; the tail's cursor and gaps are kept
            try:
                conn = await self.host.connect("tailer")
            except EngineError as exc:
                await self._retry("tailer", exc)
                continue
            try:
                if again:  # a claim whose reply was lost may have committed: adopt it
                    mine = await owned(conn, self.host.writer)
                    self._pending.update(
                        {i: e for i, e in mine.items() if self.host.epochs.get(i) != e})
                await self._follow(conn)
                return
            except psycopg.OperationalError as exc:
                again = True
                await self._retry("tailer", exc)
            finally:
                conn.close()

    async def _follow(self, conn: Conn) -> None:
        host = self.host
        while True:
            with trio.move_on_after(host.poll):
                await self.wake.wait()
            self.wake = trio.Event()
            if host.index is None:
                return
            try:
                now = trio.current_time()
                if host.out:  # the lease was lost: join again, now the database answers
                    got = await host.rejoin(conn, self.tail)
                    if got is not None:
                        self._pending.update(got)
                        self.next_claim = now + host.lease / 3
                if host.refusing is None and now >= self.next_claim:
                    self.next_claim = now + host.lease / 3
                    if host.claims:
                        self._pending.update(await claim(conn, host.writer))
                        # Look again when the next lease runs out, not up to
                        # lease/3 later: a takeover within lease + a poll.
                        soonest = await next_expiry(conn, host.writer)
                        if soonest is not None:
                            self.next_claim = min(self.next_claim, now + soonest + 0.01)
                    await self._check_taken(conn)
                self._polls[0] += 1
                await self.tail.poll(conn, host.writer, host.apply_row)
            except psycopg.OperationalError:
                raise  # the connection: run makes another
            except (psycopg.Error, r.RecordError) as exc:
                host.fail(exc)
                return
            finally:
                self._polls[1] = self._polls[0]
                polled, self._polled = self._polled, trio.Event()
                polled.set()
            got, self._pending = self._pending, {}
            if got and host.refusing is None:
                host.adopt(got)  # owned once their records are all read

    async def _check_taken(self, conn: Conn) -> None:
        """Stop the live instances another engine took (``take``) that this
        one has not heard of (the taker wrote nothing yet)."""
        host = self.host
        assert host.index is not None
        held = {i: e for i, e in host.epochs.items()
                if (entry := host.index.instances.get(i)) is not None and entry.state in lc.LIVE}
        if not held:
            return
        gone = await taken(conn, host.writer, list(held))
        gone = [i for i in gone if host.epochs.get(i) == held[i]]
        for iid in gone:
            del host.epochs[iid]
        host.stop(gone)
