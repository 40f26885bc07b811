-- Signing safety (issue 15): proven input amounts, one approval per unsigned
-- transaction, in-flight transactions expired at start.

-- Full funding transactions imported with POST /api/v1/utxos: a leader puts them on
-- its proposals (`non_witness_utxo`) so every other node can prove the amounts of
-- the inputs itself.
CREATE TABLE funding_transactions (
    txid       TEXT PRIMARY KEY CHECK (txid ~ '^[0-9a-f]{64}$'),
    raw        BYTEA NOT NULL CHECK (length(raw) BETWEEN 10 AND 4000000),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where a UTXO row comes from: `import` (POST /api/v1/utxos or the chain scan), or
-- `proposal` (an input of a proposal whose amount this node proved from the full
-- previous transaction; reserved for that transaction and never chosen by coin
-- selection until it is imported).
ALTER TABLE utxos
    ADD COLUMN origin TEXT NOT NULL DEFAULT 'import' CHECK (origin IN ('import', 'proposal'));

-- The data under which this node first approved an unsigned transaction (txid):
-- it never approves the same txid under different data (amounts, scripts,
-- sighashes). Rows are never changed or removed.
CREATE TABLE approved_txids (
    txid           TEXT PRIMARY KEY CHECK (txid ~ '^[0-9a-f]{64}$'),
    data_hash      BYTEA NOT NULL CHECK (length(data_hash) = 32),
    transaction_id UUID NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE FUNCTION approved_txids_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'approved_txids rows are immutable' USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER approved_txids_no_change BEFORE UPDATE OR DELETE ON approved_txids
    FOR EACH ROW EXECUTE FUNCTION approved_txids_immutable();

-- A node that restarts with a transaction in `signing` expires it (its round state
-- and signing sessions were in memory).
INSERT INTO transaction_transitions (from_state, to_state) VALUES ('signing', 'expired');
