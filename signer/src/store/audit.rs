//! `audit_log` rows. The chain logic lives in [`crate::audit`].

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Store, StoreError};
use crate::audit::bundle::{PolicyVersion, POLICY_ACTION};
use crate::audit::checkpoint::{Checkpoint, CHECKPOINT_ACTION};
use crate::audit::{
    chain_hash, hash_domain, AuditEntry, AuditRecord, ChainError, ChainVerifier, GENESIS_HASH,
};

/// Serializes appenders so the chain never forks.
pub const AUDIT_LOCK_KEY: i64 = 0x5349_474e_4155_4449; // "SIGNAUDI"

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

    /// Appends `all` (records of one node) in order inside the caller's open
    /// transaction, under one hold of the append lock ([`append_audit_many`]).
    pub(crate) async fn append_many(
        all: Vec<AuditOf>,
        conn: &mut PgConnection,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Some(node_id) = all.first().map(|a| a.node_id.clone()) else {
            return Ok(Vec::new());
        };
        if all.iter().any(|a| a.node_id != node_id) {
            return Err(StoreError::Corrupt(
                "audit records of several nodes in one append".into(),
            ));
        }
        append_audit_many(conn, &node_id, all.into_iter().map(|a| a.entry).collect()).await
    }

    /// Appends `all` (records of one node) with the change `sql` makes, in one
    /// statement (see [`append_audit_many_with`]); `Ok(None)`, with nothing run,
    /// when they are of several nodes.
    pub(crate) async fn append_many_with<'q, F>(
        all: Vec<AuditOf>,
        conn: &mut PgConnection,
        sql: &'static str,
        bind: F,
    ) -> Result<Option<(i64, Vec<AuditRecord>)>, StoreError>
    where
        F: FnOnce(AuditedManyQuery<'q>) -> AuditedManyQuery<'q>,
    {
        let Some(node_id) = all.first().map(|a| a.node_id.clone()) else {
            return Ok(Some((0, Vec::new())));
        };
        if all.iter().any(|a| a.node_id != node_id) {
            return Ok(None);
        }
        let entries = all.into_iter().map(|a| a.entry).collect();
        append_audit_many_with(conn, &node_id, entries, sql, bind)
            .await
            .map(Some)
    }

    /// Appends it inside the caller's open transaction.
    pub(crate) async fn append(self, conn: &mut PgConnection) -> Result<AuditRecord, StoreError> {
        append_audit(conn, &self.node_id, self.entry).await
    }

    /// Appends it with the change `sql` makes (see [`append_audit_with`]).
    pub(crate) async fn append_with<'q, F>(
        self,
        conn: &mut PgConnection,
        sql: &'static str,
        bind: F,
    ) -> Result<(i64, AuditRecord), StoreError>
    where
        F: FnOnce(AuditedQuery<'q>) -> AuditedQuery<'q>,
    {
        append_audit_with(conn, &self.node_id, self.entry, sql, bind).await
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

/// `SELECT` of the columns of an audit row, in [`AuditRow`] order (a literal, for
/// `concat!`).
macro_rules! select_audit {
    () => {
        "SELECT seq, ts, node_id, actor, action, subject, details, prev_hash, hash FROM audit_log "
    };
}

impl Store {
    /// This node's audit head: the last record's sequence number and hash (0 and
    /// the genesis hash for an empty log).
    pub async fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let last: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(self.pool())
                .await?;
        match last {
            None => Ok((0, GENESIS_HASH)),
            Some((seq, hash)) => Ok((seq, to_hash32(seq, hash)?)),
        }
    }

    /// The hash of record `seq`, if there is one.
    pub async fn audit_hash_at(&self, seq: i64) -> Result<Option<[u8; 32]>, StoreError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT hash FROM audit_log WHERE seq = $1")
            .bind(seq)
            .fetch_optional(self.pool())
            .await?;
        row.map(|(h,)| to_hash32(seq, h)).transpose()
    }

    /// Stores checkpoint `cp` as an `audit.checkpoint` record of node `node_id`'s
    /// chain, once: `false` when it is already stored.
    pub async fn store_checkpoint(
        &self,
        node_id: &str,
        cp: &Checkpoint,
    ) -> Result<bool, StoreError> {
        let id = cp.id.to_string();
        let mut tx = self.pool().begin().await?;
        let seen: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM audit_log WHERE action = $1 AND subject = $2")
                .bind(CHECKPOINT_ACTION)
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Ok(false);
        }
        let entry = AuditEntry::new("node", CHECKPOINT_ACTION)
            .subject(&id)
            .details(cp.to_details());
        match append_audit(&mut tx, node_id, entry).await {
            Ok(_) => {}
            // Stored concurrently (the unique index on checkpoint ids).
            Err(StoreError::Db(e)) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        match tx.commit().await {
            Ok(()) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// When this node last stored a checkpoint.
    pub async fn last_checkpoint_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (at,): (Option<DateTime<Utc>>,) =
            sqlx::query_as("SELECT max(ts) FROM audit_log WHERE action = $1")
                .bind(CHECKPOINT_ACTION)
                .fetch_one(self.pool())
                .await?;
        Ok(at)
    }

    /// The checkpoint records stored between `from` and `to` (inclusive), the last
    /// one stored before `from` and the first one stored after `to`, in order.
    pub async fn checkpoint_records_around(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(concat!(
            "(",
            select_audit!(),
            "WHERE action = $1 AND ts < $2 ORDER BY ts DESC, seq DESC LIMIT 1) UNION ALL (",
            select_audit!(),
            "WHERE action = $1 AND ts >= $2 AND ts <= $3) UNION ALL (",
            select_audit!(),
            "WHERE action = $1 AND ts > $3 ORDER BY ts, seq LIMIT 1) ORDER BY seq"
        ))
        .bind(CHECKPOINT_ACTION)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    /// The first record at or after `from` and the last at or before `to` (by
    /// time), if any.
    pub async fn audit_seq_bounds(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Option<i64>, Option<i64>), StoreError> {
        let (first,): (Option<i64>,) =
            sqlx::query_as("SELECT min(seq) FROM audit_log WHERE ts >= $1")
                .bind(from)
                .fetch_one(self.pool())
                .await?;
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT max(seq) FROM audit_log WHERE ts <= $1")
                .bind(to)
                .fetch_one(self.pool())
                .await?;
        Ok((first, last))
    }

    /// Records `after_seq < seq <= to_seq`, in order, at most `limit`.
    pub async fn audit_rows_until(
        &self,
        after_seq: i64,
        to_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(concat!(
            select_audit!(),
            "WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        ))
        .bind(after_seq)
        .bind(to_seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    /// The policy versions this node recorded (`policy.version`) that were in force
    /// between `from` and `to`: the last one before `from` and every one up to `to`.
    pub async fn policy_versions(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(concat!(
            "(",
            select_audit!(),
            "WHERE action = $1 AND ts < $2 ORDER BY seq DESC LIMIT 1) UNION ALL (",
            select_audit!(),
            "WHERE action = $1 AND ts >= $2 AND ts <= $3) ORDER BY seq"
        ))
        .bind(POLICY_ACTION)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(AuditRow::into_record).collect()
    }

    /// The last policy version this node recorded.
    pub async fn last_policy_version(&self) -> Result<Option<PolicyVersion>, StoreError> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT details FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(POLICY_ACTION)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(d,)| serde_json::from_value(d).ok()))
    }

    /// Appends `version` as a `policy.version` record of node `node_id` (file
    /// `subject`) unless it is already the last one recorded; true if appended. The
    /// check and the append hold the audit chain's lock, so concurrent callers (the
    /// periodic recorder, votes) record one version once.
    pub async fn record_policy_version(
        &self,
        node_id: &str,
        subject: &str,
        version: &PolicyVersion,
    ) -> Result<bool, StoreError> {
        let details = serde_json::to_value(version)
            .map_err(|e| StoreError::Corrupt(format!("policy version: {e}")))?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        let last: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT details FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(POLICY_ACTION)
        .fetch_optional(&mut *tx)
        .await?;
        let last: Option<PolicyVersion> = last.and_then(|(d,)| serde_json::from_value(d).ok());
        if last.is_some_and(|l| l.text_sha256 == version.text_sha256) {
            return Ok(false);
        }
        append_audit(
            &mut tx,
            node_id,
            AuditEntry::new("node", POLICY_ACTION)
                .subject(subject.to_owned())
                .details(details),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `tx.signed` records after `after_seq` (at most 1000): their sequence numbers
    /// and whether node `leader` led the transaction.
    pub async fn signed_transactions_since(
        &self,
        after_seq: i64,
        leader: &str,
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
            "SELECT seq, subject FROM audit_log WHERE action = 'tx.signed' AND seq > $1 \
             ORDER BY seq LIMIT 1000",
        )
        .bind(after_seq)
        .fetch_all(self.pool())
        .await?;
        let ids: Vec<Option<uuid::Uuid>> = rows
            .iter()
            .map(|(_, subject)| {
                subject
                    .as_deref()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
            })
            .collect();
        // Which of them `leader` led: one statement for the whole page (issue 21:
        // it was one per record).
        let listed: Vec<uuid::Uuid> = ids.iter().flatten().copied().collect();
        let led: std::collections::HashSet<uuid::Uuid> = if listed.is_empty() {
            Default::default()
        } else {
            sqlx::query_as::<_, (uuid::Uuid,)>(
                "SELECT id FROM transactions WHERE id = ANY($1) AND leader = $2",
            )
            .bind(&listed)
            .bind(leader)
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect()
        };
        Ok(rows
            .iter()
            .zip(&ids)
            .map(|((seq, _), id)| (*seq, id.is_some_and(|id| led.contains(&id))))
            .collect())
    }
}

fn to_hash32(seq: i64, hash: Vec<u8>) -> Result<[u8; 32], StoreError> {
    hash.try_into()
        .map_err(|_| StoreError::Corrupt(format!("audit row {seq} hash is not 32 bytes")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Appends an entry inside the caller's transaction, so the audited change and
/// its audit row commit or roll back together.
///
/// One round trip: the database function `audit_append` (migration 0018) takes
/// the append lock (held until the caller's transaction ends, so the chain never
/// forks), links the record to the head it reads under the lock and inserts it.
/// This node computes everything the hash covers but the link, and checks the
/// hash the database computed against its own: a mismatch fails the append (and
/// so the change).
pub async fn append_audit(
    conn: &mut PgConnection,
    node_id: &str,
    entry: AuditEntry,
) -> Result<AuditRecord, StoreError> {
    let (_, record) = append_audit_with(
        conn,
        node_id,
        entry,
        concat!(
            "SELECT 0::bigint, new_seq, new_prev, new_hash ",
            "FROM audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)"
        ),
        |q| q,
    )
    .await?;
    Ok(record)
}

/// The row an audited statement returns: the count of its `done` rows, then the
/// appended record's sequence number, link and hash.
pub(crate) type AuditedRow = (i64, i64, Vec<u8>, Vec<u8>);

/// An audited statement with the append's parameters bound.
pub(crate) type AuditedQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, AuditedRow, sqlx::postgres::PgArguments>;

/// A statement that makes a change and appends its audit record (issue 21: one
/// round trip where there were one per statement and one for the append):
/// `ctes` are its common table expressions, the last one named `done` (its row
/// count is returned: e.g. the rows the change updated). The audit record is
/// appended whatever `done` holds: the caller decides from the count and rolls
/// back what it does not want. The append takes that count as an argument, so the
/// change is made (its row locks taken) before the append lock, as in every other
/// audited change. Parameters `$1`–`$10` are the append's; the
/// change's own are numbered from `$11` and bound by the caller's closure.
macro_rules! audited_statement {
    ($ctes:literal) => {
        concat!(
            "WITH ",
            $ctes,
            " SELECT d.n, a.new_seq, a.new_prev, a.new_hash ",
            "FROM (SELECT count(*) AS n FROM done) d, ",
            "LATERAL audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, d.n) a"
        )
    };
}
pub(crate) use audited_statement;

/// Runs `sql` (built by [`audited_statement!`], or the bare append), binding the
/// append's parameters and then the caller's (`bind`); returns the count of the
/// statement's `done` rows and the appended record, checked as in
/// [`append_audit`].
pub(crate) async fn append_audit_with<'q, F>(
    conn: &mut PgConnection,
    node_id: &str,
    entry: AuditEntry,
    sql: &'static str,
    bind: F,
) -> Result<(i64, AuditRecord), StoreError>
where
    F: FnOnce(AuditedQuery<'q>) -> AuditedQuery<'q>,
{
    // Built unlinked; the link and the hash come from the database below.
    let mut record = AuditRecord::new(0, Utc::now(), node_id, entry, GENESIS_HASH);
    let tail = record.hash_tail();
    let q = sqlx::query_as::<_, AuditedRow>(sql)
        .bind(AUDIT_LOCK_KEY)
        .bind(hash_domain())
        .bind(GENESIS_HASH.as_slice())
        .bind(record.ts)
        .bind(record.node_id.clone())
        .bind(record.actor.clone())
        .bind(record.action.clone())
        .bind(record.subject.clone())
        .bind(record.details.clone())
        .bind(tail.clone());
    let (done, seq, prev, hash) = bind(q)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StoreError::classify(e, "audited change"))?;
    let prev = to_hash32(seq - 1, prev)?;
    let hash = to_hash32(seq, hash)?;
    if chain_hash(&prev, seq, &tail) != hash {
        return Err(StoreError::Corrupt(format!(
            "audit record {seq}: the hash the database computed is not the record's hash"
        )));
    }
    record.seq = seq;
    record.prev_hash = prev;
    record.hash = hash;
    Ok((done, record))
}

/// The rows a grouped audited statement returns, one per record: the count of
/// its `done` rows, then the record's position in the group (from 1), sequence
/// number, link and hash.
pub(crate) type AuditedManyRow = (i64, i32, i64, Vec<u8>, Vec<u8>);

/// A grouped audited statement with the append's parameters bound.
pub(crate) type AuditedManyQuery<'q> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, AuditedManyRow, sqlx::postgres::PgArguments>;

/// [`audited_statement!`] for a group: the records are appended by
/// `audit_append_many` (migration 0019) under one hold of the append lock, in
/// order. Parameters `$1`–`$10` are the append's (arrays where a record has its
/// own value); the change's own are numbered from `$11`.
macro_rules! audited_group_statement {
    ($ctes:literal) => {
        concat!(
            "WITH ",
            $ctes,
            " SELECT d.n, a.ord, a.new_seq, a.new_prev, a.new_hash ",
            "FROM (SELECT count(*) AS n FROM done) d, ",
            "LATERAL audit_append_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, d.n) a"
        )
    };
}
pub(crate) use audited_group_statement;

/// Appends `entries` (all of node `node_id`) inside the caller's transaction, in
/// order, under one hold of the append lock (`audit_append_many`, migration 0019),
/// each record checked as in [`append_audit`] and against the one before it.
pub async fn append_audit_many(
    conn: &mut PgConnection,
    node_id: &str,
    entries: Vec<AuditEntry>,
) -> Result<Vec<AuditRecord>, StoreError> {
    let (_, records) = append_audit_many_with(
        conn,
        node_id,
        entries,
        concat!(
            "SELECT 0::bigint, ord, new_seq, new_prev, new_hash ",
            "FROM audit_append_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)"
        ),
        |q| q,
    )
    .await?;
    Ok(records)
}

/// Runs `sql` (built by [`audited_group_statement!`]) for `entries`, all of node
/// `node_id`, binding the append's parameters and then the caller's (`bind`).
/// Returns the count of the statement's `done` rows and the appended records in
/// the order of `entries`. Every record is checked as in [`append_audit`], and each
/// must link to the one before it: a mismatch fails the group (and so its change).
pub(crate) async fn append_audit_many_with<'q, F>(
    conn: &mut PgConnection,
    node_id: &str,
    entries: Vec<AuditEntry>,
    sql: &'static str,
    bind: F,
) -> Result<(i64, Vec<AuditRecord>), StoreError>
where
    F: FnOnce(AuditedManyQuery<'q>) -> AuditedManyQuery<'q>,
{
    let now = Utc::now();
    let mut records: Vec<AuditRecord> = entries
        .into_iter()
        .map(|e| AuditRecord::new(0, now, node_id, e, GENESIS_HASH))
        .collect();
    let tails: Vec<Vec<u8>> = records.iter().map(AuditRecord::hash_tail).collect();
    let column = |f: fn(&AuditRecord) -> String| records.iter().map(f).collect::<Vec<_>>();
    let q = sqlx::query_as::<_, AuditedManyRow>(sql)
        .bind(AUDIT_LOCK_KEY)
        .bind(hash_domain())
        .bind(GENESIS_HASH.as_slice())
        .bind(records.iter().map(|r| r.ts).collect::<Vec<_>>())
        .bind(node_id.to_owned())
        .bind(column(|r| r.actor.clone()))
        .bind(column(|r| r.action.clone()))
        .bind(
            records
                .iter()
                .map(|r| r.subject.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.details.clone())
                .collect::<Vec<_>>(),
        )
        .bind(tails.clone());
    let mut rows = bind(q)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| StoreError::classify(e, "audited change"))?;
    rows.sort_by_key(|r| r.1);
    if rows.len() != records.len() {
        return Err(StoreError::Corrupt(format!(
            "{} audit records appended for a group of {}",
            rows.len(),
            records.len()
        )));
    }
    let done = rows.first().map_or(0, |r| r.0);
    let mut link: Option<(i64, [u8; 32])> = None;
    for ((record, tail), (_, ord, seq, prev, hash)) in records.iter_mut().zip(&tails).zip(rows) {
        let prev = to_hash32(seq - 1, prev)?;
        let hash = to_hash32(seq, hash)?;
        let linked = link.is_none_or(|(s, h)| s + 1 == seq && h == prev);
        if !linked || chain_hash(&prev, seq, tail) != hash {
            return Err(StoreError::Corrupt(format!(
                "audit record {seq} (group position {ord}): the link or hash the database \
                 computed is not the record's"
            )));
        }
        record.seq = seq;
        record.prev_hash = prev;
        record.hash = hash;
        link = Some((seq, hash));
    }
    Ok((done, records))
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
