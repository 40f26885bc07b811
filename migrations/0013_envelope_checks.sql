-- Secret columns hold custody envelopes (hsm/src/envelope.rs), never anything else
-- (issue 16, finding 11): a bug or an administrator that writes a plaintext share,
-- key or prime set into one of them is refused by the database itself.
--
-- Structure checked (format version 1):
--   0..4 "CENV" | 4 version = 1 | 5 record kind | 6 backend 1 (pkcs11) or 2 (tpm)
--   | 7 flags = 0 | 8 K in 1..=128 | 9 KEK id (K) | 9+K W (u16 BE) in 1..=2048
--   | wrapped key (W) | nonce (12) | C (u32 BE) >= 16 | ciphertext (C), ending there.
-- `kinds` lists the record kinds the column may hold (NULL: any).
CREATE FUNCTION is_custody_envelope(b BYTEA, kinds INT[]) RETURNS BOOLEAN
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k INT;
    w INT;
    c BIGINT;
BEGIN
    IF b IS NULL OR length(b) < 9 + 1 + 2 + 1 + 12 + 4 + 16 THEN
        RETURN false;
    END IF;
    IF substring(b FROM 1 FOR 4) <> '\x43454e56'::bytea
        OR get_byte(b, 4) <> 1
        OR get_byte(b, 6) NOT IN (1, 2)
        OR get_byte(b, 7) <> 0 THEN
        RETURN false;
    END IF;
    IF kinds IS NOT NULL AND NOT (get_byte(b, 5) = ANY (kinds)) THEN
        RETURN false;
    END IF;
    k := get_byte(b, 8);
    IF k < 1 OR k > 128 OR length(b) < 11 + k THEN
        RETURN false;
    END IF;
    w := get_byte(b, 9 + k) * 256 + get_byte(b, 10 + k);
    IF w < 1 OR w > 2048 OR length(b) < 27 + k + w THEN
        RETURN false;
    END IF;
    c := get_byte(b, 23 + k + w)::BIGINT * 16777216 + get_byte(b, 24 + k + w) * 65536
         + get_byte(b, 25 + k + w) * 256 + get_byte(b, 26 + k + w);
    RETURN c >= 16 AND length(b) = 27 + k + w + c;
END
$$;

-- Record kinds (hsm::envelope::RecordKind::code): 1 key share, 2 aux info,
-- 3 presignature, 4 node identity key, 5 prime set, 6 FROST key share, 7 TLS key,
-- 255 other.
ALTER TABLE key_shares ADD CONSTRAINT key_shares_envelope_is_envelope
    CHECK (is_custody_envelope(envelope, ARRAY[1, 6]));
ALTER TABLE aux_info ADD CONSTRAINT aux_info_envelope_is_envelope
    CHECK (is_custody_envelope(envelope, ARRAY[2]));
ALTER TABLE presignatures ADD CONSTRAINT presignatures_envelope_is_envelope
    CHECK (is_custody_envelope(envelope, ARRAY[3]));
ALTER TABLE prime_pool ADD CONSTRAINT prime_pool_envelope_is_envelope
    CHECK (is_custody_envelope(envelope, ARRAY[5]));
ALTER TABLE node_keys ADD CONSTRAINT node_keys_envelope_is_envelope
    CHECK (is_custody_envelope(envelope, NULL));
