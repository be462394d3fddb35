-- Dashboards: ListLinks filtered by key or by signer, newest first, paged by
-- keyset. Without these, "links of key X" reads either every newer link of the
-- other keys (links_by_issued) or all of X's links to sort them
-- (links_by_key_expiry): seconds on a large registry for an old or rarely used
-- key. Each index costs IssueLink one more index insert.
-- (0002 is left to the revocation work, which was numbered first.)

CREATE INDEX links_by_key_issued ON links (key_id, issued_at DESC, id DESC);
CREATE INDEX links_by_signer_issued ON links (signer, issued_at DESC, id DESC);

-- Links a revocation marked, newest first: with the newest link of each dead
-- key, it bounds where a REVOKED listing starts (link_queries). Links are
-- inserted unmarked, so this index costs IssueLink nothing.
CREATE INDEX links_marked_by_revocation ON links (issued_at DESC, id DESC)
    WHERE revocation_id IS NOT NULL;

-- A link lives at most 7 days (SigV4's limit, enforced by domain::Ttl). Stated
-- here, it lets listings bound issued_at from a filter on state or expiry (an
-- ACTIVE link was issued less than 7 days ago), so a scan in issued_at order
-- stops instead of reading to the oldest link to prove there is no more.
ALTER TABLE links ADD CONSTRAINT links_live_at_most_7_days
    CHECK (expires_at <= issued_at + interval '7 days');
