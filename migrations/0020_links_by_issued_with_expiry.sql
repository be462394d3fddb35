-- ListLinks by state (ACTIVE, EXPIRED) or by expiry window walks `links`
-- newest first and tests each link's expires_at, which links_by_issued did not
-- hold: every link of the other state between two of a page's rows cost a
-- read of its row, ~1 µs. After a burst of short-lived links the walk crosses
-- millions of them in today's partition (issue 11; docs/BENCHMARKS.md,
-- "ListLinks after a burst"). With expires_at as the index's last key column
-- the state's and the window's conditions on expires_at are index conditions:
-- the walk tests them in the index and reads only the rows that pass.
--
-- The order a walk reads is unchanged: (issued_at, id) is unique, so the
-- third column never reorders entries. An entry grows by 8 bytes; IssueLink
-- still inserts one entry per link into it.
--
-- On a registry with data this builds the index of every partition in the
-- migration's transaction: inserts into `links` wait meanwhile (SHARE lock;
-- reads go on until the old index is dropped at the end, an instant). Measured
-- in docs/BENCHMARKS.md: about 0.4 s per million links on the test machine.
-- Run `presignd migrate` at a quiet hour (docs/DEPLOY.md, "Upgrades: migrate, then roll").
CREATE INDEX links_by_issued_expiry ON links (issued_at DESC, id DESC, expires_at);
DROP INDEX links_by_issued;
ALTER INDEX links_by_issued_expiry RENAME TO links_by_issued;
