-- links_by_issued in ascending order. IssueLink inserts links in issued_at
-- order, so every new entry of a (issued_at DESC, id DESC) index lands on the
-- index's leftmost leaf; a full leftmost leaf splits in half and its left half
-- never fills again, so the index holds ~89 bytes an entry where a
-- bulk-built one holds ~50 (issue 12; docs/BENCHMARKS.md, "links_by_issued
-- ascending"). In ascending order every new entry lands on the rightmost
-- leaf, whose split leaves the old page full: the index stays ~44% smaller
-- under IssueLink's inserts, each link writes less WAL, and a listing's walk
-- reads fewer pages for the same rows.
--
-- Listings read newest first: a scan of this index backwards gives exactly
-- (issued_at DESC, id DESC, expires_at DESC), the same order as before
-- ((issued_at, id) is unique). No query names the index.
--
-- Like 0020, this builds the index of every partition in the migration's
-- transaction: inserts into `links` wait meanwhile (0.4-0.7 s per million
-- links on the test machine; docs/DEPLOY.md, "Upgrades: migrate, then roll").
CREATE INDEX links_by_issued_ascending ON links (issued_at, id, expires_at);
DROP INDEX links_by_issued;
ALTER INDEX links_by_issued_ascending RENAME TO links_by_issued;
