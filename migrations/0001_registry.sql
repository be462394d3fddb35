-- The registry: signers, their signing keys, and every link issued.
-- Secrets are stored sealed (AES-256-GCM); URLs and signatures are never stored,
-- only the SHA-256 of a link's signature (to answer "which link is this URL?").

CREATE TABLE signers (
    name        TEXT PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    backend     TEXT NOT NULL CHECK (backend IN ('garage', 'aws')),
    -- Set while an EMERGENCY rotation has deactivated the old key and the new one
    -- is not yet active: issuance for this signer pauses.
    paused      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE signing_keys (
    -- The backend's access key id: public (it appears in every URL it signs).
    key_id          TEXT PRIMARY KEY,
    signer          TEXT NOT NULL REFERENCES signers (name),
    state           TEXT NOT NULL CHECK (state IN ('active', 'retired', 'inactive', 'deleted')),
    -- nonce || ciphertext || tag, with the key id as associated data.
    sealed_secret   BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at    TIMESTAMPTZ,
    retired_at      TIMESTAMPTZ,
    deactivated_at  TIMESTAMPTZ,
    deleted_at      TIMESTAMPTZ,
    -- The revocation that deactivated this key, if any.
    revocation_id   UUID
);

-- A signer has at most one active key.
CREATE UNIQUE INDEX signing_keys_one_active_per_signer
    ON signing_keys (signer) WHERE state = 'active';

CREATE TABLE links (
    id                UUID PRIMARY KEY,
    key_id            TEXT NOT NULL REFERENCES signing_keys (key_id),
    signer            TEXT NOT NULL REFERENCES signers (name),
    caller            TEXT NOT NULL,
    method            TEXT NOT NULL CHECK (method IN ('GET', 'PUT', 'HEAD', 'DELETE')),
    bucket            TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    labels            JSONB NOT NULL DEFAULT '{}'::jsonb,
    issued_at         TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    signature_sha256  BYTEA NOT NULL CHECK (length(signature_sha256) = 32),
    revocation_id     UUID,
    CHECK (expires_at > issued_at)
);

-- Blast radius: outstanding links of one key, by expiry.
CREATE INDEX links_by_key_expiry ON links (key_id, expires_at);
-- Keyset paging, newest first, and the filtered variants dashboards use.
CREATE INDEX links_by_issued ON links (issued_at DESC, id DESC);
CREATE INDEX links_by_bucket_issued ON links (bucket, issued_at DESC, id DESC);
CREATE INDEX links_by_caller_issued ON links (caller, issued_at DESC, id DESC);
-- LookupLink: a URL found in a chat is matched by its signature's hash.
-- Not unique: identical requests signed in the same second yield the same URL.
CREATE INDEX links_by_signature ON links (signature_sha256);
