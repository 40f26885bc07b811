-- Presignature pool (issue 7, see docs/PRESIGNATURES.md). The table comes from 0001;
-- this adds what exactly-once use and restore detection need.
--
-- * public_id: SHA-256 of the presignature's public data, identical on every member
--   of its signer set (the nodes agree on which presignature to use by this id);
-- * derivation_path: the HD path the presignature is bound to (RUSTSEC-2025-0127);
-- * seq: local creation order;
-- * state 'reserved': the signing leader claimed it for one signing session
--   (consumed_session); it is never available again;
-- * consumed_input / consumed_session: which input of which transaction used it.
ALTER TABLE presignatures
    ADD COLUMN public_id        BYTEA,
    ADD COLUMN derivation_path  INTEGER[] NOT NULL DEFAULT '{}',
    ADD COLUMN seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN consumed_input   INTEGER,
    ADD COLUMN consumed_session UUID,
    ADD COLUMN discarded_at     TIMESTAMPTZ,
    ADD COLUMN discard_reason   TEXT;
ALTER TABLE presignatures ALTER COLUMN public_id SET NOT NULL;
ALTER TABLE presignatures ALTER COLUMN public_data SET NOT NULL;
ALTER TABLE presignatures ADD CONSTRAINT presignature_public_id_len CHECK (length(public_id) = 32);
ALTER TABLE presignatures ADD CONSTRAINT presignature_public_id_unique UNIQUE (public_id);
ALTER TABLE presignatures DROP CONSTRAINT presignatures_state_check;
ALTER TABLE presignatures ADD CONSTRAINT presignatures_state_check
    CHECK (state IN ('available', 'reserved', 'consumed', 'discarded'));
ALTER TABLE presignatures ADD CONSTRAINT presignature_reserved_has_session
    CHECK (state <> 'reserved' OR (consumed_session IS NOT NULL AND consumed_at IS NOT NULL));
DROP INDEX IF EXISTS idx_presignatures_pool;
CREATE INDEX idx_presignatures_pool ON presignatures (key_id, signer_set, derivation_path, state, seq);

-- A presignature leaves 'available' once and never comes back; 'reserved' may only
-- become 'consumed' (by the same session); 'consumed' and 'discarded' are final.
CREATE FUNCTION presignature_once() RETURNS trigger AS $$
BEGIN
    IF OLD.state = NEW.state THEN
        IF OLD.state <> 'available' AND (OLD.consumed_session IS DISTINCT FROM NEW.consumed_session
                                         OR OLD.consumed_input IS DISTINCT FROM NEW.consumed_input) THEN
            RAISE EXCEPTION 'presignature % was already used', OLD.id;
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.state = 'available' THEN
        RETURN NEW;
    END IF;
    IF OLD.state = 'reserved' AND NEW.state = 'consumed'
       AND NEW.consumed_session = OLD.consumed_session THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'presignature % is % and cannot become %', OLD.id, OLD.state, NEW.state;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER presignature_once BEFORE UPDATE ON presignatures
    FOR EACH ROW EXECUTE FUNCTION presignature_once();

-- Counter bumped in the same transaction as every consumption (and every restore
-- check); the node mirrors it into a watermark file outside the database before
-- committing. A database restored from an older backup has a smaller counter than
-- the file: see docs/PRESIGNATURES.md.
CREATE TABLE presign_watermark (
    id       BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    counter  BIGINT NOT NULL DEFAULT 0 CHECK (counter >= 0)
);
INSERT INTO presign_watermark (id, counter) VALUES (true, 0);
