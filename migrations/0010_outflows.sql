-- Velocity counting (issue 15, finding 1): what each transaction takes out of the
-- wallet, as this node computed it, counted from the moment this node voted approve
-- (or saw a quorum approve it), whatever the leader reports later.
--
-- A row is released (stops counting) only when the transaction ends here straight
-- from `pending` or `voting`: this node never entered `signing` for it, so no
-- partial signature of this node exists, and it never will (a partial needs the
-- `approved -> signing` step). Once a transaction was `approved` here it counts until
-- the window passes, even if it expires unsigned here: other nodes may have signed.
CREATE TABLE outflows (
    transaction_id UUID PRIMARY KEY REFERENCES transactions (id) ON DELETE RESTRICT,
    key_id         TEXT NOT NULL,
    outflow_sats   BIGINT NOT NULL CHECK (outflow_sats >= 0),
    -- `own_approve`: this node voted approve; `quorum_approved`: this node saw a
    -- quorum approve (its own vote may be reject); `history`: signed before this
    -- table existed.
    counted_for    TEXT NOT NULL CHECK (counted_for IN ('own_approve', 'quorum_approved', 'history')),
    counted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at    TIMESTAMPTZ,
    released_why   TEXT,
    CHECK ((released_at IS NULL) = (released_why IS NULL))
);
CREATE INDEX idx_outflows_window ON outflows (key_id, counted_at) WHERE released_at IS NULL;

-- Amount and time of a count never change; a release is final.
CREATE FUNCTION outflows_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'outflows rows are never deleted' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.transaction_id <> OLD.transaction_id OR NEW.key_id <> OLD.key_id
       OR NEW.outflow_sats <> OLD.outflow_sats OR NEW.counted_at <> OLD.counted_at
       OR NEW.counted_for <> OLD.counted_for
       OR (OLD.released_at IS NOT NULL AND NEW.released_at IS DISTINCT FROM OLD.released_at) THEN
        RAISE EXCEPTION 'outflows: only an unreleased row may be released' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER outflows_no_rewrite BEFORE UPDATE OR DELETE ON outflows
    FOR EACH ROW EXECUTE FUNCTION outflows_guard();

-- The release rule lives with the state machine, so no code path can forget it.
CREATE FUNCTION outflows_release_on_end() RETURNS trigger AS $$
BEGIN
    IF OLD.state IN ('pending', 'voting')
       AND NEW.state IN ('rejected', 'expired', 'failed', 'aborted_byzantine') THEN
        UPDATE outflows SET released_at = now(), released_why = OLD.state || ' -> ' || NEW.state
         WHERE transaction_id = NEW.id AND released_at IS NULL;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER transactions_release_outflow AFTER UPDATE OF state ON transactions
    FOR EACH ROW EXECUTE FUNCTION outflows_release_on_end();

-- What was signed before keeps counting in its window.
INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for, counted_at)
SELECT id, key_id, COALESCE(amount_sats, 0) + COALESCE(fee_sats, 0), 'history', updated_at
  FROM transactions
 WHERE key_id IS NOT NULL AND state IN ('signed', 'broadcast', 'confirmed');
