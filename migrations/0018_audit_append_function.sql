-- An audit append in one database round trip (issue 21): the append lock, the
-- read of the chain's head, the new record's link and hash, and its insert.
-- Before, an append was two or three statements from the node (the lock, then an
-- insert guarded by the head this process last wrote, or a read of the head and
-- an insert).
--
-- In READ COMMITTED each statement of a VOLATILE function takes a new snapshot, so
-- the head read after the lock is granted sees every append committed before it.
-- The hash is SHA-256 over `domain || prev_hash || seq (8 bytes, big-endian) ||
-- tail`, where the node computes `tail` (the timestamp and every field,
-- length-prefixed: AuditRecord::hash_tail). The node recomputes the returned hash
-- from the returned link and refuses the append when they differ, so a replaced
-- function cannot make it store a record it did not hash itself.
--
-- `change_rows` is not used here: a statement that makes a change and appends its
-- record in one go passes the count of the rows it changed, which makes the
-- database finish the change (and take its row locks) before this function takes
-- the append lock, the order of every other audited change (no lock-order
-- deadlock between them).
CREATE FUNCTION audit_append(
    lock_key bigint,
    domain bytea,
    genesis bytea,
    p_ts timestamptz,
    p_node_id text,
    p_actor text,
    p_action text,
    p_subject text,
    p_details jsonb,
    tail bytea,
    change_rows bigint,
    OUT new_seq bigint,
    OUT new_prev bytea,
    OUT new_hash bytea
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT l.seq + 1, l.hash INTO new_seq, new_prev
        FROM audit_log l ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        new_seq := 1;
        new_prev := genesis;
    END IF;
    new_hash := sha256(domain || new_prev || int8send(new_seq) || tail);
    INSERT INTO audit_log (seq, ts, node_id, actor, action, subject, details, prev_hash, hash)
        VALUES (new_seq, p_ts, p_node_id, p_actor, p_action, p_subject, p_details, new_prev, new_hash);
END
$$;
