-- After a revocation (issue 16): the leaked links are quarantined on the
-- revocation, the innocent ones can be reissued (each replacement names the
-- link it replaces and binds what it bound), and callers are told which
-- revocation killed how many of their links.

-- The links a RotateKey / RevokeKey named as leaked: never reissued.
ALTER TABLE revocations ADD COLUMN quarantined_link_ids UUID[] NOT NULL DEFAULT '{}';

-- What a link binds beyond its object and method (a PUT's Content-Type, a
-- GET's response-content-disposition), so that a replacement binds the same.
-- Links recorded before this migration did not keep them: `headers_recorded`
-- is false for those (the fast default of the ADD COLUMN), true for every
-- link from now on (the column default after it); they are not reissued.
ALTER TABLE links ADD COLUMN content_type TEXT,
                  ADD COLUMN content_disposition TEXT,
                  ADD COLUMN headers_recorded BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE links ALTER COLUMN headers_recorded SET DEFAULT true;

-- A replacement issued by ReissueLinks names the link it replaces. It has
-- its original's expires_at (the partition key, which a unique index on a
-- partitioned table must contain), so this index allows one replacement per
-- link: reissuing twice finds the first replacement instead of adding one.
ALTER TABLE links ADD COLUMN replaces_link_id UUID;
CREATE UNIQUE INDEX links_one_replacement ON links (replaces_link_id, expires_at)
    WHERE replaces_link_id IS NOT NULL;

-- One event per (revocation, caller) whose links it killed, written in the
-- transaction that deactivated the key (whoever drives the revocation).
-- `seq` is the WatchRevocations cursor: writers take an advisory lock before
-- inserting and hold it to their commit, so sequence order is commit order and
-- a reader past seq N never misses a later commit with a smaller seq.
CREATE TABLE revocation_events (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    revocation_id   UUID NOT NULL REFERENCES revocations (id),
    caller          TEXT NOT NULL,
    signer          TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    links           BIGINT NOT NULL CHECK (links > 0),
    quarantined     BIGINT NOT NULL CHECK (quarantined >= 0),
    earliest_expiry TIMESTAMPTZ NOT NULL,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT revocation_events_once_per_caller UNIQUE (revocation_id, caller)
);
CREATE INDEX revocation_events_by_caller ON revocation_events (caller, seq);
