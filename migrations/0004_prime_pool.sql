-- Pregenerated Paillier safe-prime sets for aux-info ceremonies (see signer/src/dkg/primes.rs).
-- Each set is an HSM/TPM envelope (record kind prime_set); a set is taken at most once.
CREATE TABLE prime_pool (
    id           UUID PRIMARY KEY,
    node_id      TEXT NOT NULL,
    envelope     BYTEA NOT NULL CHECK (length(envelope) > 0),
    -- 'generated' by the node, or 'test_fixture' (published primes, tests only)
    source       TEXT NOT NULL CHECK (source IN ('generated', 'test_fixture')),
    -- SHA-256 of the fixture file for test fixtures (imported once); NULL otherwise
    fixture_hash BYTEA UNIQUE,
    state        TEXT NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'taken')),
    taken_by     UUID,
    taken_at     TIMESTAMPTZ,
    generation_ms BIGINT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT prime_taken_once CHECK (state <> 'taken' OR taken_at IS NOT NULL)
);
CREATE INDEX idx_prime_pool_available ON prime_pool (node_id, state);

-- A taken prime set never becomes available again.
CREATE FUNCTION prime_pool_no_return() RETURNS trigger AS $$
BEGIN
    IF OLD.state = 'taken' AND NEW.state <> 'taken' THEN
        RAISE EXCEPTION 'prime set % was already taken', OLD.id;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER prime_pool_no_return BEFORE UPDATE ON prime_pool
    FOR EACH ROW EXECUTE FUNCTION prime_pool_no_return();
