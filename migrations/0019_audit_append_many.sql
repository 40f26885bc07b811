-- Several audit records appended in one call (issue 21): a group of changes made
-- in one statement (for example the `signed` records of several transactions)
-- takes the append lock once and links its records one after the other, in the
-- order of the arrays. Each record is hashed as in `audit_append` (migration
-- 0018): SHA-256 over `domain || prev_hash || seq (8 bytes, big-endian) || tail`,
-- the tail computed by the node, which checks every returned hash and link before
-- it commits.
--
-- `change_rows` is not used here: as in `audit_append`, it makes the database
-- finish the change (and take its row locks) before this function takes the
-- append lock.
CREATE FUNCTION audit_append_many(
    lock_key bigint,
    domain bytea,
    genesis bytea,
    p_ts timestamptz[],
    p_node_id text,
    p_actor text[],
    p_action text[],
    p_subject text[],
    p_details jsonb[],
    tails bytea[],
    change_rows bigint
) RETURNS TABLE (ord integer, new_seq bigint, new_prev bytea, new_hash bytea)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_seq bigint;
    head_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT l.seq, l.hash INTO head_seq, head_hash
        FROM audit_log l ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        head_seq := 0;
        head_hash := genesis;
    END IF;
    FOR i IN 1 .. coalesce(array_length(tails, 1), 0) LOOP
        ord := i;
        new_seq := head_seq + 1;
        new_prev := head_hash;
        new_hash := sha256(domain || new_prev || int8send(new_seq) || tails[i]);
        INSERT INTO audit_log (seq, ts, node_id, actor, action, subject, details, prev_hash, hash)
            VALUES (new_seq, p_ts[i], p_node_id, p_actor[i], p_action[i], p_subject[i],
                    p_details[i], new_prev, new_hash);
        head_seq := new_seq;
        head_hash := new_hash;
        RETURN NEXT;
    END LOOP;
END
$$;
