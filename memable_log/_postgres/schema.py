"""The PostgreSQL schema of a shared journal, and its version check.

Theory of operation. One database holds one journal (docs/postgres.md):

* ``ml_meta``: ``('schema', N)``, the schema's version. ``ensure`` creates
  the schema in an empty database, accepts version ``SCHEMA_VERSION``,
  migrates versions 2 and 3 (``_MIGRATE``, every step in one transaction,
  under the advisory lock), and refuses a newer one by name (made by a
  newer memable_log) and an older one (no migration).
* ``ml_workers``: one row per open engine (``writer``), its lease's
  ``expires_at`` (database clock), renewed by one update every lease/3
  (lease.py). One row per engine, not a lease per instance: a renewal costs
  one small HOT update whatever the engine runs (no index on the expiry).
* ``ml_instances``: one row per instance: its owner (a ``writer``), its
  fencing epoch, and the seq of its first row (``first_seq``: retention
  deletes its rows from there to its last, a range of the primary key,
  so no index of ``ml_log`` by instance costs every append), and whether
  it waits for capacity (``queued``: an engine with room may take it,
  lease.take_queued). An instance's lease is its owner's: when the owner's
  row expired, any engine claims it (``ml_claim``: epoch + 1, ``SKIP
  LOCKED``, so an instance whose batch is in flight is skipped until it
  commits).
* ``ml_log``: the journal, one row per record, in ``seq`` order (bigserial).
  ``rec`` is the record list as msgpack, exactly what the local journal
  frames (its seq field 0: the row's ``seq`` is its seq). ``step_key`` is
  set on a step's outcome, unique per instance: the first writer of a step
  wins.
  ``xid`` comes before ``seq``: its default takes the writing transaction's
  id *before* ``nextval``, which the tailer's gap rule needs (tailer.py).
  ``writer`` is the engine that wrote the row.
* ``ml_append(...)``: one batch of records, atomic, in one call: new
  instances get their lease row (an id that exists is refused), every
  other record's instance must still carry the writer's epoch (the fence,
  its rows locked ``FOR SHARE`` until commit), then the rows, ``seq`` back
  in order. Unfenced instances (another engine's signal, a child's end)
  must still exist, locked ``FOR SHARE`` too (retention deletes finished
  instances: no row may outlive its instance). Then the queue states the
  batch changes (``p_queue``: it wrote ``queued``; ``p_unqueue``: it
  started or ended the instance: rows.encode). Errors carry SQLSTATEs of
  our own (``ML001`` fenced out, ``ML002`` instance exists, ``ML003``
  instance gone, ``ML004`` an older engine's call after a migration) and
  name the instance in their DETAIL.
* ``ml_claim(writer)``: takes every instance whose owner's lease expired,
  epoch + 1; their ids and new epochs. Then drops expired workers that own
  nothing any more.
"""

from __future__ import annotations

from .._core.errors import EngineError
from .driver import Conn

SCHEMA_VERSION = 4
FENCED = "ML001"
EXISTS = "ML002"
GONE = "ML003"
OUTDATED = "ML004"
CHANNEL = "memable_log"

# Version 3's new column, filled for the instances of an older journal.
_FIRST_SEQ = """
ALTER TABLE ml_instances ADD COLUMN first_seq bigint;
UPDATE ml_instances m SET first_seq = f.s
    FROM (SELECT instance_id, min(seq) AS s FROM ml_log GROUP BY instance_id) f
    WHERE m.instance_id = f.instance_id;
"""

_APPEND_FN = f"""
CREATE OR REPLACE FUNCTION ml_append(p_writer text, p_inst text[], p_key text[], p_rec bytea[],
                          p_new text[], p_fence text[], p_epoch int8[], p_notify bool,
                          p_queue text[], p_unqueue text[])
RETURNS SETOF int8 LANGUAGE plpgsql AS $$
DECLARE
    got text[];
    held int;
    bad text;
BEGIN
    -- New instances (distinct ids): their lease row, epoch 1, this writer's.
    IF cardinality(p_new) > 0 THEN
        WITH ins AS (
            INSERT INTO ml_instances (instance_id, lease_owner, lease_epoch)
            SELECT i, p_writer, 1 FROM unnest(p_new) AS i
            ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id)
        SELECT array_agg(instance_id) INTO got FROM ins;
        IF coalesce(cardinality(got), 0) <> cardinality(p_new) THEN
            SELECT i INTO bad FROM unnest(p_new) AS i
                WHERE NOT (i = ANY(coalesce(got, '{{}}'))) LIMIT 1;
            RAISE EXCEPTION 'instance % exists already', bad
                USING ERRCODE = '{EXISTS}', DETAIL = bad;
        END IF;
    END IF;
    -- The fence (distinct ids and the epochs we hold): each row locked
    -- FOR SHARE until commit, so a claim waits for this batch.
    IF cardinality(p_fence) = 1 THEN
        PERFORM 1 FROM ml_instances
            WHERE instance_id = p_fence[1] AND lease_epoch = p_epoch[1] FOR SHARE;
        IF NOT FOUND THEN
            bad := p_fence[1];
        END IF;
    ELSIF cardinality(p_fence) > 1 THEN
        SELECT count(*) INTO held FROM (
            SELECT 1 FROM ml_instances m JOIN unnest(p_fence, p_epoch) AS f(i, e)
                ON m.instance_id = f.i AND m.lease_epoch = f.e
            FOR SHARE OF m) x;
        IF held <> cardinality(p_fence) THEN
            SELECT f.i INTO bad FROM unnest(p_fence, p_epoch) AS f(i, e)
                LEFT JOIN ml_instances m ON m.instance_id = f.i
                WHERE m.lease_epoch IS DISTINCT FROM f.e LIMIT 1;
        END IF;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'fenced out of instance %: its lease moved to another engine', bad
            USING ERRCODE = '{FENCED}', DETAIL = bad;
    END IF;
    -- Queue states, for engines with room to take queued instances
    -- (ml_take_queued): set by a batch that queues, cleared by one that
    -- starts (dequeued) or ends the instance. Fenced instances, or new ones.
    IF cardinality(p_queue) > 0 OR cardinality(p_unqueue) > 0 THEN
        UPDATE ml_instances SET queued = (instance_id = ANY(p_queue))
            WHERE instance_id = ANY(p_queue) OR instance_id = ANY(p_unqueue);
    END IF;
    -- Unfenced instances (another engine's signal, a child's end): they
    -- must still exist (retention deletes finished ones), locked FOR SHARE
    -- until commit, so a deletion waits for this batch or this batch is
    -- refused: no row of an instance outlives it.
    SELECT array_agg(DISTINCT i) INTO got FROM unnest(p_inst) AS i
        WHERE i <> '' AND NOT (i = ANY(p_new)) AND NOT (i = ANY(p_fence));
    IF cardinality(got) > 0 THEN
        SELECT count(*) INTO held FROM (
            SELECT 1 FROM ml_instances m WHERE m.instance_id = ANY(got) FOR SHARE) x;
        IF held <> cardinality(got) THEN
            SELECT i INTO bad FROM unnest(got) AS i
                WHERE NOT EXISTS (SELECT 1 FROM ml_instances m WHERE m.instance_id = i)
                LIMIT 1;
            RAISE EXCEPTION 'instance % is gone (deleted by retention)', bad
                USING ERRCODE = '{GONE}', DETAIL = bad;
        END IF;
    END IF;
    IF p_notify THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    IF cardinality(p_new) = 0 THEN
        RETURN QUERY
            INSERT INTO ml_log (instance_id, step_key, writer, rec)
            SELECT i, k, p_writer, r FROM unnest(p_inst, p_key, p_rec)
                WITH ORDINALITY AS u(i, k, r, o)
            ORDER BY o
            RETURNING seq;
    ELSE  -- new instances: their first row's seq (retention deletes from there)
        RETURN QUERY
            WITH ins AS (
                INSERT INTO ml_log (instance_id, step_key, writer, rec)
                SELECT i, k, p_writer, r FROM unnest(p_inst, p_key, p_rec)
                    WITH ORDINALITY AS u(i, k, r, o)
                ORDER BY o
                RETURNING seq, instance_id),
            f AS (
                UPDATE ml_instances m SET first_seq = x.s
                FROM (SELECT ins.instance_id, min(ins.seq) AS s FROM ins
                      WHERE ins.instance_id = ANY(p_new) GROUP BY ins.instance_id) x
                WHERE m.instance_id = x.instance_id)
            SELECT ins.seq FROM ins ORDER BY ins.seq;
    END IF;
END $$;
"""

_CREATE = f"""
CREATE TABLE ml_meta (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE ml_instances (
    instance_id   text PRIMARY KEY,
    lease_owner   text,
    lease_epoch   bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    first_seq     bigint,
    queued        boolean NOT NULL DEFAULT false
) WITH (fillfactor = 70);
CREATE INDEX ml_instances_owner ON ml_instances (lease_owner);
CREATE TABLE ml_workers (
    writer     text PRIMARY KEY,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE ml_log (
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq       bigserial PRIMARY KEY,
    instance_id text NOT NULL,
    step_key  text,
    writer    text NOT NULL,
    rec       bytea NOT NULL
);
CREATE UNIQUE INDEX ml_log_step ON ml_log (instance_id, step_key) WHERE step_key IS NOT NULL;

{_APPEND_FN}
CREATE FUNCTION ml_claim(p_writer text)
RETURNS TABLE (instance_id text, epoch int8) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
        WITH pick AS (
            SELECT m.instance_id FROM ml_instances m
            WHERE m.lease_owner IN (
                SELECT w.writer FROM ml_workers w WHERE w.expires_at < now()
                AND w.writer <> p_writer)
            FOR UPDATE OF m SKIP LOCKED)
        UPDATE ml_instances i SET lease_owner = p_writer, lease_epoch = i.lease_epoch + 1
            FROM pick WHERE i.instance_id = pick.instance_id
            RETURNING i.instance_id, i.lease_epoch;
    DELETE FROM ml_workers w WHERE w.expires_at < now() AND NOT EXISTS (
        SELECT 1 FROM ml_instances m WHERE m.lease_owner = w.writer);
END $$;
INSERT INTO ml_meta VALUES ('schema', {SCHEMA_VERSION});
"""


# Version 4's: the queue state (false for every instance of an older
# journal: its queued instances stay with their owner until they start),
# and an older engine still running is stopped at its next batch that goes
# through ml_append (it would not record queue states) with a message that
# says why, not "function does not exist".
_QUEUED = f"""
ALTER TABLE ml_instances ADD COLUMN queued boolean NOT NULL DEFAULT false;
CREATE OR REPLACE FUNCTION ml_append(p_writer text, p_inst text[], p_key text[], p_rec bytea[],
                          p_new text[], p_fence text[], p_epoch int8[], p_notify bool)
RETURNS SETOF int8 LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this journal has schema version 4: every engine writing to it must '
        'run a memable_log that knows it (upgrade this one)' USING ERRCODE = '{OUTDATED}';
END $$;
"""

# Migrations, from a version to the next, each in one transaction.
_MIGRATE = {
    # version 3, for retention: ml_append checks that unfenced instances
    # exist and records each new instance's first seq (filled here for the
    # others, in one pass over ml_log with writes blocked)
    2: _FIRST_SEQ,
    # version 4, for queued instances that any engine with room may run
    3: _QUEUED + _APPEND_FN,
}


class SchemaMismatch(EngineError):
    """The database holds a journal of another schema version."""


async def ensure(conn: Conn, where: str) -> None:
    """Create the schema in an empty database, or check its version."""
    await conn.run("SELECT pg_advisory_lock(7361)")  # two engines creating it at once
    try:
        found = await conn.run("SELECT to_regclass('ml_meta') IS NOT NULL")
        if found[0].get_value(0, 0) != b"t":
            await _transaction(conn, _CREATE)
            return
        row = await conn.run("SELECT value FROM ml_meta WHERE name = 'schema'")
        value = row[0].get_value(0, 0) if row[0].ntuples else None
        version = int(value) if value is not None else None
        steps = []
        while version in _MIGRATE:  # an older journal: brought up to date, in one transaction
            steps.append(_MIGRATE[version])
            version += 1
        if steps:
            await _transaction(conn, ";".join(steps) + f";UPDATE ml_meta SET value = "
                               f"{version} WHERE name = 'schema';")
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the PostgreSQL journal at {where} has schema version {version}, newer "
                f"than this memable_log's {SCHEMA_VERSION}: upgrade memable_log"
            )
        raise SchemaMismatch(
            f"the PostgreSQL journal at {where} has schema version {version}, older than "
            f"this memable_log's {SCHEMA_VERSION}, and no migration exists"
        )
    finally:
        await conn.run("SELECT pg_advisory_unlock(7361)")


async def _transaction(conn: Conn, sql: str) -> None:
    """``sql`` in one transaction; one that fails is rolled back, so the
    connection can still release the advisory lock (the error is the
    statement's, not "current transaction is aborted")."""
    try:
        await conn.run("BEGIN;" + sql + ";COMMIT;")
    except BaseException:
        if not conn.broken:
            await conn.run("ROLLBACK")
        raise
