-- Dashboards: ListLinks filtered by key or by signer, newest first, paged by
-- keyset. Without these, "links of key X" reads either every newer link of the
-- other keys (links_by_issued) or all of X's links to sort them
-- (links_by_key_expiry): seconds on a large registry for an old or rarely used
-- key. Each index costs IssueLink one more index insert.
-- (0002 is left to the revocation work, which was numbered first.)

CREATE INDEX links_by_key_issued ON links (key_id, issued_at DESC, id DESC);
CREATE INDEX links_by_signer_issued ON links (signer, issued_at DESC, id DESC);
