"""Read epochs: which reads may still name a file compaction replaced.

Theory of operation. Every read of a record by its location counts itself
in the epoch it began in (``begin`` / ``end``). A compaction starts a new
epoch once the index points at its file (``new_epoch``), and deletes the
files it replaced only when no read begun before that is still running
(``reads_before``): such a read may have looked up a location in one of
them a moment before the index moved on.
"""

from __future__ import annotations

import trio


class ReadEpochs:
    """Reads in flight, by the epoch they began in."""

    __slots__ = ("_done", "_reads", "epoch")

    def __init__(self) -> None:
        self.epoch = 0
        self._reads: dict[int, int] = {}
        self._done = trio.Event()  # set (and replaced) as any read ends

    def begin(self) -> int:
        """A read begins; the epoch to hand to ``end``."""
        epoch = self.epoch
        self._reads[epoch] = self._reads.get(epoch, 0) + 1
        return epoch

    def end(self, epoch: int) -> None:
        """The read begun in ``epoch`` is over."""
        self._reads[epoch] -= 1
        if not self._reads[epoch]:
            del self._reads[epoch]
        done, self._done = self._done, trio.Event()
        done.set()

    def new_epoch(self) -> int:
        """Start a read epoch (the index was re-pointed); its number."""
        self.epoch += 1
        return self.epoch

    async def reads_before(self, epoch: int) -> None:
        """Return once no read begun before ``epoch`` is in flight."""
        while any(begun < epoch for begun in self._reads):
            await self._done.wait()
