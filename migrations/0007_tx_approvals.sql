-- Human approvals of transactions whose policy requires them. An approval is taken by
-- the node whose API authenticated the approver and relayed to every participant of
-- the key over mTLS; each node keeps every approval it has seen. Approvals are never
-- changed or withdrawn once given (a new transaction is the way to change one's mind).
CREATE TABLE tx_approvals (
    transaction_id UUID NOT NULL REFERENCES transactions (id),
    approver       TEXT NOT NULL CHECK (length(approver) BETWEEN 1 AND 128),
    role           TEXT NOT NULL CHECK (length(role) BETWEEN 1 AND 32),
    via_node       TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, approver)
);

CREATE FUNCTION tx_approvals_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'approvals are immutable' USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER tx_approvals_no_change BEFORE UPDATE OR DELETE ON tx_approvals
    FOR EACH ROW EXECUTE FUNCTION tx_approvals_immutable();

-- The PSBT with every signature filled in (partial_sigs / tap_key_sig), before
-- finalization, so an external wallet (e.g. BDK) can finalize it itself.
ALTER TABLE transactions ADD COLUMN signed_psbt BYTEA;
