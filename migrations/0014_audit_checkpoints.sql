-- Cross-node audit checkpoints (docs/AUDIT.md): a checkpoint is stored as an
-- `audit.checkpoint` record of the hash-chained audit log (subject: the checkpoint
-- id, details: the co-signed checkpoint), at most once per node.
CREATE UNIQUE INDEX idx_audit_log_checkpoint_id ON audit_log (subject)
    WHERE action = 'audit.checkpoint';
-- Policy versions a node loaded (`policy.version` records) are looked up by time.
CREATE INDEX idx_audit_log_action_ts ON audit_log (action, ts);
