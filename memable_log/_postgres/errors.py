"""The errors of a PostgreSQL journal: the refusal an engine raises, and
``ml_append``'s refusal of a batch because of one instance.

Why a module of its own: the backend, its group commit (commit.py) and
its serving side (follow.py) all raise or catch them.
"""

from __future__ import annotations

from .._core.errors import EngineError, JournalFailed


class PostgresJournalFailed(JournalFailed):
    """The PostgreSQL journal refuses writes (fenced out, the connection
    lost): a JournalFailed whose message gives the database's reason, not
    a disk's."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        EngineError.__init__(self, reason)


class Refused(Exception):
    """ml_append refused a batch because of one instance (schema's SQLSTATEs)."""

    def __init__(self, state: str, instance_id: str, message: str) -> None:
        super().__init__(message)
        self.state, self.instance_id, self.message = state, instance_id, message
