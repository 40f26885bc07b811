-- Signed votes and pinned peer vote keys (signer/src/vote, docs/VOTING.md).

-- The whole signed vote in its wire form, so a quorum can be re-verified later.
-- NULL only for rows written before this migration.
ALTER TABLE votes
    ADD COLUMN signed_vote BYTEA CHECK (signed_vote IS NULL OR length(signed_vote) <= 262144);

-- Each peer's Ed25519 vote key, pinned on first sight over the mTLS-authenticated
-- connection. A later different key is refused and recorded as `vote_key_changed`.
CREATE TABLE peer_vote_keys (
    node_id     TEXT PRIMARY KEY CHECK (node_id ~ '^[a-z0-9-]{1,32}$'),
    public_key  BYTEA NOT NULL CHECK (length(public_key) = 32),
    pinned_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
