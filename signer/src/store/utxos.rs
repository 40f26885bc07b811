//! `utxos`: outputs paying this node's wallet addresses.

use uuid::Uuid;

use super::{Store, StoreError};
use wallet::OwnedUtxo;

impl Store {
    /// Adds imported UTXOs (already known ones are kept as they are); returns how many
    /// were new.
    pub async fn add_utxos(&self, utxos: &[OwnedUtxo]) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut added = 0;
        for u in utxos {
            added += sqlx::query(
                "INSERT INTO utxos (txid, vout, key_id, value_sats, script_pubkey, chain, idx) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (txid, vout) DO NOTHING",
            )
            .bind(u.outpoint.txid.to_string())
            .bind(i64::from(u.outpoint.vout))
            .bind(&u.key_id)
            .bind(i64::try_from(u.value_sats).unwrap_or(i64::MAX))
            .bind(u.script_pubkey.as_bytes())
            .bind(i64::from(u.chain))
            .bind(i64::from(u.index))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, "utxo"))?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Available UTXOs of a key.
    pub async fn available_utxos(&self, key_id: &str) -> Result<Vec<OwnedUtxo>, StoreError> {
        let rows: Vec<(String, i32, i64, Vec<u8>, i32, i32)> = sqlx::query_as(
            "SELECT txid, vout, value_sats, script_pubkey, chain, idx FROM utxos \
             WHERE key_id = $1 AND state = 'available' ORDER BY value_sats DESC, txid, vout",
        )
        .bind(key_id)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (txid, vout, value, script, chain, idx) in rows {
            let (Ok(txid), Ok(vout), Ok(value), Ok(chain), Ok(idx)) = (
                txid.parse(),
                u32::try_from(vout),
                u64::try_from(value),
                u32::try_from(chain),
                u32::try_from(idx),
            ) else {
                continue;
            };
            out.push(OwnedUtxo {
                key_id: key_id.to_owned(),
                outpoint: bitcoin::OutPoint { txid, vout },
                value_sats: value,
                script_pubkey: bitcoin::ScriptBuf::from_bytes(script),
                chain,
                index: idx,
            });
        }
        Ok(out)
    }

    /// Reserves the UTXOs spent by a transaction; fails (changing nothing) if any of
    /// them is not available.
    pub async fn reserve_utxos(
        &self,
        id: Uuid,
        outpoints: &[bitcoin::OutPoint],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for o in outpoints {
            let n = sqlx::query(
                "UPDATE utxos SET state = 'reserved', reserved_by = $3 \
                 WHERE txid = $1 AND vout = $2 AND state = 'available'",
            )
            .bind(o.txid.to_string())
            .bind(i64::from(o.vout))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                tx.rollback().await?;
                return Err(StoreError::Duplicate {
                    what: "utxo reservation",
                    detail: format!("{o} is not available"),
                });
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reserves, for transaction `id`, those of `outpoints` this node knows (a
    /// proposal's inputs). Returns the first known input that is spent or reserved by
    /// another transaction, reserving nothing in that case; unknown inputs are ignored.
    pub async fn reserve_known_utxos(
        &self,
        id: Uuid,
        outpoints: &[bitcoin::OutPoint],
    ) -> Result<Option<bitcoin::OutPoint>, StoreError> {
        let mut tx = self.pool().begin().await?;
        for o in outpoints {
            let row: Option<(String, Option<Uuid>)> = sqlx::query_as(
                "SELECT state, reserved_by FROM utxos WHERE txid = $1 AND vout = $2 FOR UPDATE",
            )
            .bind(o.txid.to_string())
            .bind(i64::from(o.vout))
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                None => {}
                Some((state, _)) if state == "available" => {
                    sqlx::query(
                        "UPDATE utxos SET state = 'reserved', reserved_by = $3 \
                         WHERE txid = $1 AND vout = $2",
                    )
                    .bind(o.txid.to_string())
                    .bind(i64::from(o.vout))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                Some((state, by)) if state == "reserved" && by == Some(id) => {}
                Some(_) => {
                    tx.rollback().await?;
                    return Ok(Some(*o));
                }
            }
        }
        tx.commit().await?;
        Ok(None)
    }

    /// Highest change index used so far by a key (for the next change output).
    pub async fn next_change_index(&self, key_id: &str) -> Result<u32, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM transactions WHERE key_id = $1 AND recipient IS NOT NULL",
        )
        .bind(key_id)
        .fetch_one(self.pool())
        .await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Makes the UTXOs reserved by a transaction that will not be signed available
    /// again.
    pub async fn release_utxos(&self, id: Uuid) -> Result<u64, StoreError> {
        release_reserved(self.pool(), id).await
    }
}

/// Releases the UTXOs reserved by transaction `id` (in a pool or a transaction).
pub(super) async fn release_reserved<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    id: Uuid,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE utxos SET state = 'available', reserved_by = NULL \
         WHERE reserved_by = $1 AND state = 'reserved'",
    )
    .bind(id)
    .execute(ex)
    .await?
    .rows_affected())
}
