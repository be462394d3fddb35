-- The roll-up counts the current and the next hour by minute of expiry.
--
-- A summary splits the current hour of each live key between its expired
-- and active links by reading the links still active from `links`: with a
-- cell per hour that read is the rest of the hour, ~0.3 µs a link, 0.5-0.9 s
-- once an hour holds 1.6-2.4M live links (docs/BENCHMARKS.md, "A live
-- hour"). With a cell per minute it is the rest of the current minute.
--
-- `minute` is the minute (0-59) of `expires_hour` the cell's links expire in,
-- or -1 for a cell of the whole hour (or, merged, of the whole day). The
-- triggers write minutes for links expiring in the current or the next hour
-- (by their transaction's now()), hours for later ones; the fold
-- (`link_summary::fold`) recounts by minute the current and the next hour of
-- a live key wherever an hour's cell of them is left (written hours ahead,
-- or by a presignd before this migration). A summary reads a key whose
-- current hour still has one as before, the rest of the hour from `links`.

ALTER TABLE link_rollup ADD COLUMN minute SMALLINT NOT NULL DEFAULT -1
    CONSTRAINT link_rollup_minute_range CHECK (minute BETWEEN -1 AND 59);
ALTER TABLE link_rollup_delta ADD COLUMN minute SMALLINT NOT NULL DEFAULT -1;
ALTER TABLE link_rollup DROP CONSTRAINT link_rollup_pkey,
    ADD PRIMARY KEY (key_id, signer, bucket, caller, expires_hour, minute, marked);

-- The minute cell a link expiring at `expires_at` is counted in, written now:
-- its minute within the current or the next hour (UTC), else -1 (its hour).
CREATE FUNCTION link_rollup_minute(expires_at TIMESTAMPTZ) RETURNS SMALLINT
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN expires_at >= date_trunc('hour', now(), 'UTC')
                 AND expires_at < date_trunc('hour', now(), 'UTC') + interval '2 hours'
                THEN extract(minute FROM expires_at AT TIME ZONE 'UTC')::smallint
                ELSE -1 END
$$;

CREATE OR REPLACE FUNCTION link_rollup_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO link_rollup_delta
        (key_id, signer, bucket, caller, expires_hour, minute, marked, links, latest)
    SELECT key_id, signer, bucket, caller, date_trunc('hour', expires_at, 'UTC'),
           link_rollup_minute(expires_at), revocation_id IS NOT NULL, count(*), max(expires_at)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5, 6, 7;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION link_rollup_recount(keys TEXT[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM link_rollup_lock();
    -- A new statement, so a snapshot taken after the lock: no fold is half seen.
    WITH gone AS (DELETE FROM link_rollup WHERE key_id = ANY (keys)),
         gone_deltas AS (DELETE FROM link_rollup_delta WHERE key_id = ANY (keys))
    INSERT INTO link_rollup_delta
        (key_id, signer, bucket, caller, expires_hour, minute, marked, links, latest)
    SELECT key_id, signer, bucket, caller, date_trunc('hour', expires_at, 'UTC'),
           link_rollup_minute(expires_at), revocation_id IS NOT NULL, count(*), max(expires_at)
    FROM links
    WHERE key_id = ANY (keys)
    GROUP BY 1, 2, 3, 4, 5, 6, 7;
END $$;
