-- Signing session ids are used once (issue 15, finding 8): a signer records each
-- session it serves, bound to (transaction, input, signer set), before any protocol
-- step or presignature use; a second request with the same id is refused, whatever
-- it carries, and recorded against the leader that sent it. Rows are never changed
-- or removed.
CREATE TABLE signing_sessions (
    session_id     UUID PRIMARY KEY,
    transaction_id UUID NOT NULL,
    input_index    INTEGER NOT NULL CHECK (input_index >= 0),
    signers        TEXT[] NOT NULL CHECK (cardinality(signers) >= 1),
    leader         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_signing_sessions_tx ON signing_sessions (transaction_id);
CREATE FUNCTION signing_sessions_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'signing_sessions rows are immutable' USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER signing_sessions_no_change BEFORE UPDATE OR DELETE ON signing_sessions
    FOR EACH ROW EXECUTE FUNCTION signing_sessions_immutable();
