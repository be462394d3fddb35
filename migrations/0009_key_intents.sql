-- Key creation is crash-safe (invariant 6): before presignd asks the backend
-- for a key, it commits an intent naming the key it is about to create; the
-- transaction that records the key resolves (deletes) the intent. An intent
-- left behind (a crash, or an error between the backend call and the commit)
-- is reconciled: the backend key it names is deleted, then the intent.
CREATE TABLE key_intents (
    id          UUID PRIMARY KEY,
    signer      TEXT NOT NULL REFERENCES signers (name),
    -- The name the backend key is created under (Garage: the key's name),
    -- chosen by presignd before the call, so the key can be found afterwards.
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX key_intents_by_signer ON key_intents (signer, created_at);
