-- A group commit in one round trip (issue 12). A batch of links was four
-- statements, each a round trip between presignd and PostgreSQL and a wake-up
-- on both sides: BEGIN, the keys' issuance locks, the insert (a fifth, the
-- request-id claims, when a row carried one), COMMIT. `links_record` runs the
-- same steps in one call; called outside a transaction it is one, and commits
-- at its end (`registry::links::record`).
--
-- What the steps guarantee, unchanged:
--  * The batch's keys' issuance locks are taken shared, in the order given
--    (sorted: no deadlock between batches), and held to the commit. A key
--    changes state only under the same lock exclusive
--    (`keys::lock_for_state_change`): a revocation sees every link inserted
--    under it, and none of its key is inserted after it.
--  * Each statement of a VOLATILE PL/pgSQL function in READ COMMITTED takes a
--    new snapshot: the key states read after the locks include every state
--    change committed before they were granted. (One SQL statement could not
--    do this: its snapshot would predate its own lock.)
--  * A row carrying a request id is inserted only if it claimed the id (0013:
--    the id is free, or its link expired); the first row of a (caller, id) in
--    the batch claims it, its duplicates (concurrent retries) do not, and ids
--    are claimed in one order (byte order of caller, id). The caller answers
--    an unclaimed row with the link that holds its id.
--  * A replacement (`replaces_link_id`) whose original has one already is not
--    inserted; only a batch holding one pays the speculative insertion's WAL.
--  * Every link names a key that exists and belongs to the link's signer, as
--    the foreign keys of `links` (key_id -> signing_keys, signer -> signers)
--    guaranteed. They are dropped below: each inserted row paid two AFTER ROW
--    triggers, each an SPI query and a FOR KEY SHARE lock of the key's and the
--    signer's row, about a tenth of PostgreSQL's CPU per link (perf, issue 12;
--    docs/BENCHMARKS.md). This function checks each distinct (key, signer) of
--    a batch once instead, which is stronger (the signer must be the key's),
--    and refuses the whole batch as the foreign key did (SQLSTATE 23503).
--    Every link presignd writes goes through it. What the foreign keys also
--    guaranteed on the other side, that a key links name is never deleted, a
--    trigger keeps for every key: a key's life ('deleted' included) is its
--    `state`, and a link's state is derived from its key's row.
--
-- 28787 is `links::ISSUANCE_LOCK_CLASS` (0x7073, "ps"); a test holds the two
-- equal. Returns the batch's keys that are active (their rows were inserted,
-- those of any other key were not) and the links that claimed their id.
CREATE FUNCTION links_record(
    in_key_ids TEXT[], in_active TEXT,
    in_id UUID[], in_key_id TEXT[], in_signer TEXT[], in_caller TEXT[], in_method TEXT[],
    in_bucket TEXT[], in_object_key TEXT[], in_labels JSONB[], in_issued_at TIMESTAMPTZ[],
    in_expires_at TIMESTAMPTZ[], in_signature_sha256 BYTEA[], in_content_type TEXT[],
    in_content_disposition TEXT[], in_replaces_link_id UUID[], in_object_key_is_prefix BOOL[],
    in_request_id TEXT[], in_request_sha256 BYTEA[],
    OUT active_keys TEXT[], OUT claimed UUID[])
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM (SELECT DISTINCT k, s FROM unnest(in_key_id, in_signer) AS u (k, s)) AS p
               WHERE NOT EXISTS (SELECT FROM signing_keys sk WHERE sk.key_id = p.k AND sk.signer = p.s))
    THEN
        RAISE EXCEPTION 'links_record: a link names a key that does not exist or is not its signer''s'
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    PERFORM pg_advisory_xact_lock_shared(28787, hashtext(k)) FROM unnest(in_key_ids) k;

    active_keys := ARRAY(SELECT s.key_id FROM signing_keys s
                         WHERE s.key_id = ANY (in_key_ids) AND s.state = in_active);

    claimed := '{}';
    IF EXISTS (SELECT FROM unnest(in_request_id) r WHERE r IS NOT NULL) THEN
        WITH c AS (
            INSERT INTO link_requests (caller, request_id, link_id, expires_at, request_sha256)
            SELECT caller, request_id, id, expires_at, request_sha256
            FROM (SELECT DISTINCT ON (u.caller COLLATE "C", u.request_id COLLATE "C")
                         u.caller, u.request_id, u.id, u.expires_at, u.request_sha256
                  FROM UNNEST(in_caller, in_request_id, in_id, in_expires_at,
                              in_request_sha256, in_key_id)
                       WITH ORDINALITY AS u (caller, request_id, id, expires_at,
                                             request_sha256, key_id, n)
                  WHERE u.request_id IS NOT NULL AND u.key_id = ANY (active_keys)
                  ORDER BY u.caller COLLATE "C", u.request_id COLLATE "C", u.n) AS f
            ORDER BY caller COLLATE "C", request_id COLLATE "C"
            ON CONFLICT (caller, request_id) DO UPDATE
                SET link_id = EXCLUDED.link_id, expires_at = EXCLUDED.expires_at,
                    request_sha256 = EXCLUDED.request_sha256
                WHERE link_requests.expires_at <= now()
            RETURNING link_id)
        SELECT coalesce(array_agg(link_id), '{}') INTO claimed FROM c;
    END IF;

    -- The two inserts differ only in ON CONFLICT: each is a static statement,
    -- so each keeps its cached plan (EXECUTE of one built string would plan
    -- it at every batch).
    IF EXISTS (SELECT FROM unnest(in_replaces_link_id) r WHERE r IS NOT NULL) THEN
        INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                           issued_at, expires_at, signature_sha256, content_type,
                           content_disposition, replaces_link_id, object_key_is_prefix)
        SELECT u.id, u.key_id, u.signer, u.caller, u.method, u.bucket, u.object_key, u.labels,
               u.issued_at, u.expires_at, u.signature_sha256, u.content_type,
               u.content_disposition, u.replaces_link_id, u.object_key_is_prefix
        FROM UNNEST(in_id, in_key_id, in_signer, in_caller, in_method, in_bucket, in_object_key,
                    in_labels, in_issued_at, in_expires_at, in_signature_sha256,
                    in_content_type, in_content_disposition, in_replaces_link_id,
                    in_object_key_is_prefix, in_request_id)
             AS u (id, key_id, signer, caller, method, bucket, object_key, labels, issued_at,
                   expires_at, signature_sha256, content_type, content_disposition,
                   replaces_link_id, object_key_is_prefix, request_id)
        WHERE u.key_id = ANY (active_keys) AND (u.request_id IS NULL OR u.id = ANY (claimed))
        ON CONFLICT (replaces_link_id, expires_at) WHERE replaces_link_id IS NOT NULL
            DO NOTHING;
    ELSE
        INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                           issued_at, expires_at, signature_sha256, content_type,
                           content_disposition, replaces_link_id, object_key_is_prefix)
        SELECT u.id, u.key_id, u.signer, u.caller, u.method, u.bucket, u.object_key, u.labels,
               u.issued_at, u.expires_at, u.signature_sha256, u.content_type,
               u.content_disposition, u.replaces_link_id, u.object_key_is_prefix
        FROM UNNEST(in_id, in_key_id, in_signer, in_caller, in_method, in_bucket, in_object_key,
                    in_labels, in_issued_at, in_expires_at, in_signature_sha256,
                    in_content_type, in_content_disposition, in_replaces_link_id,
                    in_object_key_is_prefix, in_request_id)
             AS u (id, key_id, signer, caller, method, bucket, object_key, labels, issued_at,
                   expires_at, signature_sha256, content_type, content_disposition,
                   replaces_link_id, object_key_is_prefix, request_id)
        WHERE u.key_id = ANY (active_keys) AND (u.request_id IS NULL OR u.id = ANY (claimed));
    END IF;
END $$;

ALTER TABLE links DROP CONSTRAINT links_key_id_fkey, DROP CONSTRAINT links_signer_fkey;

CREATE FUNCTION signing_keys_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'signing_keys: a key is never deleted (its links derive their state from its row); % refused', TG_OP
        USING ERRCODE = 'foreign_key_violation';
END $$;

CREATE TRIGGER signing_keys_no_delete BEFORE DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION signing_keys_never_deleted();
