-- SummarizeLinks from a roll-up instead of a pass over every link.
--
-- A summary counts links per group and state. A link's state depends on its
-- key (dead or not), on whether a revocation marked it, and on its expiry
-- against now. So links are counted per cell: (key, signer, bucket, caller,
-- hour of expiry, marked). Every cell but the current hour's has one state at
-- read time; the current hour of each live key is counted from `links` itself
-- (an index range on links_by_key_expiry). See registry/link_summary.rs.
--
-- Kept exact by triggers, in the transaction that writes the links:
--   INSERT  appends one delta row per cell the statement touched (append-only:
--           concurrent link batches never wait on a shared counter row);
--   UPDATE, DELETE  recount every cell of the keys the statement touched;
--   TRUNCATE  empties the roll-up.
-- The maintenance loop folds deltas into link_rollup (`link_summary::fold`);
-- reads add both tables, so a summary is exact whether or not a fold has run.

CREATE TABLE link_rollup (
    key_id        TEXT NOT NULL,
    signer        TEXT NOT NULL,
    bucket        TEXT NOT NULL,
    caller        TEXT NOT NULL,
    -- The hour (UTC) the cell's links expire in, or '-infinity' once their state
    -- no longer depends on time (expired, marked, or of a dead key): the fold
    -- merges those cells so the table stays small.
    expires_hour  TIMESTAMPTZ NOT NULL,
    marked        BOOLEAN NOT NULL,
    links         BIGINT NOT NULL,
    latest        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key_id, signer, bucket, caller, expires_hour, marked)
);

-- The same columns (no key: deltas of one cell pile up until a fold).
CREATE TABLE link_rollup_delta (LIKE link_rollup);

-- The lock folds and recounts take (class 0x7074, id 1): a recount must not
-- interleave with a fold that moves the deltas it replaces.
CREATE FUNCTION link_rollup_lock() RETURNS void LANGUAGE sql AS
    $$ SELECT pg_advisory_xact_lock(28788, 1) $$;

CREATE FUNCTION link_rollup_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO link_rollup_delta
    SELECT key_id, signer, bucket, caller, date_trunc('hour', expires_at, 'UTC'),
           revocation_id IS NOT NULL, count(*), max(expires_at)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END $$;

-- Recounts every cell of the given keys from `links`, as this statement sees
-- them. Links committed later bring their own deltas; none is counted twice:
-- the deltas deleted here are exactly those of links this snapshot sees.
CREATE FUNCTION link_rollup_recount(keys TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM link_rollup_lock();
    -- A new statement, so a snapshot taken after the lock: no fold is half seen.
    WITH gone AS (DELETE FROM link_rollup WHERE key_id = ANY (keys)),
         gone_deltas AS (DELETE FROM link_rollup_delta WHERE key_id = ANY (keys))
    INSERT INTO link_rollup_delta
    SELECT key_id, signer, bucket, caller, date_trunc('hour', expires_at, 'UTC'),
           revocation_id IS NOT NULL, count(*), max(expires_at)
    FROM links
    WHERE key_id = ANY (keys)
    GROUP BY 1, 2, 3, 4, 5, 6;
END $$;

CREATE FUNCTION link_rollup_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM link_rollup_recount(ARRAY(
        SELECT key_id FROM old_rows UNION SELECT key_id FROM new_rows));
    RETURN NULL;
END $$;

CREATE FUNCTION link_rollup_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM link_rollup_recount(ARRAY(SELECT DISTINCT key_id FROM old_rows));
    RETURN NULL;
END $$;

CREATE FUNCTION link_rollup_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE link_rollup, link_rollup_delta;
    RETURN NULL;
END $$;

CREATE TRIGGER link_rollup_insert AFTER INSERT ON links
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION link_rollup_on_insert();
CREATE TRIGGER link_rollup_update AFTER UPDATE ON links
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION link_rollup_on_update();
CREATE TRIGGER link_rollup_delete AFTER DELETE ON links
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION link_rollup_on_delete();
CREATE TRIGGER link_rollup_truncate AFTER TRUNCATE ON links
    FOR EACH STATEMENT EXECUTE FUNCTION link_rollup_on_truncate();

-- The links already recorded.
SELECT link_rollup_recount(ARRAY(SELECT key_id FROM signing_keys));
