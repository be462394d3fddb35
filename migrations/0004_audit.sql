-- The audit trail: every KeyService call (succeeded or not) and every denied
-- request (unauthenticated, or refused by the policy). Append-only: the
-- database itself refuses to change or remove a row, whoever asks.
-- Rows never hold a URL, a signature or a secret (see src/audit.rs).

CREATE TABLE audit_events (
    -- UUIDv7: time-ordered, the tie-breaker of the keyset paging.
    id       UUID PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL,
    -- NULL: the caller could not be authenticated.
    caller   TEXT,
    -- The peer's address, when known.
    peer     TEXT,
    -- The gRPC method, e.g. 'presignd.v1.KeyService/RotateKey'.
    rpc      TEXT NOT NULL,
    -- What the call was about: a signer, a key id, a bucket and object key...
    target   TEXT NOT NULL DEFAULT '',
    -- The gRPC status code name: 'OK', 'PERMISSION_DENIED', ...
    code     TEXT NOT NULL,
    message  TEXT NOT NULL DEFAULT ''
);

-- ListAuditEvents: newest first, keyset paged.
CREATE INDEX audit_events_by_at ON audit_events (at DESC, id DESC);
CREATE INDEX audit_events_by_caller_at ON audit_events (caller, at DESC, id DESC);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Nobody but the owner gets more than INSERT and SELECT. (The owner can still
-- drop the triggers: run presignd as a role that does not own its tables for
-- that last step; see README "Audit".)
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC;
