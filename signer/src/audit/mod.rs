//! Append-only, hash-chained audit log.
//!
//! Each record's hash is SHA-256 over a domain tag, the previous record's hash and
//! a length-prefixed encoding of every field, so editing, deleting, inserting or
//! reordering any row breaks verification from that row on.

pub mod bundle;
pub mod checkpoint;
pub mod report;
pub mod verify;
#[cfg(test)]
mod verify_tests;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

const DOMAIN: &[u8] = b"signer-audit-v1";

/// What happened (the caller's part of a record).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who did it: a token id, `node`, or a peer node id.
    pub actor: String,
    /// Stable action name, e.g. `token.create`, `node.start`.
    pub action: String,
    /// What it was done to (a transaction id, a token id...).
    pub subject: Option<String>,
    /// Non-secret details. Do not put floats here (JSONB may reformat them).
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// A new entry with empty details.
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        AuditEntry {
            actor: actor.into(),
            action: action.into(),
            subject: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A stored record. Its JSON form (API, export bundles) has the hashes in hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Time (microsecond precision, as stored).
    pub ts: DateTime<Utc>,
    /// Node that wrote it.
    pub node_id: String,
    /// Actor.
    pub actor: String,
    /// Action.
    pub action: String,
    /// Subject.
    pub subject: Option<String>,
    /// Details.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Hash of the previous record.
    #[serde(with = "checkpoint::hex_array")]
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub prev_hash: [u8; 32],
    /// This record's hash.
    #[serde(with = "checkpoint::hex_array")]
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// Builds the record that follows `prev_hash`.
    pub fn new(
        seq: i64,
        ts: DateTime<Utc>,
        node_id: &str,
        entry: AuditEntry,
        prev_hash: [u8; 32],
    ) -> Self {
        let mut rec = AuditRecord {
            seq,
            ts: ts.trunc_subsecs(6),
            node_id: node_id.to_owned(),
            actor: entry.actor,
            action: entry.action,
            subject: entry.subject,
            details: entry.details,
            prev_hash,
            hash: [0; 32],
        };
        rec.hash = rec.compute_hash();
        rec
    }

    /// The hash this record should carry given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        chain_hash(&self.prev_hash, self.seq, &self.hash_tail())
    }

    /// What the hash covers after the domain tag, the previous hash and the
    /// sequence number: the timestamp and every field, length-prefixed. It does
    /// not depend on the record's place in the chain, so the database can link a
    /// record to its head when it appends it (`audit_append`, migration 0018).
    pub fn hash_tail(&self) -> Vec<u8> {
        let mut tail = Vec::with_capacity(128);
        tail.extend_from_slice(&self.ts.timestamp_micros().to_be_bytes());
        for field in [
            self.node_id.as_str(),
            self.actor.as_str(),
            self.action.as_str(),
            self.subject.as_deref().unwrap_or("\u{0}none"),
        ] {
            put_field(&mut tail, field.as_bytes());
        }
        // serde_json without `preserve_order` sorts object keys: canonical.
        let details = serde_json::to_vec(&self.details).unwrap_or_default();
        put_field(&mut tail, &details);
        tail
    }
}

/// The domain tag every record hash starts with.
pub fn hash_domain() -> &'static [u8] {
    DOMAIN
}

/// SHA-256 over the domain tag, `prev_hash`, `seq` (big-endian) and `tail`
/// ([`AuditRecord::hash_tail`]).
pub fn chain_hash(prev_hash: &[u8; 32], seq: i64, tail: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(tail);
    h.finalize().into()
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A record's stored hash does not match its contents.
    #[error("audit record {seq} was altered: stored hash does not match its contents")]
    HashMismatch {
        /// The record.
        seq: i64,
    },
    /// A record does not point at the previous record's hash.
    #[error("audit record {seq} does not link to record {prev}")]
    BrokenLink {
        /// The record.
        seq: i64,
        /// The record it should follow.
        prev: i64,
    },
    /// Sequence numbers are not contiguous (a row was removed or inserted).
    #[error("audit chain has a gap: expected record {expected}, found {found}")]
    Gap {
        /// Expected seq.
        expected: i64,
        /// Found seq.
        found: i64,
    },
}

/// Incremental chain verifier (records must be fed in order, from seq 1).
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH,
        }
    }
}

impl ChainVerifier {
    /// Checks the next record.
    pub fn push(&mut self, rec: &AuditRecord) -> Result<(), ChainError> {
        if rec.seq != self.expected_seq {
            return Err(ChainError::Gap {
                expected: self.expected_seq,
                found: rec.seq,
            });
        }
        if rec.prev_hash != self.prev_hash {
            return Err(ChainError::BrokenLink {
                seq: rec.seq,
                prev: rec.seq - 1,
            });
        }
        if rec.compute_hash() != rec.hash {
            return Err(ChainError::HashMismatch { seq: rec.seq });
        }
        self.expected_seq += 1;
        self.prev_hash = rec.hash;
        Ok(())
    }

    /// Number of records verified so far.
    pub fn verified(&self) -> i64 {
        self.expected_seq - 1
    }

    /// Hash of the last verified record (the chain head).
    pub fn head(&self) -> [u8; 32] {
        self.prev_hash
    }
}

/// Verifies a whole chain held in memory.
pub fn verify_chain(records: &[AuditRecord]) -> Result<i64, ChainError> {
    let mut v = ChainVerifier::default();
    for r in records {
        v.push(r)?;
    }
    Ok(v.verified())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record hash is the audit log's on-disk format (exports, checkpoints and
    /// the database's `audit_append` compute or check it): pinned to the value of
    /// the first implementation.
    #[test]
    fn record_hash_format_is_pinned() {
        let ts = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .expect("a valid literal")
            .with_timezone(&Utc);
        let entry = AuditEntry::new("node", "tx.vote")
            .subject("abc")
            .details(serde_json::json!({"b": 1, "a": "x"}));
        let rec = AuditRecord::new(7, ts, "node-1", entry, [0x11; 32]);
        assert_eq!(
            hex::encode(rec.hash),
            "fe2159def1c74bf3c00452d20c790dcf090c5b1e2f7229db14c1720fa150def5"
        );
        assert_eq!(chain_hash(&[0x11; 32], 7, &rec.hash_tail()), rec.hash);
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map_or(GENESIS_HASH, |r| r.hash);
            let entry = AuditEntry::new("tok1", "test.action")
                .subject(format!("s{seq}"))
                .details(serde_json::json!({"n": seq, "b": "x"}));
            out.push(AuditRecord::new(seq, Utc::now(), "node-1", entry, prev));
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
    }

    #[test]
    fn edited_field_is_detected_at_that_record() {
        let mut c = chain(5);
        c[2].action = "other".into();
        assert_eq!(verify_chain(&c), Err(ChainError::HashMismatch { seq: 3 }));
    }

    #[test]
    fn edited_and_rehashed_record_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].details = serde_json::json!({"n": 99});
        c[2].hash = c[2].compute_hash();
        assert_eq!(
            verify_chain(&c),
            Err(ChainError::BrokenLink { seq: 4, prev: 3 })
        );
    }

    #[test]
    fn removed_record_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify_chain(&c),
            Err(ChainError::Gap {
                expected: 2,
                found: 3
            })
        );
    }
}
