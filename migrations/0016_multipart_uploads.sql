-- Multipart uploads started through presignd (StartMultipartUpload): one row
-- per upload, written in the same transaction as the links of its part URLs
-- (each a PUT link labelled `presignd.upload` = this row's id and
-- `presignd.part` = its number, so every blast radius and listing counts
-- them like any link). `upload_id` is the store's UploadId: not a credential
-- (every call that uses it must be signed), kept to complete or abort the
-- upload server-side. `key_id` is the key that created it; Complete and Abort
-- use it while it lives, else the signer's active key. The maintenance loop
-- aborts the uploads still open past `expires_at` (the part URLs' expiry).
CREATE TABLE multipart_uploads (
    id          UUID PRIMARY KEY,
    upload_id   TEXT NOT NULL,
    bucket      TEXT NOT NULL,
    object_key  TEXT NOT NULL,
    signer      TEXT NOT NULL REFERENCES signers (name),
    key_id      TEXT NOT NULL REFERENCES signing_keys (key_id),
    caller      TEXT NOT NULL,
    part_count  INTEGER NOT NULL
                CONSTRAINT multipart_uploads_part_count_check CHECK (part_count BETWEEN 1 AND 10000),
    -- Set when the caller gave the total size: every part but the last has
    -- this many bytes.
    part_size   BIGINT,
    total_size  BIGINT,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open'
                CONSTRAINT multipart_uploads_state_check CHECK (state IN ('open', 'completed', 'aborted')),
    -- When it was completed or aborted, and by whom (a caller, or the maintenance).
    finished_at TIMESTAMPTZ,
    finished_by TEXT,
    CONSTRAINT multipart_uploads_lifetime_check
        CHECK (expires_at > created_at AND expires_at <= created_at + interval '7 days'),
    CONSTRAINT multipart_uploads_finished_check CHECK ((state = 'open') = (finished_at IS NULL))
);

-- The maintenance loop's scan: open uploads past their expiry.
CREATE INDEX multipart_uploads_open_by_expiry ON multipart_uploads (expires_at)
    WHERE state = 'open';
