//! `audit_log` rows. The chain logic lives in [`crate::audit`].

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Store, StoreError};
use crate::audit::{AuditEntry, AuditRecord, ChainError, ChainVerifier, GENESIS_HASH};

/// Serializes appenders so the chain never forks.
const AUDIT_LOCK_KEY: i64 = 0x5349_474e_4155_4449; // "SIGNAUDI"

/// The audit row of a change, handed to the store method that makes the change: it
/// is appended in the change's own database transaction, so the change and its
/// record commit together or not at all (an audit write that fails fails the
/// change).
#[derive(Debug, Clone)]
pub struct AuditOf {
    node_id: String,
    entry: AuditEntry,
}

impl AuditOf {
    /// Entry `entry` in node `node_id`'s chain.
    pub fn new(node_id: &str, entry: AuditEntry) -> Self {
        Self {
            node_id: node_id.to_owned(),
            entry,
        }
    }

    /// Appends it inside the caller's open transaction.
    pub(crate) async fn append(self, conn: &mut PgConnection) -> Result<AuditRecord, StoreError> {
        append_audit(conn, &self.node_id, self.entry).await
    }
}

impl Store {
    /// Keys this node froze after a failed final verification (audit `key.frozen`);
    /// the audit log is append-only, so a freeze survives restarts.
    pub async fn frozen_keys(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT DISTINCT subject FROM audit_log WHERE action = 'key.frozen'")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().filter_map(|(s,)| s).collect())
    }

    /// Appends an entry in its own database transaction: for events that are not a
    /// change of another row (a start, a refusal, a partial signature leaving).
    /// A change and its record go through the change's store method with an
    /// [`AuditOf`].
    pub async fn audit(&self, node_id: &str, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rec = append_audit(&mut tx, node_id, entry).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Verifies the chain stored in this database, page by page. Returns the number
    /// of records verified, the head hash, and the first error found.
    pub async fn verify_audit_chain(
        &self,
    ) -> Result<(i64, [u8; 32], Option<ChainError>), StoreError> {
        let mut v = ChainVerifier::default();
        let mut after = 0;
        loop {
            let rows = self.audit_rows(after, 1000).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for r in &rows {
                if let Err(e) = v.push(r) {
                    return Ok((v.verified(), v.head(), Some(e)));
                }
            }
        }
        Ok((v.verified(), v.head(), None))
    }

    /// Rows in order, from `after_seq` (exclusive), at most `limit`.
    pub async fn audit_rows(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, ts, node_id, actor, action, subject, details, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }
}

/// Appends an entry inside the caller's transaction, so the audited change and
/// its audit row commit or roll back together.
pub async fn append_audit(
    conn: &mut PgConnection,
    node_id: &str,
    entry: AuditEntry,
) -> Result<AuditRecord, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => {
            let prev: [u8; 32] = hash.try_into().map_err(|_| {
                StoreError::Corrupt(format!("audit row {seq} hash is not 32 bytes"))
            })?;
            (seq + 1, prev)
        }
        None => (1, GENESIS_HASH),
    };
    let record = AuditRecord::new(seq, Utc::now(), node_id, entry, prev_hash);
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, node_id, actor, action, subject, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(record.seq)
    .bind(record.ts)
    .bind(&record.node_id)
    .bind(&record.actor)
    .bind(&record.action)
    .bind(&record.subject)
    .bind(&record.details)
    .bind(record.prev_hash.as_slice())
    .bind(record.hash.as_slice())
    .execute(&mut *conn)
    .await?;
    Ok(record)
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    ts: DateTime<Utc>,
    node_id: String,
    actor: String,
    action: String,
    subject: Option<String>,
    details: serde_json::Value,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl AuditRow {
    fn into_record(self) -> Result<AuditRecord, StoreError> {
        let seq = self.seq;
        let to32 = |v: Vec<u8>| -> Result<[u8; 32], StoreError> {
            v.try_into()
                .map_err(|_| StoreError::Corrupt(format!("audit row {seq} hash is not 32 bytes")))
        };
        Ok(AuditRecord {
            seq: self.seq,
            ts: self.ts,
            node_id: self.node_id,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            details: self.details,
            prev_hash: to32(self.prev_hash)?,
            hash: to32(self.hash)?,
        })
    }
}
