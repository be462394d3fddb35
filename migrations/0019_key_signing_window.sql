-- Where a key's links are in time: the range of issued_at of every link it
-- signed, recorded in the transaction that stops it signing (active ->
-- retired or inactive, under its exclusive issuance lock, which waits for
-- every batch of its links to commit: no link of it comes after). Read from
-- the links themselves (issued_at is the signing server's clock, not the
-- database's), so the range is exact. NULL while the key may sign (active,
-- pending) or when unknown; ('infinity', '-infinity'), an empty range, when it
-- signed nothing. Retention only ever removes links, so the range stays a
-- bound. ListLinks uses it to read a key's (and REVOKED's) links only in the
-- days they can be in (registry/link_queries.rs).
ALTER TABLE signing_keys
    ADD COLUMN signed_from TIMESTAMPTZ,
    ADD COLUMN signed_until TIMESTAMPTZ,
    ADD CONSTRAINT signing_keys_signed_window CHECK ((signed_from IS NULL) = (signed_until IS NULL));

-- The keys that no longer sign: their links are final.
UPDATE signing_keys k
SET signed_from = coalesce((SELECT min(l.issued_at) FROM links l WHERE l.key_id = k.key_id), 'infinity'),
    signed_until = coalesce((SELECT max(l.issued_at) FROM links l WHERE l.key_id = k.key_id), '-infinity')
WHERE k.state IN ('retired', 'inactive', 'deleted');
