//! KEK rotation over the node's database (`signer hsm rotate-kek`): every secret
//! column (key shares, aux info, presignatures, prime sets, node keys) rewrapped to a
//! new key-encryption key in one transaction, with its audit row.
//!
//! Each record's associated data is rebuilt from its row exactly as the code that
//! sealed it built it (see the `Aad::new` calls in `dkg/`, `presign/`, `custody.rs`
//! and `node/unseal.rs`); a row whose data does not match its envelope fails the
//! rewrap (the old KEK's authenticated unwrap), and then nothing is written.

use hsm::envelope::{self, RotationItem};
use hsm::{Aad, Custody, HsmError, RecordKind};
use sqlx::PgConnection;
use uuid::Uuid;

use super::audit::AuditOf;
use super::{Store, StoreError};

/// Tables with envelope columns, in the order they are read and updated.
pub const ENVELOPE_TABLES: [&str; 5] = [
    "key_shares",
    "aux_info",
    "presignatures",
    "prime_pool",
    "node_keys",
];

/// Which row an envelope belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey {
    /// `key_shares.id`, `aux_info.id`.
    Serial(i64),
    /// `presignatures.id`, `prime_pool.id`.
    Uuid(Uuid),
    /// `node_keys.purpose`.
    Purpose(String),
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowKey::Serial(i) => write!(f, "{i}"),
            RowKey::Uuid(u) => write!(f, "{u}"),
            RowKey::Purpose(p) => f.write_str(p),
        }
    }
}

/// One stored envelope with the associated data it was sealed with.
#[derive(Debug, Clone)]
pub struct EnvelopeRecord {
    /// One of [`ENVELOPE_TABLES`].
    pub table: &'static str,
    /// The row.
    pub row: RowKey,
    /// Associated data of the record.
    pub aad: Aad,
    /// The envelope.
    pub blob: Vec<u8>,
}

impl EnvelopeRecord {
    /// `table row`, for messages.
    pub fn name(&self) -> String {
        format!("{} {}", self.table, self.row)
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationSummary {
    /// Records moved to the new KEK, per table (in [`ENVELOPE_TABLES`] order).
    pub rewrapped: Vec<(&'static str, u64)>,
    /// Records that were already under the new KEK (an interrupted or repeated run).
    pub already_current: u64,
}

impl RotationSummary {
    /// Records moved, all tables.
    pub fn total_rewrapped(&self) -> u64 {
        self.rewrapped.iter().map(|(_, n)| n).sum()
    }
}

/// Why a rotation wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The database refused or failed (the transaction was rolled back).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be rewrapped (nothing was written).
    #[error("{record}: {source}")]
    Rewrap {
        /// `table row`.
        record: String,
        /// The custody error.
        source: HsmError,
    },
    /// A row's data cannot form associated data (ids too long, unknown kind).
    #[error("{record}: {reason}")]
    Record {
        /// `table row`.
        record: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<sqlx::Error> for RotationError {
    fn from(e: sqlx::Error) -> Self {
        RotationError::Store(StoreError::Db(e))
    }
}

impl Store {
    /// Every envelope of `node_id`'s database with its associated data.
    pub async fn envelope_records(
        &self,
        node_id: &str,
    ) -> Result<Vec<EnvelopeRecord>, RotationError> {
        let mut conn = self.pool().acquire().await?;
        read_records(&mut conn, node_id).await
    }

    /// Database sessions of this database's role other than this one: a running
    /// node always holds some (its pool, its revocation listener).
    pub async fn other_sessions_of_this_role(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND usename = current_user AND pid <> pg_backend_pid()",
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Rewraps every envelope of the node's database from `old` to `new` and writes
    /// them back, with the audit row `audit(summary)`, in one transaction (the
    /// envelope tables locked against writers meanwhile). All or nothing: a record
    /// that does not rewrap, a refused update or a failed audit write leaves every
    /// row as it was. Records already under `new` are left alone.
    pub async fn rotate_kek(
        &self,
        node_id: &str,
        old: &Custody,
        new: &Custody,
        audit: impl FnOnce(&RotationSummary) -> AuditOf,
    ) -> Result<RotationSummary, RotationError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "LOCK TABLE key_shares, aux_info, presignatures, prime_pool, node_keys \
             IN EXCLUSIVE MODE",
        )
        .execute(&mut *tx)
        .await?;
        let records = read_records(&mut tx, node_id).await?;
        let items: Vec<RotationItem> = records
            .iter()
            .map(|r| RotationItem {
                aad: r.aad.clone(),
                blob: r.blob.clone(),
            })
            .collect();
        let (o, n) = (old.wrapper().clone(), new.wrapper().clone());
        let blobs = tokio::task::spawn_blocking(move || {
            envelope::rewrap_all(o.as_ref(), n.as_ref(), &items)
        })
        .await
        .map_err(|e| RotationError::Record {
            record: "rewrap task".to_owned(),
            reason: e.to_string(),
        })?
        .map_err(|(i, source)| RotationError::Rewrap {
            record: records[i].name(),
            source,
        })?;

        let mut summary = RotationSummary {
            rewrapped: ENVELOPE_TABLES.iter().map(|t| (*t, 0)).collect(),
            already_current: 0,
        };
        for (r, blob) in records.iter().zip(&blobs) {
            if *blob == r.blob {
                summary.already_current += 1;
                continue;
            }
            update(&mut tx, r, blob, new.kek_id()).await?;
            if let Some(entry) = summary.rewrapped.iter_mut().find(|(t, _)| *t == r.table) {
                entry.1 += 1;
            }
        }
        audit(&summary).append(&mut tx).await?;
        tx.commit().await?;
        Ok(summary)
    }
}

async fn update(
    conn: &mut PgConnection,
    r: &EnvelopeRecord,
    blob: &[u8],
    kek_id: &str,
) -> Result<(), RotationError> {
    let q = match (&r.row, r.table) {
        (RowKey::Serial(id), "key_shares") => {
            sqlx::query("UPDATE key_shares SET envelope = $2 WHERE id = $1")
                .bind(*id)
                .bind(blob)
        }
        (RowKey::Serial(id), "aux_info") => {
            sqlx::query("UPDATE aux_info SET envelope = $2 WHERE id = $1")
                .bind(*id)
                .bind(blob)
        }
        (RowKey::Uuid(id), "presignatures") => {
            sqlx::query("UPDATE presignatures SET envelope = $2 WHERE id = $1")
                .bind(*id)
                .bind(blob)
        }
        (RowKey::Uuid(id), "prime_pool") => {
            sqlx::query("UPDATE prime_pool SET envelope = $2 WHERE id = $1")
                .bind(*id)
                .bind(blob)
        }
        (RowKey::Purpose(p), "node_keys") => {
            sqlx::query("UPDATE node_keys SET envelope = $2, kek_id = $3 WHERE purpose = $1")
                .bind(p.as_str())
                .bind(blob)
                .bind(kek_id)
        }
        _ => {
            return Err(RotationError::Record {
                record: r.name(),
                reason: "unknown table".to_owned(),
            })
        }
    };
    let done = q
        .execute(&mut *conn)
        .await
        .map_err(|e| RotationError::Record {
            record: r.name(),
            reason: e.to_string(),
        })?;
    if done.rows_affected() != 1 {
        return Err(RotationError::Record {
            record: r.name(),
            reason: format!("{} rows updated", done.rows_affected()),
        });
    }
    Ok(())
}

fn aad_err<'a>(table: &'static str, row: &'a RowKey) -> impl Fn(HsmError) -> RotationError + 'a {
    move |e| RotationError::Record {
        record: format!("{table} {row}"),
        reason: e.to_string(),
    }
}

async fn read_records(
    conn: &mut PgConnection,
    node_id: &str,
) -> Result<Vec<EnvelopeRecord>, RotationError> {
    let mut out = Vec::new();

    // Key shares: Aad(node, key id, CGGMP24 or FROST share kind).
    let rows: Vec<(i64, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT id, node_id, key_id, envelope FROM key_shares ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, node, key_id, blob) in rows {
        let row = RowKey::Serial(id);
        let kind = envelope::inspect(&blob)
            .map_err(aad_err("key_shares", &row))?
            .kind;
        if !matches!(kind, RecordKind::KeyShare | RecordKind::FrostKeyShare) {
            return Err(RotationError::Record {
                record: format!("key_shares {row}"),
                reason: format!("envelope of kind {kind:?}"),
            });
        }
        let aad = Aad::new(node, key_id, kind).map_err(aad_err("key_shares", &row))?;
        out.push(EnvelopeRecord {
            table: "key_shares",
            row,
            aad,
            blob,
        });
    }

    // Aux info: Aad(node, ceremony id, AuxInfo).
    let rows: Vec<(i64, String, Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, node_id, ceremony_id, envelope FROM aux_info ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, node, ceremony, blob) in rows {
        let row = RowKey::Serial(id);
        let aad = Aad::new(node, ceremony.to_string(), RecordKind::AuxInfo)
            .map_err(aad_err("aux_info", &row))?;
        out.push(EnvelopeRecord {
            table: "aux_info",
            row,
            aad,
            blob,
        });
    }

    // Presignatures: Aad(this node, key id, Presignature, hex(public id)).
    let rows: Vec<(Uuid, String, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id, key_id, public_id, envelope FROM presignatures ORDER BY seq")
            .fetch_all(&mut *conn)
            .await?;
    for (id, key_id, public_id, blob) in rows {
        let row = RowKey::Uuid(id);
        let aad = Aad::with_record_id(
            node_id,
            key_id,
            RecordKind::Presignature,
            hex::encode(public_id),
        )
        .map_err(aad_err("presignatures", &row))?;
        out.push(EnvelopeRecord {
            table: "presignatures",
            row,
            aad,
            blob,
        });
    }

    // Prime sets: Aad(node, set id, PrimeSet).
    let rows: Vec<(Uuid, String, Vec<u8>)> =
        sqlx::query_as("SELECT id, node_id, envelope FROM prime_pool ORDER BY created_at, id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, node, blob) in rows {
        let row = RowKey::Uuid(id);
        let aad = Aad::new(node, id.to_string(), RecordKind::PrimeSet)
            .map_err(aad_err("prime_pool", &row))?;
        out.push(EnvelopeRecord {
            table: "prime_pool",
            row,
            aad,
            blob,
        });
    }

    // Node keys: Aad(this node, purpose, NodeIdentityKey).
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT purpose, envelope FROM node_keys ORDER BY purpose")
            .fetch_all(&mut *conn)
            .await?;
    for (purpose, blob) in rows {
        let row = RowKey::Purpose(purpose.clone());
        let aad = Aad::new(node_id, purpose, RecordKind::NodeIdentityKey)
            .map_err(aad_err("node_keys", &row))?;
        out.push(EnvelopeRecord {
            table: "node_keys",
            row,
            aad,
            blob,
        });
    }
    Ok(out)
}
