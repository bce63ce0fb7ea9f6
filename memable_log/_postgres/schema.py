"""The PostgreSQL schema of a shared journal, and its version check.

Theory of operation. One database holds one journal (docs/postgres.md):

* ``ml_meta``: ``('schema', N)``, the schema's version. ``ensure`` creates
  the schema in an empty database, accepts version ``SCHEMA_VERSION``,
  migrates version 2 (``_MIGRATE``: ``ml_append`` replaced, under the
  advisory lock, in one transaction), and refuses a newer one by name
  (made by a newer memable_log) and an older one (no migration).
* ``ml_workers``: one row per open engine (``writer``), its lease's
  ``expires_at`` (database clock), renewed by one update every lease/3
  (lease.py). One row per engine, not a lease per instance: a renewal costs
  one small HOT update whatever the engine runs (no index on the expiry).
* ``ml_instances``: one row per instance: its owner (a ``writer``), its
  fencing epoch, and the seq of its first row (``first_seq``: retention
  deletes its rows from there to its last, a range of the primary key,
  so no index of ``ml_log`` by instance costs every append). An
  instance's lease is its owner's: when the owner's row expired, any
  engine claims it (``ml_claim``: epoch + 1, ``SKIP LOCKED``, so an
  instance whose batch is in flight is skipped until it commits).
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
  instances: no row may outlive its instance). Errors carry SQLSTATEs of
  our own (``ML001`` fenced out, ``ML002`` instance exists, ``ML003``
  instance gone) and name the instance in their DETAIL.
* ``ml_claim(writer)``: takes every instance whose owner's lease expired,
  epoch + 1; their ids and new epochs. Then drops expired workers that own
  nothing any more.
"""

from __future__ import annotations

from .._core.errors import EngineError
from .driver import Conn

SCHEMA_VERSION = 3
FENCED = "ML001"
EXISTS = "ML002"
GONE = "ML003"
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
                          p_new text[], p_fence text[], p_epoch int8[], p_notify bool)
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
    first_seq     bigint
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


# Migrations, from a version to the next, each in one transaction.
_MIGRATE = {
    # version 3, for retention: ml_append checks that unfenced instances
    # exist and records each new instance's first seq (filled here for the
    # others, in one pass over ml_log with writes blocked)
    2: _FIRST_SEQ + _APPEND_FN,
}


class SchemaMismatch(EngineError):
    """The database holds a journal of another schema version."""


async def ensure(conn: Conn, where: str) -> None:
    """Create the schema in an empty database, or check its version."""
    await conn.run("SELECT pg_advisory_lock(7361)")  # two engines creating it at once
    try:
        found = await conn.run("SELECT to_regclass('ml_meta') IS NOT NULL")
        if found[0].get_value(0, 0) != b"t":
            await conn.run("BEGIN;" + _CREATE + "COMMIT;")
            return
        row = await conn.run("SELECT value FROM ml_meta WHERE name = 'schema'")
        value = row[0].get_value(0, 0) if row[0].ntuples else None
        version = int(value) if value is not None else None
        while version in _MIGRATE:  # an older journal: brought up to date, a step at a time
            await conn.run(f"BEGIN;{_MIGRATE[version]};UPDATE ml_meta SET value = "
                           f"{version + 1} WHERE name = 'schema';COMMIT;")
            version += 1
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
