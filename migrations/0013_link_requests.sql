-- Safe retries of IssueLink (`IssueLinkRequest.request_id`): which link a
-- caller's request id issued, for as long as that link lives. A retry with the
-- same id finds the link here and gets it back (the URL re-signed from the
-- link's key, issued_at and expiry: SigV4 is deterministic), never a second
-- row. No URL, signature or secret is kept: only the link's id and expiry and
-- the SHA-256 of the canonical request, which tells a retry from another
-- request reusing the id.
--
-- A table of its own rather than a column of `links`: `links` is partitioned
-- by expires_at (0010), so a unique index there would have to include
-- expires_at and could not say "one live link per (caller, request_id)".
-- The recorder inserts a row here in the same transaction as its link
-- (`registry::link_requests::claim`); a row whose link expired no longer
-- binds the id (the next request with it takes the row over) and is deleted
-- by the maintenance loop (`lifecycle::step`). Nothing references `links`
-- by foreign key (retention drops its partitions whole).
CREATE TABLE link_requests (
    caller          TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    link_id         UUID NOT NULL,
    -- The link's expires_at: with link_id, its primary key in `links`.
    expires_at      TIMESTAMPTZ NOT NULL,
    request_sha256  BYTEA NOT NULL CONSTRAINT link_requests_request_sha256_check
                        CHECK (length(request_sha256) = 32),
    CONSTRAINT link_requests_pkey PRIMARY KEY (caller, request_id)
);

CREATE INDEX link_requests_by_expiry ON link_requests (expires_at);
