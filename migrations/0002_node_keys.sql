-- Long-lived secret keys of the node itself (e.g. the key that signs its votes),
-- stored only as HSM/TPM-wrapped envelopes.
CREATE TABLE node_keys (
    purpose     TEXT PRIMARY KEY CHECK (purpose IN ('vote_signing')),
    algorithm   TEXT NOT NULL,
    public_key  BYTEA NOT NULL,
    envelope    BYTEA NOT NULL CHECK (length(envelope) > 0),
    kek_id      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
