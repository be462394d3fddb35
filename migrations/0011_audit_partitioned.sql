-- The audit trail partitioned by month of `at` (RANGE, UTC months), so that
-- audit retention drops whole months (`--audit-retention-days`) and never
-- deletes a row. Within a partition it stays append-only: the row trigger
-- below is cloned onto every partition (UPDATE, DELETE refused), and every
-- partition gets its own TRUNCATE trigger (statement triggers are not cloned;
-- registry/partitions.rs adds it to each month it creates). Dropping a month
-- is the one way rows leave, and the drop writes an audit row itself.
--
-- As for links (0011): the existing table becomes one partition,
-- `audit_events_before_YYYYMM` (every row before that month), no row is
-- rewritten; the primary key becomes (id, at). `audit_events_default` is the
-- safety net for a month not created in time; its rows cannot be moved out
-- (append-only), so they stay there and are never dropped by retention.

CREATE TEMPORARY TABLE audit_upgrade (before_month DATE NOT NULL, name TEXT NOT NULL) ON COMMIT DROP;

DO $$
DECLARE
    cut DATE := (date_trunc('month', now(), 'UTC') + interval '1 month')::date;
    old TEXT := 'audit_events_before_' || to_char(cut, 'YYYYMM');
    idx TEXT;
BEGIN
    INSERT INTO audit_upgrade VALUES (cut, old);
    EXECUTE format('ALTER TABLE audit_events RENAME TO %I', old);
    FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = old::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx, 'legacy_' || idx);
    END LOOP;
    -- The parent's row trigger is cloned onto it when attached.
    EXECUTE format('DROP TRIGGER audit_events_no_update_or_delete ON %I', old);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT legacy_audit_events_pkey', old);
END $$;

CREATE TABLE audit_events (
    id       UUID NOT NULL,
    at       TIMESTAMPTZ NOT NULL,
    caller   TEXT,
    peer     TEXT,
    rpc      TEXT NOT NULL,
    target   TEXT NOT NULL DEFAULT '',
    code     TEXT NOT NULL,
    message  TEXT NOT NULL DEFAULT '',
    count    BIGINT NOT NULL DEFAULT 1 CONSTRAINT audit_events_count_positive CHECK (count >= 1),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE INDEX audit_events_by_at ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_by_caller_at ON audit_events (caller, at DESC, id DESC);

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

DO $$
DECLARE
    u RECORD;
    month DATE;
    part TEXT;
BEGIN
    SELECT * INTO u FROM audit_upgrade;
    EXECUTE format('ALTER TABLE audit_events ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                   u.name, u.before_month::timestamp AT TIME ZONE 'UTC');
    CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events_default
        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
    -- This month is in the old table; the next three get their own.
    month := u.before_month;
    WHILE month <= u.before_month + interval '2 months' LOOP
        part := 'audit_events_p' || to_char(month, 'YYYYMM');
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                       part, month::timestamp AT TIME ZONE 'UTC',
                       (month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()', part);
        month := month + interval '1 month';
    END LOOP;
END $$;

REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC;
