-- Approver identities (issue 15, finding 5). An approver is a name, a role and an
-- Ed25519 public key; each node's own admin endorses exactly that triple, the node
-- signs the endorsement with its vote key and sends it to every peer. A node treats
-- the approver as active once it holds endorsements of the same triple from at
-- least `threshold` distinct nodes (each checked against that node's pinned vote
-- key). Rows are never changed or removed.
CREATE TABLE approver_endorsements (
    approver   TEXT NOT NULL CHECK (approver ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role       TEXT NOT NULL CHECK (role ~ '^[a-z0-9_-]{1,32}$'),
    public_key BYTEA NOT NULL CHECK (length(public_key) = 32),
    node_id    TEXT NOT NULL,
    -- token id of the admin who endorsed, at that node
    admin      TEXT NOT NULL CHECK (length(admin) BETWEEN 1 AND 128),
    signature  BYTEA NOT NULL CHECK (length(signature) = 64),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (approver, role, public_key, node_id)
);
CREATE FUNCTION approver_endorsements_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'approver endorsements are immutable' USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER approver_endorsements_no_change BEFORE UPDATE OR DELETE ON approver_endorsements
    FOR EACH ROW EXECUTE FUNCTION approver_endorsements_immutable();

-- An approval is now the approver's signature over (transaction id, txid), kept
-- with the key it verifies under, so any node (and an auditor) can check it again.
ALTER TABLE tx_approvals ADD COLUMN public_key BYTEA CHECK (public_key IS NULL OR length(public_key) = 32);
ALTER TABLE tx_approvals ADD COLUMN signature BYTEA CHECK (signature IS NULL OR length(signature) = 64);
