-- Outputs paying this node's wallet addresses, imported from funding transactions
-- (POST /api/v1/utxos) and used by the recipient + amount form of
-- POST /api/v1/transactions. A UTXO is reserved by at most one transaction.
CREATE TABLE utxos (
    txid          TEXT NOT NULL CHECK (txid ~ '^[0-9a-f]{64}$'),
    vout          INTEGER NOT NULL CHECK (vout >= 0),
    key_id        TEXT NOT NULL,
    value_sats    BIGINT NOT NULL CHECK (value_sats > 0 AND value_sats <= 2100000000000000),
    script_pubkey BYTEA NOT NULL CHECK (length(script_pubkey) BETWEEN 1 AND 10000),
    chain         INTEGER NOT NULL CHECK (chain IN (0, 1)),
    idx           INTEGER NOT NULL CHECK (idx >= 0),
    state         TEXT NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'reserved', 'spent')),
    reserved_by   UUID REFERENCES transactions (id) ON DELETE SET NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, vout)
);
CREATE INDEX idx_utxos_key_state ON utxos (key_id, state);

-- Transactions: the node that coordinates signing, the PSBT as filled, and the
-- deadline of the voting round.
ALTER TABLE transactions
    ADD COLUMN leader TEXT,
    ADD COLUMN vote_deadline TIMESTAMPTZ;
