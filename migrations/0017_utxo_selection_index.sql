-- Coin selection reads the largest available imported UTXOs of a key
-- (Store::selectable_utxos, at most `max_inputs` rows): served by this index, so a
-- payment's intake does not read every UTXO of the key (issue 21).
CREATE INDEX idx_utxos_selection ON utxos (key_id, value_sats DESC, txid, vout)
    WHERE state = 'available' AND origin = 'import';
