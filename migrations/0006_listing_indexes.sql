-- ListLinks filters that the (issued_at DESC, id DESC) indexes cannot serve.
-- A listing walks one of those in order and checks the remaining filters on
-- each row; when those reject nearly every row, a page reads far (to the oldest
-- link for a prefix that matches nothing: seconds on a large registry). These
-- two indexes let the planner fetch the few matching links instead and sort
-- them. Each costs IssueLink one more index insert per link (10 instead of 8
-- with 0003); building them on an existing registry blocks link inserts for
-- the build (seconds per index at 10M links).

-- An object key prefix as a range: link_queries filters by
-- `object_key COLLATE "C" >= prefix AND < successor(prefix)`, not starts_with
-- (which no btree serves with a bound parameter). In the C collation strings
-- compare by bytes, and UTF-8 byte order is code point order, so the keys with
-- a prefix are one contiguous range (not so in a linguistic collation, which
-- the database default may be). The widest index entry: keys are at most 1024
-- bytes, within a btree entry's limit.
CREATE INDEX links_by_object_key ON links (object_key COLLATE "C");

-- An expiry window (`expires_after`/`expires_before` without a key): the
-- window's links by range. links_by_key_expiry starts with key_id, so it serves
-- only one key's window.
CREATE INDEX links_by_expiry ON links (expires_at);
