-- Signer node schema. Each node owns one database; no node reads another's.
-- Applied by the node at start (sqlx migrations, idempotent: each file runs once).

-- ---------------------------------------------------------------------------
-- Transactions and their state machine
-- ---------------------------------------------------------------------------
CREATE TABLE transactions (
    id              UUID PRIMARY KEY,
    key_id          TEXT,
    state           TEXT NOT NULL DEFAULT 'pending',
    recipient       TEXT,
    amount_sats     BIGINT CHECK (amount_sats IS NULL OR (amount_sats > 0 AND amount_sats <= 2100000000000000)),
    fee_sats        BIGINT CHECK (fee_sats IS NULL OR (fee_sats >= 0 AND fee_sats <= 2100000000000000)),
    psbt            BYTEA,
    unsigned_txid   TEXT,
    signed_tx       BYTEA,
    txid            TEXT,
    initiator       TEXT NOT NULL,
    policy_hash     TEXT,
    failure_reason  TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT transactions_state_valid CHECK (state IN (
        'pending', 'voting', 'approved', 'signing', 'signed', 'broadcast', 'confirmed',
        'rejected', 'failed', 'expired', 'aborted_byzantine')),
    CONSTRAINT transactions_signed_has_tx CHECK (
        state NOT IN ('signed', 'broadcast', 'confirmed') OR (signed_tx IS NOT NULL AND txid IS NOT NULL))
);
CREATE INDEX idx_transactions_state ON transactions (state);
CREATE INDEX idx_transactions_created ON transactions (created_at DESC, id DESC);
CREATE INDEX idx_transactions_key ON transactions (key_id);

-- Allowed state transitions. Anything else is rejected by the database itself, so no
-- code path (or operator with psql) can move a transaction backwards.
CREATE TABLE transaction_transitions (
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO transaction_transitions (from_state, to_state) VALUES
    ('pending', 'voting'), ('pending', 'rejected'), ('pending', 'failed'), ('pending', 'expired'),
    ('voting', 'approved'), ('voting', 'rejected'), ('voting', 'expired'), ('voting', 'failed'),
    ('voting', 'aborted_byzantine'),
    ('approved', 'signing'), ('approved', 'failed'), ('approved', 'expired'),
    ('approved', 'aborted_byzantine'),
    ('signing', 'signed'), ('signing', 'failed'), ('signing', 'aborted_byzantine'),
    ('signed', 'broadcast'),
    ('broadcast', 'confirmed'), ('broadcast', 'failed');

CREATE FUNCTION enforce_transaction_state() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state <> 'pending' THEN
            RAISE EXCEPTION 'invalid transaction state transition: new transactions start as pending, not %', NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state THEN
        IF NOT EXISTS (SELECT 1 FROM transaction_transitions
                       WHERE from_state = OLD.state AND to_state = NEW.state) THEN
            RAISE EXCEPTION 'invalid transaction state transition: % -> %', OLD.state, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER transactions_state_guard
    BEFORE INSERT OR UPDATE ON transactions
    FOR EACH ROW EXECUTE FUNCTION enforce_transaction_state();

-- ---------------------------------------------------------------------------
-- Voting
-- ---------------------------------------------------------------------------
CREATE TABLE voting_rounds (
    id                  UUID PRIMARY KEY,
    transaction_id      UUID NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
    round_no            INTEGER NOT NULL DEFAULT 1 CHECK (round_no >= 1),
    required_approvals  INTEGER NOT NULL CHECK (required_approvals >= 1),
    total_nodes         INTEGER NOT NULL CHECK (total_nodes >= required_approvals),
    state               TEXT NOT NULL DEFAULT 'open'
                        CHECK (state IN ('open', 'approved', 'rejected', 'expired')),
    policy_hash         TEXT,
    sighashes           BYTEA,
    deadline            TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at           TIMESTAMPTZ,
    UNIQUE (transaction_id, round_no)
);
CREATE INDEX idx_voting_rounds_state ON voting_rounds (state);

CREATE TABLE votes (
    id           BIGSERIAL PRIMARY KEY,
    round_id     UUID NOT NULL REFERENCES voting_rounds (id) ON DELETE CASCADE,
    node_id      TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    reasons      JSONB NOT NULL DEFAULT '[]'::jsonb,
    policy_hash  TEXT,
    signature    BYTEA NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT votes_one_per_node UNIQUE (round_id, node_id)
);
CREATE INDEX idx_votes_node ON votes (node_id);

-- ---------------------------------------------------------------------------
-- Audit log: append-only, hash-chained (see signer/src/audit)
-- ---------------------------------------------------------------------------
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY CHECK (seq >= 1),
    ts         TIMESTAMPTZ NOT NULL,
    node_id    TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT,
    details    JSONB NOT NULL DEFAULT '{}'::jsonb,
    prev_hash  BYTEA NOT NULL CHECK (length(prev_hash) = 32),
    hash       BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32)
);
CREATE INDEX idx_audit_log_action ON audit_log (action);
CREATE INDEX idx_audit_log_ts ON audit_log (ts);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- ---------------------------------------------------------------------------
-- Key ceremonies and secret material (stored only as HSM/TPM-wrapped envelopes)
-- ---------------------------------------------------------------------------
CREATE TABLE dkg_ceremonies (
    id              UUID PRIMARY KEY,
    protocol        TEXT NOT NULL CHECK (protocol IN ('cggmp24', 'frost', 'aux_info')),
    threshold       INTEGER NOT NULL CHECK (threshold >= 1),
    participants    TEXT[] NOT NULL CHECK (cardinality(participants) >= 1),
    execution_id    BYTEA NOT NULL UNIQUE,
    coordinator     TEXT NOT NULL,
    fencing_token   BIGINT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'completed', 'failed')),
    public_key      BYTEA,
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at    TIMESTAMPTZ,
    CONSTRAINT dkg_threshold_within_participants CHECK (threshold <= cardinality(participants)),
    CONSTRAINT dkg_completed_has_key CHECK (state <> 'completed' OR protocol = 'aux_info' OR public_key IS NOT NULL)
);
CREATE INDEX idx_dkg_ceremonies_state ON dkg_ceremonies (state);

CREATE TABLE key_shares (
    id            BIGSERIAL PRIMARY KEY,
    ceremony_id   UUID NOT NULL REFERENCES dkg_ceremonies (id) ON DELETE RESTRICT,
    node_id       TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    public_key    BYTEA NOT NULL,
    envelope      BYTEA NOT NULL CHECK (length(envelope) > 0),
    usable        BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT key_shares_one_per_node UNIQUE (ceremony_id, node_id)
);
CREATE INDEX idx_key_shares_key ON key_shares (key_id);

CREATE TABLE aux_info (
    id            BIGSERIAL PRIMARY KEY,
    ceremony_id   UUID NOT NULL REFERENCES dkg_ceremonies (id) ON DELETE RESTRICT,
    node_id       TEXT NOT NULL,
    participants  TEXT[] NOT NULL,
    envelope      BYTEA NOT NULL CHECK (length(envelope) > 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (ceremony_id, node_id)
);

CREATE TABLE presignatures (
    id             UUID PRIMARY KEY,
    key_id         TEXT NOT NULL,
    signer_set     TEXT[] NOT NULL,
    execution_id   BYTEA NOT NULL,
    envelope       BYTEA NOT NULL CHECK (length(envelope) > 0),
    public_data    BYTEA,
    state          TEXT NOT NULL DEFAULT 'available'
                   CHECK (state IN ('available', 'consumed', 'discarded')),
    consumed_by    UUID REFERENCES transactions (id) ON DELETE SET NULL,
    consumed_at    TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT presignature_consumed_once CHECK (state <> 'consumed' OR consumed_at IS NOT NULL)
);
CREATE INDEX idx_presignatures_pool ON presignatures (key_id, signer_set, state);

-- ---------------------------------------------------------------------------
-- Misbehaviour and health
-- ---------------------------------------------------------------------------
CREATE TABLE byzantine_violations (
    id              BIGSERIAL PRIMARY KEY,
    node_id         TEXT NOT NULL,
    violation_type  TEXT NOT NULL,
    session_id      TEXT,
    evidence        JSONB NOT NULL DEFAULT '{}'::jsonb,
    detected_by     TEXT NOT NULL,
    detected_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_byzantine_node ON byzantine_violations (node_id);

CREATE TABLE node_health (
    node_id     TEXT PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('healthy', 'degraded', 'down')),
    last_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    details     JSONB NOT NULL DEFAULT '{}'::jsonb
);

-- ---------------------------------------------------------------------------
-- API tokens (only an argon2 hash of the secret is stored)
-- ---------------------------------------------------------------------------
CREATE TABLE api_tokens (
    id                  TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9]{8,32}$'),
    name                TEXT NOT NULL,
    role                TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'approver', 'auditor')),
    secret_hash         TEXT NOT NULL,
    rate_limit_per_min  INTEGER NOT NULL DEFAULT 600 CHECK (rate_limit_per_min > 0),
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at          TIMESTAMPTZ
);
