-- Revocations: one row per "rotate and deactivate" run, a persisted state machine
-- advanced one idempotent step at a time and resumed after a crash.

-- A key created by a rotation but not yet proven usable and activated.
ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_state_check
    CHECK (state IN ('pending', 'active', 'retired', 'inactive', 'deleted'));

CREATE TABLE revocations (
    id             UUID PRIMARY KEY,
    signer         TEXT NOT NULL REFERENCES signers (name),
    mode           TEXT NOT NULL CHECK (mode IN ('graceful', 'revoke', 'emergency')),
    requested_by   TEXT NOT NULL,
    reason         TEXT NOT NULL,
    old_key_id     TEXT REFERENCES signing_keys (key_id),
    new_key_id     TEXT REFERENCES signing_keys (key_id),
    state          TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    -- The next step to run ('done' once finished).
    next_step      TEXT NOT NULL,
    -- The blast radius computed before anything was touched.
    blast_radius   JSONB NOT NULL,
    links_revoked  BIGINT NOT NULL DEFAULT 0,
    -- [{name, started_at, finished_at, error}] in order.
    steps          JSONB NOT NULL DEFAULT '[]'::jsonb,
    error          TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);

-- One revocation at a time per signer.
CREATE UNIQUE INDEX revocations_one_running_per_signer ON revocations (signer) WHERE state = 'running';
CREATE INDEX revocations_by_created ON revocations (created_at DESC, id DESC);

ALTER TABLE signing_keys
    ADD CONSTRAINT signing_keys_revocation_fk FOREIGN KEY (revocation_id) REFERENCES revocations (id);
ALTER TABLE links
    ADD CONSTRAINT links_revocation_fk FOREIGN KEY (revocation_id) REFERENCES revocations (id);
