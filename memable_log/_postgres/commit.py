"""Group commit: an engine's appends to the shared log, batched, sent one
batch at a time on the writer connection, with per-instance refusals.

Theory of operation. Appends that arrive while a batch is in flight wait
and go together in the next (one writer connection: this engine's records
commit in the order they are applied). The round trip is shielded from
cancellation: once sent, its outcome is applied (``Owner.applied``). A
refusal that names one instance fails only the batches of that instance,
and the others are sent again: fenced out (the engine stops running it:
``Owner.stop``), an id that another engine created meanwhile (read back:
the caller goes on as if it had found it), a wait another engine ended
first (a signal: the caller gets SignalAlreadyDelivered; an engine's own
timeout: read back). Where the refused instance's records in a batch only
ride along with others (the ``dequeued`` of a queued instance another
engine took, beside the outcome of the run whose slot it was to get; a
child's end told to a deleted parent), they go aside and the rest of that
batch is written. A signal for an instance this engine does not own is
written unfenced (rows.encode): its wait's end is unique per instance and
key in the log (first writer wins), and the owner's tailer wakes it.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
import trio

from .._core import records as r
from .._core.errors import EngineError, SignalAlreadyDelivered, UnknownInstance
from . import rows, schema
from .errors import PostgresJournalFailed, Refused
from .writer import Unreachable, Writer


class Owner(Protocol):
    """What the group commit needs of its backend."""

    writer: str
    epochs: dict[str, int]  # instance -> the lease epoch this engine holds
    resets: dict[str, int]  # instance -> its forgot/restarted records
    link: Writer | None

    @property
    def refusing(self) -> str | None: ...

    def fail(self, exc: BaseException | str) -> str: ...

    def stop(self, lost: list[str]) -> None: ...

    def applied(self, rec: list[Any], seq: int) -> None: ...


class Batch:
    """The records of one ``append_many``, and what became of them."""

    __slots__ = ("done", "error", "ids", "readback", "recs", "taken")

    def __init__(self, recs: list[list[Any]]) -> None:
        self.recs = recs
        self.ids = {rec[r.INSTANCE] for rec in recs}
        self.taken = False
        self.done = False
        self.readback = False  # not written: another engine's record won; read it
        self.error: BaseException | None = None


# A refused instance's records that go aside, the rest of their batch
# written: a child's end told to a parent retention deleted (gone), and the
# ``dequeued`` that gives a run's slot to an instance another engine took
# (fenced: it was queued, flow.handoff; the run's outcome must not fail).
_ASIDE = {schema.GONE: r.CHILD_ENDED, schema.FENCED: r.DEQUEUED}


def _aside(batch: Batch, instance_id: str, state: str) -> bool:
    """Whether the batch's records of the refused instance are all of the
    kind that goes aside for its refusal, beside records of others."""
    kind = _ASIDE.get(state)
    mine = [rec[r.TYPE] for rec in batch.recs if rec[r.INSTANCE] == instance_id]
    return len(mine) < len(batch.recs) and all(t == kind for t in mine)


class GroupCommit:
    """The append path of one backend. See the module comment."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.batches = 0  # commits made
        self._queue: list[Batch] = []  # waiting for the next commit
        self._inflight: list[Batch] = []  # in the commit under way
        self._leading = False
        self._turn = trio.Event()

    async def submit(self, recs: list[list[Any]]) -> bool:
        """Commit ``recs`` together and apply them; whether another engine's
        record won over them (then the caller reads the log back). Raises
        the batch's error."""
        batch = Batch(recs)
        self._queue.append(batch)
        try:
            while not batch.done:
                if self._leading:
                    await self._turn.wait()
                else:
                    await self._lead()
        except BaseException:
            if not batch.taken:  # never sent: as if never asked
                self._queue.remove(batch)
            raise
        if batch.error is not None:
            await trio.lowlevel.checkpoint()  # a runner told it lost its instance: cancelled
            raise batch.error
        return batch.readback

    @property
    def busy(self) -> bool:
        """Whether a commit is under way."""
        return self._leading

    def in_flight(self, instance_id: str) -> bool:
        return any(instance_id in batch.ids for batch in self._inflight)

    async def turn(self) -> None:
        """Until the commit under way (if any) has ended."""
        await self._turn.wait()

    async def _lead(self) -> None:
        self._leading = True
        taken, self._queue = self._queue, []
        for batch in taken:
            batch.taken = True
        self._inflight = taken
        try:
            with trio.CancelScope(shield=True):
                await self._commit(taken)
        finally:
            self._leading = False
            self._inflight = []
            turn, self._turn = self._turn, trio.Event()
            turn.set()

    async def _commit(self, taken: list[Batch]) -> None:
        live = taken
        while live:
            recs = [rec for batch in live for rec in batch.recs]
            try:
                if self.owner.refusing is not None:
                    raise PostgresJournalFailed(self.owner.refusing)
                seqs = await self._write(recs)
            except Refused as refused:
                live = self._refuse(live, refused)
                continue
            except psycopg.errors.UniqueViolation as exc:
                if len(live) > 1:  # whose? each alone (rare: two engines, one wait)
                    for batch in live:
                        await self._commit([batch])
                    return
                self._lost_race(live[0], exc)
                return
            except BaseException as exc:
                if isinstance(exc, Unreachable) and self.owner.refusing is not None:
                    error: BaseException = PostgresJournalFailed(self.owner.refusing)
                else:  # the lease lost passes (a rejoin); anything else fails the journal
                    error = (exc if isinstance(exc, EngineError)
                             and not isinstance(exc, Unreachable)
                             else PostgresJournalFailed(self.owner.fail(exc)))
                for batch in live:
                    batch.error, batch.done = error, True
                return
            self._done(live, recs, seqs)
            return

    def _refuse(self, live: list[Batch], refused: Refused) -> list[Batch]:
        """The batches of the refused instance end; the others are returned."""
        iid = refused.instance_id
        error: BaseException | None = None
        fenced = refused.state == schema.FENCED
        if fenced:
            error = PostgresJournalFailed(f"{refused.message} (nothing of the refused "
                                          f"write was applied)")
            if self.owner.epochs.pop(iid, None) is not None:  # it was ours: stop running it
                self.owner.stop([iid])
        elif refused.state == schema.GONE:  # deleted by retention meanwhile
            error = UnknownInstance(iid)
        rest = []
        for batch in live:
            if iid not in batch.ids or (fenced and all(
                rec[r.TYPE] in rows.UNFENCED for rec in batch.recs if rec[r.INSTANCE] == iid
            )):  # a signal for an instance another engine took: sent again, unfenced
                rest.append(batch)
            elif error is not None and _aside(batch, iid, refused.state):
                # The rest is written without them (``_ASIDE``).
                batch.recs = [rec for rec in batch.recs if rec[r.INSTANCE] != iid]
                batch.ids.discard(iid)
                rest.append(batch)
            elif error is not None:
                batch.error, batch.done = error, True
            else:  # created by another engine meanwhile: found, as invoke finds it
                batch.readback = batch.done = True
        return rest

    def _lost_race(self, batch: Batch, exc: BaseException) -> None:
        """A batch of which the log holds a unique record already: a wait's
        end another engine wrote first, or (a fault) a step written twice."""
        batch.done = True
        types = {rec[r.TYPE] for rec in batch.recs}
        for rec in batch.recs:
            if rec[r.TYPE] == r.SIGNALLED:
                batch.error = SignalAlreadyDelivered(rec[r.INSTANCE], rec[r.KEY])
                return
        if types & rows.ENDS and not types & rows.OUTCOMES:
            batch.readback = True  # a signal ended it first: the tailer brings it
        else:
            batch.error = PostgresJournalFailed(self.owner.fail(exc))

    def _done(self, live: list[Batch], recs: list[list[Any]], seqs: list[int]) -> None:
        for rec, seq in zip(recs, seqs, strict=True):
            rec[r.SEQ] = seq
            self.owner.applied(rec, seq)
            if rec[r.TYPE] in rows.NEW:
                self.owner.epochs[rec[r.INSTANCE]] = 1
        self.batches += 1
        for batch in live:
            batch.done = True

    async def _write(self, recs: list[list[Any]]) -> list[int]:
        owner = self.owner
        params = rows.encode(owner.writer, recs, owner.epochs, owner.resets)
        try:
            assert owner.link is not None
            return await owner.link.append(params, len(recs))
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            if state in (schema.FENCED, schema.EXISTS, schema.GONE):
                raise Refused(state, exc.diag.message_detail or "",
                              exc.diag.message_primary or str(exc)) from None
            raise
