-- API token hashes are keyed (issue 16, finding 1): HMAC-SHA-256 under a node key
-- that is stored here only sealed by the node's HSM/TPM, like the vote key.
ALTER TABLE node_keys DROP CONSTRAINT node_keys_purpose_check;
ALTER TABLE node_keys ADD CONSTRAINT node_keys_purpose_check
    CHECK (purpose IN ('vote_signing', 'api_token_mac'));

-- Only the three forms the node understands: keyed (hmac-sha256$v1$), enrolment
-- (sha256$v1$, written by `cluster up` / `token create` and rewritten at first use)
-- and argon2id of earlier versions (rewritten at first use).
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_secret_hash_form CHECK (
    secret_hash ~ '^hmac-sha256\$v1\$[0-9a-f]{64}$'
    OR secret_hash ~ '^sha256\$v1\$[0-9a-f]{64}$'
    OR secret_hash LIKE '$argon2id$%'
);
