-- The TPM anchor of the presignature watermark (docs/PRESIGNATURES.md): with
-- `[presign] tpm_counter_index`, every reservation and consumption increments a
-- TPM NV monotonic counter before its transaction commits and stores the value
-- here in that transaction. At start the node compares this column with the TPM:
-- a database (and data directory) restored from an older backup holds a smaller
-- value than the TPM, which cannot go back. NULL: never anchored.
ALTER TABLE presign_watermark ADD COLUMN tpm_anchor BIGINT CHECK (tpm_anchor >= 0);
